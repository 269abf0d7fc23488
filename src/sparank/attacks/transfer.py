"""Transfer and gradient-free cross-checks: adversaries that do not use the target model's gradient (PROTOCOL §3).

:class:`Transfer` measures a target model along directions computed on a
*source* model (Papernot et al. 2016, https://arxiv.org/abs/1605.07277): the
FGSM ray of the source (ε* of the target along it), or PGD steps driven by the
source's gradient with success judged on the target. The seed's adversary knows
the model; a transfer adversary is weaker, and one that beats the white-box
attacks on an input is a sign of gradient masking (Athalye, Carlini & Wagner
2018, https://arxiv.org/abs/1802.00420). :class:`RandomRay` is the
gradient-free step of that check: ray searches along random directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sparank.attacks.base import Bounds, Found, MinimalAttack, Norm, Progress, input_gradient, normalise
from sparank.attacks.fgsm import check_ray_settings, ray_search

KINDS = ("fgsm", "pgd")


@dataclass(frozen=True, kw_only=True)
class Transfer(MinimalAttack):
    """ε* of the measured (target) model along adversarial directions computed on ``source``.

    ``kind="fgsm"``: the source's FGSM direction for each input (true labels),
    then the target's first crossing along that ray at ``resolution`` / ``tol``,
    exactly as :class:`~sparank.attacks.fgsm.FGSM` does with the target's own
    direction (so a model transferring to itself gives its own ε*).
    ``kind="pgd"``: :func:`~sparank.attacks.pgd.pgd_minimal` with the source
    driving every step (FGSM start and gradient steps) and the target judging
    success: the smallest ε at which the source's PGD adversarial fools the target.

    ``source`` must take the same inputs and have at least as many classes as
    the labels; ``source_name`` (e.g. its run id) is what the store records.
    """

    name: ClassVar[str] = "transfer"
    white_box: ClassVar[bool] = False
    source: nn.Module = field(repr=False, compare=False)
    source_name: str = "source"
    kind: str = "fgsm"
    resolution: float = 1e-2
    tol: float = 1e-6
    steps: int = 20
    rel_stepsize: float = 0.125

    def __post_init__(self) -> None:
        if not isinstance(self.source, nn.Module):
            raise ValueError(f"source must be an nn.Module (the model the adversarial is computed on), got {type(self.source).__name__}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        check_ray_settings(self.resolution, self.tol)

    def settings(self) -> dict[str, Any]:
        """Name, kind and source name; the PGD step settings only for ``kind="pgd"``, the ray's only for ``"fgsm"``."""
        record: dict[str, Any] = {"attack": self.name, "kind": self.kind, "source": self.source_name}
        if self.kind == "fgsm":
            record.update(resolution=self.resolution, tol=self.tol)
        else:
            record.update(steps=self.steps, rel_stepsize=self.rel_stepsize, fgsm_resolution=self.resolution, fgsm_tol=self.tol)
        return record

    def run(
        self,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        *,
        bounds: Bounds,
        norm: Norm,
        eps_max: float,
        batch_size: int,
        progress: Progress | None = None,
    ) -> Found:
        was_training = self.source.training
        self.source.eval()
        try:
            if self.kind == "fgsm":
                if self.resolution > eps_max:
                    raise ValueError(f"resolution must be in (0, eps_max={eps_max}], got {self.resolution}")
                directions = normalise(input_gradient(self.source, inputs, labels, batch_size=batch_size), norm)
                return ray_search(model, inputs, labels, directions, self.resolution, self.tol, bounds, eps_max, batch_size, progress)
            from sparank.attacks.pgd import pgd_minimal

            return pgd_minimal(
                model, inputs, labels, bounds=bounds, norm=norm, eps_max=eps_max, batch_size=batch_size, progress=progress,
                steps=self.steps, rel_stepsize=self.rel_stepsize, fgsm_resolution=self.resolution, fgsm_tol=self.tol, gradient_model=self.source,
            )  # fmt: skip
        finally:
            self.source.train(was_training)


@dataclass(frozen=True, kw_only=True)
class RandomRay(MinimalAttack):
    """Gradient-free: the first crossing along ``draws`` random rays per input, the smallest kept.

    Directions are random signs (L∞) or Gaussian vectors normalised to unit L2
    length, from a ``torch.Generator`` seeded with ``seed``. It never looks at
    a gradient, so a masked gradient cannot stop it; it is weak, and an input it
    fools that every white-box attack fails on is a masking sign.
    """

    name: ClassVar[str] = "random"
    white_box: ClassVar[bool] = False
    draws: int = 8
    seed: int = 0
    resolution: float = 1e-2
    tol: float = 1e-6

    def __post_init__(self) -> None:
        if not (isinstance(self.draws, int) and self.draws >= 1):
            raise ValueError(f"draws must be an integer >= 1 (random rays per input), got {self.draws!r}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        check_ray_settings(self.resolution, self.tol)

    def run(
        self,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        *,
        bounds: Bounds,
        norm: Norm,
        eps_max: float,
        batch_size: int,
        progress: Progress | None = None,
    ) -> Found:
        if self.resolution > eps_max:
            raise ValueError(f"resolution must be in (0, eps_max={eps_max}], got {self.resolution}")
        generator = torch.Generator().manual_seed(self.seed)
        n = len(inputs)
        best_eps = torch.full((n,), math.inf, dtype=torch.float64)
        best_points = inputs.detach().clone()
        rows = 0
        for draw in range(self.draws):
            noise = torch.randn(inputs.shape, generator=generator, dtype=torch.float64).to(device=inputs.device, dtype=inputs.dtype)
            directions = normalise(noise, norm)
            tick = None if progress is None else (lambda done, _of, d=draw: progress((d * n + done) // self.draws, n))
            found = ray_search(model, inputs, labels, directions, self.resolution, self.tol, bounds, eps_max, batch_size, tick)
            rows += found.forward_rows
            better = found.found & (found.eps < best_eps)
            best_eps = torch.where(better, found.eps, best_eps)
            best_points[better.to(inputs.device)] = found.adversarials[better.to(inputs.device)]
        hit = torch.isfinite(best_eps)
        return Found(
            adversarials=best_points,
            found=hit,
            eps=best_eps,
            eps_lo=torch.zeros(n, dtype=torch.float64),
            no_direction=torch.zeros(n, dtype=torch.bool),
            forward_rows=rows,
        )
