"""Projected gradient descent: a fixed-ε attack, and the minimal ε it finds by a search over ε (PROTOCOL §3).

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083.

:func:`pgd` is the fixed-ε attack (Foolbox's ``LinfPGD`` / ``L2PGD``): from a
start inside the ε-ball, ``steps`` steps of size ``rel_stepsize · ε`` along
the steepest-ascent direction of the loss (``sign(g)`` in L∞, ``g/||g||_2``
in L2, ``g`` the saturation-free input gradient of cross-entropy), each
iterate projected onto the ε-ball around the input and clamped to the box. An
input stops at the first iterate the model misclassifies.

:class:`PGD` turns it into a minimisation attack: per input, a bisection over
ε that starts from the FGSM ε* (an adversarial already known), so that the ε
it reports is never above FGSM's. :func:`pgd_minimal` is that search as a
function, with a ``gradient_model`` for transfer attacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from sparank.attacks.base import (
    Bounds,
    Found,
    MinimalAttack,
    Norm,
    Progress,
    ball_tolerance,
    check_norm,
    check_refine,
    distances,
    input_gradient,
    logits_of,
    min_tol,
    normalise,
    project,
    verify_points,
)
from sparank.attacks.fgsm import fgsm_direction, ray_points, ray_search


def _per_input(eps: float | Tensor, n: int, device: torch.device) -> Tensor:
    """``eps`` as an ``(N,)`` float64 tensor on ``device``; ValueError unless finite and >= 0."""
    if isinstance(eps, Tensor):
        if eps.ndim > 1 or (eps.ndim == 1 and len(eps) != n):
            raise ValueError(f"eps must be a number or shaped (N,) = ({n},), got shape {tuple(eps.shape)}")
        radius = eps.detach().to(device=device, dtype=torch.float64).expand(n).clone()
    elif isinstance(eps, int | float) and not isinstance(eps, bool):
        radius = torch.full((n,), float(eps), dtype=torch.float64, device=device)
    else:
        raise ValueError(f"eps must be a number or a tensor shaped (N,), got {type(eps).__name__}")
    if n and not bool((torch.isfinite(radius) & (radius >= 0)).all()):
        raise ValueError("eps must be finite and >= 0 for every input")
    return radius


def _view(values: Tensor, like: Tensor) -> Tensor:
    """Per-input ``values`` ``(N,)`` in ``like``'s dtype and device, shaped to broadcast over ``like`` ``(N, *shape)``."""
    return values.to(device=like.device, dtype=like.dtype).view((-1,) + (1,) * (like.ndim - 1))


def _into_ball(points: Tensor, inputs: Tensor, eps: Tensor, norm: Norm, bounds: Bounds) -> Tensor:
    """``points`` projected onto the ``norm`` ball of radius ``eps`` ``(N,)`` around ``inputs``, then clamped to the box.

    L∞ is the coordinate-wise clamp to ``[x − ε, x + ε]`` (:func:`~sparank.attacks.base.project`
    of ``points − x``, written so that a coordinate already inside keeps its exact value);
    L2 rescales ``points − x`` with :func:`~sparank.attacks.base.project`.
    """
    if norm == "linf":
        radius = _view(eps, inputs)
        inside = torch.minimum(torch.maximum(points, inputs - radius), inputs + radius)
    else:
        inside = inputs + project(points - inputs, eps, norm)
    return inside.clamp_(bounds[0], bounds[1])


