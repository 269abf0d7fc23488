"""The hooks every regulariser plugs into the training loop, and the plain-training baseline.

A regulariser is a small object; the loop in ``sparank.train`` calls, in order:

- ``prepare(model)`` once before training (e.g. register a parametrisation:
  a mask, a factorisation ``U V^T``, hard-concrete gates);
- per batch, ``inputs(model, x, y)`` for the inputs to train on (adversarial
  training replaces them), then adds ``penalty(model)`` to the loss;
- ``after_step(model, progress)`` after each optimiser step, with
  ``progress`` in (0, 1] the fraction of training done (proximal steps,
  pruning schedules);
- ``finalise(model, fine_tune)`` once after training: a one-shot prune or a
  rank truncation, then ``fine_tune(epochs)`` to recover; it must leave a
  plain ``nn.Module`` whose ``state_dict`` loads into ``build_model(spec)``.

Which layers a method touches is explicit: ``layers`` names them (qualified
module names); ``None`` means every weight matrix and conv kernel, never
biases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sparank.models import weight_layers


class Regulariser:
    """Plain training (``none``): every hook does nothing. Subclasses override what they need."""

    name: ClassVar[str] = "none"
    #: one line for ``sparank regularisers``: what the method does
    summary: ClassVar[str] = "plain training: the dense, full-rank counterpart"
    #: where the method comes from (a paper link), or ""
    reference: ClassVar[str] = ""
    #: what the strength means; None = the method takes no strength
    strength_meaning: ClassVar[str | None] = None
    #: allowed strengths, inclusive: (low, high)
    strength_range: ClassVar[tuple[float, float]] = (0.0, math.inf)
    #: the strength used when none is given
    default_strength: ClassVar[float | None] = None

    def __init__(self, strength: float | None = None, *, layers: Sequence[str] | None = None) -> None:
        self.strength = check_strength(type(self), strength)
        self.layers = None if layers is None else tuple(layers)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        """The layers this regulariser acts on, by qualified name."""
        found = weight_layers(model)
        if self.layers is None:
            return found
        missing = [n for n in self.layers if n not in found]
        if missing:
            raise ValueError(f"layers {missing} are not weight layers of the model; choose from {sorted(found)}")
        return {n: found[n] for n in self.layers}

    def config(self, model: nn.Module | None = None) -> dict[str, Any]:
        """What to record with the run: name, strength, touched layers and any extra settings."""
        record: dict[str, Any] = {"name": self.name, "strength": self.strength}
        record["layers"] = list(self.targets(model)) if model is not None else self.layers
        return record

    def prepare(self, model: nn.Module) -> None:
        """Called once before training."""

    def inputs(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The inputs to train on for this batch (adversarial training overrides this)."""
        return x

    def penalty(self, model: nn.Module) -> Tensor | None:
        """A term added to the batch loss, or None."""
        return None

    def after_step(self, model: nn.Module, progress: float) -> None:
        """Called after each optimiser step; ``progress`` is the fraction of training done."""

    def finalise(self, model: nn.Module, fine_tune: Callable[[int], None]) -> None:
        """Called once after training; may prune or truncate and then call ``fine_tune(epochs)``."""


class L2(Regulariser):
    """Weight decay written as a penalty: ``(λ/2) · Σ ||W||_F²`` over the touched weights, never biases.

    Krogh & Hertz 1991, "A Simple Weight Decay Can Improve Generalization".
    As a penalty (not AdamW's decoupled decay), so with Adam its effect is
    rescaled per coordinate like any other loss term.
    """

    name = "l2"
    summary = "weight decay: penalty (λ/2)·Σ‖W‖_F² over weight matrices and conv kernels"
    reference = "https://papers.nips.cc/paper/1991/hash/8eefcfdf5990e441f0fb6f3fad709e21-Abstract.html"
    strength_meaning = "λ, the weight-decay coefficient of the penalty (λ/2)·Σ‖W‖_F²"
    strength_range = (0.0, math.inf)
    default_strength = 1e-3

    def penalty(self, model: nn.Module) -> Tensor | None:
        assert self.strength is not None  # check_strength always sets it for a method with a strength
        squares = [m.weight.square().sum() for m in self.targets(model).values()]  # square(): pow(2) has a slow backward
        return 0.5 * self.strength * torch.stack(squares).sum() if squares else None


def check_strength(cls: type[Regulariser], strength: float | None) -> float | None:
    """Validate a strength for ``cls``: ValueError with the allowed range and an example."""
    if cls.strength_meaning is None:
        if strength is not None:
            raise ValueError(f"regulariser {cls.name!r} takes no strength (got {strength}); leave --strength out")
        return None
    if strength is None:
        strength = cls.default_strength
    if strength is None:
        raise ValueError(f"regulariser {cls.name!r} needs a strength: {cls.strength_meaning}")
    low, high = cls.strength_range
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and low <= strength <= high):
        raise ValueError(f"strength {strength} is out of range for {cls.name!r}: {cls.strength_meaning}, in [{low}, {high}]")
    return float(strength)


def check_positive(name: str, value: float, *, hint: str = "") -> float:
    """``value`` as a float if it is a finite number > 0; else ValueError naming ``name`` (and ``hint``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0{f' ({hint})' if hint else ''}, got {value!r}")
    return float(value)


def check_int(name: str, value: int, *, low: int, hint: str = "") -> int:
    """``value`` if it is an integer >= ``low``; else ValueError naming ``name`` (and ``hint``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{f' ({hint})' if hint else ''}, got {value!r}")
    return value
