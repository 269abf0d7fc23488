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

**Randomness.** Before ``prepare`` the loop sets ``generator`` to the run's
own ``torch.Generator`` (``sparank.train.seeded_generator(seed, "regulariser")``);
a method draws every random number from it (``torch.rand(..., generator=self.generator)``),
never from the global RNG, so that a seed gives the same weights in any thread
or process. Outside the loop it is None (the global RNG).

Which layers a method touches is explicit: ``layers`` names them (qualified
module names); ``None`` means every weight matrix and conv kernel, never
biases. An empty ``layers`` is an error: a method that touches nothing is
``none``.

**Training budget.** A method that fine-tunes after training (``magnitude``,
``svd_truncate``, and any method given ``fine_tune_epochs``) trains for
``TrainConfig.epochs + reg.extra_epochs`` epochs in all. Its fair dense
counterpart is :func:`counterpart`: plain training with the same number of
fine-tune epochs on the same schedule (``finalise`` calls
``fine_tune(extra_epochs)``: a fresh optimiser, no penalty), so that a
comparison measures the method and not the extra epochs.

**Options are declared once**, as keyword-only arguments of ``__init__``
stored on ``self`` under the same name: :meth:`Regulariser.config` and
``repr`` read them from there.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sparank.models import weight_layers


class Regulariser:
    """The base of every method, and plain training when used as is: every hook does nothing.

    Subclasses override the hooks they need and declare their options as
    keyword-only ``__init__`` arguments stored under the same name. The
    registered ``none`` is :class:`Dense` (this class plus a matched
    fine-tune budget).

    Args:
        strength: the method's strength (see ``strength_meaning``).
        layers: qualified names of the touched layers (None: the method's
            default, every weight layer unless it says otherwise); never empty.
    """

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
    #: where the method's random draws come from: set by the training loop before ``prepare``
    #: (the run's "regulariser" stream); None outside it, meaning the global RNG
    generator: torch.Generator | None = None

    def __init__(self, strength: float | None = None, *, layers: Sequence[str] | None = None) -> None:
        self.strength = check_strength(type(self), strength)
        self.layers = check_layers(layers)

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The method's keyword-only options (``layers`` aside), from its ``__init__`` signature: declared once."""
        params = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "layers")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("strength", "layers", *self.options()))
        return f"{type(self).__name__}({args})"

    @property
    def extra_epochs(self) -> int:
        """Epochs that ``finalise`` trains after ``TrainConfig.epochs`` (fine-tuning); 0 for most methods."""
        return int(getattr(self, "fine_tune_epochs", 0))

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
        """What to record with the run: name, strength, touched layers, every option and ``extra_epochs``.

        The options come from :meth:`options` (the ``__init__`` signature), so
        a new option is recorded without a second declaration; subclasses add
        only what is derived from the model (ranks, removed units...).
        """
        record: dict[str, Any] = {"name": self.name, "strength": self.strength}
        record["layers"] = list(self.targets(model)) if model is not None else (None if self.layers is None else list(self.layers))
        record.update({k: getattr(self, k) for k in self.options()})
        record["extra_epochs"] = self.extra_epochs
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


class Dense(Regulariser):
    """Plain training (``none``): the dense, full-rank counterpart of PROTOCOL §6.

    With ``fine_tune_epochs=k`` its ``finalise`` fine-tunes the trained model
    for ``k`` more epochs on the loop's fine-tune schedule (a fresh optimiser
    at the same lr, no penalty): the budget and schedule of a method that
    fine-tunes ``k`` epochs after training. :func:`counterpart` builds it.

    Args:
        strength: none (the method takes no strength).
        layers: accepted for uniformity; plain training touches no layer.
        fine_tune_epochs: epochs of fine-tuning after training (0: none).
    """

    def __init__(self, strength: float | None = None, *, layers: Sequence[str] | None = None, fine_tune_epochs: int = 0) -> None:
        super().__init__(strength, layers=layers)
        self.fine_tune_epochs = check_int("fine_tune_epochs", fine_tune_epochs, low=0, hint="match the method's extra_epochs")

    def finalise(self, model: nn.Module, fine_tune: Callable[[int], None]) -> None:
        if self.fine_tune_epochs > 0:
            fine_tune(self.fine_tune_epochs)


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


def counterpart(regulariser: Regulariser) -> Regulariser:
    """The dense counterpart with the same training budget as ``regulariser`` (PROTOCOL §6).

    Plain training (``none``) that, after ``TrainConfig.epochs``, fine-tunes
    for ``regulariser.extra_epochs`` epochs on the same schedule as the
    method's own fine-tune (the loop's ``fine_tune``: a fresh optimiser at the
    same lr, no penalty). Trained with the same ``TrainConfig``, it has the
    same epochs and optimiser steps as the method, so a difference between
    the two is the method's, not the extra epochs'. For a method without
    fine-tuning it is plain ``none``.

    Example:
        >>> counterpart(get("svd_truncate", 0.25))   # fine-tunes 5 epochs
        Dense(strength=None, layers=None, fine_tune_epochs=5)
    """
    return Dense(fine_tune_epochs=regulariser.extra_epochs)


def check_layers(layers: Sequence[str] | None) -> tuple[str, ...] | None:
    """``layers`` as a tuple, None kept; ValueError if it names no layer (or is a bare string)."""
    if layers is None:
        return None
    if isinstance(layers, str):
        raise ValueError(f"layers must be a list of layer names, got the string {layers!r}; write layers=[{layers!r}]")
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers must name at least one layer (e.g. ['fc1']); leave it out (None) for the method's default layers")
    return layers


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
