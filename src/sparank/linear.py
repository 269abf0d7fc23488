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

:func:`minimal_perturbation` gives, beside it, the true minimal L∞ (or L2)
perturbation of an affine classifier without the box,
``min_{k≠y} (z_y − z_k) / ||w_y − w_k||_1`` (``||·||_2`` for L2): the FGSM
ε* can never be below it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparank.attacks import Norm, check_inputs, check_norm
from sparank.robustness import CENSORED, CLEAN_WRONG, FOOLED, RobustnessResult


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


def affine_fgsm_direction(weight: Tensor, bias: Tensor, inputs: Tensor, labels: Tensor, *, norm: Norm = "linf") -> Tensor:
    """The FGSM direction of the affine classifier ``W x + b``, in closed form, float64.

    ``g = Wᵀ(softmax(W x + b) − e_y)`` is the input-gradient of cross-entropy;
    ``d = sign(g)`` (L∞) or ``g / ||g||_2`` (L2; ``d = 0`` where ``g = 0``).

    Args:
        weight: ``(K, D)``; bias: ``(K,)``.
        inputs: ``(N, *shape)`` with ``prod(shape) = D``.
        labels: ``(N,)`` true labels in ``[0, K)``.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        ``(N, D)`` float64 directions.
    """
    check_norm(norm)
    w, b, x, y = _check_affine(weight, bias, inputs, labels)
    p = torch.softmax(x @ w.T + b, dim=1)
    p = p - F.one_hot(y, w.shape[0]).to(torch.float64)
    g = p @ w
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
        (fooled), ``0, 0`` (clean-wrong) or ``eps_max, inf`` (censored); ``tol = resolution = 0``
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
    censored = ~clean_wrong & torch.isinf(eps_star)
    status = torch.full((len(x),), int(FOOLED), dtype=torch.int64)
    status[clean_wrong] = int(CLEAN_WRONG)
    status[censored] = int(CENSORED)
    eps_lo = torch.where(censored, float(eps_max), eps_star)
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


def minimal_perturbation(weight: Tensor, bias: Tensor, inputs: Tensor, labels: Tensor, *, norm: Norm = "linf") -> Tensor:
    """The smallest perturbation (in L∞ or L2, ignoring the box) that changes the prediction of ``W x + b``.

    ``min_{k≠y} (z_y − z_k) / ||w_y − w_k||_*`` with the dual norm ``||·||_1``
    for L∞ and ``||·||_2`` for L2: the distance from ``x`` to the nearest
    half-space ``{z_k ≥ z_y}``. It is reached by moving along
    ``−sign(w_y − w_k)`` (L∞), so FGSM's unclipped ε* can never be smaller,
    and equals it for a binary classifier.

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
