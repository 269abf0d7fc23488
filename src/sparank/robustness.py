"""Per-input ε* and the global measures of PROTOCOL §2.

:func:`fgsm_robustness` is the headline measure: for every input, the first
ε along the FGSM ray at which the model stops predicting the true label, as
a verified bracket ``[eps_lo, eps_hi]``. :class:`RobustnessResult` holds the
brackets and statuses; :meth:`RobustnessResult.summary` gives the AUC of the
robust-accuracy curve, quantiles of ε* and the censored fraction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
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
    model_device,
    verify_points,
)
from sparank.attacks.base import CleanPass, Found, MinimalAttack, _evaluate, ball_tolerance, distances, input_gradient, normalise
from sparank.attacks.fgsm import FGSM

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
    attack: str = "fgsm"  # the attack measured (RobustnessResult.attack)
    rejected: int = 0  # adversarials the attack claimed that the re-check refused (counted as not fooled)

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
    """Per-input results of one attack: a verified adversarial distance ``eps_hi`` (ε*), or why there is none.

    For a fooled input a verified adversarial lies within ``eps_hi`` of it
    (re-checked by a forward pass: misclassified in any batching, inside the
    box and inside the ``eps_hi`` ball up to :func:`~sparank.attacks.base.ball_tolerance`).
    For the FGSM ray, ``x(eps_hi)`` is that adversarial, every scanned point at
    or below ``eps_lo`` is classified correctly (every point, proved, where
    ``certified`` is True), and ``eps_hi - eps_lo <= tol``;
    for other attacks ``eps_lo`` is the largest radius the attack tried and
    failed at (not a proof). Clean-wrong inputs have ``eps_lo = eps_hi = 0``;
    censored (nothing found up to ``eps_max``) and no-direction ones ``eps_hi = inf``.
    """

    eps_lo: Tensor  # (N,) float64
    eps_hi: Tensor  # (N,) float64; ε* = eps_hi
    status: Tensor  # (N,) int64, values of Status
    labels: Tensor  # (N,) int64, the true labels used
    directions: Tensor | None  # (N, *input_shape), the ray directions d of a ray attack (zero for clean-wrong inputs); else None
    norm: str
    eps_max: float
    resolution: float  # the FGSM scan step h; 0 for attacks without one
    tol: float  # the bracket width of a ray search; 0 for attacks without one
    attack: str = "fgsm"  # which attack measured it (its settings: ``settings``)
    settings: dict[str, Any] = field(default_factory=dict, repr=False)  # the attack's name and settings, as stored
    # ||x_adv − x|| of the verified adversarial (float64, <= eps_hi up to the ball tolerance): 0 clean-wrong, inf none
    distance: Tensor | None = field(default=None, repr=False)
    adversarials: Tensor | None = field(default=None, repr=False)  # (N, *shape) where asked: x_adv if fooled, else x
    rejected: int = 0  # adversarials the attack claimed that the re-check refused (counted as not found)
    forward_rows: int = 0  # rows passed through the model (cost)
    # (N,) bool where certification was asked (FGSM(certify=True)): True where the result is proved (every ε in
    # [0, eps_lo] classified y by bounds over the ray, sparank.certify; clean-wrong inputs need no proof),
    # False where it is the scan's at ``resolution``; None where not asked
    certified: Tensor | None = field(default=None, repr=False)
    bound_passes: int = 0  # bound passes over ray segments (certification cost)

    @property
    def eps_star(self) -> Tensor:
        """ε* per input: eps_hi (0 for clean-wrong, inf for censored)."""
        return self.eps_hi

    def __len__(self) -> int:
        return len(self.status)

    def first(self, k: int) -> RobustnessResult:
        """This result on its first ``k`` inputs (copies; per-input values do not depend on the other inputs)."""

        def head(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:k].clone()

        return replace(
            self, eps_lo=self.eps_lo[:k].clone(), eps_hi=self.eps_hi[:k].clone(), status=self.status[:k].clone(),
            labels=self.labels[:k].clone(), directions=head(self.directions), distance=head(self.distance),
            adversarials=head(self.adversarials), certified=head(self.certified),
        )  # fmt: skip

    def lean(self) -> RobustnessResult:
        """This result without its per-input directions and adversarial points (what a store keeps of it)."""
        return replace(self, directions=None, adversarials=None)

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
            attack=self.attack,
            rejected=self.rejected,
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
    certify: bool = False,
    fast: bool = False,
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
        certify: also prove the first crossing (:mod:`sparank.certify`): where the proof
            succeeds every ε in ``[0, eps_lo]`` is classified ``y``, not only the scanned
            points; ``result.certified`` says per input whether it did.
        fast: scan a faster copy of the model (:func:`sparank.attacks.fgsm.fast_copy`), then check
            every bracket on the model as given (an explicit opt-in, PROTOCOL §2).

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
    attack = FGSM(resolution=resolution, tol=tol, certify=certify, fast=fast)
    check_model_dtype(model, inputs)
    device = model_device(model, inputs.device)
    was_training = model.training
    model.eval()
    try:  # the direction of every input, clean-wrong ones too (as before the attack protocol), in one pass
        clean = attack.clean_pass(model, inputs.detach().to(device), labels.detach().to(device=device, dtype=torch.int64), norm=norm, batch_size=batch_size)
    finally:
        model.train(was_training)
    result = measure(attack, model, inputs, labels, bounds=box, norm=norm, eps_max=eps_max, batch_size=batch_size, progress=progress, clean=clean)
    wrong = result.status == int(CLEAN_WRONG)
    if bool(wrong.any()) and result.directions is not None:
        result.directions[wrong] = clean.data["directions"][wrong.to(device)].cpu()
    return result


#: how many times an adversarial that the re-check refuses (its margin within the noise: an attack that
#: stops on the boundary) is pushed further out along its own perturbation, by 1e-4·2^k of it, before it is dropped
PUSH_ROUNDS = 14


def measure(
    attack: MinimalAttack,
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    bounds: Bounds | tuple[float, float] = (0.0, 1.0),
    norm: Norm = "linf",
    eps_max: float = 0.5,
    batch_size: int = 256,
    keep_adversarials: bool = False,
    progress: Progress | None = None,
    clean: CleanPass | None = None,
) -> RobustnessResult:
    """Run a minimisation attack on every input and verify what it found: the one convention of every measure.

    Inputs the model misclassifies at ε = 0 are ``CLEAN_WRONG`` (ε* = 0, never
    attacked). The others go to ``attack.run``; each adversarial it claims is
    re-checked with a fresh forward pass: inside the box, inside its claimed
    ``norm`` ball up to :func:`~sparank.attacks.base.ball_tolerance`, and
    misclassified beyond floating-point noise in any batching
    (:func:`~sparank.attacks.base.verify_points`; a point the attack already
    had accepted by that same check on this model, as the FGSM ray search
    does with every bracket it returns, ``Found.verified``, is not evaluated
    twice, but its box and ball are checked here all the same). A claim whose margin is
    within the noise (an attack that stops on the boundary) is pushed out
    along its own perturbation, ``PUSH_ROUNDS`` times at most; a claim that
    still fails is dropped (``rejected``) and the input counts as not fooled.

    Args:
        attack: e.g. ``FGSM(resolution=1e-2)``, ``PGD()``, ``FMN()``, ``DeepFool()``.
        model: maps ``(N, *shape)`` to logits ``(N, K)``; evaluated in eval mode (its mode is
            restored); its parameters get no gradients.
        inputs: ``(N, *shape)`` in ``bounds``; never modified. ``labels``: ``(N,)`` true labels.
        norm: ``"linf"`` or ``"l2"``: the distance every result is measured in.
        eps_max: the largest distance reported; inputs not fooled within it are ``CENSORED``.
        batch_size: rows per forward pass.
        keep_adversarials: also return the verified adversarials (``x`` itself where none).
        progress: called as ``progress(resolved, total)``.
        clean: the attack's :meth:`~sparank.attacks.base.MinimalAttack.clean_pass` over these inputs, where the caller
            made it already (the measure otherwise asks the attack for it).

    Returns:
        :class:`RobustnessResult` on the CPU, with ``attack`` and its ``settings``.
    """
    check_norm(norm)
    if not (isinstance(eps_max, int | float) and math.isfinite(eps_max) and eps_max > 0):
        raise ValueError(f"eps_max must be a positive number, got {eps_max}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(attack, MinimalAttack):
        raise ValueError(f"attack must be an attack object such as FGSM() or PGD(), got {type(attack).__name__}")
    inputs, labels = as_tensor(inputs, "inputs"), as_tensor(labels, "labels")
    box = check_inputs(inputs, labels, bounds)
    check_model_dtype(model, inputs)
    device = model_device(model, inputs.device)
    x = inputs.detach().to(device)
    y = labels.detach().to(device=device, dtype=torch.int64)
    n = len(x)
    status = torch.full((n,), int(CENSORED), dtype=torch.int64)
    eps_lo = torch.full((n,), float(eps_max), dtype=torch.float64)
    eps_hi = torch.full((n,), math.inf, dtype=torch.float64)
    distance = torch.full((n,), math.inf, dtype=torch.float64)
    adversarials = x.clone() if keep_adversarials else None
    directions: Tensor | None = None
    rejected = 0
    was_training = model.training
    model.eval()
    try:
        if clean is None:  # the attack's own first pass, where it makes one, says which inputs are misclassified
            clean = attack.clean_pass(model, x, y, norm=norm, batch_size=batch_size)
        if clean is None:
            _, _, wrong = _evaluate(model, x, y, torch.arange(n, device=device), batch_size)
        else:
            wrong = clean.wrong
        wrong = wrong.cpu()
        status[wrong], eps_lo[wrong], eps_hi[wrong], distance[wrong] = int(CLEAN_WRONG), 0.0, 0.0, 0.0
        correct = torch.nonzero(~wrong).squeeze(1)
        offset = int(wrong.sum())
        if progress is not None:
            progress(offset, n)
        tick = None if progress is None else (lambda done, _of: progress(offset + done, n))
        given = {} if clean is None else {"clean": clean.take(correct.to(device))}
        found = attack.run(
            model, x[correct], y[correct], bounds=box, norm=norm, eps_max=float(eps_max), batch_size=batch_size, progress=tick, **given
        )
        ok, eps, dist, points, rejected = _verified(model, x[correct], y[correct], found, box, norm, float(eps_max), batch_size)
        refine = int(getattr(attack, "refine", 0))
        if refine and bool(ok.any()):
            eps, dist, points = _refine_on_segment(model, x[correct], y[correct], points, ok, eps, dist, box, norm, refine, batch_size)
    finally:
        model.train(was_training)
    c = correct.cpu()
    status[c] = torch.where(ok, int(FOOLED), torch.where(found.no_direction.cpu(), int(NO_DIRECTION), int(CENSORED)))
    eps_hi[c] = torch.where(ok, eps, math.inf)
    eps_lo[c] = torch.minimum(found.eps_lo.cpu().double(), torch.where(ok, eps, float(eps_max)))
    distance[c] = torch.where(ok, dist, math.inf)
    if adversarials is not None:
        adversarials[correct[ok.to(device)]] = points[ok.to(device)]
    certified: Tensor | None = None
    if found.certified is not None:  # a refused claim is not certified; clean-wrong inputs (ε* = 0) need no proof
        certified = torch.ones(n, dtype=torch.bool)
        certified[c] = found.certified.cpu() & (ok | ~found.found.cpu())
    if found.directions is not None:
        directions = torch.zeros_like(x)
        directions[correct] = found.directions
    if progress is not None:
        progress(n, n)
    settings = attack.settings()
    return RobustnessResult(
        eps_lo=eps_lo,
        eps_hi=eps_hi,
        status=status,
        labels=y.cpu(),
        directions=None if directions is None else directions.detach().cpu(),
        norm=norm,
        eps_max=float(eps_max),
        resolution=float(settings.get("resolution", 0.0)),
        tol=float(settings.get("tol", 0.0)),
        attack=attack.name,
        settings=settings,
        distance=distance,
        adversarials=None if adversarials is None else adversarials.detach().cpu(),
        rejected=rejected,
        forward_rows=found.forward_rows + n,
        certified=certified,
        bound_passes=found.bound_passes,
    )


def _refine_on_segment(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    points: Tensor,
    ok: Tensor,
    eps: Tensor,
    dist: Tensor,
    box: Bounds,
    norm: Norm,
    steps: int,
    batch_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pull each verified adversarial back along its segment from ``x``: ``steps`` bisections of ``t`` in ``x + t·(x_adv − x)``.

    ``t = 1`` is the verified adversarial and ``t = 0`` the correctly classified
    input; each step keeps the upper end misclassified beyond the noise
    (``margin < −δ``), so the end is a point at most ``2^−steps`` of the segment
    past a boundary crossing on it (not necessarily the first). The box is
    convex, so every point stays in it. The new point replaces the old one only
    if :func:`verify_points` accepts it; its distance is then the new radius.
    Returns the radii, distances and points of all rows (unchanged where not refined).
    """
    device = x.device
    idx = torch.nonzero(ok.to(device)).squeeze(1)
    base, delta = x[idx].double(), (points[idx].double() - x[idx].double())
    lo = torch.zeros(len(idx), dtype=torch.float64, device=device)
    hi = torch.ones(len(idx), dtype=torch.float64, device=device)
    shape = (-1,) + (1,) * (x.ndim - 1)

    def at(t: Tensor) -> Tensor:
        return (base + t.view(shape) * delta).to(x.dtype).clamp(box.lo, box.hi)

    for _ in range(steps):
        mid = (lo + hi) / 2
        margin, floor, _ = _evaluate(model, at(mid), y[idx], idx, batch_size)
        wrong = margin < -floor
        hi = torch.where(wrong, mid, hi)
        lo = torch.where(wrong, lo, mid)
    moved = hi < 1.0
    candidates = at(hi)
    accepted, _, _ = verify_points(model, candidates, y[idx], idx, batch_size)
    better = moved & accepted
    new_dist = distances(candidates, x[idx], norm)
    better &= new_dist < dist[idx.cpu()].to(device)
    take = idx[better]
    points = points.clone()
    points[take] = candidates[better]
    dist, eps = dist.clone(), eps.clone()
    dist[take.cpu()] = new_dist[better].cpu()
    eps[take.cpu()] = torch.minimum(eps[take.cpu()], new_dist[better].cpu())
    return eps, dist, points


