"""The FGSM direction and the search for the first misclassified point along its ray (PROTOCOL §2).

For an input ``x`` with label ``y`` the FGSM ray is
``x(ε) = clip(x + ε·d, lo, hi)`` with ``d = sign(∇_x CE(f(x), y))`` (L∞) or
``d = g / ||g||_2`` (L2) (Goodfellow, Shlens & Szegedy 2015,
https://arxiv.org/abs/1412.6572). :func:`first_crossing` finds, for a whole
batch at once, the smallest ε at which ``argmax f(x(ε)) != y``: a scan at
resolution ``h`` finds the first misclassified scanned point (the margin
along the ray need not be monotone, so bisection over ``[0, ε_max]`` is
wrong), and the bracket it falls in is refined to ``tol``. Every returned
upper end is re-checked by a forward pass.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")

# statuses, as in sparank.robustness.Status (kept as ints here: attacks is the lower module)
_FOOLED, _CLEAN_WRONG, _CENSORED = 0, 1, 2


def check_norm(norm: str) -> None:
    """ValueError naming the norms this package knows, if ``norm`` is not one of them."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


class Bounds(NamedTuple):
    """The input box ``[lo, hi]^d``."""

    lo: float
    hi: float


class Crossing(NamedTuple):
    """Per-input result of :func:`first_crossing`; tensors on the CPU."""

    eps_lo: Tensor  # (N,) float64: largest ε known correct, with every scanned point below it correct
    eps_hi: Tensor  # (N,) float64: a verified misclassified ε; inf if censored, 0 if clean-wrong
    status: Tensor  # (N,) int64: 0 fooled, 1 clean_wrong, 2 censored
    forward_rows: int  # how many inputs were passed through the model (cost, for benchmarks)


