"""Certified first crossing along the FGSM ray: bounds on the margin over whole segments of the ray.

Along the ray ``x(ε) = clip(x + ε·d, lo, hi)`` (PROTOCOL §2) the input is a
function of one scalar. On a segment ``ε = a + t·(b − a)``, ``t ∈ [0, 1]``,
:func:`margin_bounds` propagates, for every neuron, a lower and an upper
*affine function of t* through the network (linear bounds over a 1-D input,
in the spirit of CROWN, Zhang et al. 2018, https://arxiv.org/abs/1811.00866,
and of the linear restrictions of Sotoudeh & Thakur 2019,
https://arxiv.org/abs/1908.06214). An affine function on ``[0, 1]`` is held
by its values at the two ends, so every relaxation is a comparison of
numbers, never an approximation:

- input: a coordinate that does not meet the box inside the segment is its
  chord exactly; one that does (it starts inside, so at most once) is concave
  or convex in ``t``, bounded on one side by its chord and on the other by
  the bound it reaches (its tangent at ``t = 1``): both lines are exact at the
  far end;
- ``Linear`` / ``Conv2d`` / ``AvgPool2d`` / eval-mode ``BatchNorm``: exact,
  as centre ``W·m + b`` and radius ``|W|·r`` of the two bounds;
- ``ReLU``: ``relu`` of an affine function of ``t`` is convex, so above it
  the chord from ``relu(U(0))`` to ``relu(U(1))``; below, the lower bound
  itself or 0: on a segment that reaches the crossing's neighbourhood
  (``far``), the lower bound where it is positive at ``t = 1``, exact there,
  where the walk needs the bounds tight; elsewhere (a walk along a long ray)
  where its mean is positive, looser at ``t = 1`` but tighter at ``t = 0``;
- ``MaxPool2d``: above, the chord of the window's largest upper ends (a
  maximum of affine functions is convex); below, the lower bound of one
  element: on a short segment reaching the crossing (:data:`FAR_CHOICE`) the
  one largest at ``t = 1``, exact there; otherwise the one with the largest
  mean lower bound (the largest at ``t = 1`` makes the long first segment's
  bound exact at ``t = 1`` but far too loose at ``t = 0``);
- the last ``Linear`` layer is folded into the margins ``f_y − f_k`` (exact:
  a difference of two float32 weights is exact in float64).

On a segment that reaches the crossing, without max-pooling (and with it
on a short one), the bounds are therefore exact at ``t = 1`` up to
rounding (on the Fashion-MNIST MLP within 3e-10 of the margin); where no
ReLU or pool changes state and no pixel meets the box on the segment, the
two bounds coincide everywhere and the margin is known exactly.
:func:`certified_crossing` walks each ray from 0 with segments that double
while their lower margin bound stays positive, jumps to the root of the
lowest margin bound where it does not (everything before that root is
proved correct), and tries the point ``tol`` past it with a forward pass
where a crossing is expected there; where the lower bound is positive at
the far end only, the stretch after its last root is proved too (a tail:
the walk then only needs to reach it). A coarse unverified scan
(:func:`sparank.attacks.fgsm.place_crossings`) narrowed to ``tol`` places
the first segment, ``[0, lo]``: where one bound pass proves it, the scan's
misclassified point ``hi`` closes the bracket (on the Fashion-MNIST MLP,
0.98 bound passes per input).

**Rounding.** Bounds are computed in float64 and widened so that they stay
sound: every matrix product gets the a-priori error bound of a dot product,
``γ_n · (Σ|w_i||m_i| + |b|)`` with ``γ_n = n·u/(1 − n·u)`` (Higham,
*Accuracy and Stability of Numerical Algorithms*, §3.1), computed from the
rows' absolute sums and the largest ``|m|`` (cheap, and γ_n ≈ 1e-13 makes
the looseness irrelevant), and every subtraction or addition that forms a
lower or upper bound is nudged outward by one ulp with ``torch.nextafter``.
Plain float32 with error terms would not do: a rigorous float32 dot-product
bound (γ_n ≈ 1e-4 for n = 1568) is far wider than the margin change over
``tol`` near a crossing.

**Float32 offsets from a pivot** (what the search uses; see the section below
:func:`_forward_offsets`). float64 products cost: on the CPU a float64
convolution has no oneDNN kernel (17× slower than float32 here). But the
rounding of a product is proportional to what is multiplied, so the search
carries one point per input (the *pivot*, the end of the ray the walk cannot
pass, near the crossing) through the network once in float64, and holds the
bounds as the pivot's value plus float32 offsets, a float32 radius and a
float64 slack. Products of offsets are float32, with the same a-priori bound
at float32's unit roundoff (plus the weights' rounding to float32 and
underflow); every float32 addition forming a bound is nudged outward. The
rounding is then float32's relative to the offsets, which are small exactly
where precision matters (the segments next to the crossing) and large only
on the long first segment, where the margin is far from 0. The float32
bound is used only where the product is an ordinary sum of rounded products
(:func:`_plain_float32`: on the CPU, oneDNN's direct convolution or the
plain one, IEEE float32 matrix products; not NNPACK's Winograd transform,
which torch picks where oneDNN is disabled, nor cuDNN); otherwise, and for
layers with no offset form (average pooling, batch norm), the pass is float64.

What a certificate says: every point of the exact ray ``clip(x + ε·d)``
with ``ε`` in ``[0, eps_lo]`` has a positive margin for the model *in exact
arithmetic* with its stored weights (so the argmax is ``y``, with no tie).
The measure evaluates float32 points with a float32 model; those agree with
the exact values up to their rounding, the noise band that the measure's
"verified" rule is about. Covering that rounding too was tried: a rigorous
bound on it (the input's last-place errors times the weights' absolute
sums) was 4e-5 in margin on the digits MLP, wider than the margin change
over ``tol`` = 1e-6 there, so no bracket would close.
The upper end ``x(eps_hi)`` is, as always, verified by forward passes.
Models with a layer not listed above are not certified: :func:`bound_network`
says why, and the measure falls back to the scan, marked as scanned.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparank.attacks.base import Bounds, _evaluate, verify_points
from sparank.attacks.fgsm import ray_points

#: unit roundoff of float64
_U = 2.0**-53
#: bound passes an input may take before it keeps its scanned result (marked not certified); a long ray walked in
#: short segments (a censored input of a CNN, whose bounds over a long segment are loose) can take more than 64
MAX_PASSES = 128


def _gamma(n: int) -> float:
    """``γ_n = n·u/(1 − n·u)`` for float64, with two more operations (bias, rounding of the error term itself)."""
    k = n + 2
    return 2.0 * k * _U / (1.0 - k * _U)


_MINUS_INF = torch.tensor(-math.inf, dtype=torch.float64)
_PLUS_INF = torch.tensor(math.inf, dtype=torch.float64)


def _down(x: Tensor) -> Tensor:
    """The next float64 below each entry: a result rounded to nearest, nudged below the exact value."""
    return torch.nextafter(x, _MINUS_INF.to(x.device))


def _up(x: Tensor) -> Tensor:
    return torch.nextafter(x, _PLUS_INF.to(x.device))


class Unsupported(ValueError):
    """The model has a layer (or a structure) whose bounds :mod:`sparank.certify` does not propagate."""


def _flat_layers(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in _flat_layers(child)]
    return [model]


class BoundNet(NamedTuple):
    """A model as :func:`margin_bounds` reads it: its layers in order and float64 copies of their weights."""

    layers: list[nn.Module]
    affine: dict[int, _Affine]  # by id of the Linear / Conv2d module
    margins: _Margins  # the last layer folded into the margins f_y − f_k


class _Margins(NamedTuple):
    """The last layer's rows as margins, by true class ``y``: ``w_y − w_k`` ``(K, K, H)``, their absolute values and
    absolute sums ``(K, K)``, and ``b_y − b_k`` ``(K, K)``, float64 (exact: differences of float32 weights)."""

    diff: Tensor
    abs_diff: Tensor
    abs_sum: Tensor
    bias: Tensor


def _margins(layer: nn.Linear) -> _Margins:
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    diff = w[:, None, :] - w[None, :, :]
    return _Margins(diff, diff.abs(), diff.abs().sum(dim=2), b[:, None] - b[None, :])


def _by_label(z: Tensor, table: Tensor, labels: Tensor) -> Tensor:
    """``table[labels[i]] @ z[i]`` per row: ``z`` ``(M, H)``, ``table`` ``(K, K, H)``, result ``(M, K)``; for few
    classes as one product with every class's rows (no ``(M, K, H)`` gather), else gathered."""
    k = table.shape[0]
    if k <= 16:
        every = torch.mm(z, table.reshape(k * k, -1).t()).view(len(z), k, k)
        return every[torch.arange(len(z), device=z.device), labels]
    return torch.bmm(table[labels], z[:, :, None]).squeeze(2)


def bound_network(model: nn.Module) -> BoundNet:
    """The model's layers with float64 weights, if :func:`margin_bounds` supports every one; else :class:`Unsupported` saying which.

    Supported: (nested) ``nn.Sequential`` of ``Linear``, ``Conv2d`` (zero padding), ``ReLU``,
    ``MaxPool2d``, ``AvgPool2d``, ``Flatten``, ``BatchNorm1d/2d`` in eval mode with running
    statistics, ``Identity`` and ``Dropout`` (identity in eval mode); the last layer must be ``Linear``.
    """
    layers = [m for m in _flat_layers(model) if not isinstance(m, nn.Identity | nn.Dropout)]
    for m in layers:
        name = type(m).__name__
        if _base_type(m) not in _SUPPORTED:  # exact types: a subclass may compute something else
            if any(True for _ in m.children()):
                raise Unsupported(f"module {name} has its own forward(); the bounds read an nn.Sequential of {_SUPPORTED_NAMES} layers")
            raise Unsupported(f"layer {name} has no certified bounds")
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise Unsupported(f"Conv2d with padding_mode={m.padding_mode!r} has no certified bounds")
        if isinstance(m, nn.MaxPool2d) and (m.ceil_mode or m.dilation not in (1, (1, 1))):
            raise Unsupported("MaxPool2d with ceil_mode or dilation has no certified bounds")
        if isinstance(m, nn.AvgPool2d) and m.divisor_override is not None:
            raise Unsupported("AvgPool2d with divisor_override has no certified bounds")
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and (m.training or m.running_mean is None):
            raise Unsupported(f"{name} outside eval mode or without running statistics has no certified bounds")
        if isinstance(m, nn.Flatten) and m.start_dim != 1:
            raise Unsupported("Flatten with start_dim != 1 has no certified bounds")
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise Unsupported("the last layer must be Linear (it is folded into the margins)")
    return BoundNet(layers, {id(m): _affine(m) for m in layers if isinstance(m, nn.Linear | nn.Conv2d)}, _margins(layers[-1]))


