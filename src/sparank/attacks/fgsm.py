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
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from sparank.attacks.base import (
    Bounds,
    CleanPass,
    Found,
    MinimalAttack,
    Norm,
    Progress,
    Status,
    _evaluate,
    check_norm,
    check_tol,
    input_gradient,
    logits_of,
    margins_of,
    normalise,
    verify_points,
)


class Crossing(NamedTuple):
    """Per-input result of :func:`first_crossing`; tensors on the CPU."""

    eps_lo: Tensor  # (N,) float64: a point classified y; every scanned point below it is, or is within the noise
    eps_hi: Tensor  # (N,) float64: a verified misclassified ε; inf if censored or no direction, 0 if clean-wrong
    status: Tensor  # (N,) int64: values of Status
    forward_rows: int  # how many inputs were passed through the model (cost, for benchmarks)


def fgsm_direction(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    norm: Norm = "linf",
    batch_size: int = 256,
    clean: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The FGSM direction per input: ``sign(g)`` (L∞) or ``g/||g||_2`` (L2), ``g = ∇_x CE(f(x), y)``.

    ``g`` is computed without saturation: the logits' gradient ``p − e_y`` is
    taken from :func:`loss_gradient_weights` (divided by ``1 − p_y``, which
    changes neither sign nor L2 direction), so the direction stays exact at any
    margin instead of collapsing to the other classes' terms or to 0 once
    ``p_y`` rounds to 1.

    Args:
        model: maps ``(N, *shape)`` to logits ``(N, K)``; called as it is (put it in eval mode).
        inputs: ``(N, *shape)``; not modified.
        labels: ``(N,)`` true labels.
        norm: ``"linf"`` or ``"l2"``.
        batch_size: inputs per backward pass.
        clean: ``(margins, wrong)``, ``(N,)`` float64 and bool, where given filled from the same forward pass with
            each input's margin ``f_y − max_{j≠y} f_j`` and whether ``argmax != y``.

    Returns:
        ``(N, *shape)`` directions on the inputs' device and dtype; an input whose gradient is
        exactly zero gets ``d = 0`` (its ray does not move: status ``NO_DIRECTION``).

    Raises:
        ValueError: the model's output is not ``(N, K)`` logits, a label is not below ``K``,
            or the logits or gradients of some inputs are not finite (their indices are named).

    Only the inputs get gradients: parameters' ``.grad`` are left untouched.
    """
    check_norm(norm)
    return normalise(input_gradient(model, inputs, labels, batch_size=batch_size, clean=clean), norm)


def ray_points(
    inputs: Tensor,
    directions: Tensor,
    eps: Tensor,
    bounds: Bounds | tuple[float, float],
) -> Tensor:
    """``clip(x + ε·d, lo, hi)`` for per-input ε: inputs, directions ``(N, *shape)``, eps ``(N,)`` (any float dtype)."""
    lo, hi = bounds
    shape = (-1,) + (1,) * (inputs.ndim - 1)
    eps_x = eps.to(device=inputs.device, dtype=inputs.dtype).view(shape)
    return (eps_x * directions).add_(inputs).clamp_(lo, hi)  # x + ε·d, rounded as written, in one buffer


@torch.inference_mode()
def _evaluate_ray(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    who: Tensor,
    eps: Tensor,
    bounds: Bounds | tuple[float, float],
    batch_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`~sparank.attacks.base._evaluate` of the ray points ``x_who[i](eps[i, j])`` (``who`` ``(R,)``, ``eps`` ``(R, C)``),
    in row-major order: the same points as :func:`ray_points`, made a batch at a time just before its forward pass
    (never all in memory at once), each input's ``x`` and ``d`` read once for its ``C`` points."""
    r, c = eps.shape
    owners = who.repeat_interleave(c)
    if not r * c:
        empty = torch.empty(0, dtype=torch.float64, device=inputs.device)
        return empty, empty, torch.empty(0, dtype=torch.bool, device=inputs.device)
    if c > batch_size:  # more points per input than a batch holds: in column blocks, put back in row-major order
        blocks = [
            _evaluate_ray(model, inputs, labels, directions, who, eps[:, k : k + batch_size], bounds, batch_size)
            for k in range(0, c, batch_size)
        ]
        return tuple(torch.cat([blk[i].view(r, -1) for blk in blocks], dim=1).flatten() for i in range(3))  # type: ignore[return-value]
    per = max(1, batch_size // c)  # inputs per batch
    shape = tuple(inputs.shape[1:])
    # buffers reused from batch to batch (fresh large tensors cost page faults here)
    x_buf = inputs.new_empty((min(per, r), 1) + shape)
    points = inputs.new_empty((min(per, r), c) + shape)
    eps_x = eps.to(device=inputs.device, dtype=inputs.dtype).reshape((r, c) + (1,) * len(shape))
    parts = []
    for start in range(0, r, per):
        rows = who[start : start + per]
        m = len(rows)
        # ray_points, the same operations: ε·d, + x, clipped
        torch.mul(eps_x[start : start + m], torch.index_select(directions, 0, rows).unsqueeze(1), out=points[:m])
        points[:m].add_(torch.index_select(inputs, 0, rows, out=x_buf[:m, 0]).unsqueeze(1)).clamp_(bounds[0], bounds[1])
        # the labels are checked against the model's classes once, in the first batch
        parts.append(logits_of(model, points[:m].flatten(0, 1), labels[who] if start == 0 else None))
    return margins_of(torch.cat(parts), labels[owners], owners)


def _robust(margin: Tensor, floor: Tensor, allowance: Tensor) -> Tensor:
    """Misclassified beyond the noise: ``margin < −max(floor, allowance)``, so ``argmax != y`` in any batching."""
    return margin < -torch.maximum(floor, allowance)


def _scan_grid(eps_max: float, resolution: float) -> Tensor:
    """Scan points ``h, 2h, ..., eps_max`` (the last is eps_max itself), float64."""
    count = max(1, math.ceil(eps_max / resolution - 1e-9))
    grid = torch.arange(1, count + 1, dtype=torch.float64) * resolution
    grid[-1] = eps_max
    return grid.clamp_(max=eps_max)


class _Brackets(NamedTuple):
    """Brackets per input: the input's index, ends ``lo`` (classified y) and ``hi`` (misclassified
    beyond the noise), the margins at both ends and the noise bound at ``hi``."""

    idx: Tensor
    lo: Tensor
    hi: Tensor
    m_lo: Tensor
    m_hi: Tensor
    f_hi: Tensor

    def take(self, keep: Tensor) -> _Brackets:
        return _Brackets(*(column[keep] for column in self))

    @staticmethod
    def cat(parts: list[_Brackets], device: torch.device) -> _Brackets:
        if not parts:
            empty = torch.empty(0, dtype=torch.float64, device=device)
            return _Brackets(
                torch.empty(0, dtype=torch.int64, device=device),
                empty,
                empty,
                empty,
                empty,
                empty,
            )
        return _Brackets(*(torch.cat(column) for column in zip(*parts)))


def _last_true(mask: Tensor) -> Tensor:
    """Per row of a boolean ``(r, c)`` mask, the last column that is True, or −1."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, positions, -1).amax(dim=1)


def _scan(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    grid: Tensor,
    active: Tensor,
    start: Tensor,
    start_margin: Tensor,
    allowance: Tensor,
    bounds: Bounds | tuple[float, float],
    batch_size: int,
    on_resolved: Callable[[int], None] | None = None,
    rows_target: int | None = None,
) -> tuple[_Brackets, int]:
    """Walk the ``active`` inputs through ``grid`` in lockstep, to the first point misclassified beyond the noise.

    ``start`` (one ε per active input, below ``grid``) is a point classified ``y``, with margin
    ``start_margin``. A bracket's ``lo`` is the last scanned point classified ``y`` (by ``argmax``)
    before its ``hi``. Evaluates only unresolved inputs and, as they thin out, several grid
    points per input in one forward call (about ``rows_target`` rows in all; by default as
    many as the first call's). Returns the brackets found and the rows evaluated.
    """
    found: list[_Brackets] = []
    rows_done = 0
    rows_target = max(len(active) if rows_target is None else rows_target, 1)
    last_eps, last_margin = (
        start.clone(),
        start_margin.clone(),
    )  # the last point classified y, per input
    k = 0
    while len(active) and k < len(grid):
        chunk = min(len(grid) - k, max(1, rows_target // len(active)))
        eps = grid[k : k + chunk]  # (c,)
        owners = active.repeat_interleave(chunk)
        margin, floor, argmax_wrong = _evaluate_ray(
            model, inputs, labels, directions, active, eps.expand(len(active), chunk), bounds, batch_size
        )
        rows_done += len(owners)
        robust = _robust(margin, floor, allowance[owners]).view(-1, chunk)
        correct = ~argmax_wrong.view(-1, chunk)
        margin, floor = margin.view(-1, chunk), floor.view(-1, chunk)
        hit = robust.any(dim=1)
        first = robust.int().argmax(dim=1)  # first robustly misclassified grid point (where hit)
        before_first = torch.arange(chunk, device=grid.device)[None, :] < first[:, None]
        last = _last_true(correct & torch.where(hit[:, None], before_first, True))
        has = last >= 0
        at = last.clamp_min(0)[:, None]
        last_eps = torch.where(has, eps[at.squeeze(1)], last_eps)
        last_margin = torch.where(has, margin.gather(1, at).squeeze(1), last_margin)
        if hit.any():
            f = first[hit, None]
            found.append(
                _Brackets(
                    idx=active[hit],
                    lo=last_eps[hit],
                    hi=eps[f.squeeze(1)],
                    m_lo=last_margin[hit],
                    m_hi=margin[hit].gather(1, f).squeeze(1),
                    f_hi=torch.maximum(floor[hit].gather(1, f).squeeze(1), allowance[active[hit]]),
                )
            )
            if on_resolved is not None:
                on_resolved(int(hit.sum()))
        active, last_eps, last_margin = active[~hit], last_eps[~hit], last_margin[~hit]
        k += chunk
    return _Brackets.cat(found, inputs.device), rows_done


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
    progress: Progress | None = None,
    verify: bool = True,
) -> Crossing:
    """The first ε in (0, eps_max] at which ``clip(x + ε·d)`` is misclassified, for every input at once.

    Scans ``h, 2h, ..., eps_max`` (``h = resolution``), evaluating only the inputs
    still unresolved and, as they thin out, several scan points per input in
    one forward call; refines the first bracket to width ``tol`` (points near
    the secant roots of the margin, plus the midpoint, per round); and
    verifies every returned ``eps_hi``.

    **Verified in any batching.** Rounding inside the model depends on the
    batch a row is evaluated in, so a point whose margin ``f_y − max_{j≠y} f_j``
    lies within that noise of 0 can be misclassified in one batch and not in
    another. The upper end ``eps_hi`` is therefore always a point misclassified
    *beyond the noise*: margin below ``−max(δ, allowance)``, with
    ``δ = NOISE_ULPS · eps(dtype) · max(1, max_j |f_j|)``. Before it is
    returned, ``x(eps_hi)`` is re-evaluated in a batch, and the
    ``ALONE_SAMPLE`` points nearest the boundary also alone (a batch of one);
    if one of those differs from its batched margin by more than ``δ/2``, the
    floor is not a safe bound for this model and every point is re-evaluated
    alone. A point is accepted if its margins are below
    ``−max(δ/2, 4·|their difference|)``; if not, the input's allowance is
    raised to twice that bound plus the difference and its search resumes
    from its lower end. The lower end ``eps_lo`` is a point
    classified ``y`` (``argmax``, ties to the lowest class index) in its batch,
    and every scanned point below it is classified ``y`` or lies within the
    noise of the boundary; ``eps_hi − eps_lo <= tol``. Where the model's noise
    band around the crossing is itself wider than ``tol`` (rare in float32 at
    the default tol, never seen in float64), ``eps_lo = eps_hi − tol`` lies
    inside the band: no point at or below it was misclassified beyond the
    noise. A tie is never returned as ``eps_hi``.

    Inputs misclassified at ε = 0 are ``CLEAN_WRONG``; correctly classified
    inputs whose direction is exactly 0 are ``NO_DIRECTION`` (``eps_lo =
    eps_max``, ``eps_hi = inf``: the ray never moves). The model must be in the
    mode it is to be measured in (eval); nothing is modified.

    Args:
        progress: called as ``progress(resolved, total)`` while inputs are resolved.
        verify: re-check every ``x(eps_hi)`` as above (the default). False only where the brackets
            are checked elsewhere: :func:`ray_search` scanning a fast copy checks them on the model
            as given, and re-checking them on the copy (whose batch-of-one noise can make every
            point be evaluated alone) would only cost time.

    Returns:
        :class:`Crossing` with per-input brackets and statuses (on the CPU).

    Raises:
        RuntimeError: a bracket could not be verified in 8 rounds: the model's outputs change
            between calls by more than floating-point noise (randomness in its forward pass).
    """
    n = len(inputs)
    device = inputs.device
    check_tol(tol, inputs.dtype, bounds, eps_max)
    grid = _scan_grid(eps_max, resolution).to(device)
    status = torch.full((n,), int(Status.CENSORED), dtype=torch.int64, device=device)
    eps_lo = torch.full((n,), float(eps_max), dtype=torch.float64, device=device)
    eps_hi = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    if n == 0:
        return Crossing(eps_lo.cpu(), eps_hi.cpu(), status.cpu(), 0)
    resolved = 0

    def tick(count: int) -> None:
        nonlocal resolved
        resolved += count
        if progress is not None:
            progress(resolved, n)

    # ε = 0: clean-wrong inputs are flagged and leave the search, and so do inputs with no direction
    everyone = torch.arange(n, device=device)
    margin0, _, wrong0 = _evaluate(model, inputs, labels, everyone, batch_size)
    rows_done = n
    status[wrong0] = int(Status.CLEAN_WRONG)
    eps_lo[wrong0] = 0.0
    eps_hi[wrong0] = 0.0
    no_direction = ~wrong0 & (directions.flatten(1) == 0).all(dim=1)
    status[no_direction] = int(Status.NO_DIRECTION)
    tick(int((wrong0 | no_direction).sum()))

    # scan: all unresolved inputs advance through the grid in lockstep
    allowance = torch.zeros(n, dtype=torch.float64, device=device)  # raised where batching noise is seen
    active = torch.nonzero(~wrong0 & ~no_direction).squeeze(1)
    start = torch.zeros(len(active), dtype=torch.float64, device=device)
    brackets, rows = _scan(
        model,
        inputs,
        labels,
        directions,
        grid,
        active,
        start,
        margin0[active],
        allowance,
        bounds,
        batch_size,
        tick,
    )
    rows_done += rows
    tick(len(active) - len(brackets.idx))  # the censored inputs

    done: list[_Brackets] = []
    for _round in range(8):
        refined, rows = _refine(
            model,
            inputs,
            labels,
            directions,
            brackets,
            allowance,
            bounds,
            tol,
            batch_size,
        )
        rows_done += rows
        if not verify:
            done.append(refined)
            break
        ok, needed, rows = _verify(model, inputs, labels, directions, refined, bounds, batch_size)
        rows_done += rows
        done.append(refined.take(ok))
        failed = refined.take(~ok)
        if not len(failed.idx):
            break
        # x(eps_hi) was within the noise in some batching: raise the allowance, search again from lo (rare)
        allowance[failed.idx] = torch.maximum(allowance[failed.idx], needed[~ok])
        again: list[_Brackets] = []
        for j in range(len(failed.idx)):
            one = failed.take(slice(j, j + 1))
            more, rows = _scan(
                model,
                inputs,
                labels,
                directions,
                grid[grid > one.lo],
                one.idx,
                one.lo,
                one.m_lo,
                allowance,
                bounds,
                batch_size,
            )
            rows_done += rows
            again.append(more)  # empty where nothing up to eps_max is misclassified beyond the noise: censored
        brackets = _Brackets.cat(again, device)
    else:
        raise RuntimeError(
            f"{len(failed.idx)} brackets could not be verified: the model's outputs at the same input change "
            "between calls by more than floating-point noise; make its forward pass deterministic "
            "(eval mode, no sampling) and measure again"
        )
    result = _Brackets.cat(done, device)
    status[result.idx] = int(Status.FOOLED)
    eps_lo[result.idx] = result.lo
    eps_hi[result.idx] = result.hi
    if progress is not None:
        progress(n, n)
    return Crossing(eps_lo.cpu(), eps_hi.cpu(), status.cpu(), rows_done)


def _verify(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    brackets: _Brackets,
    bounds: Bounds | tuple[float, float],
    batch_size: int,
) -> tuple[Tensor, Tensor, int]:
    """Re-check each ``x(hi)`` with :func:`~sparank.attacks.base.verify_points`: (accepted, retry allowance, rows)."""
    idx = brackets.idx
    points = ray_points(inputs[idx], directions[idx], brackets.hi, bounds)
    return verify_points(model, points, labels[idx], idx, batch_size)


def _refine(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    brackets: _Brackets,
    allowance: Tensor,
    bounds: Bounds | tuple[float, float],
    tol: float,
    batch_size: int,
) -> tuple[_Brackets, int]:
    """Shrink brackets ``[lo, hi]`` (lo classified y, hi misclassified beyond the noise) to width ``<= tol``.

    Each round evaluates, per open bracket, three points: just below the
    secant root of the margin (``− tol/4``), just past the secant root of the
    margin plus the noise bound (``+ tol/4``), and the midpoint. The new ``hi``
    is the first point misclassified beyond the noise, the new ``lo`` the last
    point before it classified ``y``. When the margin is affine over the
    bracket (a ReLU network away from a kink) one round closes it; otherwise
    the midpoint at least halves it. A bracket that did not shrink by a tenth
    (its midpoint fell in the noise band) gets 15 evenly spaced points per
    round instead, until it is within ``tol`` or stops shrinking: then the noise
    band is wider than ``tol`` and ``lo`` becomes ``hi − tol``, a point inside
    the band (its class depends on the batch).
    """
    idx = brackets.idx
    b = _Brackets(
        idx,
        brackets.lo.clone(),
        brackets.hi.clone(),
        brackets.m_lo.clone(),
        brackets.m_hi.clone(),
        brackets.f_hi.clone(),
    )
    rows_done = 0
    dense = torch.zeros(len(idx), dtype=torch.bool, device=idx.device)
    open_ = b.hi - b.lo > tol
    while open_.any():
        for use_dense in (False, True):
            rows = torch.nonzero(open_ & (dense == use_dense)).squeeze(1)
            if not len(rows):
                continue
            a, z = b.lo[rows], b.hi[rows]
            width = z - a
            if use_dense:
                cand = a[:, None] + width[:, None] * torch.arange(1, 16, dtype=width.dtype, device=width.device) / 16
            else:
                ma, mb = b.m_lo[rows], b.m_hi[rows]
                slope = torch.where(ma > mb, width / (ma - mb), torch.zeros_like(ma))  # ε per unit of margin
                root = torch.where(ma > mb, a + ma * slope, a + 0.5 * width)
                past = torch.where(ma > mb, a + (ma + b.f_hi[rows]) * slope, a + 0.5 * width)
                cand = torch.stack([root - 0.25 * tol, past + 0.25 * tol, a + 0.5 * width], dim=1)
            cand = torch.minimum(torch.maximum(cand, a[:, None]), z[:, None]).sort(dim=1).values
            rows_done += _refine_round(
                model,
                inputs,
                labels,
                directions,
                b,
                rows,
                cand,
                allowance,
                bounds,
                batch_size,
            )
            moved = b.hi[rows] - b.lo[rows] < 0.9 * width  # shrinking by less is creeping along a noise band
            open_[rows] = moved | ~dense[rows]  # a dense round that did not shrink is final
            dense[rows] = ~moved
        open_ &= b.hi - b.lo > tol
    # where the noise band is wider than tol, every point evaluated below hi was correct or within the
    # noise: the bracket keeps its width tol, with lo inside the band
    inside = b.hi - tol
    for _ in range(2):  # hi − (hi − tol) can round to just above tol
        inside = torch.where(b.hi - inside > tol, torch.nextafter(inside, b.hi), inside)
    b.lo.copy_(torch.maximum(b.lo, inside))
    return b, rows_done


def _refine_round(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    b: _Brackets,
    rows: Tensor,
    cand: Tensor,
    allowance: Tensor,
    bounds: Bounds | tuple[float, float],
    batch_size: int,
) -> int:
    """Evaluate sorted candidates ``cand`` ``(r, c)`` inside brackets ``rows`` of ``b`` and narrow them in place.

    Returns the rows evaluated.
    """
    a, z = b.lo[rows], b.hi[rows]
    c = cand.shape[1]
    who = b.idx[rows]
    owners = who.repeat_interleave(c)
    margin, floor, argmax_wrong = _evaluate_ray(model, inputs, labels, directions, who, cand, bounds, batch_size)
    bound = torch.maximum(floor, allowance[owners]).view(-1, c)
    margin = margin.view(-1, c)
    # a candidate clamped onto an end is that end, whose class is known, whatever this batch says
    robust = (margin < -bound) & (cand > a[:, None])
    correct = ~argmax_wrong.view(-1, c) & (cand < z[:, None])
    # the sequence lo, candidates, hi: the first robustly misclassified point and the last correct one before it
    pts = torch.cat([a[:, None], cand, z[:, None]], dim=1)
    mar = torch.cat([b.m_lo[rows, None], margin, b.m_hi[rows, None]], dim=1)
    bnd = torch.cat([b.f_hi[rows, None], bound, b.f_hi[rows, None]], dim=1)
    yes, no = (
        torch.ones_like(a, dtype=torch.bool)[:, None],
        torch.zeros_like(a, dtype=torch.bool)[:, None],
    )
    j = torch.cat([no, robust, yes], dim=1).int().argmax(dim=1, keepdim=True)  # >= 1
    before = torch.arange(c + 2, device=pts.device)[None, :] < j
    i = _last_true(torch.cat([yes, correct, no], dim=1) & before)[:, None]  # >= 0: position 0 (lo) is correct
    b.lo[rows] = pts.gather(1, i).squeeze(1)
    b.hi[rows] = pts.gather(1, j).squeeze(1)
    b.m_lo[rows] = mar.gather(1, i).squeeze(1)
    b.m_hi[rows] = mar.gather(1, j).squeeze(1)
    b.f_hi[rows] = bnd.gather(1, j).squeeze(1)
    return len(owners)


class _Narrowed(NamedTuple):
    ok: Tensor  # (M,) bool on the CPU: a bracket was found and verified
    eps_lo: Tensor  # (M,) float64 on the CPU
    eps_hi: Tensor


def _narrowed_on(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    who: Tensor,
    crossing: Crossing,
    bounds: Bounds,
    resolution: float,
    tol: float,
    batch_size: int,
) -> tuple[_Narrowed, int]:
    """Brackets of the inputs ``who`` narrowed again on ``model`` between the scan point before ``eps_lo``
    (``eps_lo − resolution``, at least 0) and the verified ``eps_hi``: refined to ``tol`` and verified as
    :func:`first_crossing` does. ``ok`` is False where that point is not classified ``y`` or the result is
    not verified (the caller searches those again from 0). Returns the brackets and the rows evaluated."""
    hi = crossing.eps_hi.to(inputs.device)[who]
    start = (crossing.eps_lo.to(inputs.device)[who] - resolution).clamp(min=0.0)
    m_lo, _, wrong_lo = _evaluate(model, ray_points(inputs[who], directions[who], start, bounds), labels[who], who, batch_size)
    m_hi, f_hi, _ = _evaluate(model, ray_points(inputs[who], directions[who], hi, bounds), labels[who], who, batch_size)
    rows = 2 * len(who)
    brackets = _Brackets(who, start, hi, m_lo, m_hi, f_hi).take(~wrong_lo)
    allowance = torch.zeros(len(inputs), dtype=torch.float64, device=inputs.device)
    refined, r = _refine(model, inputs, labels, directions, brackets, allowance, bounds, tol, batch_size)
    rows += r
    verified, _, r = _verify(model, inputs, labels, directions, refined, bounds, batch_size)
    rows += r
    ok = torch.zeros(len(who), dtype=torch.bool, device=inputs.device)
    lo = crossing.eps_lo.to(inputs.device)[who].clone()
    place = torch.nonzero(~wrong_lo).squeeze(1)
    ok[place] = verified
    lo[place], hi[place] = refined.lo, refined.hi
    return _Narrowed(ok.cpu(), lo.cpu(), hi.cpu()), rows


def check_ray_settings(resolution: object, tol: object) -> None:
    """ValueError naming ``resolution`` or ``tol`` of a ray search (FGSM, transfer, random rays) if it is not usable."""
    if not (isinstance(resolution, int | float) and not isinstance(resolution, bool) and resolution > 0):
        raise ValueError(f"resolution must be a positive number, got {resolution!r}")
    if not (isinstance(tol, int | float) and not isinstance(tol, bool) and tol >= 1e-12):
        raise ValueError(f"tol must be at least 1e-12 (float64 brackets), got {tol!r}")


@dataclass(frozen=True, kw_only=True)
class FGSM(MinimalAttack):
    """ε* along the FGSM ray (PROTOCOL §2): :func:`fgsm_direction`, then :func:`first_crossing`.

    Settings: ``resolution`` (the scan step ``h``), ``tol`` (the bracket
    width) and ``certify``. The adversarial of an input is ``x(eps_hi)``; its claimed radius
    is ``eps_hi`` (the ray parameter: ``||x(ε) − x|| <= ε``, less where the box clips).
    Goodfellow, Shlens & Szegedy 2015, https://arxiv.org/abs/1412.6572.

    With ``certify=True`` a coarse scan (:func:`place_crossings`) only places
    the search: :mod:`sparank.certify` then proves, with bounds on the margin
    over whole segments of the ray, that every ε in ``[0, eps_lo]`` is
    classified ``y``, so ``eps_hi`` is the first crossing with no resolution
    caveat. Per input, ``Found.certified`` says whether that proof was
    obtained; where not (a layer the bounds do not support, or no proof within
    :data:`sparank.certify.MAX_PASSES` bound passes) the input gets the scan at
    ``resolution``, as without ``certify``. ``certify`` enters the
    settings (and the measurement's key) only when True, so the keys of
    measurements stored before it are unchanged.

    With ``fast=True`` (an explicit opt-in, PROTOCOL §2) the scan and its
    refinement evaluate a faster copy of the model (:func:`fast_copy`: frozen
    TorchScript, optimised for inference); every returned bracket is then
    checked on the model as given: ``x(eps_hi)`` misclassified in any batching
    (:func:`~sparank.attacks.base.verify_points`) and ``x(eps_lo)`` classified
    ``y``. A bracket whose ``eps_lo`` alone fails is narrowed again on the model;
    an input whose bracket fails otherwise is searched again on the model itself.
    """

    name: ClassVar[str] = "fgsm"
    resolution: float = 1e-2
    tol: float = 1e-6
    certify: bool = False
    fast: bool = False

    def __post_init__(self) -> None:
        check_ray_settings(self.resolution, self.tol)
        for option in ("certify", "fast"):
            if not isinstance(getattr(self, option), bool):
                raise ValueError(f"{option} must be True or False, got {getattr(self, option)!r}")

    def settings(self) -> dict[str, Any]:
        """The attack's name and settings; ``certify`` and ``fast`` only when True (measurements stored before them keep their keys)."""
        out = super().settings()
        for option in ("certify", "fast"):
            if not out[option]:
                out.pop(option)
        return out

    def clean_pass(self, model: nn.Module, inputs: Tensor, labels: Tensor, *, norm: Norm, batch_size: int) -> CleanPass:
        """The direction of every input (:func:`fgsm_direction`), and from its forward pass the margins at ε = 0 (where the
        certified search starts) and the misclassified inputs."""
        margins = torch.empty(len(inputs), dtype=torch.float64, device=inputs.device)
        wrong = torch.empty(len(inputs), dtype=torch.bool, device=inputs.device)
        directions = fgsm_direction(model, inputs, labels, norm=norm, batch_size=batch_size, clean=(margins, wrong))
        return CleanPass(wrong, {"directions": directions, "margins": margins})

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
        clean: dict[str, Tensor] | None = None,
    ) -> Found:
        """``clean``: what :meth:`clean_pass` computed for these inputs (else the directions are computed here)."""
        if self.resolution > eps_max:
            raise ValueError(f"resolution must be in (0, eps_max={eps_max}], got {self.resolution}")
        if clean is None:
            clean = FGSM.clean_pass(self, model, inputs, labels, norm=norm, batch_size=batch_size).data
        directions, margin0 = clean["directions"], clean["margins"]
        scanner = fast_copy(model, inputs[:8]) if self.fast else None
        if not self.certify:
            return ray_search(model, inputs, labels, directions, self.resolution, self.tol, bounds, eps_max, batch_size, progress, scanner)
        return certified_search(
            model, inputs, labels, directions, self.resolution, self.tol, bounds, eps_max, batch_size, progress, scanner, margin0
        )


def fast_copy(model: nn.Module, example: Tensor) -> nn.Module:
    """A faster copy of ``model`` for scanning: traced, frozen and optimised for inference by TorchScript.

    On the CPU this runs convolutions through oneDNN with weights prepacked (about
    10× fewer seconds per row on the benchmark's CNN). Its logits differ from the
    model's by rounding, so nothing it says is returned unchecked (see :class:`FGSM`).
    Where tracing fails the model itself is returned.
    """
    import copy
    import warnings

    clone = copy.deepcopy(model).eval()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(clone, example.detach().clone())
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    except (RuntimeError, TypeError, ValueError, torch.jit.TracingCheckError):  # TorchScript cannot trace it: scan the model itself
        return model


#: the placing scan (:func:`place_crossings`) steps ``PLACEMENT_STEP`` (or the resolution asked for, if
#: coarser) and narrows its bracket to ``tol``: forward passes are cheaper than bound passes, so the
#: segments are placed by forward passes, and nothing that places them needs verifying (the walk proves
#: its own). Narrowed to ``tol``, one bound pass over ``[0, lo]`` usually proves the whole bracket (the
#: bounds are exact at the segment's far end): on the Fashion-MNIST MLP 0.98 passes per input, against
#: 2.00 with the hint narrowed to 1e-4 and a second pass to find the crossing
PLACEMENT_STEP = 5e-2


class Placement(NamedTuple):
    """Where :func:`place_crossings` found each first crossing roughly to be (float64 ``(N,)`` tensors)."""

    lo: Tensor  # the last point found correct before hi: eps_max where none was misclassified
    hi: Tensor  # the first point found misclassified beyond the noise: inf where none; both 0 for an input misclassified at ε = 0
    rows: int  # forward rows evaluated
    hi_margin: Tensor  # the margin at hi and its noise floor, from the batched forward pass that found it (NaN where none)
    hi_floor: Tensor


def place_crossings(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    *,
    step: float,
    width: float,
    bounds: Bounds,
    eps_max: float,
    batch_size: int,
    margin0: Tensor | None = None,
) -> Placement:
    """Where along each ray the first crossing roughly is: the scan at ``step``, its bracket narrowed towards ``width``.

    A hint for :func:`sparank.certify.certified_crossing`, not a result: nothing is verified, and the
    bracket is narrowed by secant points (:func:`_place_refine`), so it costs a fraction of
    :func:`first_crossing`; a bracket in a noise band wider than ``width`` stays wider. ``margin0``: the
    margins at ε = 0 where known (from the direction's forward pass), else evaluated here.
    """
    n = len(inputs)
    device = inputs.device
    lo = torch.full((n,), float(eps_max), dtype=torch.float64, device=device)
    hi = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    if margin0 is None:
        margin0, _, wrong0 = _evaluate(model, inputs, labels, torch.arange(n, device=device), batch_size)
        rows = n
    else:  # from the direction's forward pass (a tie at 0 counts as misclassified: that input is scanned)
        wrong0, rows = margin0 <= 0, 0
    lo[wrong0], hi[wrong0] = 0.0, 0.0
    active = torch.nonzero(~wrong0 & (directions.flatten(1) != 0).any(dim=1)).squeeze(1)
    allowance = torch.zeros(n, dtype=torch.float64, device=device)
    grid = _scan_grid(eps_max, step).to(device)
    start = torch.zeros(len(active), dtype=torch.float64, device=device)
    # once most inputs are placed, calls a quarter the first one's size: the grid points past a coarse crossing are wasted
    brackets, scanned = _scan(
        model, inputs, labels, directions, grid, active, start, margin0[active], allowance, bounds, batch_size, rows_target=len(active) // 4
    )
    more = _place_refine(model, inputs, labels, directions, brackets, allowance, bounds, width, batch_size)
    lo[brackets.idx], hi[brackets.idx] = brackets.lo, brackets.hi
    hi_margin = torch.full((n,), math.nan, dtype=torch.float64, device=device)
    hi_floor = hi_margin.clone()
    hi_margin[brackets.idx], hi_floor[brackets.idx] = brackets.m_hi, brackets.f_hi
    return Placement(lo, hi, rows + scanned + more, hi_margin, hi_floor)


#: rounds of :func:`_place_refine` at most (3 or 4 suffice on the benchmark's models)
PLACE_ROUNDS = 16


def _place_refine(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    b: _Brackets,
    allowance: Tensor,
    bounds: Bounds,
    width: float,
    batch_size: int,
) -> int:
    """Narrow the brackets ``b`` in place towards ``width``, unverified (a hint): two points per round, the
    secant root of the margin ± a spread ``min(w/16, 4·w²)`` for a bracket of width ``w``.

    The margin is piecewise affine along the ray, so the secant root's error shrinks about as ``w²`` (on
    the Fashion-MNIST MLP, nine in ten are within ``w/16`` of the crossing from ``w = 0.05`` and within
    ``4·w²`` from ``w = 2e-3``): two points then bracket the crossing, where :func:`_refine` (which must also
    verify) spends three. A bracket that did not halve in a round gets its midpoint too; one that stops
    shrinking (a noise band wider than ``width``) is left as it is. Returns the rows evaluated.
    """
    rows = 0
    everyone = torch.arange(len(b.idx), device=b.idx.device)
    halved = torch.ones(len(b.idx), dtype=torch.bool, device=b.idx.device)
    open_ = b.hi - b.lo > width
    for _ in range(PLACE_ROUNDS):
        if not bool(open_.any()):
            break
        for slow in (False, True):  # a bracket that did not halve gets its midpoint too
            k = everyone[open_ & (halved == (not slow))]
            if not len(k):
                continue
            a, z, ma, mz = b.lo[k], b.hi[k], b.m_lo[k].clamp_min(0.0), b.m_hi[k]
            w = z - a
            root = a + w * ma / (ma - mz).clamp_min(torch.finfo(torch.float64).tiny)
            delta = torch.clamp(torch.minimum(w / 16, 4 * w * w), min=width / 4)
            cand = torch.stack([root - delta, root + delta] + ([a + 0.5 * w] if slow else []), dim=1)
            cand = torch.minimum(torch.maximum(cand, a[:, None]), z[:, None]).sort(dim=1).values
            rows += _refine_round(model, inputs, labels, directions, b, k, cand, allowance, bounds, batch_size)
            new_w = b.hi[k] - b.lo[k]
            halved[k] = new_w <= 0.5 * w
            open_[k] = (new_w > width) & (new_w < w)
    return rows


#: the inputs on which :func:`sparank.certify.check_walk` compares the layer walk with the model's forward pass
WALK_CHECK = 32


@torch.inference_mode()
def certified_search(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    resolution: float,
    tol: float,
    bounds: Bounds,
    eps_max: float,
    batch_size: int,
    progress: Progress | None = None,
    scanner: nn.Module | None = None,
    margin0: Tensor | None = None,
) -> Found:
    """The certified first crossing (:func:`sparank.certify.certified_crossing`) where it can be proved, the scan elsewhere.

    A coarse scan (:func:`place_crossings`, on ``scanner`` where given) places the first
    segments; the inputs left unproved (a layer the bounds do not support, no proof within
    :data:`sparank.certify.MAX_PASSES` bound passes, a point refused by the verification)
    get the scan at ``resolution`` to ``tol`` (:func:`ray_search`), with ``certified`` False.
    """
    from sparank.certify import Unsupported, bound_network, certified_crossing, check_walk

    n = len(inputs)
    device = inputs.device
    try:
        net = bound_network(model)
        check_walk(model, net, inputs[:WALK_CHECK])
    except Unsupported as why:
        warnings.warn(
            f"certify: {why}; every input keeps the scan's result at resolution {resolution:g}, marked not certified",
            stacklevel=2,
        )
        net = None
    if net is None or n == 0:
        found = ray_search(model, inputs, labels, directions, resolution, tol, bounds, eps_max, batch_size, progress, scanner)
        return found._replace(certified=torch.zeros(n, dtype=torch.bool))
    placed = place_crossings(
        scanner if scanner is not None else model, inputs, labels, directions, step=min(max(resolution, PLACEMENT_STEP), eps_max),
        width=tol, bounds=bounds, eps_max=eps_max, batch_size=batch_size, margin0=margin0,
    )  # fmt: skip
    # the progress is the walk's (where the time goes): inputs whose proof is done
    # the hint's margins are the model's own only where the scan ran on the model (not on a fast copy)
    known = (placed.hi_margin, placed.hi_floor) if scanner is None else None
    cert = certified_crossing(
        model, net, inputs, labels, directions, placed.lo, placed.hi, bounds=bounds, eps_max=eps_max, tol=tol, batch_size=batch_size,
        progress=progress, hint_batched=known,
    )  # fmt: skip
    rows = placed.rows
    ok = cert.certified
    hit = ok & torch.isfinite(cert.eps_hi)
    found = torch.zeros(n, dtype=torch.bool)
    eps = torch.full((n,), math.inf, dtype=torch.float64)
    eps_lo = torch.full((n,), float(eps_max), dtype=torch.float64)
    found[hit], eps[hit], eps_lo[hit] = True, cert.eps_hi[hit], cert.eps_lo[hit]
    adversarials = inputs.clone()
    if cert.fooled is not None and cert.points is not None:  # x(eps_hi) as verified (rows not hit are replaced below)
        adversarials[cert.fooled] = cert.points
    no_direction = ((directions.flatten(1) == 0).all(dim=1)).cpu()
    rows += cert.forward_rows
    verified = hit.clone()  # certified_crossing verified each x(eps_hi) it returns
    rest = torch.nonzero(~ok).squeeze(1)  # the scan's result where nothing was proved
    if len(rest):
        on = rest.to(device)
        scanned = ray_search(model, inputs[on], labels[on], directions[on], resolution, tol, bounds, eps_max, batch_size, None, scanner)
        rows += scanned.forward_rows
        found[rest], eps[rest], eps_lo[rest] = scanned.found, scanned.eps, scanned.eps_lo
        assert scanned.verified is not None
        verified[rest] = scanned.verified
        no_direction[rest] = scanned.no_direction
        adversarials[on] = scanned.adversarials
    if progress is not None:
        progress(n, n)
    return Found(
        adversarials=adversarials,
        found=found,
        eps=eps,
        eps_lo=eps_lo,
        no_direction=no_direction,
        forward_rows=rows,
        directions=directions,
        certified=ok,
        bound_passes=int(cert.passes.sum()),
        verified=verified,
    )


def ray_search(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    resolution: float,
    tol: float,
    bounds: Bounds,
    eps_max: float,
    batch_size: int,
    progress: Progress | None = None,
    scanner: nn.Module | None = None,
) -> Found:
    """:func:`first_crossing` along given directions, as a :class:`~sparank.attacks.base.Found`.

    With ``scanner`` (a faster copy of ``model``, :func:`fast_copy`) the search runs on it and each
    bracket is then checked on ``model`` (:func:`_checked_on`: narrowed again on ``model`` where only
    its lower end fails, else searched again on ``model``).
    """
    on_copy = scanner is not None and scanner is not model
    crossing = first_crossing(
        scanner if on_copy else model, inputs, labels, directions, bounds=bounds, eps_max=eps_max,
        resolution=resolution, tol=tol, batch_size=batch_size, progress=progress, verify=not on_copy,
    )  # fmt: skip
    if on_copy:
        crossing = _checked_on(model, crossing, inputs, labels, directions, bounds, eps_max, resolution, tol, batch_size)
    found = crossing.status == int(Status.FOOLED)
    eps = crossing.eps_hi.to(inputs.device)
    adversarials = ray_points(inputs, directions, torch.where(found.to(inputs.device), eps, 0.0), bounds)
    return Found(
        adversarials=adversarials,
        found=found,
        eps=torch.where(found, crossing.eps_hi, math.inf),
        eps_lo=torch.where(found, crossing.eps_lo, torch.clamp(crossing.eps_lo, max=eps_max)),
        no_direction=crossing.status == int(Status.NO_DIRECTION),
        forward_rows=crossing.forward_rows + len(inputs),
        directions=directions,
        verified=found.clone(),  # every x(eps_hi) of a fooled input was verified on the model (first_crossing, _checked_on)
    )


def _checked_on(
    model: nn.Module,
    crossing: Crossing,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    bounds: Bounds,
    eps_max: float,
    resolution: float,
    tol: float,
    batch_size: int,
) -> Crossing:
    """``crossing`` (found on a copy of ``model``) with each bracket checked on ``model``: ``x(eps_hi)`` by
    :func:`~sparank.attacks.base.verify_points`, ``x(eps_lo)`` classified ``y`` (argmax; censored: at
    ``eps_max``). A verified ``x(eps_hi)`` whose ``eps_lo`` fails is narrowed again on ``model`` from the
    scan point before it (:func:`_narrowed_on`); the other inputs that fail are searched again on
    ``model`` itself, from 0."""
    device = inputs.device
    status = crossing.status.to(device)
    moving = (status == int(Status.FOOLED)) | (status == int(Status.CENSORED))
    idx = torch.nonzero(moving).squeeze(1)
    lo = crossing.eps_lo.to(device)[idx]
    _, _, wrong_lo = _evaluate(model, ray_points(inputs[idx], directions[idx], lo, bounds), labels[idx], idx, batch_size)
    good = ~wrong_lo
    rows = len(idx)
    fooled = torch.nonzero(status[idx] == int(Status.FOOLED)).squeeze(1)
    if len(fooled):
        who = idx[fooled]
        points = ray_points(inputs[who], directions[who], crossing.eps_hi.to(device)[who], bounds)
        ok, _, r = verify_points(model, points, labels[who], who, batch_size)
        rows += r
        good[fooled] &= ok
    eps_lo, eps_hi, st = crossing.eps_lo.clone(), crossing.eps_hi.clone(), crossing.status.clone()
    # a verified x(eps_hi) whose eps_lo the model does not classify y (a lower end in the noise band, where the
    # copy's rounding and the model's differ): the bracket is narrowed again on the model from the scan point
    # before it, if the model classifies that one y (the copy's scan below it stands, PROTOCOL §2)
    near = torch.zeros_like(good)
    if len(fooled):
        near[fooled] = ok & wrong_lo[fooled]
    if bool(near.any()):
        who = idx[near]
        fixed, r = _narrowed_on(model, inputs, labels, directions, who, crossing, bounds, resolution, tol, batch_size)
        rows += r
        eps_lo[who.cpu()], eps_hi[who.cpu()] = fixed.eps_lo, fixed.eps_hi
        good[near] = fixed.ok.to(device)
    bad = idx[~good]
    if len(bad):
        again = first_crossing(
            model, inputs[bad], labels[bad], directions[bad], bounds=bounds, eps_max=eps_max, resolution=resolution, tol=tol,
            batch_size=batch_size,
        )  # fmt: skip
        b = bad.cpu()
        eps_lo[b], eps_hi[b], st[b] = again.eps_lo, again.eps_hi, again.status
        rows += again.forward_rows
    return Crossing(eps_lo, eps_hi, st, crossing.forward_rows + rows)