def check_inputs(inputs: Tensor, labels: Tensor, bounds: Bounds | tuple[float, float]) -> Bounds:
    """Validate a batch against the protocol's contract; returns the bounds as :class:`Bounds`."""
    lo, hi = (float(b) for b in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must satisfy lo < hi, got {bounds}")
    if inputs.ndim < 2:
        raise ValueError(f"inputs must be a batch shaped (N, ...), got shape {tuple(inputs.shape)}")
    if labels.ndim != 1 or len(labels) != len(inputs):
        raise ValueError(f"labels must be shaped (N,) = ({len(inputs)},), got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if not inputs.is_floating_point():
        raise ValueError(f"inputs must be floating point in [{lo}, {hi}], got dtype {inputs.dtype}")
    if len(inputs) and not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs contain NaN or inf")
    if len(inputs) and (float(inputs.min()) < lo or float(inputs.max()) > hi):
        raise ValueError(
            f"inputs lie outside bounds [{lo}, {hi}] (min {float(inputs.min()):.4g}, max {float(inputs.max()):.4g}); "
            "pass the right bounds, and put any normalisation inside the model (PROTOCOL §1)"
        )
    return Bounds(lo, hi)


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    return fallback


def fgsm_direction(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    norm: Norm = "linf",
    batch_size: int = 256,
) -> Tensor:
    """The FGSM direction per input: ``sign(g)`` (L∞) or ``g/||g||_2`` (L2), ``g = ∇_x CE(f(x), y)``.

    Args:
        model: maps ``(N, *shape)`` to logits ``(N, K)``; called as it is (put it in eval mode).
        inputs: ``(N, *shape)``; not modified.
        labels: ``(N,)`` true labels.
        norm: ``"linf"`` or ``"l2"``.
        batch_size: inputs per backward pass.

    Returns:
        ``(N, *shape)`` directions on the inputs' device and dtype; an input whose gradient is
        exactly zero gets ``d = 0`` (its ray does not move).

    Only the inputs get gradients: parameters' ``.grad`` are left untouched.
    """
    check_norm(norm)
    out = torch.empty_like(inputs)
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size].detach().clone().requires_grad_(True)
        y = labels[start : start + batch_size]
        with torch.enable_grad():
            # sum, not mean: each input's gradient must not shrink with the batch size
            loss = F.cross_entropy(model(x), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        if norm == "linf":
            d = grad.sign()
        else:
            flat = grad.flatten(1)
            length = flat.norm(dim=1, keepdim=True)
            d = torch.where(length > 0, flat / length.clamp_min(torch.finfo(flat.dtype).tiny), 0.0).view_as(grad)
        out[start : start + batch_size] = d
    return out


def ray_points(inputs: Tensor, directions: Tensor, eps: Tensor, bounds: Bounds | tuple[float, float]) -> Tensor:
    """``clip(x + ε·d, lo, hi)`` for per-input ε: inputs, directions ``(N, *shape)``, eps ``(N,)`` (any float dtype)."""
    lo, hi = bounds
    shape = (-1,) + (1,) * (inputs.ndim - 1)
    eps_x = eps.to(device=inputs.device, dtype=inputs.dtype).view(shape)
    return (inputs + eps_x * directions).clamp_(lo, hi)


@torch.no_grad()
def _evaluate(model: nn.Module, rows: Tensor, labels: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """For each row: misclassified (``argmax != label``) and the margin ``f_y - max_{j≠y} f_j`` (float64)."""
    wrong = torch.empty(len(rows), dtype=torch.bool, device=rows.device)
    margin = torch.empty(len(rows), dtype=torch.float64, device=rows.device)
    for start in range(0, len(rows), batch_size):
        logits = model(rows[start : start + batch_size])
        y = labels[start : start + batch_size]
        wrong[start : start + batch_size] = logits.argmax(dim=1) != y
        true = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        margin[start : start + batch_size] = (true - others).double()
    return wrong, margin


def _scan_grid(eps_max: float, resolution: float) -> Tensor:
    """Scan points ``h, 2h, ..., eps_max`` (the last is eps_max itself), float64."""
    count = max(1, math.ceil(eps_max / resolution - 1e-9))
    grid = torch.arange(1, count + 1, dtype=torch.float64) * resolution
    grid[-1] = eps_max
    return grid.clamp_(max=eps_max)


def first_crossing(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    *,
    bounds: Bounds | tuple[float, float] = (0.0, 1.0),
    eps_max: float = 0.5,
    resolution: float = 1e-2,
    tol: float = 1e-6,
    batch_size: int = 256,
) -> Crossing:
    """The first ε in (0, eps_max] at which ``clip(x + ε·d)`` is misclassified, for every input at once.

    Scans ``h, 2h, ..., eps_max`` (``h = resolution``), evaluating only the inputs
    still unresolved and, as they thin out, several scan points per input in
    one forward call; refines the first misclassified bracket to width ``tol``
    with a safeguarded secant step on the margin (two points ``tol`` apart
    around the secant root, plus the midpoint, per round); and re-checks
    every returned ``eps_hi`` with a forward pass. The model must be in the
    mode it is to be measured in (eval); nothing is modified.

    Returns:
        :class:`Crossing` with per-input brackets and statuses (on the CPU).
    """
    n = len(inputs)
    device = inputs.device
    grid = _scan_grid(eps_max, resolution).to(device)
    status = torch.full((n,), _CENSORED, dtype=torch.int64, device=device)
    eps_lo = torch.full((n,), float(eps_max), dtype=torch.float64, device=device)
    eps_hi = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    rows_done = 0
    if n == 0:
        return Crossing(eps_lo.cpu(), eps_hi.cpu(), status.cpu(), 0)

    # ε = 0: clean-wrong inputs are flagged and leave the search
    wrong0, margin0 = _evaluate(model, inputs, labels, batch_size)
    rows_done += n
    status[wrong0] = _CLEAN_WRONG
    eps_lo[wrong0] = 0.0
    eps_hi[wrong0] = 0.0

    # --- scan: all unresolved inputs advance through the grid in lockstep
    active = torch.nonzero(~wrong0).squeeze(1)
    last_margin = margin0[active]  # margin at the last scanned point (ε = 0 to start)
    found_idx: list[Tensor] = []
    found_lo: list[Tensor] = []
    found_hi: list[Tensor] = []
    found_mlo: list[Tensor] = []
    found_mhi: list[Tensor] = []
    rows_target = max(len(active), 1)  # keep every forward call about as large as the first
    k = 0
    while len(active) and k < len(grid):
        chunk = min(len(grid) - k, max(1, rows_target // len(active)))
        eps = grid[k : k + chunk]  # (c,)
        x = inputs[active].unsqueeze(1)  # (a, 1, *shape)
        d = directions[active].unsqueeze(1)
        eps_b = eps.to(inputs.dtype).view((1, chunk) + (1,) * (inputs.ndim - 1))
        rows = (x + eps_b * d).clamp_(bounds[0], bounds[1]).flatten(0, 1)
        y_rows = labels[active].repeat_interleave(chunk)
        wrong, margin = _evaluate(model, rows, y_rows, batch_size)
        rows_done += len(rows)
        wrong = wrong.view(-1, chunk)
        margin = margin.view(-1, chunk)
        hit = wrong.any(dim=1)
        if hit.any():
            first = wrong[hit].int().argmax(dim=1)  # first misclassified scan point in this chunk
            prev_margin = torch.cat([last_margin[hit, None], margin[hit]], dim=1)
            found_idx.append(active[hit])
            found_hi.append(eps[first])
            found_lo.append(torch.where(first > 0, eps[(first - 1).clamp_min(0)], grid[k - 1] if k > 0 else torch.zeros((), dtype=torch.float64, device=device)))
            found_mhi.append(margin[hit].gather(1, first[:, None]).squeeze(1))
            found_mlo.append(prev_margin.gather(1, first[:, None]).squeeze(1))
        active = active[~hit]
        last_margin = margin[~hit, -1]
        k += chunk

    if found_idx:
        idx = torch.cat(found_idx)
        lo, hi = torch.cat(found_lo), torch.cat(found_hi)
        m_lo, m_hi = torch.cat(found_mlo), torch.cat(found_mhi)
        scan_hi = hi.clone()
        for _attempt in range(8):
            lo, hi, rows = _refine(model, inputs[idx], labels[idx], directions[idx], lo, hi, m_lo, m_hi, bounds, tol, batch_size)
            rows_done += rows
            # the verification pass: every upper end, evaluated afresh
            still_wrong, m_check = _evaluate(model, ray_points(inputs[idx], directions[idx], hi, bounds), labels[idx], batch_size)
            rows_done += len(idx)
            failed = ~still_wrong
            if not failed.any():
                break
            # a boundary point judged differently in another batch: it is now a known-correct
            # point, so restart the refinement above it, below the scan point that was wrong
            lo = torch.where(failed, hi, lo)
            m_lo = torch.where(failed, m_check, m_lo)
            hi = torch.where(failed, scan_hi, hi)
        else:
            raise RuntimeError(
                f"{int(failed.sum())} brackets could not be verified by a forward pass: the model's "
                "predictions are not deterministic (dropout in train mode?)"
            )
        status[idx] = _FOOLED
        eps_lo[idx] = lo
        eps_hi[idx] = hi
    return Crossing(eps_lo.cpu(), eps_hi.cpu(), status.cpu(), rows_done)


def _refine(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    d: Tensor,
    lo: Tensor,
    hi: Tensor,
    m_lo: Tensor,
    m_hi: Tensor,
    bounds: Bounds | tuple[float, float],
    tol: float,
    batch_size: int,
) -> tuple[Tensor, Tensor, int]:
    """Shrink brackets ``[lo, hi]`` (lo correct, hi misclassified) to width ``<= tol``.

    Each round evaluates, per open bracket, the two points ``secant ± 0.45·tol``
    (the secant root of the margin between the ends) and the midpoint, and
    keeps the first misclassified of the sorted points with its predecessor:
    when the margin is affine over the bracket (a ReLU network away from a
    kink) one round closes it; otherwise the midpoint at least halves it.
    """
    lo, hi, m_lo, m_hi = lo.clone(), hi.clone(), m_lo.clone(), m_hi.clone()
    rows_done = 0
    open_ = torch.nonzero(hi - lo > tol).squeeze(1)
    while len(open_):
        a, b = lo[open_], hi[open_]
        ma, mb = m_lo[open_], m_hi[open_]
        width = b - a
        frac = torch.where(ma > mb, ma / (ma - mb), torch.full_like(ma, 0.5)).clamp(0.0, 1.0)
        root = a + frac * width
        half = 0.45 * tol
        cand = torch.stack([root - half, root + half, a + 0.5 * width], dim=1)
        cand = torch.minimum(torch.maximum(cand, a[:, None]), b[:, None]).sort(dim=1).values  # (o, 3)
        c = cand.shape[1]
        rows = ray_points(x[open_].repeat_interleave(c, 0), d[open_].repeat_interleave(c, 0), cand.flatten(), bounds)
        wrong, margin = _evaluate(model, rows, y[open_].repeat_interleave(c), batch_size)
        rows_done += len(rows)
        # the sequence lo, c1, c2, c3, hi: first misclassified point and its predecessor
        pts = torch.cat([a[:, None], cand, b[:, None]], dim=1)
        mar = torch.cat([ma[:, None], margin.view(-1, c), mb[:, None]], dim=1)
        wr = torch.cat([torch.zeros_like(a, dtype=torch.bool)[:, None], wrong.view(-1, c), torch.ones_like(b, dtype=torch.bool)[:, None]], dim=1)
        j = wr.int().argmax(dim=1, keepdim=True)  # >= 1: position 0 (lo) is correct
        lo[open_] = pts.gather(1, j - 1).squeeze(1)
        hi[open_] = pts.gather(1, j).squeeze(1)
        m_lo[open_] = mar.gather(1, j - 1).squeeze(1)
        m_hi[open_] = mar.gather(1, j).squeeze(1)
        open_ = open_[hi[open_] - lo[open_] > tol]
    return lo, hi, rows_done