def _base_type(m: nn.Module) -> type:
    """The module's class, or for a ``torch.nn.utils.parametrize`` module the class it parametrises (read through ``.weight``)."""
    from torch.nn.utils import parametrize

    return type(m).__mro__[1] if parametrize.is_parametrized(m) else type(m)


_SUPPORTED = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d)
_SUPPORTED_NAMES = "Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, Flatten, BatchNorm1d/2d, Identity and Dropout"


class _Affine(NamedTuple):
    """A linear map ``z → W z + b`` in float64, applied to a batch, with its per-output ``Σ|w|`` and fan-in."""

    kind: str  # "linear" or "conv"
    weight: Tensor
    abs_weight: Tensor
    bias: Tensor | None
    row_abs: Tensor  # per output feature / channel: Σ|w| (+ |b|)
    fan_in: int
    module: nn.Module
    weight32: Tensor  # the weights rounded to float32 (exact for a float32 model), and their absolute values
    abs_weight32: Tensor
    abs_weight32_t: Tensor  # |W| transposed, contiguous (Linear): the sparse radius product's right-hand side


def _affine(module: nn.Module) -> _Affine:
    if isinstance(module, nn.Linear | nn.Conv2d):
        w = module.weight.detach().double()
        b = None if module.bias is None else module.bias.detach().double()
        row_abs = w.abs().flatten(1).sum(dim=1) + (0.0 if b is None else b.abs())
        kind = "linear" if isinstance(module, nn.Linear) else "conv"
        abs32 = w.float().abs()
        return _Affine(
            kind, w, w.abs(), b, row_abs, w[0].numel(), module, w.float(), abs32, abs32.t().contiguous() if kind == "linear" else abs32
        )
    raise TypeError(type(module).__name__)


