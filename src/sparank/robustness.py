"""Per-input ε* and the global measures of PROTOCOL §2.

:func:`fgsm_robustness` is the headline measure: for every input, the first
ε along the FGSM ray at which the model stops predicting the true label, as
a verified bracket ``[eps_lo, eps_hi]``. :class:`RobustnessResult` holds the
brackets and statuses; :meth:`RobustnessResult.summary` gives the AUC of the
robust-accuracy curve, quantiles of ε* and the censored fraction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sparank.attacks import (
    Bounds,
    Norm,
    Progress,
    Status,
    as_tensor,
    check_inputs,
    check_model_dtype,
    check_norm,
    check_tol,
    fgsm_direction,
    first_crossing,
    model_device,
)

QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90)


FOOLED, CLEAN_WRONG, CENSORED, NO_DIRECTION = Status.FOOLED, Status.CLEAN_WRONG, Status.CENSORED, Status.NO_DIRECTION


@dataclass(frozen=True)
class Summary:
    """Global robustness over an evaluation set (PROTOCOL §2)."""

    n: int
    norm: str
    eps_max: float
    clean_accuracy: float
    fooled_fraction: float
    clean_wrong_fraction: float
    censored_fraction: float
    # correct at ε = 0 with an exactly zero FGSM direction: the ray does not move, so these count as
    # ε* > eps_max in the AUC and quantiles, like censored ones, but are counted apart (a masking sign)
    no_direction_fraction: float
    auc: float  # ∫_0^eps_max A(ε) dε = mean(min(ε*, eps_max)); at most eps_max
    auc_normalised: float  # auc / eps_max, in [0, 1]
    # quantiles of ε* over correctly classified inputs (inverted-CDF, no interpolation);
    # inf means the quantile lies beyond eps_max (censored); None if no input is correct
    quantiles: dict[str, float | None]
    curve_eps: list[float] = field(repr=False)
    curve_accuracy: list[float] = field(repr=False)

    @property
    def median(self) -> float | None:
        return self.quantiles["50"]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (inf becomes the string 'inf')."""
        return jsonable(asdict(self))


