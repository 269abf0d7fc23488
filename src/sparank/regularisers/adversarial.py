"""Adversarial training (PROTOCOL §5, the reference family): what robust looks like.

``adversarial`` replaces each training batch (or a part of it) by its FGSM
(Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572) or PGD (Madry et
al. 2018, https://arxiv.org/abs/1706.06083) perturbation of L∞ radius
``ε_train`` inside the pixel box ``[0, 1]``. It touches no layer: the model is
an ordinary dense network trained on harder inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sparank.attacks import fgsm_direction
from sparank.attacks.pgd import pgd as pgd_attack
from sparank.regularisers.base import Regulariser, check_int, check_positive

ATTACKS = ("fgsm", "pgd")
#: the pixel box every attack stays in (PROTOCOL §1)
BOUNDS = (0.0, 1.0)


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """FGSM: ``clip(x + ε · sign(∇_x CE(model(x), y)), 0, 1)``, detached; same shape as ``x``."""
    return (x + eps * fgsm_direction(model, x, y)).clamp(*BOUNDS).detach()


def pgd(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int, step_size: float, random_start: bool,
    generator: torch.Generator | None = None,
) -> Tensor:  # fmt: skip
    """L∞ PGD: ``steps`` signed-gradient ascent steps of ``step_size``, each projected onto the ε-ball around ``x`` and ``[0, 1]``.

    :func:`sparank.attacks.pgd.pgd` with ``rel_stepsize = step_size / ε`` and every input
    taking every step (``early_stop=False``: training wants the strongest point of the
    run, not the first misclassified one). With ``random_start`` the first iterate is
    uniform in the ε-ball, drawn from ``generator`` (adversarial training passes the
    run's own), or from the global torch RNG when it is None (the numbers this function
    gave before it called the attack package). Returns the detached adversarial batch.
    """
    x_adv, _ = pgd_attack(
        model, x, y, eps, norm="linf", bounds=BOUNDS, steps=steps, rel_stepsize=step_size / eps, random_start=random_start,
        generator=generator, early_stop=False,
    )  # fmt: skip
    return x_adv.detach()


class Adversarial(Regulariser):
    """FGSM or PGD adversarial training at L∞ radius ``ε_train`` (the strength).

    Per batch, the first ``n − round(clean_fraction · n)`` inputs (batches
    are shuffled) are replaced by their adversarial versions, the rest stay
    clean; ``clean_fraction=0`` (default) trains on adversarial inputs only,
    as Madry et al.; ``0.5`` is Goodfellow et al.'s equal mix of clean and
    adversarial loss. The attack runs with the model in eval mode (train mode
    restored), takes gradients with respect to the inputs only
    (:func:`sparank.attacks.fgsm_direction` uses ``torch.autograd.grad``:
    nothing leaks into the parameters' ``.grad``) and is detached.

    Options: ``attack`` ``"fgsm"`` or ``"pgd"``; for PGD, ``steps`` (default
    7), ``step_size`` (default ``2.5 · ε / steps``, Madry et al.'s choice) and
    ``random_start`` (default True), drawn from the run's generator
    (``generator``, set by the training loop).
    """

    name = "adversarial"
    summary = "FGSM or PGD adversarial training (L∞, radius ε_train): the robust reference"
    reference = "https://arxiv.org/abs/1412.6572 (FGSM), https://arxiv.org/abs/1706.06083 (PGD)"
    strength_meaning = "ε_train, the L∞ radius of the training attack in pixel units ([0, 1] images)"
    strength_range = (0.0, 1.0)
    default_strength = 0.1

    def __init__(
        self,
        strength: float | None = None,
        *,
        layers: Sequence[str] | None = None,
        attack: str = "fgsm",
        steps: int = 7,
        step_size: float | None = None,
        random_start: bool = True,
        clean_fraction: float = 0.0,
    ) -> None:
        if layers is not None:
            raise ValueError("adversarial training touches no layers (it changes the inputs); leave layers out")
        super().__init__(strength, layers=None)
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        if not (isinstance(clean_fraction, (int, float)) and 0.0 <= clean_fraction <= 1.0):
            raise ValueError(f"clean_fraction must be in [0, 1] (0 = all adversarial), got {clean_fraction!r}")
        self.attack = attack
        self.steps = check_int("steps", steps, low=1, hint="PGD iterations, e.g. 7")
        self.step_size = None if step_size is None else check_positive("step_size", step_size, hint="or None for 2.5·ε/steps")
        self.random_start = bool(random_start)
        self.clean_fraction = float(clean_fraction)

    @property
    def pgd_step_size(self) -> float:
        """The PGD step: ``step_size`` if given, else ``2.5 · ε / steps``."""
        assert self.strength is not None  # check_strength always sets it for a method with a strength
        return self.step_size if self.step_size is not None else 2.5 * self.strength / self.steps

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        """No layer: adversarial training changes the inputs, not the weights."""
        return {}

    def config(self, model: nn.Module | None = None) -> dict[str, Any]:
        """The base record, with PGD's options only for PGD (``step_size`` resolved) and none of them for FGSM."""
        record = super().config(model)
        for pgd_only in ("steps", "step_size", "random_start"):
            del record[pgd_only]
        if self.attack == "pgd":
            record.update(steps=self.steps, step_size=self.pgd_step_size, random_start=self.random_start)
        return record

    def inputs(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``x`` with its first ``n − round(clean_fraction·n)`` rows replaced by adversarial inputs, shape ``(N, ...)``."""
        assert self.strength is not None  # check_strength always sets it for a method with a strength
        n_adv = len(x) - round(self.clean_fraction * len(x))
        if self.strength == 0.0 or n_adv == 0:
            return x
        was_training = model.training
        model.eval()
        try:
            if self.attack == "fgsm":
                x_adv = fgsm(model, x[:n_adv], y[:n_adv], self.strength)
            else:
                x_adv = pgd(
                    model, x[:n_adv], y[:n_adv], self.strength,
                    steps=self.steps, step_size=self.pgd_step_size, random_start=self.random_start, generator=self.generator,
                )  # fmt: skip
        finally:
            model.train(was_training)
        return torch.cat([x_adv, x[n_adv:]]) if n_adv < len(x) else x_adv


#: the classes this module registers, in the order `sparank regularisers` lists them
METHODS: tuple[type[Regulariser], ...] = (Adversarial,)