def _apply(op: _Affine, z: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if op.kind == "linear":
        return F.linear(z, weight, bias)
    m = op.module
    assert isinstance(m, nn.Conv2d)
    return F.conv2d(z, weight, bias, m.stride, m.padding, m.dilation, m.groups)


#: unit roundoff of float32
_U32 = 2.0**-24
#: an absolute allowance per float32 operation for underflow (a flushed subnormal loses less than 2^-126)
_TINY32 = 2.0**-125


def _gamma32(n: int) -> float:
    """``γ_n`` for float32 sums of ``n`` products, with two more operations (as :func:`_gamma`)."""
    k = n + 2
    return 2.0 * k * _U32 / (1.0 - k * _U32)


def _plain_float32(op: _Affine, z: Tensor) -> bool:
    """Whether ``op`` in float32 on ``z`` (float32) is an ordinary sum of rounded products, so that the
    dot-product error bound ``γ_n·Σ|w||z|`` holds: on the CPU, with IEEE float32 matrix products and
    convolutions by oneDNN's direct algorithm or the plain im2col one (not NNPACK's Winograd transform,
    which torch picks where oneDNN is disabled; not on CUDA, where cuDNN may use TF32, Winograd or FFT)."""
    if z.device.type != "cpu" or torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn = torch.backends.mkldnn
    if op.kind == "linear":
        return getattr(mkldnn.matmul, "fp32_precision", "none") in ("none", "ieee")
    if getattr(mkldnn.conv, "fp32_precision", "none") not in ("none", "ieee"):
        return False
    m = op.module
    assert isinstance(m, nn.Conv2d)
    try:
        backend = torch._C._select_conv_backend(
            z, op.weight32, None, list(m.stride), list(m.padding), list(m.dilation), False, [0, 0], m.groups, None
        )
    except (AttributeError, RuntimeError, TypeError):  # a torch without this helper: take no chances
        return False
    return backend in (torch._C._ConvBackend.Mkldnn, torch._C._ConvBackend.Slow2d)


class Pivot(NamedTuple):
    """One point per input carried through the layers in float64, and what :func:`_forward_offsets` needs of it,
    by layer index (see :func:`pivot_values`); empty where the model's layers have no float32 offset form."""

    at: dict[int, tuple[Tensor, ...]]
    #: ``(N,)`` float64: the ε of each input's pivot on its ray (None: not known); where a segment ends there,
    #: the segment's far end is the pivot itself and its offsets are 0 (no product is taken for it)
    eps: Tensor | None = None

    def take(self, idx: Tensor | slice) -> Pivot:
        return Pivot({k: tuple(v[idx] for v in parts) for k, parts in self.at.items()}, None if self.eps is None else self.eps[idx])


class _Bounds(NamedTuple):
    """Lower and upper bounds at both ends of a segment: ``lo0, lo1, hi0, hi1``, each ``(N, *shape)`` float64."""

    lo0: Tensor
    lo1: Tensor
    hi0: Tensor
    hi1: Tensor


class _Centre(NamedTuple):
    """Bounds as a centre and radius at both ends, stacked ``(2N, ...)`` (end 0 then end 1), plus a uniform
    extra radius ``slack`` (rounding) kept apart so that ``rad`` stays exactly 0 where it is, and so that it
    can be added after pooling: ``(2N, 1, ...)`` per row or ``(2N, C, 1, 1)`` per channel, broadcast against ``rad``."""

    mid: Tensor
    rad: Tensor
    slack: Tensor


class Ray(NamedTuple):
    """Rays ``clip(x + ε·d, lo, hi)`` in float64 with what does not change from segment to segment."""

    x: Tensor  # (N, *shape)
    d: Tensor  # (N, *shape)
    meet: Tensor  # (N, *shape): the ε > 0 at which the coordinate reaches the box (inf: never; 0: on it already)
    bound: Tensor  # (N, *shape): the bound it reaches there (lo or hi)
    scale: Tensor  # (N,): max |x| + |lo| + |hi|, and max |d| in ``dmax``
    dmax: Tensor
    lo: float
    hi: float

    def take(self, idx: Tensor | slice) -> Ray:
        return Ray(self.x[idx], self.d[idx], self.meet[idx], self.bound[idx], self.scale[idx], self.dmax[idx], self.lo, self.hi)


def make_ray(inputs: Tensor, directions: Tensor, bounds: Bounds | tuple[float, float]) -> Ray:
    """The rays of ``inputs`` along ``directions`` ``(N, *shape)`` in the box ``bounds``, ready for :func:`margin_bounds`."""
    lo, hi = float(bounds[0]), float(bounds[1])
    x, d = inputs.double(), directions.double()
    # the bound each coordinate moves towards
    bound = torch.full_like(x, lo).masked_fill_(directions > 0, hi)
    with torch.no_grad():
        meet = ((bound - x) / d).masked_fill_(directions == 0, math.inf).clamp_(min=0.0)  # 0/0 (d = 0 on the bound) is filled too
    if x.numel():  # max |x| and max |d| read in their own dtype: exact
        flat = (inputs.abs().flatten(1).amax(dim=1).double(), directions.abs().flatten(1).amax(dim=1).double())
    else:
        flat = (x.new_zeros(len(x)),) * 2
    return Ray(x, d, meet, bound, flat[0] + abs(lo) + abs(hi), flat[1], lo, hi)


def _input_ends(ray: Ray, a: Tensor, b: Tensor, both_ends: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bounds on ``clip(x + (a + t(b − a))·d)`` over ``t ∈ [0, 1]``, in float64: the centres at both ends
    ``(2, N, *shape)``; the coordinates that meet the box inside the segment (flat indices into ``(N, *shape)``)
    and their radius at ``t = 0`` (0 elsewhere, and 0 at ``t = 1`` for every coordinate); and the rounding
    slack per input ``(N,)``.

    A moving coordinate meets the box at most once (it starts inside); where that happens inside
    ``(a, b)`` it is concave (reaching hi) or convex (reaching lo) in ``t``: on one side its chord bounds
    it, on the other the bound it reaches (the tangent at ``t = 1``). Both lines are exact at ``t = 1``,
    so every bound is exact at the segment's far end, where the walk needs it tight (the crossing is
    ahead of it). Those few coordinates are computed apart; the rest are the two clipped end points.
    ``both_ends=False``: the centres at ``t = 1`` are not computed (``(1, N, *shape)``: the caller knows them).
    """
    x, d = ray.x, ray.d
    shape = (-1,) + (1,) * (x.ndim - 1)
    a_, b_ = a.view(shape), b.view(shape)
    ends = torch.empty((2 if both_ends else 1,) + tuple(x.shape), dtype=x.dtype, device=x.device)
    if bool(a.any()):
        torch.addcmul(x, a_, d, out=ends[0]).clamp_(ray.lo, ray.hi)
    else:  # every segment starts at ε = 0 (the first pass): the inputs themselves
        torch.clamp(x, ray.lo, ray.hi, out=ends[0])
    if both_ends:
        torch.addcmul(x, b_, d, out=ends[1]).clamp_(ray.lo, ray.hi)
    at = ((ray.meet > a_) & (ray.meet < b_)).view(-1).nonzero().squeeze(1)  # flat indices into (N, *shape)
    rad = x.new_zeros(0)
    if len(at):
        # at t = 0 the coordinate lies between its value v0 and the bound; at t = 1 it is the bound
        flat0 = ends[0].view(-1)
        v0, bound = flat0[at], ray.bound.view(-1)[at]
        flat0[at] = 0.5 * (v0 + bound)
        if both_ends:
            ends[1].view(-1)[at] = bound
        rad = 0.5 * (bound - v0).abs() * (1.0 + 8 * _U)
    # rounding of the products, sums and halves above: a few units in the last place of the largest
    # magnitude in play, per input (kept apart so that the radius stays exactly 0 off the breakpoints)
    slack = 16 * _U * (ray.scale + b.abs() * ray.dmax) + 1e-300
    return ends, at, rad, slack


def _input_centre(ray: Ray, a: Tensor, b: Tensor) -> _Centre:
    """:func:`_input_ends` as a :class:`_Centre` ``(2N, *shape)`` (every product in float64)."""
    ends, at, rad_at, slack = _input_ends(ray, a, b)
    rad = torch.zeros_like(ends)
    rad[0].view(-1)[at] = rad_at
    shape = (-1,) + (1,) * (ends.ndim - 2)
    return _Centre(ends.flatten(0, 1), rad.flatten(0, 1), torch.cat([slack, slack]).view(shape))


def _centre(bnd: _Bounds) -> _Centre:
    """Centre and radius covering the bounds (rounding included in the radius)."""
    lo = torch.cat([bnd.lo0, bnd.lo1])
    hi = torch.cat([bnd.hi0, bnd.hi1])
    mid = 0.5 * (lo + hi)
    rad = 0.5 * (hi - lo) + 4 * _U * (lo.abs() + hi.abs())
    return _Centre(mid, rad, _no_slack(mid))


def _no_slack(like: Tensor) -> Tensor:
    return torch.zeros((len(like),) + (1,) * (like.ndim - 1), dtype=like.dtype, device=like.device)


def _with_slack(cen: _Centre) -> Tensor:
    """The radius with the uniform slack added (rounded up: both are non-negative)."""
    if not bool(cen.slack.any()):
        return cen.rad
    return (cen.rad + cen.slack) * (1 + 4 * _U)


def _from_centre(cen: _Centre) -> _Bounds:
    rad = _with_slack(cen)
    n = len(cen.mid) // 2
    lo, hi = _down(cen.mid - rad), _up(cen.mid + rad)
    return _Bounds(lo[:n], lo[n:], hi[:n], hi[n:])


def _largest(z: Tensor, non_negative: bool = False) -> Tensor:
    """Per row of a ``(2N, ...)`` stack: the largest |entry| of the input's two ends, ``(2N,)``."""
    n = len(z) // 2
    if not z[0].numel():
        return torch.zeros(len(z), dtype=z.dtype, device=z.device)
    per = (z if non_negative else z.abs()).flatten(1).amax(dim=1)
    both = torch.maximum(per[:n], per[n:])
    return torch.cat([both, both])


def _through_affine(op: _Affine, cen: _Centre) -> _Centre:
    """``W·z + b`` of every ``z`` within the bounds: centre ``W·m + b``, radius ``|W|·r``, and the rounding error."""
    mid, rad, slack = cen
    out_mid = _apply(op, mid, op.weight, op.bias)
    out_rad = _radius_product(op, rad, op.abs_weight, out_mid)
    # a dot product of n terms in float64 is off by at most γ_n·Σ|w||z|; the slack adds at most Σ|w|·max(slack):
    # both go into the output's slack (per output feature or channel, added after pooling)
    most = slack.flatten(1).amax(dim=1)
    scale = _largest(mid) + _largest(rad, non_negative=True) + most
    per = op.row_abs[None, :] * (_gamma(op.fan_in) * scale.clamp_min(1.0) + most * (1 + _gamma(op.fan_in)))[:, None]
    per = per.view(per.shape + (1,) * (out_mid.ndim - 2))
    return _Centre(out_mid, out_rad, per)


def _radius_product(op: _Affine, rad: Tensor, abs_weight: Tensor, like: Tensor, widen: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``|W|·rad`` shaped like ``like``; ``widen`` (if given) rounds the products up before they are placed.

    Off the box's breakpoints the input radius is exactly 0: only the rows (and, for Linear, the
    columns) where it is not are multiplied.
    """
    rows = torch.nonzero(rad.flatten(1).any(dim=1)).squeeze(1)
    if len(rows) == 0:
        return torch.zeros_like(like)
    part = rad if len(rows) == len(rad) else rad[rows]
    if op.kind == "linear" and part.ndim == 2:
        used = torch.nonzero(part.any(dim=0)).squeeze(1)
        small = F.linear(part[:, used], abs_weight[:, used]) if len(used) < part.shape[1] // 2 else F.linear(part, abs_weight)
    else:
        small = _apply(op, part, abs_weight, None)
    if widen is not None:
        small = widen(small)
    if len(rows) == len(rad):
        return small
    out = torch.zeros_like(like)
    out[rows] = small
    return out


def _relu(bnd: _Bounds, far: Tensor) -> _Bounds:
    lo0, lo1, hi0, hi1 = bnd
    # below: the lower line where it is positive at the far end (exact there; in the rows not `far`, where its
    # mean is positive), else 0; above: the chord of relu of the upper line (convex in t)
    keep = _choice_score(torch.cat([lo0, lo1]), far) > 0
    return _Bounds(torch.where(keep, lo0, 0.0), torch.where(keep, lo1, 0.0), hi0.clamp_min(0.0), hi1.clamp_min(0.0))


def _relu_maxpool(m: nn.MaxPool2d, cen: _Centre, far: Tensor | None = None) -> _Bounds:
    """``MaxPool2d(ReLU(z))`` for ``z`` within centre-form bounds, pooling before anything else is computed at full size.

    Above: ``max_j relu(U_j) = relu(max_j U_j)``, the chord of a maximum of affine functions.
    Below: the element whose relu'd lower line has the largest mean, i.e. the largest ``L_j(0) + L_j(1)``
    if that is positive (its line), else 0; in the rows ``far`` (``(N,)`` bool), the largest ``L_j(1)``.
    """
    args = (m.kernel_size, m.stride, m.padding)
    rad, slack = cen.rad, cen.slack  # the slack is constant over each window: added after pooling
    n = len(cen.mid) // 2
    up = _up(_up(F.max_pool2d(cen.mid + rad, *args)) + slack).clamp_min_(0.0)  # (2N, ...) both ends
    low = cen.mid - rad
    score, idx = F.max_pool2d(_choice_score(low, far), *args, return_indices=True)
    flat = idx.flatten(2)
    pick = [_down(_down(low[e * n : (e + 1) * n].flatten(2).gather(2, flat).view_as(score)) - slack[e * n : (e + 1) * n]) for e in (0, 1)]
    keep = score > 0
    return _Bounds(torch.where(keep, pick[0], 0.0), torch.where(keep, pick[1], 0.0), up[:n], up[n:])


def _choice_score(low: Tensor, far: Tensor | None) -> Tensor:
    """Which lower line a ReLU keeps or a max-pool window takes: ``(2N, ...)`` lower ends stacked (end 0, end 1) ->
    per element the sum of the two ends (its mean), or, in the rows ``far``, twice the far end."""
    n = len(low) // 2
    both = low[:n] + low[n:]
    if far is None or not bool(far.any()):
        return both
    return torch.where(far.view((-1,) + (1,) * (both.ndim - 1)), 2 * low[n:], both)


def _maxpool(m: nn.MaxPool2d, bnd: _Bounds, far: Tensor | None = None) -> _Bounds:
    lo0, lo1, hi0, hi1 = bnd
    args = (m.kernel_size, m.stride, m.padding)
    up0, up1 = F.max_pool2d(hi0, *args), F.max_pool2d(hi1, *args)
    # the element with the largest mean lower bound (the largest far end in the rows `far`)
    _, idx = F.max_pool2d(_choice_score(torch.cat([lo0, lo1]), far), *args, return_indices=True)
    flat = idx.flatten(2)
    pick0 = lo0.flatten(2).gather(2, flat).view_as(up0)
    pick1 = lo1.flatten(2).gather(2, flat).view_as(up0)
    return _Bounds(pick0, pick1, up0, up1)


def _avgpool(m: nn.AvgPool2d, bnd: _Bounds) -> _Bounds:
    args = (m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
    lo = [F.avg_pool2d(v, *args) for v in (bnd.lo0, bnd.lo1)]
    hi = [F.avg_pool2d(v, *args) for v in (bnd.hi0, bnd.hi1)]
    k = math.prod(m.kernel_size) if isinstance(m.kernel_size, tuple) else m.kernel_size**2
    lo = [_down(v - _gamma(k) * v.abs()) for v in lo]
    hi = [_up(v + _gamma(k) * v.abs()) for v in hi]
    return _Bounds(lo[0], lo[1], hi[0], hi[1])


def _batchnorm(m: nn.BatchNorm1d | nn.BatchNorm2d, bnd: _Bounds) -> _Bounds:
    assert m.running_mean is not None and m.running_var is not None
    scale = m.weight.detach().double() if m.weight is not None else torch.ones_like(m.running_mean.double())
    scale = scale / torch.sqrt(m.running_var.double() + m.eps)
    shift = (m.bias.detach().double() if m.bias is not None else 0.0) - m.running_mean.double() * scale
    view = (1, -1) + (1,) * (bnd.lo0.ndim - 2)
    s, c = scale.view(view), shift.view(view) if isinstance(shift, Tensor) else shift
    mid, rad, _ = _centre(bnd)
    out_mid = mid * s + c
    # the scale itself is rounded (division, square root): a relative 8u on it, plus the two operations
    out_rad = rad * s.abs() + 16 * _U * (mid.abs() * s.abs() + abs(c) if isinstance(c, float) else mid.abs() * s.abs() + c.abs())
    return _from_centre(_Centre(out_mid, out_rad, _no_slack(out_mid)))


def _forward_bounds(
    net: BoundNet, layers: list[nn.Module], state: _Bounds | _Centre, far: Tensor, pool_far: Tensor | None
) -> _Bounds | _Centre:
    skip = False
    for i, m in enumerate(layers):
        if skip:
            skip = False
            continue
        after = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(m, nn.ReLU) and isinstance(after, nn.MaxPool2d) and isinstance(state, _Centre):
            state, skip = _relu_maxpool(after, state, pool_far), True
            continue
        if isinstance(m, nn.Flatten):
            if isinstance(state, _Centre) and all(k == 1 for k in state.slack.shape[1:]):  # a per-row slack stays apart
                state = _Centre(state.mid.flatten(1), state.rad.flatten(1), state.slack.flatten(1))
            elif isinstance(state, _Centre):  # a per-channel one becomes part of every element's radius
                state = _Centre(state.mid.flatten(1), _with_slack(state).flatten(1), _no_slack(state.mid.flatten(1)))
            else:
                state = _Bounds(*(v.flatten(1) for v in state))
            continue
        if isinstance(m, nn.Linear | nn.Conv2d):
            state = _through_affine(net.affine[id(m)], state if isinstance(state, _Centre) else _centre(state))
            continue
        bnd = _from_centre(state) if isinstance(state, _Centre) else state
        if isinstance(m, nn.ReLU):
            state = _relu(bnd, far)
        elif isinstance(m, nn.MaxPool2d):
            state = _maxpool(m, bnd, pool_far)
        elif isinstance(m, nn.AvgPool2d):
            state = _avgpool(m, bnd)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            state = _batchnorm(m, bnd)
        else:  # bound_network admits nothing else
            raise Unsupported(type(m).__name__)
    return state


def margin_bounds(
    net: BoundNet,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    a: Tensor,
    b: Tensor,
    bounds: Bounds | tuple[float, float],
    pivot: Tensor | None = None,
    far: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bounds on the margins ``f_y − f_k`` over the ray segments ``ε ∈ [a, b]``, at both ends.

    Args:
        net: from :func:`bound_network`.
        inputs, directions: ``(N, *shape)``; labels ``(N,)``; a, b: ``(N,)`` float64 segment ends.
        pivot: ``(N,)`` an ε per input near which the bounds are to be precise: the products are then
            taken in float32 as offsets from that point's float64 values (:func:`_through_affine`);
            ``None``: every product in float64. Either way the bounds are sound.
        far: ``(N,)`` bool, the segments that end where the crossing is expected: their ReLUs keep the lower
            line where it is positive at ``b`` (exact there) instead of where its mean is, and, where the segment
            is shorter than :data:`FAR_CHOICE` times ``b``, their max-pool windows take the lower line of the
            element largest at ``b`` instead of the one with the largest mean. None: every segment, except
            for max-pool windows. Every choice is sound.

    Returns:
        ``(lower at a, lower at b, upper at a, upper at b)``, each ``(N, K)`` float64: for every ``t``
        in ``[0, 1]`` and every class ``k ≠ y`` the margin at ``ε = a + t(b − a)`` lies between
        ``(1 − t)·lower_a + t·lower_b`` and ``(1 − t)·upper_a + t·upper_b`` (exact arithmetic, sound
        rounding). The entry of ``y`` itself is ``+inf`` (lower) and ``+inf`` (upper).
    """
    ray = make_ray(inputs, directions, bounds)
    at = None if pivot is None else pivot_values(net, ray_points(ray.x, ray.d, pivot.double(), bounds))._replace(eps=pivot.double())
    return margin_bounds_on(net, ray, labels, a, b, at, far)


def margin_bounds_on(
    net: BoundNet, ray: Ray, labels: Tensor, a: Tensor, b: Tensor, pivot: Pivot | None = None, far: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`margin_bounds` on rays prepared by :func:`make_ray` (what a search over many segments calls);
    ``pivot`` (:func:`pivot_values` of the same inputs) lets the products be taken in float32 (:func:`_through_affine`)."""
    a, b = a.double(), b.double()
    # the lower lines chosen exact at the far end: for ReLUs in the rows `far`, for max-pool windows there if short
    pool_far = None if far is None else far & ((b - a) < FAR_CHOICE * b)
    relu_far = torch.ones(len(a), dtype=torch.bool, device=a.device) if far is None else far
    cen = _forward_offsets(net, ray, a, b, pivot, relu_far, pool_far) if pivot is not None and pivot.at else None
    if cen is None:
        state = _forward_bounds(net, net.layers[:-1], _input_centre(ray, a, b), relu_far, pool_far)
        cen = state if isinstance(state, _Centre) else _centre(state)
    last = net.margins
    db = last.bias[labels]  # (N, K)
    mid, rad = cen.mid, _with_slack(cen)  # (2N, H)
    both = torch.cat([labels, labels])
    # (N, K, 2): the exact differences of float32 weights w_y − w_k times each end's centre and radius
    centre = _halves(_by_label(mid, last.diff, both)).permute(1, 2, 0) + db[:, :, None]
    spread = _halves(_by_label(rad, last.abs_diff, both)).permute(1, 2, 0)
    c_abs_sum = last.abs_sum[labels]  # (N, K)
    scale = torch.maximum(_halves(mid.abs().amax(dim=1)).amax(dim=0), _halves(rad.abs().amax(dim=1)).amax(dim=0)).clamp_min(1.0)
    err = _gamma(last.diff.shape[2]) * (c_abs_sum * 2 * scale[:, None] + db.abs())
    lower = _down(centre - spread - err[:, :, None])
    upper = _up(centre + spread + err[:, :, None])
    # a NaN (an overflow somewhere) proves nothing: the widest bounds instead
    lower = torch.where(torch.isnan(lower), -math.inf, lower)
    upper = torch.where(torch.isnan(upper), math.inf, upper)
    own = torch.nn.functional.one_hot(labels, last.diff.shape[1]).bool()
    lower = lower.masked_fill(own[:, :, None], math.inf)
    upper = upper.masked_fill(own[:, :, None], math.inf)
    return lower[..., 0], lower[..., 1], upper[..., 0], upper[..., 1]


# --------------------------------------------------------------------------- float32 offsets from a pivot
#
# A bound pass in float64 costs about four float64 forward passes (two ends, centre and radius), and on
# the CPU float64 convolutions have no oneDNN kernel. Near the crossing, where precision matters, the
# bounds at every layer are close to the values of one point of the ray (the *pivot*, carried through
# the network once per input in float64). So the bounds are held as the pivot's float64 value ``V`` plus
# float32 offsets: a centre offset ``o`` and a radius ``r`` per element, and a float64 ``slack`` (extra
# radius) per row and channel: the lower line at an end lies at or above ``V + o − r − slack``, the
# upper at or below ``V + o + r + slack``, in exact arithmetic. Every float32 operation is rounded
# outward (``torch.nextafter``) or covered by an error term proportional to the offsets (γ_n with
# float32's unit roundoff for the products): the rounding is as large as float32's *relative to the
# offsets*, which are small where the segment is near the pivot.


def _up32(x: Tensor, inplace: bool = False) -> Tensor:
    """The next float32 above each entry (of a float32 result rounded to nearest); ``inplace``: in ``x`` itself."""
    return torch.nextafter(x, torch.tensor(math.inf, dtype=x.dtype, device=x.device), out=x if inplace else None)


def _down32(x: Tensor, inplace: bool = False) -> Tensor:
    return torch.nextafter(x, torch.tensor(-math.inf, dtype=x.dtype, device=x.device), out=x if inplace else None)


def _f32_up(x: Tensor) -> Tensor:
    """float32 values at or above the float64 ``x`` (to nearest, then one float32 step up)."""
    return _up32(x.float())


def _f32_down(x: Tensor) -> Tensor:
    return _down32(x.float())


def _pool_size(m: nn.MaxPool2d) -> int:
    k = m.kernel_size
    return k if isinstance(k, int) else k[0]


def _offset_plan(net: BoundNet) -> list[tuple[str, int, nn.MaxPool2d | None]] | None:
    """The steps of :func:`_forward_offsets` over every layer but the last: ``("affine" | "relu" | "flatten",
    layer index, the MaxPool2d that follows a ReLU or None)``; None where a layer has no offset form
    (AvgPool2d, BatchNorm, a MaxPool2d not after a ReLU or whose windows overlap or are padded)."""
    plan: list[tuple[str, int, nn.MaxPool2d | None]] = []
    layers = net.layers[:-1]
    i = 0
    while i < len(layers):
        m = layers[i]
        if isinstance(m, nn.Linear | nn.Conv2d):
            plan.append(("affine", i, None))
        elif isinstance(m, nn.Flatten):
            plan.append(("flatten", i, None))
        elif isinstance(m, nn.ReLU):
            if not any(step == "affine" for step, _, _ in plan):
                return None  # the offsets start at the first product
            after = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(after, nn.MaxPool2d):
                kp = _pair(after.kernel_size)
                if kp[0] != kp[1] or _pair(after.stride) != kp or _pair(after.padding) != (0, 0):
                    return None  # overlapping, padded or oblong windows
                plan.append(("relu", i, after))
                i += 1
            else:
                plan.append(("relu", i, None))
        else:
            return None
        i += 1
    if not any(step == "affine" for step, _, _ in plan):
        return None  # only the last layer's product: nothing to gain
    return plan


def _pair(v: int | tuple[int, ...]) -> tuple[int, ...]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _halves(t: Tensor) -> Tensor:
    """``(2N, ...)`` viewed as ``(2, N, ...)`` (end 0, end 1), to add a per-input ``(N, ...)`` tensor to both."""
    return t.view((2, len(t) // 2) + tuple(t.shape[1:]))


class _FirstProduct(NamedTuple):
    """What the first product needs to know of the input stage: the rows whose offsets are exactly 0 (a
    segment that ends at its pivot: no product is taken for that end), and, before a ``Linear`` layer,
    the input radius as a sparse CSR matrix ``(2N, D)`` (only the few coordinates that meet the box have one)."""

    zero_rows: Tensor | None  # (2N,) bool, where some segments (not all) end at their pivot
    csr: Tensor | None
    reach: Tensor  # (2N,) the largest |offset| per row
    second_half: bool  # every segment ends at its pivot: the zero rows, the last N, are not stored


def _input_offsets(
    ray: Ray, a: Tensor, b: Tensor, v_in: Tensor, pivot_eps: Tensor | None = None, sparse: bool = False
) -> tuple[tuple[Tensor, Tensor | None, Tensor], _FirstProduct]:
    """The bounds of :func:`_input_ends` in offset form from the pivot's input ``v_in`` ``(N, *shape)``:
    ``(o, r, slack)``, ``o`` ``(2N, *shape)`` float32 centre offsets (``(N, *shape)``, end 0 only, where every
    segment ends at its pivot: :attr:`_FirstProduct.second_half`) and ``r`` float32 radius (end 0 then
    end 1: 0 there), ``slack`` ``(2N, 1, ...)`` float64 per row; ``r`` is None with ``sparse`` (it is then
    :attr:`_FirstProduct.csr`).

    Where ``b`` is the pivot's own ε (``pivot_eps``), the offsets at ``b`` are set to 0: the exact point
    and the pivot's input ``v_in`` (the same ray point, rounded in float64) differ by less than the slack.
    """
    same = None if pivot_eps is None else pivot_eps == b
    everywhere = same is not None and bool(same.all())
    ends, at, rad_at, slack = _input_ends(ray, a, b, both_ends=not everywhere)
    n = len(v_in)
    rad32 = torch.where(rad_at > 0, _f32_up(rad_at), 0.0) if len(rad_at) else rad_at.float()
    r: Tensor | None = None
    csr: Tensor | None = None
    if sparse:  # at is in row-major order (nonzero): the CSR rows are the first N (end 0)
        dims = tuple(v_in.shape[1:])
        width = math.prod(dims)
        row = at // width
        col = at - row * width
        crow = torch.zeros(2 * n + 1, dtype=torch.int64, device=v_in.device)
        crow[1:] = torch.cumsum(torch.bincount(row, minlength=2 * n), 0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used is torch's plain one
            warnings.simplefilter("ignore", UserWarning)
            csr = torch.sparse_csr_tensor(crow, col, rad32, size=(2 * n, width), check_invariants=False)
    else:
        r = torch.zeros((2 * n,) + tuple(v_in.shape[1:]), dtype=torch.float32, device=v_in.device)
        r.view(-1)[at] = rad32  # end 0 only: the first N rows (flat indices below N·D)
    zero_rows = None
    if everywhere:  # end 1 is the pivot itself: offsets 0, neither computed nor stored (only end 0's N rows)
        o = ends[0].sub_(v_in).float()  # the offsets δ, rounded to nearest: off by u·|δ|, then by u32·|δ| more
        most = torch.cat([o.abs().flatten(1).amax(dim=1), o.new_zeros(n)])
    else:
        ends.sub_(v_in)
        if same is not None and bool(same.any()):
            ends[1][same] = 0.0
            zero_rows = torch.cat([torch.zeros_like(same), same])
        o = ends.flatten(0, 1).float()  # off by u32·|δ| more
        most = o.abs().flatten(1).amax(dim=1)
    # |δ| ≤ |o|/(1 − u32) (plus underflow): the largest |o| per row bounds both roundings
    reach = most * (1.0 + 2.0**-22) + _TINY32
    sl = torch.cat([slack, slack]) + (_U + _U32) * (1.0 + 2.0**-20) * reach + _TINY32
    return (o, r, sl.view((2 * n,) + (1,) * (v_in.ndim - 1))), _FirstProduct(zero_rows, csr, most, everywhere)


def _forward_offsets(
    net: BoundNet, ray: Ray, a: Tensor, b: Tensor, pivot: Pivot, far: Tensor | None = None, pool_far: Tensor | None = None
) -> _Centre | None:
    """:func:`_forward_bounds` over every layer but the last, in float32 offsets from the pivot, for the
    segments ``[a, b]`` of the rays; the result in float64 centre form ``(2N, H)``. None where a product
    cannot be taken as an ordinary float32 sum (:func:`_plain_float32`) or an offset overflows float32:
    the caller then computes in float64."""
    plan = _offset_plan(net)
    assert plan is not None
    first = next(i for kind, i, _ in plan if kind == "affine")
    v_in = pivot.at[first][0]
    sparse = isinstance(net.layers[first], nn.Linear)
    state, first_product = _input_offsets(ray, a, b, v_in.view((len(v_in),) + tuple(ray.x.shape[1:])), pivot.eps, sparse)
    for kind, i, pool in plan:
        o, r, sl = state
        if kind == "flatten":
            if all(k == 1 for k in sl.shape[1:]):  # a per-row slack stays apart (the radius stays sparse)
                sl = sl.flatten(1)
            else:  # a per-channel slack becomes part of every element's radius
                assert r is not None
                r = _up32(r + _f32_up(sl)) if bool(sl.any()) else r
                sl = torch.zeros((len(sl), 1), dtype=torch.float64, device=o.device)
            state = (o.flatten(1), None if r is None else r.flatten(1), sl)
        elif kind == "affine":
            out = _offset_affine(net.affine[id(net.layers[i])], state, pivot.at[i][1], first_product if i == first else None)
            if out is None:
                return None
            state = out
        else:
            state = _offset_relu(state, pool, *pivot.at[i], far=pool_far if pool is not None else far)
    o, r, sl = state
    assert r is not None
    (v_last,) = pivot.at[len(net.layers) - 1]
    mid = (_halves(o.double()) + v_last).view_as(o).double()  # rounded: u·|mid|
    rad = (r.double() + sl) * (1.0 + 4 * _U) + 2 * _U * mid.abs()
    return _Centre(mid, rad, _no_slack(mid))


def _offset_affine(
    op: _Affine, state: tuple[Tensor, Tensor | None, Tensor], v_err: Tensor, first: _FirstProduct | None = None
) -> tuple[Tensor, Tensor, Tensor] | None:
    """``W·z + b`` in offset form: the pivot's value becomes ``W·V + b`` (its rounding, ``v_err``, joins the
    slack); the offsets ``W·o`` and radius ``|W|·r`` are float32 products with their rounding bounded.
    ``first``: from :func:`_input_offsets`, for the first product (rows known to be 0, a sparse radius)."""
    o, r, sl = state
    reach = first.reach if first is not None else o.abs().flatten(1).amax(dim=1)
    if not float(reach.max()) * float(op.row_abs.max()) < 1e30 or not _plain_float32(op, o):
        return None
    n = op.fan_in
    g = _gamma32(n)
    zero = None if first is None else first.zero_rows
    if first is not None and first.second_half:  # o holds end 0 only, end 1's offsets are 0 (and so is their product)
        part = _apply(op, o, op.weight32, None)
        out_o = part.new_empty((2 * len(o),) + tuple(part.shape[1:]))
        out_o[: len(o)] = part
        out_o[len(o) :].zero_()
    elif zero is not None:  # rows of zeros give zeros: the product only of the others
        live = torch.nonzero(~zero).squeeze(1)
        part = _apply(op, o[live], op.weight32, None)
        out_o = torch.zeros((len(o),) + tuple(part.shape[1:]), dtype=part.dtype, device=part.device)
        out_o[live] = part
    else:
        out_o = _apply(op, o, op.weight32, None)
    # a float32 sum of non-negative products is at least (1 − γ_n) times the exact one (and the weights
    # of a float64 model, rounded to float32, within u32 of their own): 4γ_n covers both and this rounding
    widen = functools.partial(_widen, factor=1.0 + 4 * g)
    if first is not None and first.csr is not None:  # a sparse input radius: a sparse product (any order of the sum is covered)
        out_r = widen(torch.mm(first.csr, op.abs_weight32_t))
    else:
        assert r is not None
        out_r = _radius_product(op, r, op.abs_weight32, out_o, widen=widen)
    # the slack: the incoming one through |W| (at most Σ|w|·max slack), the pivot product's rounding, the
    # float32 sum of products (γ_n·Σ|w||o|), the weights' rounding to float32 (u32·Σ|w||o|), underflow
    most = sl.flatten(1).amax(dim=1)
    per = op.row_abs[None, :] * (most * (1.0 + 4 * _U) + (g + 2 * _U32) * (1.0 + 2.0**-20) * reach + 2 * _TINY32)[:, None]
    _halves(per).add_(v_err).add_(2 * n * _TINY32)  # the pivot's rounding, at both ends
    per = per.view(per.shape + (1,) * (out_o.ndim - 2))
    return out_o, out_r, per


def _widen(small: Tensor, factor: float) -> Tensor:
    """Non-negative float32 products, in place, times ``factor`` and one float32 step up."""
    return _up32(small.mul_(factor), inplace=True)


def _offset_relu(
    state: tuple[Tensor, Tensor, Tensor],
    pool: nn.MaxPool2d | None,
    gap_up: Tensor,
    gap_down: Tensor,
    neg_up: Tensor,
    neg_down: Tensor,
    far: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """ReLU (and the max-pool after it) in offset form: the relaxations of :func:`_relu` and :func:`_relu_maxpool`.

    With the pivot's value ``V`` before and ``P' = pool(relu(V))`` after, the offsets move to ``P'``:
    ``gap`` is ``V − P'`` per element (float32, rounded up and down), ``neg`` is ``−P'``. Above:
    ``pool(relu(V + h)) − P' = max(pool(gap + h), −P')``, ``h`` the upper offsets; below: ``gap + l`` of
    the element whose lower line has the largest mean in a max-pool window (the largest far end in the
    rows ``far``), or is the ReLU's own (``l`` the lower offsets), kept where it is positive (its mean,
    or in the rows ``far`` its far end), else ``−P'`` (the line 0). ``far`` None: means everywhere.
    """
    o, r, sl = state
    s32 = _f32_up(sl)  # per row and channel (or feature): constant over each window, added after pooling
    # upper and lower offsets from P', every element (in place: fresh large tensors cost page faults here)
    h = _up32(torch.add(o, r), inplace=True)
    _halves(h).add_(gap_up)
    h = _up32(h, inplace=True)
    low = _down32(torch.sub(o, r), inplace=True)
    _halves(low).add_(gap_down)
    low = _down32(low, inplace=True)
    n = len(o) // 2
    if pool is not None:  # windows of k × k that tile the map: k² strided views (much faster than max_pool2d here)
        k = _pool_size(pool)
        views = [(i, j) for i in range(k) for j in range(k)]
        up = functools.reduce(torch.maximum, [h[:, :, i::k, j::k] for i, j in views])
        both = _choice_score(low, far)
        score, pick = both[:, :, ::k, ::k], low[:, :, ::k, ::k].unflatten(0, (2, n))
        for i, j in views[1:]:  # the window's element with the largest score, and its two ends
            better = both[:, :, i::k, j::k] > score
            score = torch.where(better, both[:, :, i::k, j::k], score)
            pick = torch.where(better, low[:, :, i::k, j::k].unflatten(0, (2, n)), pick)
        pick = pick.flatten(0, 1)
    else:
        up, score, pick = h, _choice_score(low, far), low
    up = torch.maximum(_halves(_up32(up + s32)), neg_up).view_as(up)
    pick = _down32(pick - s32)
    keep = score > 2 * neg_down  # a positive mean or far end (approximately: either is sound)
    lower = torch.where(keep, _halves(pick), neg_down).view_as(pick)  # the same choice at both ends
    centre = 0.5 * (lower + up)
    radius = torch.maximum(_up32(up - centre), _up32(centre - lower))
    return centre, radius, torch.zeros((len(centre),) + (1,) * (centre.ndim - 1), dtype=torch.float64, device=centre.device)


def point_logits(net: BoundNet, inputs: Tensor) -> Tensor:
    """The logits of ``inputs`` through the layers as :func:`margin_bounds` reads them (float64, no relaxation)."""
    return _walk_points(net, net.layers, inputs.double())


def pivot_values(net: BoundNet, points: Tensor, largest: float | None = None) -> Pivot:
    """``points`` ``(N, *shape)`` through every layer but the last in float64, with what :func:`_forward_offsets`
    needs at each step (see there); an empty :class:`Pivot` where the layers have no offset form. ``largest``:
    a bound on every ``|point|`` where known (the box's), in place of their own largest value."""
    plan = _offset_plan(net)
    if plan is None:
        return Pivot({})
    at: dict[int, tuple[Tensor, ...]] = {}
    z = points.double()
    for kind, i, pool in plan:
        m = net.layers[i]
        if kind == "flatten":
            z = z.flatten(1)
        elif kind == "affine":
            op = net.affine[id(m)]
            out = _apply(op, z, op.weight, op.bias)
            # the product's rounding error, γ_n·(Σ|w||z| + |b|), per output feature / channel
            if largest is not None and not at:  # the first product: its inputs are the points
                most = z.new_full((len(z),), largest)
            else:
                most = z.abs().flatten(1).amax(dim=1) if z[0].numel() else z.new_zeros(len(z))
            at[i] = (z, _gamma(op.fan_in) * op.row_abs[None, :] * most.clamp_min(1.0)[:, None])
            z = out
        else:  # relu, then the pool if any: offsets of each element from its window's value after both
            after = z.clamp_min(0.0)
            if pool is not None:
                k = _pool_size(pool)
                if z.shape[2] % k or z.shape[3] % k:  # windows that do not tile the map: no offset form
                    return Pivot({})
                after = F.max_pool2d(after, k, k)
                spread = after.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)
            else:
                spread = after
            if pool is None:  # z − relu(z) = min(z, 0): exact
                gap = z.clamp_max(0.0)
                at[i] = (_f32_up(gap), _f32_down(gap), _f32_up(-after), _f32_down(-after))
            else:
                gap = z - spread  # V − P' (≤ 0), rounded: nudged before rounding to float32 outward
                at[i] = (_f32_up(_up(gap)), _f32_down(_down(gap)), _f32_up(-after), _f32_down(-after))
            z = after
    at[len(net.layers) - 1] = (z,)
    return Pivot(at)


