"""Linear classifiers: ε* along the FGSM ray in closed form (PROTOCOL §7).

For an affine classifier ``f(x) = W x + b`` (``W`` shaped ``(K, D)``) the
FGSM direction of cross-entropy at the true label ``y`` is known in closed
form, ``d = sign(g)`` (L∞) or ``d = g / ||g||_2`` (L2) with
``g = Wᵀ(softmax(f(x)) − e_y)`` (Goodfellow, Shlens & Szegedy 2015,
https://arxiv.org/abs/1412.6572), and so is the whole ray
``x(ε) = clip(x + ε·d, lo, hi)``: coordinate ``i`` moves at speed ``d_i``
until it reaches the bound it moves towards, at

    t_i = (hi − x_i) / d_i  if d_i > 0,   t_i = (lo − x_i) / d_i  if d_i < 0,

and stays there (``t_i = ∞`` if ``d_i = 0``: it never moves; ``t_i = 0`` if
it already sits on that bound). Between consecutive breakpoints the logits
are affine in ε,

    z(ε) = z(x) + ε·Σ_{i: t_i > ε} W_i d_i + Σ_{i: t_i ≤ ε} W_i d_i t_i,

so walking the sorted breakpoints and solving one linear equation per
segment and class gives the first ε at which the prediction leaves ``y``,
exactly (up to float64 rounding). :func:`linear_fgsm_robustness` does this
for a batch at once and returns the same :class:`~sparank.robustness.RobustnessResult`
as the general, model-agnostic :func:`~sparank.robustness.fgsm_robustness`.

What "misclassified" means, exactly. The prediction is ``argmax_k z_k`` with
ties going to the *lowest* class index (``torch.argmax``, which the general
measure uses). So at a tie between ``y`` and a class ``j < y`` the input is
misclassified; at a tie with ``j > y`` it is not. ε* is the *infimum* of the
misclassified part of ``(0, eps_max]`` (where the margin to a class ``j > y``
crosses zero the set of misclassified ε is open, so the infimum is the
crossing itself, the point the general measure's brackets close on). In
exact results the bracket collapses to that point: ``eps_lo = eps_hi = ε*``,
``tol = resolution = 0``.

Beside it, two optimal perturbations, each named for what it is:
:func:`unboxed_minimal_perturbation`, the minimal L∞ (or L2) perturbation when
the input may leave the box, ``min_{k≠y} (z_y − z_k) / ||w_y − w_k||_1``
(``||·||_2`` for L2), and :func:`boxed_minimal_perturbation`, the minimal L∞
perturbation that keeps the input in the box (a linear program per competing
class, solved exactly by a greedy walk). The clipped FGSM ε* is never below
the boxed one, which is never below the unboxed one.

Scale. For a binary model (two logits) the FGSM direction is
``sign(w_k − w_y)`` at every scale, so ε* is unchanged when ``(W, b)`` is
multiplied by ``c > 0``. For ``K > 2`` the direction
``sign(Σ_{j≠y} p_j (w_j − w_y))`` weighs the competitors by the softmax, whose
temperature is the scale: scaling ``(W, b)`` changes the direction and so ε*
(for a fixed direction the crossing itself is scale-free).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sparank.attacks import Norm, check_inputs, check_norm
from sparank.robustness import CENSORED, CLEAN_WRONG, FOOLED, NO_DIRECTION, RobustnessResult


def affine_parameters(model: nn.Module) -> tuple[Tensor, Tensor]:
    """``(W, b)`` of a model that is an affine map of its flattened input, as float64 copies.

    Accepts ``build_model("linear", ...)`` (``Flatten`` then one ``nn.Linear``), a
    bare ``nn.Linear``, or any ``nn.Sequential`` of ``Flatten``/``Identity`` and exactly
    one ``nn.Linear``. Parametrised weights are read through ``module.weight``.

    Returns:
        ``W`` ``(K, D)`` and ``b`` ``(K,)`` (zeros if the layer has no bias), float64, on the CPU.

    Raises:
        ValueError: the model is not affine in that sense (names what was found).
    """
    linears: list[nn.Linear] = []
    for name, module in model.named_modules():
        if "parametrizations" in name.split("."):
            continue  # the inside of a torch.nn.utils.parametrize parametrisation: read through .weight
        if isinstance(module, nn.Linear):
            linears.append(module)
        elif not isinstance(module, (nn.Sequential, nn.Flatten, nn.Identity)) and name:
            raise ValueError(
                f"model is not affine: it has a {type(module).__name__} at {name!r}; "
                "pass a model made of Flatten and one nn.Linear (build_model('linear', ...))"
            )
    if isinstance(model, nn.Linear):
        linears = [model]
    elif not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be an nn.Sequential of Flatten and one nn.Linear (or an nn.Linear), got {type(model).__name__}")
    if len(linears) != 1:
        raise ValueError(f"model must have exactly one nn.Linear layer, found {len(linears)}; use build_model('linear', ...)")
    layer = linears[0]
    with torch.no_grad():
        weight = layer.weight.detach().to(device="cpu", dtype=torch.float64).clone()
        if layer.bias is None:
            bias = torch.zeros(weight.shape[0], dtype=torch.float64)
        else:
            bias = layer.bias.detach().to(device="cpu", dtype=torch.float64).clone()
    return weight, bias


def _check_affine(weight: Tensor, bias: Tensor, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate shapes; return float64 ``W (K, D)``, ``b (K,)``, flattened inputs ``(N, D)``, int64 labels."""
    if weight.ndim != 2:
        raise ValueError(f"weight must be a matrix shaped (K, D), got shape {tuple(weight.shape)}")
    k, dim = weight.shape
    if k < 2:
        raise ValueError(f"weight must have at least 2 rows (classes), got {k}; for a binary w·x + b use binary_as_multiclass(w, b)")
    if bias.shape != (k,):
        raise ValueError(f"bias must be shaped ({k},) to match weight {tuple(weight.shape)}, got {tuple(bias.shape)}")
    if inputs.ndim < 2 or math.prod(inputs.shape[1:]) != dim:
        raise ValueError(f"inputs must be shaped (N, ...) with {dim} values per input to match weight, got {tuple(inputs.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"labels must be class indices in [0, {k}), got values in [{int(labels.min())}, {int(labels.max())}]")
    w = weight.detach().to(device="cpu", dtype=torch.float64)
    b = bias.detach().to(device="cpu", dtype=torch.float64)
    x = inputs.detach().to(device="cpu", dtype=torch.float64).reshape(len(inputs), dim)
    return w, b, x, labels.detach().to(device="cpu", dtype=torch.int64)


def affine_gradient_direction(weight: Tensor, bias: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
    """A positive multiple of the input-gradient of cross-entropy of ``W x + b``, exact at any margin; ``(N, D)`` float64.

    ``∂CE/∂x = Wᵀ(softmax(z) − e_y) = Σ_{j≠y} p_j (w_j − w_y)`` (because ``1 − p_y = Σ_{j≠y} p_j``).
    With ``q_j = exp(z_j − max_{k≠y} z_k)`` each ``p_j = q_j · exp(max_{k≠y} z_k − logsumexp z)``,
    the same positive factor for every ``j``; this returns ``Σ_{j≠y} q_j (w_j − w_y)``, the
    gradient divided by that factor. At least one ``q_j`` is 1, so nothing underflows
    to zero however large the margin ``z_y − max_{k≠y} z_k`` is: ``1 − p_y`` is never formed (it
    rounds to 0 in float64 once the margin is above about 37) and no ``p_j`` is needed (each
    underflows to 0 above about 745). The sign and the L2-normalised vector are those of the
    exact gradient. Zero only where the weighted sum itself is zero (e.g. every ``w_j = w_y``).
    """
    w, b, x, y = _check_affine(weight, bias, inputs, labels)
    z = x @ w.T + b  # (N, K)
    others = z.scatter(1, y[:, None], -math.inf)  # z_j for j ≠ y, −inf at y
    top = others.amax(dim=1, keepdim=True)  # max_{k≠y} z_k: finite (K >= 2)
    q = (others - top).exp()  # (N, K): q_y = 0, max_j q_j = 1
    # Σ_j q_j (w_j − w_y) = q @ W − (Σ_j q_j) w_y
    return q @ w - q.sum(dim=1, keepdim=True) * w[y]


def affine_fgsm_direction(weight: Tensor, bias: Tensor, inputs: Tensor, labels: Tensor, *, norm: Norm = "linf") -> Tensor:
    """The FGSM direction of the affine classifier ``W x + b``, in closed form, float64, exact at any margin.

    ``g ∝ Wᵀ(softmax(W x + b) − e_y)``, the input-gradient of cross-entropy, computed as
    :func:`affine_gradient_direction` does (no ``1 − p_y`` cancellation, no underflow);
    ``d = sign(g)`` (L∞) or ``g / ||g||_2`` (L2); ``d = 0`` exactly where ``g = 0``
    (reported as ``NO_DIRECTION`` by :func:`linear_fgsm_robustness`).

    For a binary model (``K = 2``) ``g = w_k − w_y`` exactly, at every scale of ``(W, b)``;
    for ``K > 2`` the weights ``q_j`` depend on the scale (the softmax temperature), and so
    does the direction.

    Args:
        weight: ``(K, D)``; bias: ``(K,)``.
        inputs: ``(N, *shape)`` with ``prod(shape) = D``.
        labels: ``(N,)`` true labels in ``[0, K)``.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        ``(N, D)`` float64 directions.
    """
    check_norm(norm)
    g = affine_gradient_direction(weight, bias, inputs, labels)
    if norm == "linf":
        return g.sign()
    length = g.norm(dim=1, keepdim=True)
    return torch.where(length > 0, g / length.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def _breakpoints(x: Tensor, d: Tensor, lo: float, hi: float, eps_max: float) -> Tensor:
    """When each coordinate of ``x + ε·d`` reaches the bound it moves towards, capped at eps_max; ``(N, D)``."""
    t = torch.full_like(x, math.inf)
    up, down = d > 0, d < 0
    t = torch.where(up, (hi - x) / torch.where(up, d, 1.0), t)
    t = torch.where(down, (lo - x) / torch.where(down, d, -1.0), t)
    # x on the bound it moves towards gives 0 exactly; with infinite bounds t stays inf.
    # Capping at eps_max only moves breakpoints the ray never reaches inside (0, eps_max].
    return t.clamp(min=0.0, max=eps_max)


def _first_crossing_exact(w: Tensor, b: Tensor, x: Tensor, y: Tensor, d: Tensor, lo: float, hi: float, eps_max: float) -> Tensor:
    """ε* per row of one batch by the breakpoint walk (float64): 0 if clean-wrong, inf if censored.

    Shapes: ``w (K, D)``, ``b (K,)``, ``x, d (B, D)``, ``y (B,)``. Returns ``(B,)``.
    """
    n, dim = x.shape
    k = w.shape[0]
    t = _breakpoints(x, d, lo, hi, eps_max)  # (B, D)
    t_sorted, order = t.sort(dim=1)
    wd = d.gather(1, order).unsqueeze(2) * w.T[order]  # (B, D, K): W_i d_i in breakpoint order
    zeros = torch.zeros(n, 1, k, dtype=torch.float64)
    # segment s (s = 0..D) runs over [tau_s, tau_{s+1}]; sorted coordinates 0..s-1 have reached their bound
    slope = torch.cat([wd.flip(1).cumsum(1).flip(1), zeros], dim=1)  # (B, D+1, K): Σ_{i >= s} W_i d_i
    offset = torch.cat([zeros, (wd * t_sorted.unsqueeze(2)).cumsum(1)], dim=1)  # Σ_{i < s} W_i d_i t_i
    tau = torch.cat([torch.zeros(n, 1, dtype=torch.float64), t_sorted, torch.full((n, 1), eps_max, dtype=torch.float64)], dim=1)
    start, end = tau[:, :-1], tau[:, 1:]  # (B, D+1)
    z0 = x @ w.T + b  # (B, K)
    z = z0.unsqueeze(1) + start.unsqueeze(2) * slope + offset  # logits at each segment start
    yy = y.view(n, 1, 1).expand(n, dim + 1, 1)
    margin = z.gather(2, yy) - z  # (B, D+1, K): z_y − z_j at segment start
    rate = slope.gather(2, yy) - slope  # its slope in ε
    classes = torch.arange(k).view(1, 1, k)
    below = classes < y.view(n, 1, 1)  # ties with these classes misclassify (argmax takes the first)
    above = classes > y.view(n, 1, 1)
    wrong_at_start = (below & (margin <= 0)) | (above & (margin < 0))
    falling = (below | above) & ~wrong_at_start & (rate < 0)
    root = start.unsqueeze(2) + margin / torch.where(falling, -rate, 1.0)
    end3 = end.unsqueeze(2)
    reaches = falling & ((below & (root <= end3)) | (above & (root < end3)))
    candidate = torch.where(wrong_at_start, start.unsqueeze(2), torch.where(reaches, root, math.inf))
    eps_star = candidate.flatten(1).amin(dim=1)
    clean_wrong = z0.argmax(dim=1) != y
    return torch.where(clean_wrong, 0.0, eps_star)


def linear_fgsm_robustness(
    weight: Tensor,
    bias: Tensor,
    inputs: Tensor,
    labels: Tensor,
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    norm: Norm = "linf",
    eps_max: float = 0.5,
    directions: Tensor | None = None,
    batch_size: int = 256,
) -> RobustnessResult:
    """Exact ε* along the FGSM ray of the affine classifier ``W x + b``, for every input (PROTOCOL §7).

    The closed-form counterpart of :func:`sparank.robustness.fgsm_robustness`:
    the same ray ``clip(x + ε·d, lo, hi)``, the same statuses, but ε* from the
    breakpoint walk described in the module docstring instead of a scan, in float64.

    Args:
        weight: ``(K, D)``; bias: ``(K,)`` (see :func:`affine_parameters` to get them from a model).
        inputs: ``(N, *shape)`` with ``prod(shape) = D``, inside ``bounds``.
        labels: ``(N,)`` true labels in ``[0, K)``.
        bounds: the input box ``(lo, hi)``, or ``None`` for the unclipped ray ``x + ε·d``.
        norm: ``"linf"`` (``d = sign(g)``) or ``"l2"`` (``d = g / ||g||_2``).
        eps_max: the largest ε considered; inputs still correct there are censored.
        directions: ``(N, *shape)`` rays to use instead of the FGSM direction (e.g. one
            computed in float32 by :func:`sparank.attacks.fgsm_direction`, or another model's
            for transfer); default: :func:`affine_fgsm_direction` in float64.
        batch_size: inputs per step of the walk (memory is about ``40·batch_size·D·K`` bytes).

    Returns:
        :class:`~sparank.robustness.RobustnessResult` with, per input, ``eps_lo = eps_hi = ε*``
        (fooled), ``0, 0`` (clean-wrong), ``eps_max, inf`` (censored) or ``eps_max, inf`` with status
        ``NO_DIRECTION`` (correct, and the direction is exactly zero); ``tol = resolution = 0``
        mark the result as exact; ``directions`` are float32, shaped like ``inputs``.

    Example:
        >>> W, b = affine_parameters(model)  # model = build_model("linear", ...)
        >>> result = linear_fgsm_robustness(W, b, x, y, eps_max=0.5)
        >>> result.summary().auc
    """
    check_norm(norm)
    if not (isinstance(eps_max, (int, float)) and math.isfinite(eps_max) and eps_max > 0):
        raise ValueError(f"eps_max must be a positive finite number, got {eps_max}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bounds is None:  # the checks of the box, with an infinite box
        check_inputs(inputs, labels, (-math.inf, math.inf))
        lo, hi = -math.inf, math.inf
    else:
        lo, hi = check_inputs(inputs, labels, bounds)
    w, b, x, y = _check_affine(weight, bias, inputs, labels)
    if directions is None:
        d = affine_fgsm_direction(w, b, x, y, norm=norm)
    else:
        if directions.shape != inputs.shape:
            raise ValueError(f"directions must be shaped like inputs {tuple(inputs.shape)}, got {tuple(directions.shape)}")
        d = directions.detach().to(device="cpu", dtype=torch.float64).reshape(x.shape)
        if not bool(torch.isfinite(d).all()):
            raise ValueError("directions contain NaN or inf")
    eps_star = torch.empty(len(x), dtype=torch.float64)
    for s in range(0, len(x), batch_size):
        sl = slice(s, s + batch_size)
        eps_star[sl] = _first_crossing_exact(w, b, x[sl], y[sl], d[sl], lo, hi, float(eps_max))
    z0 = x @ w.T + b
    clean_wrong = z0.argmax(dim=1) != y if len(x) else torch.zeros(0, dtype=torch.bool)
    # an exactly zero direction: the ray never moves; its own status, never folded into censored (PROTOCOL §2)
    no_direction = ~clean_wrong & (d == 0).all(dim=1) if len(x) else torch.zeros(0, dtype=torch.bool)
    censored = ~clean_wrong & ~no_direction & torch.isinf(eps_star)
    status = torch.full((len(x),), int(FOOLED), dtype=torch.int64)
    status[clean_wrong] = int(CLEAN_WRONG)
    status[censored] = int(CENSORED)
    status[no_direction] = int(NO_DIRECTION)
    eps_lo = torch.where(censored | no_direction, float(eps_max), eps_star)
    return RobustnessResult(
        eps_lo=eps_lo,
        eps_hi=eps_star.clone(),
        status=status,
        labels=y,
        directions=d.to(torch.float32).reshape(inputs.shape),
        norm=norm,
        eps_max=float(eps_max),
        resolution=0.0,
        tol=0.0,
    )


def model_fgsm_robustness(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    norm: Norm = "linf",
    eps_max: float = 0.5,
    batch_size: int = 256,
) -> RobustnessResult:
    """:func:`linear_fgsm_robustness` for an affine ``nn.Module`` (see :func:`affine_parameters`)."""
    weight, bias = affine_parameters(model)
    return linear_fgsm_robustness(weight, bias, inputs, labels, bounds=bounds, norm=norm, eps_max=eps_max, batch_size=batch_size)


def unboxed_minimal_perturbation(weight: Tensor, bias: Tensor, inputs: Tensor, labels: Tensor, *, norm: Norm = "linf") -> Tensor:
    """The smallest perturbation (in L∞ or L2) that changes the prediction of ``W x + b`` when the input may leave the box.

    ``min_{k≠y} (z_y − z_k) / ||w_y − w_k||_*`` with the dual norm ``||·||_1``
    for L∞ and ``||·||_2`` for L2: the distance from ``x`` to the nearest
    half-space ``{z_k ≥ z_y}``. It is reached by moving along
    ``−sign(w_y − w_k)`` (L∞), so FGSM's unclipped ε* can never be smaller,
    and equals it for a binary classifier. Inputs live in a box (pixels in
    ``[0, 1]``), and the optimal step often leaves it: then the minimal
    perturbation that stays a valid input is larger; see
    :func:`boxed_minimal_perturbation`.

    Args:
        weight: ``(K, D)``; bias: ``(K,)``; inputs: ``(N, *shape)``; labels: ``(N,)``.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        ``(N,)`` float64: 0 for clean-wrong inputs (argmax ties to the lowest index),
        ``inf`` where no class can overtake ``y`` (``w_k = w_y`` and a positive margin).
    """
    check_norm(norm)
    w, b, x, y = _check_affine(weight, bias, inputs, labels)
    z = x @ w.T + b  # (N, K)
    margin = z.gather(1, y[:, None]) - z  # (N, K)
    diff = w.unsqueeze(1) - w.unsqueeze(0)  # (K, K, D): w_c − w_k
    pair = diff.abs().sum(2) if norm == "linf" else diff.norm(dim=2)  # (K, K)
    dual = pair[y]  # (N, K): ||w_y − w_k||
    dist = torch.where(dual > 0, margin / torch.where(dual > 0, dual, 1.0), math.inf)
    dist = dist.scatter(1, y[:, None], math.inf)
    result = dist.amin(dim=1).clamp_min(0.0)
    clean_wrong = z.argmax(dim=1) != y
    return torch.where(clean_wrong, 0.0, result)


def _boxed_distance(a: Tensor, margin: Tensor, room: Tensor) -> Tensor:
    """``min ε`` with ``Σ_i |a_i|·min(ε, room_i) >= margin`` (``inf`` if even ε = ∞ falls short); all float64.

    ``a``, ``room``: ``(B, D)``; ``margin``: ``(B,)``. The left side is the most an L∞ step of size ε
    can lower ``a·x`` inside the box: coordinate ``i`` moves against ``sign(a_i)`` by at most
    ``min(ε, room_i)``. It is piecewise linear, concave and increasing in ε, with kinks at the
    ``room_i``; the walk finds the kink interval where it reaches ``margin`` and solves there.
    """
    u = a.abs()
    r, order = room.sort(dim=1)
    u = u.gather(1, order)
    cum_u = u.cumsum(1)  # Σ_{i <= j} u_i
    total_u = cum_u[:, -1:]
    reach = (u * r).cumsum(1) + r * (total_u - cum_u)  # the reduction at ε = r_(j)
    hit = reach >= margin[:, None]
    j = hit.int().argmax(dim=1, keepdim=True)  # first kink at which the margin is reached
    found = hit.any(dim=1)
    zero = torch.zeros_like(margin[:, None])
    r_prev = torch.where(j > 0, r.gather(1, (j - 1).clamp_min(0)), zero)
    reach_prev = torch.where(j > 0, reach.gather(1, (j - 1).clamp_min(0)), zero)
    slope = total_u - torch.where(j > 0, cum_u.gather(1, (j - 1).clamp_min(0)), zero)  # Σ u_i over coordinates still free
    eps = r_prev + (margin[:, None] - reach_prev) / slope.clamp_min(torch.finfo(torch.float64).tiny)
    eps = torch.minimum(eps, r.gather(1, j)).squeeze(1)  # rounding must not leave the interval
    eps = torch.where(margin <= 0, 0.0, eps)
    return torch.where(found | (margin <= 0), eps, math.inf)


def boxed_minimal_perturbation(
    weight: Tensor, bias: Tensor, inputs: Tensor, labels: Tensor, *, bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 256
) -> Tensor:
    """The smallest L∞ perturbation ``δ`` with ``x + δ`` inside the box that changes the prediction of ``W x + b``.

    For each competing class ``k`` the problem ``min ||δ||_∞`` subject to
    ``(w_y − w_k)·(x + δ) + b_y − b_k <= 0`` and ``lo <= x + δ <= hi`` is a linear
    program with a greedy solution: at budget ε coordinate ``i`` can lower the margin by
    ``|a_i|·min(ε, room_i)`` (``a = w_y − w_k``; ``room_i = x_i − lo`` if ``a_i > 0``,
    ``hi − x_i`` if ``a_i < 0``), so the smallest ε whose total reaches the margin is found
    by sorting the rooms (a fractional-knapsack-like walk, :func:`_boxed_distance`). The
    answer is the minimum over ``k``. It is at least :func:`unboxed_minimal_perturbation`,
    and the clipped FGSM ε* (:func:`linear_fgsm_robustness` with the same box) is at least it.
    It is the infimum: at a tie with a class ``k > y`` the prediction is still ``y``.

    Args:
        weight: ``(K, D)``; bias: ``(K,)``; inputs: ``(N, *shape)`` inside ``bounds``; labels: ``(N,)``.
        bounds: the input box ``(lo, hi)``.
        batch_size: inputs per step (memory about ``50·batch_size·K·D`` bytes).

    Returns:
        ``(N,)`` float64: 0 for clean-wrong inputs, ``inf`` where no point of the box changes the prediction.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lo, hi = check_inputs(inputs, labels, bounds)
    w, b, x, y = _check_affine(weight, bias, inputs, labels)
    k = w.shape[0]
    out = torch.empty(len(x), dtype=torch.float64)
    for s in range(0, len(x), batch_size):
        xb, yb = x[s : s + batch_size], y[s : s + batch_size]
        n = len(xb)
        a = (w[yb].unsqueeze(1) - w.unsqueeze(0)).reshape(n * k, -1)  # (n·K, D): w_y − w_k
        xk = xb.repeat_interleave(k, dim=0)
        room = torch.where(a > 0, xk - lo, torch.where(a < 0, hi - xk, 0.0))
        z = xb @ w.T + b
        margin = (z.gather(1, yb[:, None]) - z).reshape(-1)
        dist = _boxed_distance(a, margin, room).reshape(n, k)
        dist = dist.scatter(1, yb[:, None], math.inf)
        out[s : s + n] = dist.amin(dim=1)
    clean_wrong = (x @ w.T + b).argmax(dim=1) != y if len(x) else torch.zeros(0, dtype=torch.bool)
    return torch.where(clean_wrong, 0.0, out)


def binary_as_multiclass(w: Tensor, b: float | Tensor) -> tuple[Tensor, Tensor]:
    """The binary classifier ``sign(w·x + b)`` as two logits ``(−f/2, f/2)``: ``W (2, D)``, ``b (2,)``, float64.

    Class 0 is ``y = −1`` and class 1 is ``y = +1`` (map labels with ``(y + 1) // 2``).
    Softmax cross-entropy on these logits is the logistic loss ``log(1 + exp(−y f))``,
    so the FGSM direction is ``−y·sign(w)``. At ``f = 0`` the argmax tie goes to class 0 (``−1``).
    """
    w64 = torch.as_tensor(w, dtype=torch.float64).reshape(-1)
    b64 = torch.as_tensor(b, dtype=torch.float64).reshape(())
    return torch.stack([-w64 / 2, w64 / 2]), torch.stack([-b64 / 2, b64 / 2])


def binary_eps_star_unclipped(w: Tensor, b: float | Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
    """PROTOCOL §7's formula ``ε* = y(w·x + b) / ||w||_1`` for ``y ∈ {−1, +1}`` (no box), float64 ``(N,)``.

    Negative values mean the input is misclassified (the FGSM ε* is then 0).
    """
    w64 = torch.as_tensor(w, dtype=torch.float64).reshape(-1)
    x = torch.as_tensor(inputs, dtype=torch.float64).reshape(len(inputs), -1)
    y = torch.as_tensor(labels, dtype=torch.float64)
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("labels must be -1 or +1 for a binary classifier")
    return y * (x @ w64 + float(b)) / w64.abs().sum()


def fit_l1_logistic(
    x: Tensor, y: Tensor, num_classes: int, lam: float, *, tol: float = 1e-4, max_iter: int = 1000, seed: int = 0
) -> tuple[Tensor, Tensor, dict[str, float | int | bool]]:
    """Multinomial logistic regression minimising ``mean CE + λ·||W||_1`` (bias not penalised), by scikit-learn's SAGA.

    scikit-learn's ``LogisticRegression`` with a pure L1 penalty minimises
    ``C·Σ_n CE_n + ||W||_1``; dividing by ``C·n`` gives the objective above with
    ``C = 1/(λ·n)``. SAGA (Defazio et al. 2014, https://arxiv.org/abs/1407.0202)
    starts from zero weights and stops when the weights change by less than ``tol``
    in an epoch, or after ``max_iter`` epochs (then ``converged`` is False).

    Args:
        x: ``(n, *shape)`` training inputs; y: ``(n,)`` labels in ``[0, num_classes)``.
        lam: λ > 0.
        seed: SAGA's sampling order.

    Returns:
        ``(W (K, D), b (K,), info)`` in float64, with ``info`` = ``C``, ``converged``, ``n_iter``.
        A binary fit (one weight vector) is returned as two logits (:func:`binary_as_multiclass`).
    """
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a positive finite number, got {lam}")
    features = x.reshape(len(x), -1).double().numpy()
    targets = y.numpy()
    c = 1.0 / (lam * len(features))
    clf = LogisticRegression(C=c, l1_ratio=1.0, solver="saga", tol=tol, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(features, targets)
    n_iter = int(np.max(clf.n_iter_))
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught) and n_iter < max_iter
    coef = torch.from_numpy(np.array(clf.coef_, dtype=np.float64))
    intercept = torch.from_numpy(np.array(clf.intercept_, dtype=np.float64))
    if coef.shape[0] == 1 and num_classes == 2:  # binary problems: one weight vector for class 1 against class 0
        coef, intercept = binary_as_multiclass(coef[0], intercept[0])
    if coef.shape[0] != num_classes:
        raise ValueError(f"the training labels hold {coef.shape[0]} classes, the model {num_classes}; every class needs training inputs")
    return coef, intercept, {"C": c, "converged": converged, "n_iter": n_iter}