def jsonable(value: Any) -> Any:
    """``value`` ready for strict JSON: tuples as lists, numpy/torch scalars as numbers, paths as strings,
    and non-finite floats as the strings ``"inf"``, ``"-inf"``, ``"nan"`` (the convention of every stored record)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic) or (isinstance(value, Tensor) and value.numel() == 1):
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


@dataclass(frozen=True)
class RobustnessResult:
    """Per-input verified brackets of ε* along the FGSM ray.

    For a fooled input, ``x(eps_hi)`` is misclassified (re-checked by a forward
    pass), every scanned point at or below ``eps_lo`` is classified correctly,
    and ``eps_hi - eps_lo <= tol``. Clean-wrong inputs have
    ``eps_lo = eps_hi = 0``; censored and no-direction ones ``eps_lo = eps_max, eps_hi = inf``.
    """

    eps_lo: Tensor  # (N,) float64
    eps_hi: Tensor  # (N,) float64; ε* = eps_hi
    status: Tensor  # (N,) int64, values of Status
    labels: Tensor  # (N,) int64, the true labels used
    directions: Tensor  # (N, *input_shape), the ray directions d (float32)
    norm: str
    eps_max: float
    resolution: float
    tol: float

    @property
    def eps_star(self) -> Tensor:
        """ε* per input: eps_hi (0 for clean-wrong, inf for censored)."""
        return self.eps_hi

    def __len__(self) -> int:
        return len(self.status)

    def robust_accuracy(self, eps: Tensor | float) -> Tensor:
        """A(ε): the fraction of inputs with ε* > ε, for each ε given (ε in [0, eps_max])."""
        eps_t = torch.as_tensor(eps, dtype=torch.float64).reshape(-1)
        return (self.eps_hi[None, :] > eps_t[:, None]).double().mean(dim=1)

    def summary(self, *, curve_points: int = 101) -> Summary:
        """AUC, quantiles of ε* over correctly classified inputs, fractions and the robust-accuracy curve."""
        n = len(self)
        status = self.status
        capped = torch.clamp(self.eps_hi, max=self.eps_max)
        auc = float(capped.mean()) if n else float("nan")
        correct = status != CLEAN_WRONG
        eps_correct = self.eps_hi[correct].numpy()
        quantiles: dict[str, float | None] = {}
        for q in QUANTILES:
            key = f"{round(q * 100)}"
            if eps_correct.size == 0:
                quantiles[key] = None
            else:
                quantiles[key] = float(np.quantile(eps_correct, q, method="inverted_cdf"))
        grid = torch.linspace(0.0, self.eps_max, curve_points, dtype=torch.float64)
        return Summary(
            n=n,
            norm=self.norm,
            eps_max=self.eps_max,
            clean_accuracy=float(correct.double().mean()) if n else float("nan"),
            fooled_fraction=float((status == FOOLED).double().mean()) if n else float("nan"),
            clean_wrong_fraction=float((status == CLEAN_WRONG).double().mean()) if n else float("nan"),
            censored_fraction=float((status == CENSORED).double().mean()) if n else float("nan"),
            no_direction_fraction=float((status == NO_DIRECTION).double().mean()) if n else float("nan"),
            auc=auc,
            auc_normalised=auc / self.eps_max if n else float("nan"),
            quantiles=quantiles,
            curve_eps=grid.tolist(),
            curve_accuracy=self.robust_accuracy(grid).tolist() if n else [],
        )


def check_measure_args(*, norm: str, eps_max: float, resolution: float, tol: float, batch_size: int) -> None:
    """Validate the settings of the measure; ValueError names the parameter and the fix."""
    check_norm(norm)
    if not (math.isfinite(eps_max) and eps_max > 0):
        raise ValueError(f"eps_max must be a positive number, got {eps_max}")
    if not (resolution > 0 and resolution <= eps_max):
        raise ValueError(f"resolution must be in (0, eps_max={eps_max}], got {resolution}")
    if not tol >= 1e-12:
        raise ValueError(f"tol must be at least 1e-12 (float64 brackets), got {tol}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def fgsm_robustness(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    bounds: Bounds | tuple[float, float] = (0.0, 1.0),
    norm: Norm = "linf",
    eps_max: float = 0.5,
    resolution: float = 1e-2,
    tol: float = 1e-6,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> RobustnessResult:
    """ε* along the FGSM ray for every input, as verified brackets (PROTOCOL §2).

    One forward and backward pass gives the direction ``d`` (sign of the
    input-gradient of cross-entropy at the true label, or its L2-normalised
    form); the ray ``clip(x + ε·d, *bounds)`` is scanned at ``resolution`` for
    the first misclassified point (``eps_max`` itself is tried) and that
    bracket refined to ``tol``.

    Args:
        model: any ``nn.Module`` mapping ``(N, *shape)`` to logits ``(N, K)``; it is
            evaluated in eval mode and its mode restored; its parameters get no gradients.
        inputs: ``(N, *shape)`` in ``bounds``; never modified.
        labels: ``(N,)`` true labels (not the model's predictions).
        bounds: the input box ``(lo, hi)``.
        norm: ``"linf"`` (sign of the gradient) or ``"l2"`` (normalised gradient).
        eps_max: the largest ε tried; inputs still correct there are censored.
        resolution: scan step ``h``: a misclassified stretch of the ray shorter than ``h``
            can be stepped over, so the result is the first crossing at that resolution.
        tol: width of the returned brackets; at least what the inputs' dtype resolves at
            ``eps_max`` (:func:`sparank.attacks.min_tol`: about 2.4e-7 for float32 pixels).
        batch_size: rows per forward pass (memory).
        progress: called as ``progress(resolved, total)`` while inputs are resolved.

    Returns:
        :class:`RobustnessResult` on the CPU. Every returned ``x(eps_hi)`` is misclassified
        beyond floating-point noise, so it stays misclassified however the model is batched
        (see :func:`sparank.attacks.first_crossing`).

    Raises:
        ValueError: bad settings or inputs, a model whose output is not ``(N, K)`` logits or whose
            dtype differs from the inputs', labels outside the model's classes, or non-finite
            logits or gradients (the inputs are named).

    Example:
        >>> result = fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-2)
        >>> result.summary().auc
    """
    check_measure_args(norm=norm, eps_max=eps_max, resolution=resolution, tol=tol, batch_size=batch_size)
    inputs, labels = as_tensor(inputs, "inputs"), as_tensor(labels, "labels")
    box = check_inputs(inputs, labels, bounds)
    check_tol(tol, inputs.dtype, box, eps_max)
    check_model_dtype(model, inputs)
    device = model_device(model, inputs.device)
    x = inputs.detach().to(device)
    y = labels.detach().to(device=device, dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        directions = fgsm_direction(model, x, y, norm=norm, batch_size=batch_size)
        crossing = first_crossing(
            model,
            x,
            y,
            directions,
            bounds=box,
            eps_max=eps_max,
            resolution=resolution,
            tol=tol,
            batch_size=batch_size,
            progress=progress,
        )
    finally:
        model.train(was_training)
    return RobustnessResult(
        eps_lo=crossing.eps_lo,
        eps_hi=crossing.eps_hi,
        status=crossing.status,
        labels=y.cpu(),
        directions=directions.detach().cpu(),
        norm=norm,
        eps_max=float(eps_max),
        resolution=float(resolution),
        tol=float(tol),
    )