def _walk_points(net: BoundNet, layers: list[nn.Module], z: Tensor) -> Tensor:
    for m in layers:
        if isinstance(m, nn.Linear | nn.Conv2d):
            op = net.affine[id(m)]
            z = _apply(op, z, op.weight, op.bias)
        elif isinstance(m, nn.ReLU):
            z = z.clamp_min(0.0)
        elif isinstance(m, nn.MaxPool2d):
            z = F.max_pool2d(z, m.kernel_size, m.stride, m.padding)
        elif isinstance(m, nn.AvgPool2d):
            z = F.avg_pool2d(z, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
        elif isinstance(m, nn.Flatten):
            z = z.flatten(1)
        else:
            bnd = _batchnorm(m, _Bounds(z, z, z, z))  # type: ignore[arg-type]
            z = 0.5 * (bnd.lo0 + bnd.hi0)
    return z


def check_walk(model: nn.Module, net: BoundNet, inputs: Tensor) -> None:
    """:class:`Unsupported` unless the layer walk reproduces the model's logits on ``inputs`` (a hook, a patched forward)."""
    if not len(inputs):
        return
    with torch.inference_mode():
        ours = point_logits(net, inputs)
        theirs = model(inputs).double()
    scale = theirs.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    if ours.shape != theirs.shape or bool(((ours - theirs).abs() > 1e-3 * scale).any()):
        raise Unsupported("the model's forward pass is not the composition of its layers (a hook or a patched forward)")


class Certified(NamedTuple):
    """Per-input result of :func:`certified_crossing` (CPU tensors)."""

    certified: Tensor  # (N,) bool: every ε in [0, eps_lo] is proved correct and (fooled) x(eps_hi) verified
    eps_lo: Tensor  # (N,) float64 where certified
    eps_hi: Tensor  # (N,) float64 where certified: inf if censored
    passes: Tensor  # (N,) int64: bound passes taken
    forward_rows: int  # forward rows spent on probes and verification
    # the verified points x(eps_hi) of the inputs `fooled` (indices, on the inputs' device), in that order: every
    # certified input with a finite eps_hi is among them (and a few that lost their certificate: ignore those)
    fooled: Tensor | None = None
    points: Tensor | None = None


def certified_crossing(
    model: nn.Module,
    net: BoundNet,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    hint_lo: Tensor,
    hint_hi: Tensor,
    *,
    bounds: Bounds | tuple[float, float],
    eps_max: float,
    tol: float,
    batch_size: int = 256,
    max_passes: int = MAX_PASSES,
    progress: Callable[[int, int], None] | None = None,
    hint_batched: tuple[Tensor, Tensor] | None = None,
) -> Certified:
    """The exact first crossing to ``tol`` for inputs that are correct at ε = 0 and have a direction.

    Each input walks its ray from ``c = 0``: a bound pass over ``[c, c + w]``
    (:func:`margin_bounds`); where every margin's lower bound is positive at
    both ends the whole segment is proved and ``w`` doubles (where it ends within
    ``tol`` below ``hint_hi``, the bracket ``[c, hint_hi]`` is the result); otherwise ``c``
    moves to the first root of the lower bounds (everything before it is
    proved), the point ``c + tol`` is tried with a forward pass where a crossing
    is to be expected there (``c`` is past ``hint_lo``, or the pass advanced less
    than an eighth of its segment), and ``w`` becomes twice the distance
    advanced (an eighth of it where nothing was).
    A tried point misclassified beyond the noise ends the search with the bracket
    ``[c, c + tol]`` (all such points are then verified at once by
    :func:`~sparank.attacks.base.verify_points`; where one is refused, the first verified of the points
    ``tol·2^k`` past it is taken, a bracket wider than ``tol``, and the input is not certified where none is);
    reaching ``eps_max`` proves the input censored. Where that
    point's margin is within the model's float32 noise (its margin falls by
    less than the noise over ``tol``), points ``tol·2^k`` past ``c`` are tried
    and the first one verified is pulled back (15 points per round, 3 rounds)
    to within ``tol`` of the last point the noise hides: that bracket is wider
    than ``tol``, with ``eps_lo = c`` still the proved end (the scan, there,
    puts ``eps_lo`` at ``eps_hi − tol`` inside the noise band instead).

    Args:
        net: :func:`bound_network` of the model.
        hint_lo, hint_hi: ``(N,)`` a scan's bracket (:func:`sparank.attacks.fgsm.place_crossings`):
            ``hint_hi`` a misclassified ε or inf (segments never pass it; 0: the input is misclassified
            at ε = 0 and left alone, not certified), ``hint_lo`` the last scanned correct point: the
            first segment is ``[0, hint_lo]`` (``[0, min(hint_hi, eps_max)]`` where it is 0).
        max_passes: inputs still open after this many bound passes are returned not certified.
        progress: called as ``progress(done, N)`` after each round of bound passes.
        hint_batched: the margins and noise floors at ``hint_hi`` ``(N,)`` from the batched forward pass of the
            model that found them (NaN where none): where ``hint_hi`` closes a bracket, its verification
            (:func:`~sparank.attacks.base.verify_points`) takes them instead of a second batched pass.
    """
    device = inputs.device
    n = len(inputs)
    certified = torch.zeros(n, dtype=torch.bool, device=device)
    eps_lo = torch.zeros(n, dtype=torch.float64, device=device)
    eps_hi = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    passes = torch.zeros(n, dtype=torch.int64, device=device)
    hint_hi = hint_hi.to(device=device, dtype=torch.float64)
    limit = torch.where(torch.isfinite(hint_hi), torch.clamp(hint_hi, max=eps_max), torch.full_like(hint_hi, eps_max))
    c = torch.zeros(n, dtype=torch.float64, device=device)
    ray = make_ray(inputs, directions, bounds)
    rows_per_pass = _bound_batch(net, inputs, batch_size)
    # the products are taken in float32 as offsets from the float64 values of one point per input near the
    # crossing (the end of the first segment, the last point the scan saw correct): the segments near the
    # crossing, where precision matters, are near it
    seen = hint_lo.to(device=device, dtype=torch.float64)
    first = seen.clamp(max=eps_max)
    w = torch.where(first > 0, first, limit)
    # the first segment ends at its pivot, so that no product is taken for that end (_input_offsets)
    pivot_at = torch.minimum(w, limit)
    # float32 offsets are taken only on the CPU (_plain_float32): elsewhere no pivot, every pass in float64
    pivot = _pivots(net, ray, pivot_at, bounds, rows_per_pass) if device.type == "cpu" else Pivot({})
    # a stretch [tail, tail_end] proved ahead of c (tail = inf: none); segments stop at its start
    tail = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    tail_end = torch.zeros(n, dtype=torch.float64, device=device)
    retry = torch.zeros(n, dtype=torch.bool, device=device)  # the next segment is bounded in pieces (_pieces_bounds)
    active = torch.nonzero(limit > 0).squeeze(1)  # an input misclassified at ε = 0 has nothing to prove
    rows = 0
    while len(active):
        a = c[active]
        b = torch.minimum(torch.minimum(a + w[active], limit[active]), tail[active])
        to_tail = b >= tail[active]
        # a segment far from its pivot (more than 8 of its widths) gets a pivot at its end
        p_at = pivot_at[active]
        moving = torch.maximum(p_at - b, a - p_at) > 8 * (b - a)
        if pivot.at and bool(moving.any()):
            moved = active[moving]
            pivot_at[moved] = b[moving]
            _move_pivots(pivot, moved, _pivots(net, ray.take(moved), b[moving], bounds, rows_per_pass))
        # a segment that reaches the last point the hint saw correct ends where the crossing is: its lower lines
        # are chosen exact at the far end; elsewhere (a walk along a long ray) by their mean, tighter at both ends
        far = b >= seen[active]
        split = retry[active]
        retry[active] = False
        if bool(split.any()):
            # a long segment whose far-end lines proved nothing from its start (they are loose there), again in
            # pieces that shorten towards its end, bounded at once: the walk goes on from the first piece not
            # proved whole (every piece before it is proved), as if that piece had been the segment. Where the
            # segment stopped short of the hint's misclassified point by less than its last piece (a bracket the
            # scan left wider than tol), the stretch up to that point is one more piece, after the proved stretch
            # ahead if the segment stopped at one
            after = torch.where(to_tail, tail_end[active], b)
            gap = limit[active] - after
            beyond = split & (gap > 0) & (gap <= (b - a) * (PIECES[-1] - PIECES[-2]))
            nan = torch.full_like(b, math.nan)
            a, b, far, lo_a, lo_b, pieces, on_extra = _pieces_bounds(
                net, ray, labels, active, a, b, split, torch.where(beyond, after, nan), torch.where(beyond, limit[active], nan),
                seen[active], pivot, rows_per_pass,
            )  # fmt: skip
            # walking on from that piece: everything before it is proved, the stretch ahead included
            tail[active] = torch.where(on_extra, math.inf, tail[active])
            to_tail = b >= tail[active]
            passes[active] += pieces
        else:
            lo_a, lo_b = _segment_bounds(net, ray, labels, active, a, b, pivot, far, rows_per_pass)
            passes[active] += 1
        whole = ((lo_a > 0) & (lo_b > 0)).all(dim=1)
        t = _left_root(lo_a, lo_b)
        # two ulps down: a + t·(b − a) is within 1.5 ulps of its exact value
        reached = torch.where(whole, b, _down(_down(a + t * (b - a))).clamp(min=a))
        reached = torch.where(whole, reached, torch.minimum(reached, b))
        advanced = reached - a
        # where every lower line is positive at the far end but not at the near end, the stretch after the last
        # root is proved too: a tail, which the next segments need not cover (on a segment that ends at the start
        # of a tail, the two join); a tail is kept only next to the segment, so that the proved set stays two pieces
        rear = _right_root(lo_a, lo_b)
        start = torch.minimum(_up(_up(a + rear * (b - a))), b)
        new_tail = ~whole & (lo_b > 0).all(dim=1) & (start < b) & (to_tail | ~torch.isfinite(tail[active]))
        tail_end[active] = torch.where(new_tail & ~to_tail, b, tail_end[active])
        tail[active] = torch.where(new_tail, start, tail[active])
        # proved up to a tail's start: on to its end
        joined = torch.isfinite(tail[active]) & (reached >= tail[active])
        reached = torch.where(joined, torch.maximum(reached, tail_end[active]), reached)
        tail[active] = torch.where(joined, math.inf, tail[active])
        # the next segment: twice this one where it was proved whole, twice the distance advanced, or an eighth
        # where nothing was (a tail just found does not count: it is what the next segments must reach)
        w[active] = torch.where(whole | joined, 2 * (b - a), torch.where(advanced > 0, 2 * advanced, (b - a) / 8)).clamp_min(tol)
        # a long segment whose far-end lines proved nothing from its start: the same stretch again, in pieces
        again = far & ~whole & ~joined & (advanced <= 0) & (b - a > SETTLED * tol)
        w[active] = torch.where(again, b - a, w[active])
        retry[active] = again
        whole = whole | joined
        b = torch.where(joined, reached, b)
        c[active] = reached
        # censored: proved up to eps_max
        done_censored = whole & (b >= eps_max)
        certified[active[done_censored]] = True
        eps_lo[active[done_censored]] = eps_max
        # proved to within tol of the hint's misclassified point: that point closes the bracket (verified below)
        h = hint_hi[active]
        closed = whole & ~done_censored & (h <= eps_max) & (h - b <= tol) & (h > b)
        done = active[closed]
        certified[done] = True
        eps_lo[done] = b[closed]
        eps_hi[done] = hint_hi[done]
        # try the point just past the proved stretch (where its margin is within the noise, a ladder beyond it)
        # where a crossing is to be expected there: past the last point the scan saw correct, or where the
        # pass advanced little (a crossing the scan stepped over holds the walk back); elsewhere the next
        # pass comes first
        expected = (reached + tol >= seen[active]) | (advanced <= (b - a) / 8)
        tried = ~whole & expected & ~new_tail
        probe = active[tried]
        if len(probe):
            # a point within the noise after a long segment: first a pass over [c, c + 8·tol], whose bounds are
            # exact up to rounding, so that the ladder starts from a proof as tight as it gets
            settled = (b - a)[tried] <= SETTLED * tol
            r, again = _probe(
                model, inputs, labels, directions, probe, settled, c, eps_max, tol, bounds, batch_size, certified, eps_lo, eps_hi
            )
            rows += r
            w[again] = 8 * tol
        # proved up to a verified misclassified point (only rounding noise in the model can do that), or
        # no progress on the shortest segment: the scanned result stands
        stuck = whole & (b >= limit[active]) & (limit[active] < eps_max)
        stuck |= ~whole & ~new_tail & (advanced <= 0) & (b - a <= tol)
        open_ = ~certified[active] & ~stuck & (passes[active] < max_passes)
        active = active[open_]
        if progress is not None:
            progress(n - len(active), n)
    # every point found past a proved stretch, verified in any batching (verify_points); where one is refused (its
    # margin within the noise of some batching), the first of the points tol·2^k past it that is verified, else the
    # input is not certified
    found = torch.nonzero(certified & torch.isfinite(eps_hi)).squeeze(1)
    if len(found):
        points = ray_points(inputs[found], directions[found], eps_hi[found], bounds)
        batched = None
        if hint_batched is not None:  # a point the hint's scan evaluated in a batch is not evaluated in one again
            from_hint = eps_hi[found] == hint_hi[found]
            nan = torch.full((len(found),), math.nan, dtype=torch.float64, device=device)
            batched = tuple(torch.where(from_hint, v.to(device)[found], nan) for v in hint_batched)
        ok, _, r = verify_points(model, points, labels[found], found, batch_size, batched)
        rows += r
        refused = found[~ok]
        rows += _verified_further(model, inputs, labels, directions, refused, eps_hi, eps_max, tol, bounds, batch_size, certified)
        if len(refused):  # those moved further out
            points[~ok] = ray_points(inputs[refused], directions[refused], eps_hi[refused], bounds)
        return Certified(certified.cpu(), eps_lo.cpu(), eps_hi.cpu(), passes.cpu(), rows, found, points)
    return Certified(certified.cpu(), eps_lo.cpu(), eps_hi.cpu(), passes.cpu(), rows)


def _right_root(lo_a: Tensor, lo_b: Tensor) -> Tensor:
    """Per row, the ``t`` after which every lower line ``(1 − t)·lo_a + t·lo_b`` is positive (1 where one is not at
    ``t = 1``), a little after the last root whatever its rounding."""
    rising = (lo_a <= 0) & (lo_b > 0)
    t_k = torch.where(rising, lo_a / torch.where(rising, lo_a - lo_b, -1.0), 0.0)
    t_k = torch.where(lo_b <= 0, 1.0, t_k)
    return (t_k.amax(dim=1).clamp(0.0, 1.0) * (1.0 + 2.0**-40)).clamp(max=1.0)


#: a bound pass holds a dozen or so tensors as large as the network's widest layer (or its input) per row; its
#: batches have at least ``batch_size`` rows and more where rows are narrow, up to about this many elements in
#: such a tensor (on the Fashion-MNIST MLP the first pass of 1000 inputs then takes one batch: 25 % faster than in
#: batches of 256, where each of its ~150 operations is called four times; the CNN keeps batches of 256)
BOUND_BATCH_ELEMENTS = 2**20


def _bound_batch(net: BoundNet, inputs: Tensor, batch_size: int) -> int:
    """Rows per batch of a bound pass (:data:`BOUND_BATCH_ELEMENTS`), from the widest layer of one input's walk."""
    if not len(inputs):
        return batch_size
    widest = inputs[0].numel()
    z = inputs[:1].double()
    for m in net.layers:
        z = _walk_points(net, [m], z)
        widest = max(widest, z[0].numel())
    return max(batch_size, BOUND_BATCH_ELEMENTS // max(widest, 1))


def _segment_bounds(
    net: BoundNet,
    ray: Ray,
    labels: Tensor,
    active: Tensor,
    a: Tensor,
    b: Tensor,
    pivot: Pivot,
    far: Tensor | None,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """The lower margin bounds at both ends of the segments ``[a, b]`` of the inputs ``active`` (:func:`margin_bounds_on`),
    in batches of about equal size (as views where the inputs are a contiguous run). Returns ``(lower at a, lower at b)``."""
    lo_a_parts, lo_b_parts = [], []
    size = -(-len(active) // -(-len(active) // batch_size))
    run = int(active[-1]) - int(active[0]) + 1 == len(active) and bool((active[1:] > active[:-1]).all())
    for s in range(0, len(active), size):
        sl = slice(int(active[0]) + s, int(active[0]) + min(s + size, len(active))) if run else active[s : s + size]
        part = None if far is None else far[s : s + size]
        la, lb, _, _ = margin_bounds_on(net, ray.take(sl), labels[sl], a[s : s + size], b[s : s + size], pivot.take(sl), part)
        lo_a_parts.append(la)
        lo_b_parts.append(lb)
    return torch.cat(lo_a_parts), torch.cat(lo_b_parts)


#: the pieces of :func:`_pieces_bounds`, as fractions of the segment: shorter towards its end, where the crossing is
PIECES = (0.0, 0.5, 0.75, 0.875, 1.0)


def _pieces_bounds(
    net: BoundNet,
    ray: Ray,
    labels: Tensor,
    active: Tensor,
    a: Tensor,
    b: Tensor,
    split: Tensor,
    extra_a: Tensor,
    extra_b: Tensor,
    seen: Tensor,
    pivot: Pivot,
    batch_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The segments ``[a, b]`` of the inputs ``active``, those ``split`` cut into :data:`PIECES` (and, where ``extra_a``
    is not NaN, one more piece ``[extra_a, extra_b]``, after a stretch ``[b, extra_a]`` already proved), bounded in one pass.

    Per input, the piece the walk goes on from: the first not proved whole (the pieces before it are), else the
    last. Returns that piece's ``(a, b, far, lower at a, lower at b)``, the pieces bounded per input and whether
    the piece is the extra one.
    """
    k = len(PIECES) - 1
    more = split & ~torch.isnan(extra_a)
    count = torch.where(split, k, 1) + more.long()
    owner = torch.repeat_interleave(torch.arange(len(active), device=a.device), count)
    first_row = torch.cumsum(count, 0) - count
    j = torch.arange(len(owner), device=a.device) - first_row[owner]
    # the pieces' ends, computed once per input so that neighbouring pieces meet exactly
    fractions = torch.tensor(PIECES, dtype=torch.float64, device=a.device)
    ends = a[:, None] + fractions[None, :] * (b - a)[:, None]
    ends[:, 0], ends[:, k] = a, b
    starts = torch.cat([ends[:, :k], extra_a[:, None]], dim=1)
    ends = torch.cat([ends[:, 1:], extra_b[:, None]], dim=1)
    whole_split = split[owner]
    pa = torch.where(whole_split, starts[owner, j], a[owner])
    pb = torch.where(whole_split, ends[owner, j], b[owner])
    # the last pieces (short, exact at their far ends, next to the crossing), the mean choice before them
    far = (pb >= seen[owner]) | (j >= k - 1)
    lo_a, lo_b = _segment_bounds(net, ray, labels, active[owner], pa, pb, pivot, far, batch_size)
    failed = ~((lo_a > 0) & (lo_b > 0)).all(dim=1)
    first_fail = torch.full((len(active),), k + 1, dtype=torch.int64, device=a.device)
    first_fail.scatter_reduce_(0, owner[failed], j[failed], reduce="amin")
    pick = torch.minimum(first_fail, count - 1)
    row = first_row + pick
    return pa[row], pb[row], far[row], lo_a[row], lo_b[row], count, split & (pick == k)


def _left_root(lo_a: Tensor, lo_b: Tensor) -> Tensor:
    """Per row, the ``t`` up to which every lower line ``(1 − t)·lo_a + t·lo_b`` is positive (0 where one is not at
    ``t = 0``), a little before the first root whatever its rounding."""
    crossing = (lo_a > 0) & (lo_b <= 0)
    t_k = torch.where(crossing, lo_a / torch.where(crossing, lo_a - lo_b, 1.0), 1.0)
    t_k = torch.where(lo_a <= 0, 0.0, t_k)
    return t_k.amin(dim=1).clamp(0.0, 1.0) * (1.0 - 2.0**-40)


def _verified_further(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    refused: Tensor,
    eps_hi: Tensor,
    eps_max: float,
    tol: float,
    bounds: Bounds | tuple[float, float],
    batch_size: int,
    certified: Tensor,
) -> int:
    """For the inputs ``refused`` (their ``x(eps_hi)`` refused by the verification), move ``eps_hi`` in place to the
    first of the points ``tol·2^k`` past it (k = 1 .. LADDER) that :func:`verify_points` accepts, or mark the input
    not certified. The proved ``eps_lo`` stays: the bracket is then wider than ``tol``. Returns the rows evaluated."""
    if not len(refused):
        return 0
    ladder = _ladder(eps_hi[refused], tol, eps_max)
    owners = refused.repeat_interleave(LADDER)
    pts = ray_points(inputs[owners], directions[owners], ladder.flatten(), bounds)
    ok, _, rows = verify_points(model, pts, labels[owners], owners, batch_size)
    good = ok.view(-1, LADDER)
    has = good.any(dim=1)
    first = good.int().argmax(dim=1)
    eps_hi[refused[has]] = ladder[has, first[has]]
    certified[refused[~has]] = False
    return rows


def _pivots(net: BoundNet, ray: Ray, at: Tensor, bounds: Bounds | tuple[float, float], batch_size: int) -> Pivot:
    """:func:`pivot_values` of the points ``x(at)`` of the rays, in batches."""
    if not len(at):
        return Pivot({})
    largest = max(abs(float(bounds[0])), abs(float(bounds[1])))  # the points lie in the box
    if len(at) <= batch_size:  # one batch: nothing to join
        return pivot_values(net, ray_points(ray.x, ray.d, at, bounds), largest)._replace(eps=at.clone())
    parts = [
        pivot_values(net, ray_points(ray.x[s : s + batch_size], ray.d[s : s + batch_size], at[s : s + batch_size], bounds), largest)
        for s in range(0, len(at), batch_size)
    ]
    return Pivot({k: tuple(torch.cat([p.at[k][i] for p in parts]) for i in range(len(v))) for k, v in parts[0].at.items()}, at.clone())


def _move_pivots(pivot: Pivot, idx: Tensor, new: Pivot) -> None:
    """Replace, in place, the pivots of the inputs ``idx`` with ``new``."""
    for k, parts in pivot.at.items():
        for old, fresh in zip(parts, new.at[k], strict=True):
            old[idx] = fresh
    if pivot.eps is not None and new.eps is not None:
        pivot.eps[idx] = new.eps


#: a segment that ends at the hint's misclassified point (or at eps_max) and is shorter than FAR_CHOICE times its far
#: end ``b`` takes, in max-pool windows, the lower line of the element largest at ``b`` (exact there); any other
#: segment that of the largest mean (the far-end choice is far too loose at a long segment's near end). On the first
#: 512 Fashion-MNIST test inputs and the benchmark's CNN: 3.3 bound passes per input, against 4.3 with the largest
#: mean everywhere and 3.5 with the far end on every short segment (which left 6 of 994 inputs of one study run
#: unproved within MAX_PASSES, against 2 and 1 with the other two). Bounding a long segment both ways (proved where
#: the two lower bounds cover it between them) proved 44 % of first segments, for a pass each: no faster.
FAR_CHOICE = 0.5
#: where the point ``tol`` past the proved stretch is within the noise band, the points ``tol·2^k`` past it,
#: k = 1 .. LADDER, are tried too (a crossing whose margin falls by less than the noise over ``tol``)
LADDER = 12
#: the ladder starts only from a proof whose last bound pass was at most SETTLED·tol long (else one more
#: pass over [c, c + 8·tol] first: a long segment's root can stop short of the crossing by about tol)
SETTLED = 64


def _ladder(start: Tensor, step: float, eps_max: float) -> Tensor:
    """The points ``start + step·2^k``, k = 1 .. LADDER, at most ``eps_max``: ``(M, LADDER)`` float64."""
    steps = step * 2.0 ** torch.arange(1, LADDER + 1, dtype=torch.float64, device=start.device)
    return torch.clamp(start[:, None] + steps[None, :], max=eps_max)


def _probe(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    probe: Tensor,
    settled: Tensor,
    c: Tensor,
    eps_max: float,
    tol: float,
    bounds: Bounds | tuple[float, float],
    batch_size: int,
    certified: Tensor,
    eps_lo: Tensor,
    eps_hi: Tensor,
) -> tuple[int, Tensor]:
    """Forward passes past the proved ends ``c[probe]``; certify in place the inputs whose point is verified.

    Where that point's margin is within the noise, the ladder beyond it is tried only for the inputs
    ``settled`` (their last bound pass was at most :data:`SETTLED` ``· tol`` long). Returns the rows
    evaluated and the inputs whose point was within the noise but not settled (for one more pass).
    """
    p = torch.clamp(c[probe] + 0.999 * tol, max=eps_max)
    pts = ray_points(inputs[probe], directions[probe], p, bounds)
    margin, floor, _ = _evaluate(model, pts, labels[probe], probe, batch_size)
    rows = len(probe)
    robust = margin < -floor
    within = ~robust & (margin < floor)
    noisy = within & settled
    again = probe[within & ~settled]
    cand, at, points = probe[robust], p[robust], pts[robust]
    if bool(noisy.any()):
        owners = probe[noisy]
        ladder = _ladder(c[owners], 0.999 * tol, eps_max)
        flat_owner = owners.repeat_interleave(LADDER)
        lpts = ray_points(inputs[flat_owner], directions[flat_owner], ladder.flatten(), bounds)
        lm, lf, _ = _evaluate(model, lpts, labels[flat_owner], flat_owner, batch_size)
        rows += len(lpts)
        good = (lm < -lf).view(-1, LADDER)
        has = good.any(dim=1)
        k = good.int().argmax(dim=1)
        pick = torch.arange(len(owners), device=c.device) * LADDER + k
        hi = ladder.flatten()[pick][has]
        lo = torch.where(k > 0, ladder.flatten()[pick - 1], p[noisy])[has]
        hi, rows_dense = _narrow(model, inputs, labels, directions, owners[has], lo, hi, tol, bounds, batch_size)
        rows += rows_dense
        cand = torch.cat([cand, owners[has]])
        at = torch.cat([at, hi])
        points = torch.cat([points, ray_points(inputs[owners[has]], directions[owners[has]], hi, bounds)])
    # misclassified beyond the noise in this batch: verified in any batching at the end, all at once
    certified[cand] = True
    eps_lo[cand] = c[cand]
    eps_hi[cand] = at
    return rows, again


def _narrow(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    directions: Tensor,
    owners: Tensor,
    lo: Tensor,
    hi: Tensor,
    tol: float,
    bounds: Bounds | tuple[float, float],
    batch_size: int,
) -> tuple[Tensor, int]:
    """Move each ``hi`` (misclassified beyond the noise) down to the first such point of 15 evenly spaced in ``(lo, hi)``,
    three rounds at most or until the spacing is below ``tol``. Returns the new ``hi`` and the rows evaluated."""
    rows = 0
    fractions = torch.arange(1, 16, dtype=torch.float64, device=hi.device) / 16
    for _ in range(3):
        open_ = hi - lo > tol
        if not bool(open_.any()):
            break
        idx = torch.nonzero(open_).squeeze(1)
        cand = lo[idx, None] + (hi[idx] - lo[idx])[:, None] * fractions[None, :]  # (m, 15)
        who = owners[idx].repeat_interleave(15)
        m, f, _ = _evaluate(model, ray_points(inputs[who], directions[who], cand.flatten(), bounds), labels[who], who, batch_size)
        rows += len(who)
        good = torch.cat([(m < -f).view(-1, 15), torch.ones(len(idx), 1, dtype=torch.bool, device=hi.device)], dim=1)
        j = good.int().argmax(dim=1)  # 15: none of them, hi stays
        full = torch.cat([cand, hi[idx, None]], dim=1)
        before = torch.cat([lo[idx, None], cand], dim=1)
        hi[idx] = full.gather(1, j[:, None]).squeeze(1)
        lo[idx] = before.gather(1, j[:, None]).squeeze(1)
    return hi, rows