def _random_delta(inputs: Tensor, eps: Tensor, scalar: float | None, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A random perturbation in the ε-ball: uniform per coordinate (L∞), uniform in the ball (L2); inputs' dtype.

    Drawn from ``generator`` (float64, on its device), or from the global RNG when it is None. A
    scalar L∞ ``eps`` with the global RNG draws ``uniform_(−ε, ε)`` in the inputs' dtype, as adversarial
    training always has, so that seeded training runs repeat the same numbers.
    """
    if generator is None and scalar is not None and norm == "linf":
        return torch.empty_like(inputs).uniform_(-scalar, scalar)
    device = inputs.device if generator is None else generator.device
    shape = (-1,) + (1,) * (inputs.ndim - 1)
    radius = eps.to(device).view(shape)
    if norm == "linf":
        u = torch.rand(inputs.shape, generator=generator, dtype=torch.float64, device=device)
        delta = (2.0 * u - 1.0) * radius
    else:
        direction = normalise(torch.randn(inputs.shape, generator=generator, dtype=torch.float64, device=device), "l2")
        dim = max(inputs[0].numel(), 1) if len(inputs) else 1
        length = torch.rand(len(inputs), generator=generator, dtype=torch.float64, device=device) ** (1.0 / dim)
        delta = direction * length.view(shape) * radius
    return delta.to(device=inputs.device, dtype=inputs.dtype)


@torch.no_grad()
def _misclassified(model: nn.Module, points: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """``argmax model(points) != labels`` ``(N,)`` bool, ``batch_size`` rows per forward pass."""
    if not len(points):
        return torch.zeros(0, dtype=torch.bool, device=points.device)
    return torch.cat(
        [
            logits_of(model, points[s : s + batch_size], labels[s : s + batch_size]).argmax(dim=1) != labels[s : s + batch_size]
            for s in range(0, len(points), batch_size)
        ]
    )


def _iterate(
    model: nn.Module,
    source: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    eps: Tensor,
    start: Tensor,
    *,
    norm: Norm,
    bounds: Bounds,
    steps: int,
    rel_stepsize: float,
    batch_size: int,
    early_stop: bool,
) -> tuple[Tensor, Tensor, int]:
    """The PGD loop from ``start`` (already in the ball and the box): (points, success ``(N,)``, rows evaluated).

    With ``early_stop`` each iterate (the start included) is checked on ``model`` and an input that
    is misclassified keeps that iterate and leaves; the others take a step along ``source``'s gradient.
    Without, every input takes all ``steps`` and success is checked at the last iterate only.
    """
    points = start.clone()
    step = rel_stepsize * eps  # (N,) float64, ε per input times the relative step
    active = torch.arange(len(inputs), device=inputs.device)
    success = torch.zeros(len(inputs), dtype=torch.bool, device=inputs.device)
    rows = 0
    for t in range(steps + 1):
        if not len(active):
            break
        if early_stop or t == steps:
            wrong = _misclassified(model, points[active], labels[active], batch_size)
            rows += len(active)
            success[active[wrong]] = True
            active = active[~wrong]
        if t == steps or not len(active):
            break
        x_t, x, y = points[active], inputs[active], labels[active]
        direction = normalise(input_gradient(source, x_t, y, batch_size=batch_size), norm)
        rows += len(active)
        points[active] = _into_ball(x_t + _view(step[active], x_t) * direction, x, eps[active], norm, bounds)
    return points, success, rows


def _check_pgd_settings(steps: object, rel_stepsize: object, batch_size: object) -> None:
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0 (gradient steps per run), got {steps!r}")
    if not (isinstance(rel_stepsize, int | float) and not isinstance(rel_stepsize, bool) and 0 < rel_stepsize < math.inf):
        raise ValueError(f"rel_stepsize must be a positive number (the step as a fraction of ε, e.g. 2.5/steps), got {rel_stepsize!r}")
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def pgd(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    eps: float | Tensor,
    *,
    norm: Norm = "linf",
    bounds: Bounds | tuple[float, float] = (0.0, 1.0),
    steps: int,
    rel_stepsize: float,
    random_start: bool = False,
    start: Tensor | None = None,
    generator: torch.Generator | None = None,
    gradient_model: nn.Module | None = None,
    early_stop: bool = True,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Fixed-ε PGD (Madry et al. 2018, https://arxiv.org/abs/1706.06083; Foolbox's ``LinfPGD`` / ``L2PGD``).

    From the start ``x_0`` (``inputs`` itself, ``start``, or a random point of the
    ball), ``x_{t+1} = Π(x_t + α·normalise(g(x_t)))``: ``g`` the input gradient of
    cross-entropy of ``gradient_model`` (:func:`~sparank.attacks.base.input_gradient`),
    ``normalise`` its sign (L∞) or unit-L2 form, ``α = rel_stepsize · ε`` per input, and
    ``Π`` the projection onto the ``norm`` ball of radius ε around the input followed
    by the clamp to ``bounds``.

    With ``early_stop`` (default) success is judged on ``model`` at every iterate,
    the start included: per input the FIRST iterate that ``model`` misclassifies
    (``argmax != y``, ties to the lowest class index) is kept and that input stops
    moving; an input never misclassified keeps its last iterate. Without it (adversarial
    training), every input takes all ``steps`` and success is that of the last iterate.
    Success is an ``argmax`` in the batch it was evaluated in, not verified beyond
    floating-point noise: :func:`sparank.robustness.measure` does that.

    Args:
        model: ``(N, *shape)`` to logits ``(N, K)``, called as it is (put it in eval mode): success is judged on it.
        inputs: ``(N, *shape)`` in ``bounds``; not modified. ``labels``: ``(N,)`` true labels.
        eps: the radius, a number or per input ``(N,)``; finite and >= 0.
        norm: ``"linf"`` or ``"l2"``.
        bounds: the box ``(lo, hi)`` every iterate is clamped to.
        steps: gradient steps (0: the start alone).
        rel_stepsize: the step as a fraction of ε (Madry et al.: 2.5 / steps).
        random_start: start uniform in the L∞ ball, or at a uniformly random point of the
            L2 ball, clamped to the box; from ``generator`` (the global RNG if None).
        start: ``(N, *shape)`` the first iterate instead (e.g. the FGSM point ``clip(x + ε·d)``);
            projected onto the ball and the box. Not with ``random_start``.
        gradient_model: the model whose gradients drive the steps (default ``model``): a
            transfer attack steps along a source model's gradient and is judged on the target.
        early_stop: keep each input's first misclassified iterate (default), or run every step.
        batch_size: rows per forward / backward pass.

    Returns:
        ``(x_adv, success)``: ``(N, *shape)`` points in the ball and the box (detached, the inputs'
        dtype), and ``(N,)`` bool, ``model`` misclassifies ``x_adv``.

    Raises:
        ValueError: bad settings, or non-finite logits or gradients (the inputs are named).

    Only the inputs get gradients: the parameters' ``.grad`` are left untouched.
    """
    points, success, _ = _pgd(
        model, inputs, labels, eps, norm=norm, bounds=bounds, steps=steps, rel_stepsize=rel_stepsize, random_start=random_start,
        start=start, generator=generator, gradient_model=gradient_model, early_stop=early_stop, batch_size=batch_size,
    )  # fmt: skip
    return points, success


def _pgd(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    eps: float | Tensor,
    *,
    norm: Norm,
    bounds: Bounds | tuple[float, float],
    steps: int,
    rel_stepsize: float,
    random_start: bool,
    start: Tensor | None,
    generator: torch.Generator | None,
    gradient_model: nn.Module | None,
    early_stop: bool,
    batch_size: int,
) -> tuple[Tensor, Tensor, int]:
    """:func:`pgd`, also returning the rows it evaluated."""
    check_norm(norm)
    _check_pgd_settings(steps, rel_stepsize, batch_size)
    box = Bounds(float(bounds[0]), float(bounds[1]))
    if not box.lo < box.hi:
        raise ValueError(f"bounds must satisfy lo < hi, got {tuple(bounds)}")
    if labels.ndim != 1 or len(labels) != len(inputs):
        raise ValueError(f"labels must be shaped (N,) = ({len(inputs)},), got {tuple(labels.shape)}")
    if random_start and start is not None:
        raise ValueError("pass either start or random_start=True, not both (a random start replaces the given one)")
    x = inputs.detach()
    radius = _per_input(eps, len(x), x.device)
    scalar = float(eps) if isinstance(eps, int | float) else None
    if start is not None:
        if tuple(start.shape) != tuple(x.shape):
            raise ValueError(f"start must be shaped like the inputs {tuple(x.shape)}, got {tuple(start.shape)}")
        first = start.detach().to(device=x.device, dtype=x.dtype)
    elif random_start:
        first = x + _random_delta(x, radius, scalar, norm, generator)
    else:
        first = x.clone()
    first = _into_ball(first, x, radius, norm, box)
    source = model if gradient_model is None else gradient_model
    return _iterate(
        model, source, x, labels, radius, first, norm=norm, bounds=box, steps=steps, rel_stepsize=float(rel_stepsize),
        batch_size=batch_size, early_stop=early_stop,
    )  # fmt: skip


def pgd_minimal(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    bounds: Bounds | tuple[float, float] = (0.0, 1.0),
    norm: Norm = "linf",
    eps_max: float = 0.5,
    steps: int = 20,
    rel_stepsize: float = 0.125,
    restarts: int = 0,
    seed: int = 0,
    search_steps: int = 12,
    fgsm_resolution: float = 1e-2,
    fgsm_tol: float = 1e-6,
    batch_size: int = 256,
    progress: Progress | None = None,
    gradient_model: nn.Module | None = None,
) -> Found:
    """The smallest ε at which :func:`pgd` finds an adversarial, per input, by a batched bisection over ε.

    1. **FGSM first.** The FGSM ray search (:func:`~sparank.attacks.fgsm.ray_search` along
       :func:`~sparank.attacks.fgsm.fgsm_direction` of ``gradient_model``, judged on ``model``,
       at ``fgsm_resolution`` and ``fgsm_tol``) gives per input an upper end ``hi`` = its ε*
       with a verified adversarial, so the result is never above FGSM's. Inputs with no FGSM
       crossing up to ``eps_max`` get one PGD run at ``eps_max``: a verified success there
       gives ``hi = eps_max``, a failure leaves the input not found (``eps_lo = eps_max``).
    2. **Bisection** on ``[lo, hi]``, ``lo = 0``, for ``search_steps`` steps, every unresolved input
       advancing together: at ``mid = (lo + hi)/2``, :func:`pgd` from the FGSM point
       ``clip(x + mid·d)`` (then ``restarts`` random starts from a ``torch.Generator`` seeded
       ``seed``, for the inputs still failing); a success that
       :func:`~sparank.attacks.base.verify_points` accepts (misclassified beyond floating-point
       noise in any batching) gives ``hi = mid`` and becomes the input's adversarial, anything
       else gives ``lo = mid``. An input leaves when ``hi − lo`` is below what its dtype resolves.

    **What it guarantees.** Success of PGD need not be monotone in ε, so this is not a bracket of
    the minimal adversarial distance. ``eps`` is an ε at which an adversarial inside the closed
    ε-ball (and the box) was found and verified: an upper bound on the minimal adversarial
    distance, and at most the FGSM ε* at the same ``fgsm_resolution`` / ``fgsm_tol``.
    ``eps_lo`` is the largest ε tried below ``eps`` at which PGD failed (0 if none): a fact about
    this attack, not a proof that no adversarial exists there. The random draws of ``restarts``
    depend on which inputs are searched together (same inputs and settings: same results).

    Args:
        model: the model measured (eval mode); ``inputs`` ``(N, *shape)`` in ``bounds``, classified
            ``labels`` ``(N,)`` by it; nothing is modified, parameters' ``.grad`` are untouched.
        gradient_model: the model whose gradients give the FGSM direction and the PGD steps
            (default ``model``), for transfer attacks: success is always judged on ``model``.
        Others: as :class:`PGD`.

    Returns:
        :class:`~sparank.attacks.base.Found` with ``eps`` the ball radius (float64; ``inf`` where not
        found), raised to the float64 distance of the adversarial where rounding puts it further out
        than :func:`~sparank.attacks.base.ball_tolerance`; ``no_direction`` where the input gradient of
        ``gradient_model`` is exactly zero and nothing was found.
    """
    check_norm(norm)
    _check_pgd_settings(steps, rel_stepsize, batch_size)
    if not (isinstance(eps_max, int | float) and 0 < eps_max < math.inf):
        raise ValueError(f"eps_max must be a positive number, got {eps_max!r}")
    if not (isinstance(fgsm_resolution, int | float) and 0 < fgsm_resolution <= eps_max):
        raise ValueError(f"fgsm_resolution must be in (0, eps_max={eps_max}], got {fgsm_resolution!r}")
    box = Bounds(float(bounds[0]), float(bounds[1]))
    x, y = inputs.detach(), labels
    n, device = len(x), x.device
    source = model if gradient_model is None else gradient_model
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws on any device

    directions = fgsm_direction(source, x, y, norm=norm, batch_size=batch_size)
    tol = max(float(fgsm_tol), min_tol(x.dtype, box, eps_max))
    ray = ray_search(model, x, y, directions, float(fgsm_resolution), tol, box, eps_max, batch_size)
    rows = ray.forward_rows
    found = ray.found.to(device).clone()
    hi = ray.eps.to(device=device, dtype=torch.float64).clone()  # inf where not found
    lo = torch.zeros(n, dtype=torch.float64, device=device)
    best = ray.adversarials.clone()
    slack = ball_tolerance(x.dtype, box, eps_max, norm, x[0].numel() if n else 1)

    def attempt(idx: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """PGD at ``eps`` for inputs ``idx``, FGSM start then random restarts: (verified, points, claimed radius)."""
        nonlocal rows
        xs, ys = x[idx], y[idx]
        start = ray_points(xs, directions[idx], eps, box)
        points, success, r = _pgd(
            model, xs, ys, eps, norm=norm, bounds=box, steps=steps, rel_stepsize=rel_stepsize, random_start=False, start=start,
            generator=None, gradient_model=source, early_stop=True, batch_size=batch_size,
        )  # fmt: skip
        rows += r
        for _ in range(restarts):
            todo = torch.nonzero(~success).squeeze(1)
            if not len(todo):
                break
            more, more_success, r = _pgd(
                model, xs[todo], ys[todo], eps[todo], norm=norm, bounds=box, steps=steps, rel_stepsize=rel_stepsize,
                random_start=True, start=None, generator=generator, gradient_model=source, early_stop=True, batch_size=batch_size,
            )  # fmt: skip
            rows += r
            points[todo], success[todo] = more, more_success
        hit = torch.nonzero(success).squeeze(1)
        if len(hit):
            accepted, _, r = verify_points(model, points[hit], ys[hit], idx[hit], batch_size)
            rows += r
            success[hit] = accepted
        dist = distances(points, xs, norm)
        claimed = torch.where(dist > eps + slack, dist, eps)
        return success, points, claimed

    resolved = 0

    def tick(count: int) -> None:
        nonlocal resolved
        resolved += count
        if progress is not None and count:
            progress(resolved, n)

    # inputs the FGSM ray does not fool: one try at eps_max
    missing = torch.nonzero(~found).squeeze(1)
    if len(missing):
        ok, points, claimed = attempt(missing, torch.full((len(missing),), float(eps_max), dtype=torch.float64, device=device))
        ok &= claimed <= eps_max
        found[missing[ok]] = True
        hi[missing[ok]] = claimed[ok]
        best[missing[ok]] = points[ok]
        lo[missing[~ok]] = eps_max
        tick(int((~ok).sum()))

    # bisection, every found input at once
    floor = min_tol(x.dtype, box, eps_max)
    active = torch.nonzero(found).squeeze(1)
    for _ in range(search_steps):
        open_ = hi[active] - lo[active] > floor
        tick(int((~open_).sum()))
        active = active[open_]
        if not len(active):
            break
        mid = 0.5 * (lo[active] + hi[active])
        ok, points, claimed = attempt(active, mid)
        ok &= claimed < hi[active]
        better = active[ok]
        hi[better] = claimed[ok]
        best[better] = points[ok]
        lo[active[~ok]] = mid[~ok]
    if progress is not None:
        progress(n, n)
    no_direction = ~found & (directions.flatten(1) == 0).all(dim=1)
    return Found(
        adversarials=best,
        found=found.cpu(),
        eps=torch.where(found, hi, math.inf).cpu(),
        eps_lo=lo.cpu(),
        no_direction=no_direction.cpu(),
        forward_rows=rows,
    )


@dataclass(frozen=True, kw_only=True)
class PGD(MinimalAttack):
    """The minimal ε of PGD per input (Madry et al. 2018, https://arxiv.org/abs/1706.06083): :func:`pgd_minimal`.

    A bisection over ε from the FGSM ε* downwards, :func:`pgd` at each ε from the FGSM
    point ``clip(x + ε·d)``. The claimed radius ``eps`` is the ε of the ball its verified
    adversarial lies in: an upper bound on the minimal adversarial distance, never above
    FGSM's ε* at the same ``fgsm_resolution`` / ``fgsm_tol``; ``eps_lo`` is the largest ε
    tried below it where PGD failed (not a proof: success need not be monotone in ε).

    Settings:
        steps: gradient steps per PGD run (20).
        rel_stepsize: the step as a fraction of ε (0.125 = 2.5 / 20: Madry et al.'s 2.5·ε/steps,
            enough to cross the ball from side to side 2.5 times).
        restarts: extra runs from uniformly random starts in the ball at each ε, for the inputs
            the FGSM-started run failed on (0: deterministic).
        seed: seeds the ``torch.Generator`` of the random starts.
        search_steps: bisection steps (12: ε to about ``hi / 4096``).
        fgsm_resolution: scan step of the FGSM ray search that gives the first upper end.
        fgsm_tol: bracket width of that search (1e-6, FGSM's default, so PGD's ε is never
            above ``FGSM()``'s ε*).
    """

    name: ClassVar[str] = "pgd"
    steps: int = 20
    rel_stepsize: float = 0.125
    restarts: int = 0
    seed: int = 0
    search_steps: int = 12
    fgsm_resolution: float = 1e-2
    fgsm_tol: float = 1e-6
    refine: int = 30  # bisections along x → x_adv after the search (measure pulls the adversarial back to a boundary; 0: off)

    def __post_init__(self) -> None:
        def integer(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def number(value: object) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

        if not (integer(self.steps) and self.steps >= 1):
            raise ValueError(f"steps must be an integer >= 1 (gradient steps per PGD run, e.g. 20), got {self.steps!r}")
        if not (number(self.rel_stepsize) and self.rel_stepsize > 0):
            raise ValueError(
                f"rel_stepsize must be a positive number (the step as a fraction of ε, e.g. 2.5/steps), got {self.rel_stepsize!r}"
            )
        if not (integer(self.restarts) and self.restarts >= 0):
            raise ValueError(f"restarts must be an integer >= 0 (extra random-start runs per ε), got {self.restarts!r}")
        if not (integer(self.seed) and self.seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not (integer(self.search_steps) and self.search_steps >= 0):
            raise ValueError(f"search_steps must be an integer >= 0 (bisection steps over ε, e.g. 12), got {self.search_steps!r}")
        check_refine(self.refine)
        if not (number(self.fgsm_resolution) and self.fgsm_resolution > 0):
            raise ValueError(f"fgsm_resolution must be a positive number, got {self.fgsm_resolution!r}")
        if not (number(self.fgsm_tol) and self.fgsm_tol >= 1e-12):
            raise ValueError(f"fgsm_tol must be at least 1e-12 (float64 brackets), got {self.fgsm_tol!r}")

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
        return pgd_minimal(
            model, inputs, labels, bounds=bounds, norm=norm, eps_max=eps_max, steps=self.steps, rel_stepsize=self.rel_stepsize,
            restarts=self.restarts, seed=self.seed, search_steps=self.search_steps, fgsm_resolution=self.fgsm_resolution,
            fgsm_tol=self.fgsm_tol, batch_size=batch_size, progress=progress,
        )  # fmt: skip