def _verified(
    model: nn.Module, x: Tensor, y: Tensor, found: Found, box: Bounds, norm: Norm, eps_max: float, batch_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Re-check an attack's claims; returns (verified ``(M,)``, radius ``(M,)``, distance ``(M,)``, points, rejected).

    A claim is checked if it is within ``eps_max``; it is verified if its point lies in the box, in
    its ball (``distance <= radius + ball_tolerance``) and :func:`verify_points` accepts it (or accepted
    it already during the attack: ``found.verified``).
    """
    m = len(x)
    device = x.device
    points = found.adversarials.detach().to(device=device, dtype=x.dtype)  # copied before a push moves any (below)
    radius = found.eps.detach().to(device=device, dtype=torch.float64).clone()
    claimed = found.found.to(device) & (radius <= eps_max)
    slack = ball_tolerance(x.dtype, box, eps_max, norm, x[0].numel() if m else 1)
    ok = torch.zeros(m, dtype=torch.bool, device=device)
    todo = torch.nonzero(claimed).squeeze(1)
    dist_all = distances(points, x, norm)
    delta: Tensor | None = None
    # points the attack already had accepted by verify_points on this model: the same check is not run twice
    done = torch.zeros(m, dtype=torch.bool, device=device) if found.verified is None else found.verified.to(device)
    for k in range(PUSH_ROUNDS + 1):
        if not len(todo):
            break
        if k:  # push the refused ones out along their own perturbation
            if delta is None:
                points = points.clone()  # the attack's own tensor is left as it is
                delta = points - x
            scale = 1.0 + 1e-4 * 2.0 ** (k - 1)
            points[todo] = (x[todo] + scale * delta[todo]).clamp(box.lo, box.hi)
            dist_all[todo] = distances(points[todo], x[todo], norm)
            radius[todo] = torch.maximum(radius[todo], dist_all[todo])
        dist = dist_all[todo]
        held = points if len(todo) == m else points[todo]
        inside = (held >= box.lo).flatten(1).all(dim=1) & (held <= box.hi).flatten(1).all(dim=1)
        inside &= (dist <= radius[todo] + slack) & (radius[todo] <= eps_max)
        accepted = done[todo] if k == 0 else torch.zeros(len(todo), dtype=torch.bool, device=device)
        check = torch.nonzero(~accepted).squeeze(1)
        if len(check):
            accepted[check], _, _ = verify_points(model, points[todo[check]], y[todo[check]], todo[check], batch_size)
        good = inside & accepted
        ok[todo[good]] = True
        # only a claim in its box and ball that is not misclassified beyond the noise is pushed further
        todo = todo[inside & ~accepted]
    rejected = int((claimed & ~ok).sum())
    return ok.cpu(), radius.cpu(), dist_all.cpu(), points, rejected


def best_of(results: Sequence[RobustnessResult]) -> RobustnessResult:
    """Best ε* (PROTOCOL §3): per input, the smallest verified adversarial distance over the attacks run.

    Every input's best ε* is an upper bound on its true minimal adversarial
    perturbation (each attack's adversarial was verified by :func:`measure`),
    and at most each attack's own ε*. The results must be of the same inputs
    (labels), norm and ε_max. ``eps_lo`` is 0 for fooled inputs (no attack
    proves a lower bound); the adversarial kept is the winning attack's, where
    every result carries adversarials.

    Returns:
        A :class:`RobustnessResult` with ``attack="best"`` and ``settings["of"]`` the settings of each result.
    """
    if not results:
        raise ValueError("best_of needs at least one result")
    first = results[0]
    for r in results[1:]:
        if len(r) != len(first) or not torch.equal(r.labels, first.labels):
            raise ValueError("best_of needs results of the same inputs: their lengths or labels differ")
        if r.norm != first.norm or r.eps_max != first.eps_max:
            raise ValueError(f"best_of needs one norm and eps_max; got {first.norm}/{first.eps_max:g} and {r.norm}/{r.eps_max:g}")
    # each attack's verified radius: its distance, or its claimed ε where rounding put the distance a hair above it
    dist = torch.stack([(r.eps_hi if r.distance is None else torch.minimum(r.distance, r.eps_hi)).double() for r in results])
    fooled = torch.stack([r.status == int(FOOLED) for r in results])
    dist = torch.where(fooled, dist, math.inf)
    best, winner = dist.min(dim=0)
    clean_wrong = first.status == int(CLEAN_WRONG)
    no_direction = torch.stack([r.status == int(NO_DIRECTION) for r in results]).all(dim=0)
    hit = torch.isfinite(best) & ~clean_wrong
    status = torch.where(
        clean_wrong, int(CLEAN_WRONG), torch.where(hit, int(FOOLED), torch.where(no_direction, int(NO_DIRECTION), int(CENSORED)))
    )
    eps_hi = torch.where(clean_wrong, 0.0, best)
    eps_lo = torch.where(hit | clean_wrong, 0.0, first.eps_max)
    adversarials = None
    if all(r.adversarials is not None for r in results):
        stacked = torch.stack([r.adversarials for r in results])  # type: ignore[misc]
        adversarials = stacked[winner, torch.arange(len(first))]
    return RobustnessResult(
        eps_lo=eps_lo.double(),
        eps_hi=eps_hi.double(),
        status=status.long(),
        labels=first.labels,
        directions=None,
        norm=first.norm,
        eps_max=first.eps_max,
        resolution=0.0,
        tol=0.0,
        attack="best",
        settings={"attack": "best", "of": [r.settings or {"attack": r.attack} for r in results]},
        distance=eps_hi.double(),
        adversarials=adversarials,
    )


#: What raises each gradient-masking flag (README "Gradient masking"): a flag is a reason to distrust a
#: white-box result on that model, not a proof of masking.
MASKING_THRESHOLDS = {
    "gradient": 0.01,  # more than 1 % of correct inputs have a zero or non-finite input gradient
    "transfer_beats_white_box": 0.0,  # any input fooled by a transfer or random ray that every white-box attack failed on
    "unbounded": 1.0,  # the strongest attack fools less than 100 % of correct inputs with the whole box as budget
    "fgsm_beats_pgd": 0.0,  # any input where FGSM's ε* is below PGD's found ε (PGD starts from FGSM: a broken attack)
}


@dataclass(frozen=True)
class MaskingFlags:
    """Signs that a model's input gradients mislead gradient attacks (PROTOCOL §3), over its correctly classified inputs.

    Athalye, Carlini & Wagner 2018 (https://arxiv.org/abs/1802.00420) and
    AutoAttack's checks (Croce & Hein 2020, https://arxiv.org/abs/2003.01690).
    A fraction is ``None`` where the attacks it needs were not run.
    """

    n_correct: int
    zero_gradient_fraction: float  # input gradient exactly 0
    nonfinite_gradient_fraction: float  # input gradient NaN or inf
    beaten_fraction: float | None  # fooled by a non-white-box attack (transfer, random) and by no white-box one
    unbounded_budget: float | None  # the budget of the unbounded check (hi − lo in L∞; that times √d in L2)
    unbounded_success: float | None  # fraction fooled (verified) by PGD at that budget
    fgsm_beats_pgd_fraction: float | None  # both fooled and FGSM's ε* below PGD's by more than the searches' tolerance
    flags: dict[str, bool]  # per check of MASKING_THRESHOLDS: raised or not (absent where not computed)

    @property
    def masked(self) -> bool:
        """Any flag raised."""
        return any(self.flags.values())

    def to_dict(self) -> dict[str, Any]:
        return jsonable({**asdict(self), "masked": self.masked})


def masking_flags(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    results: Sequence[RobustnessResult] = (),
    *,
    bounds: Bounds | tuple[float, float] = (0.0, 1.0),
    norm: Norm = "linf",
    batch_size: int = 256,
    unbounded: bool = True,
    unbounded_steps: int = 50,
) -> MaskingFlags:
    """The gradient-masking flags of one model on one set of inputs (README "Gradient masking").

    Args:
        results: measurements of these inputs by several attacks (:func:`measure`); the checks
            that compare attacks use those present: white-box (FGSM, PGD, FMN, DeepFool) against
            the others (transfer, random), and FGSM against PGD.
        unbounded: also run PGD (``unbounded_steps`` steps from the FGSM corner) with the whole box as
            budget: every correct input must then be fooled.

    Returns:
        :class:`MaskingFlags`; ``flags`` says which checks were raised.
    """
    from sparank.attacks.pgd import pgd

    check_norm(norm)
    inputs, labels = as_tensor(inputs, "inputs"), as_tensor(labels, "labels")
    box = check_inputs(inputs, labels, bounds)
    check_model_dtype(model, inputs)
    device = model_device(model, inputs.device)
    x = inputs.detach().to(device)
    y = labels.detach().to(device=device, dtype=torch.int64)
    for r in results:
        if len(r) != len(x) or not torch.equal(r.labels, y.cpu()):
            raise ValueError("masking_flags needs results of these inputs: a result's length or labels differ")
    was_training = model.training
    model.eval()
    try:
        _, _, wrong = _evaluate(model, x, y, torch.arange(len(x), device=device), batch_size)
        correct = torch.nonzero(~wrong).squeeze(1)
        xc, yc = x[correct], y[correct]
        grad = input_gradient(model, xc, yc, batch_size=batch_size, check=False).flatten(1)
        nonfinite = ~torch.isfinite(grad).all(dim=1)
        zero = ~nonfinite & (grad == 0).all(dim=1)
        budget: float | None = None
        success: float | None = None
        if unbounded and len(xc):
            budget = (box.hi - box.lo) * (1.0 if norm == "linf" else math.sqrt(xc[0].numel()))
            eps = torch.full((len(xc),), budget, dtype=torch.float64)
            start = (xc + budget * normalise(torch.where(torch.isfinite(grad), grad, 0.0).view_as(xc), norm)).clamp(box.lo, box.hi)
            adv, _ = pgd(model, xc, yc, eps, norm=norm, bounds=box, steps=unbounded_steps, rel_stepsize=2.5 / unbounded_steps, start=start)
            ok, _, _ = verify_points(model, adv, yc, correct, batch_size)
            success = float(ok.double().mean())
    finally:
        model.train(was_training)
    m = len(correct)
    c = correct.cpu()
    flags: dict[str, bool] = {}
    frac = lambda mask: float(mask.double().mean()) if m else 0.0
    zero_f, nonfinite_f = frac(zero), frac(nonfinite)
    flags["gradient"] = zero_f + nonfinite_f > MASKING_THRESHOLDS["gradient"]
    beaten: float | None = None
    white = [r for r in results if _is_white_box(r.attack)]
    other = [r for r in results if r.attack != "best" and not _is_white_box(r.attack)]
    if white and other:
        white_hit = torch.stack([r.status[c] == int(FOOLED) for r in white]).any(dim=0)
        other_hit = torch.stack([r.status[c] == int(FOOLED) for r in other]).any(dim=0)
        beaten = frac(other_hit & ~white_hit)
        flags["transfer_beats_white_box"] = beaten > MASKING_THRESHOLDS["transfer_beats_white_box"]
    if success is not None:
        flags["unbounded"] = success < MASKING_THRESHOLDS["unbounded"]
    fgsm_beats: float | None = None
    fgsm = next((r for r in results if r.attack == "fgsm"), None)
    pgd_result = next((r for r in results if r.attack == "pgd"), None)
    if fgsm is not None and pgd_result is not None:
        both = (fgsm.status[c] == int(FOOLED)) & (pgd_result.status[c] == int(FOOLED))
        slack = max(fgsm.tol, 1e-9 * fgsm.eps_max)
        fgsm_beats = frac(both & (fgsm.eps_hi[c] < pgd_result.eps_hi[c] - slack))
        flags["fgsm_beats_pgd"] = fgsm_beats > MASKING_THRESHOLDS["fgsm_beats_pgd"]
    return MaskingFlags(
        n_correct=m,
        zero_gradient_fraction=zero_f,
        nonfinite_gradient_fraction=nonfinite_f,
        beaten_fraction=beaten,
        unbounded_budget=budget,
        unbounded_success=success,
        fgsm_beats_pgd_fraction=fgsm_beats,
        flags=flags,
    )


def _is_white_box(attack: str) -> bool:
    from sparank.attacks import ATTACKS

    cls = ATTACKS.get(attack)
    return bool(cls is not None and cls.white_box)
