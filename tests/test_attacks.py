"""The FGSM direction and the verified first crossing (PROTOCOL §2), against independent answers.

- The direction does not saturate: at margins where ``softmax`` rounds to one-hot, it still equals
  the direction computed in high precision (mpmath) from the model's exact Jacobian.
- A returned ``x(eps_hi)`` is misclassified however the model is batched.
- Each test here would catch a mutant of the measure that the older suite let through (named in
  its docstring).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from torch import nn

from sparank.attacks import ALONE_SAMPLE, NOISE_ULPS, Status, fgsm_direction, first_crossing, loss_gradient_weights, min_tol, ray_points
from sparank.robustness import RobustnessResult, fgsm_robustness

# enough digits that 1 − p_y is resolved at margin 1000 (e^-1000 ≈ 1e-434) with the naive formula
mpmath.mp.dps = 1000


# --------------------------------------------------------------------------- helpers


def random_mlp(widths: list[int], *, seed: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g) / math.sqrt(a))
            lin.bias.copy_(0.1 * torch.randn(b, generator=g))
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(dtype).eval()


def high_precision_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sign(Jᵀ (softmax(z) − e_y)) with the softmax in 1000-digit arithmetic and J the model's exact Jacobian.

    J is taken in float64 from autograd (for a ReLU net it is exact up to float64 rounding); the
    probabilities, which saturate in float32 and float64, are computed with mpmath.
    """
    signs = []
    for i in range(len(x)):
        xi = x[i : i + 1].double()
        model64 = model.double()
        jac = torch.autograd.functional.jacobian(lambda v: model64(v)[0], xi).reshape(-1, xi.numel())  # (K, D)
        z = model64(xi)[0].detach()
        zs = [mpmath.mpf(float(v)) for v in z]
        top = max(zs)
        e = [mpmath.e ** (v - top) for v in zs]
        total = mpmath.fsum(e)
        u = [ei / total for ei in e]
        u[int(y[i])] -= 1
        g = [mpmath.fsum(u[k] * mpmath.mpf(float(jac[k, d])) for k in range(len(zs))) for d in range(xi.numel())]
        signs.append(torch.tensor([float(mpmath.sign(v)) for v in g]))
    return torch.stack(signs).view_as(x)


class BatchDependent(nn.Module):
    """Two classes on a 1-D input; the class-0 margin is 10·(0.3 − x), plus ``bias_alone`` when evaluated alone.

    In a batch the crossing is at 0.3; alone it is at 0.3 + bias_alone/10. A point between the two is
    misclassified in a batch and correct alone: a measure that does not verify alone returns it.
    """

    def __init__(self, bias_alone: float) -> None:
        super().__init__()
        self.bias_alone = bias_alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = 10.0 * (0.3 - x[:, 0]) + (self.bias_alone if len(x) == 1 else 0.0)
        return torch.stack([margin, torch.zeros_like(margin)], dim=1)


class Piecewise(nn.Module):
    """Two classes on a 1-D input; class 0 is predicted except where ``x`` lies in one of ``wrong`` intervals."""

    def __init__(self, wrong: list[tuple[float, float]]) -> None:
        super().__init__()
        self.wrong = wrong

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x[:, 0]
        # margin: distance to the nearest wrong interval, negative inside one (continuous, piecewise linear)
        margin = torch.full_like(t, 1.0)
        for a, b in self.wrong:
            inside = torch.minimum(t - a, b - t)  # > 0 inside
            margin = torch.minimum(margin, -inside)
        return torch.stack([margin, torch.zeros_like(margin)], dim=1)


# --------------------------------------------------------------------------- the direction does not saturate


@pytest.mark.parametrize("target_margin", [1.0, 20.0, 50.0, 200.0, 1000.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_direction_equals_high_precision_direction_at_any_margin(target_margin, dtype):
    """Catches the softmax − onehot gradient: above margin ~17 (float32) its y term cancels to 0,
    beyond ~100 every term underflows and the direction is exactly 0 (reported censored)."""
    model = random_mlp([6, 8, 8, 4], seed=1, dtype=torch.float64)
    x = torch.rand(12, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        z = model(x)
        y = z.argmax(1)
        top2 = z.topk(2, dim=1).values
        scale = target_margin / float((top2[:, 0] - top2[:, 1]).median())
        model[-1].weight.mul_(scale)
        model[-1].bias.mul_(scale)
    reference = high_precision_direction(model, x, y)
    assert (reference != 0).float().mean() > 0.9  # the reference is a real direction
    model = model.to(dtype)
    d = fgsm_direction(model, x.to(dtype), y)
    if dtype == torch.float64:
        assert torch.equal(d.double(), reference)
    else:
        # float32 arithmetic may flip the sign of a component that is ~0 relative to the others
        assert (d.double() == reference).float().mean() >= 0.95


def test_the_saturating_gradient_is_what_this_replaces():
    """The reference check above can fail: autograd through cross-entropy saturates at margin 200 (float32)."""
    model = random_mlp([6, 8, 4], seed=3)
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model[-1].weight.mul_(2000.0)
        model[-1].bias.mul_(2000.0)
        y = model(x).argmax(1)
    xg = x.clone().requires_grad_(True)
    (naive,) = torch.autograd.grad(nn.functional.cross_entropy(model(xg), y, reduction="sum"), xg)
    saturated = (naive.flatten(1) == 0).all(dim=1)  # FGSM along these would never move
    assert saturated.sum() >= 4
    assert (fgsm_direction(model, x, y)[saturated] != 0).float().mean() > 0.9


@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0, 1000.0, 1e6])
def test_binary_affine_direction_is_scale_free(scale):
    """Two classes: the gradient is p_other·(w_other − w_y), so the direction is sign(w_other − w_y) at any scale."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(2, 10, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64)
    layer = nn.Linear(10, 2).double()
    with torch.no_grad():
        layer.weight.copy_(scale * w)
        layer.bias.copy_(scale * b)
    x = torch.rand(20, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (20,), generator=g)
    expected = torch.sign(w[1 - y] - w[y])
    assert torch.equal(fgsm_direction(layer, x, y), expected)
    assert torch.equal(fgsm_direction(layer.float(), x.float(), y), expected.float())


@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0, 1000.0])
def test_multiclass_affine_direction_depends_on_temperature(scale):
    """K > 2: sign(Σ_j p_j (w_j − w_y)) with p at that scale, from mpmath; the scales disagree with each other."""
    g = torch.Generator().manual_seed(6)
    w = torch.randn(5, 12, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    x = torch.rand(30, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (30,), generator=g)
    layer = nn.Linear(12, 5).double()
    with torch.no_grad():
        layer.weight.copy_(scale * w)
        layer.bias.copy_(scale * b)
    d = fgsm_direction(layer, x, y)
    for i in range(len(x)):
        z = [mpmath.mpf(float(v)) for v in scale * (w @ x[i] + b)]
        top = max(z)
        e = [mpmath.e ** (v - top) for v in z]
        p = [ei / mpmath.fsum(e) for ei in e]
        grad = [mpmath.fsum(p[j] * mpmath.mpf(float(w[j, k] - w[y[i], k])) for j in range(5)) for k in range(12)]
        assert d[i].tolist() == [float(mpmath.sign(v)) for v in grad]


def test_multiclass_direction_really_changes_with_scale():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(5, 12, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    x = torch.rand(30, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (30,), generator=g)
    dirs = []
    for scale in (0.01, 1000.0):
        layer = nn.Linear(12, 5).double()
        with torch.no_grad():
            layer.weight.copy_(scale * w)
            layer.bias.copy_(scale * b)
        dirs.append(fgsm_direction(layer, x, y))
    assert not torch.equal(dirs[0], dirs[1])


def test_loss_gradient_weights_are_the_cross_entropy_gradient_up_to_a_positive_factor():
    z = torch.randn(50, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(8))
    zg = z.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(nn.functional.cross_entropy(zg, y, reduction="sum"), zg)
    u = loss_gradient_weights(z, y)
    factor = exact / u
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), rtol=1e-10)
    assert (factor > 0).all()
    assert torch.allclose(u.sum(dim=1), torch.zeros(50, dtype=torch.float64), atol=1e-12)


def test_zero_direction_is_no_direction_not_censored():
    """A model flat along the input (a plateau) gets NO_DIRECTION; a mutant folding it into censored fails."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([2.0, 0.0, 1.0]))
    x = torch.rand(5, 4, dtype=torch.float64)
    r = fgsm_robustness(model, x, torch.zeros(5, dtype=torch.long), eps_max=0.5)
    assert (r.status == Status.NO_DIRECTION).all()
    s = r.summary()
    assert s.no_direction_fraction == 1.0 and s.censored_fraction == 0.0
    assert s.fooled_fraction + s.clean_wrong_fraction + s.censored_fraction + s.no_direction_fraction == 1.0


# --------------------------------------------------------------------------- verified in any batching


def _misclassified_in_batches(model: nn.Module, points: torch.Tensor, labels: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.no_grad():
        preds = torch.cat([model(points[i : i + batch]).argmax(1) for i in range(0, len(points), batch)])
    return preds != labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tol", [1e-6, 1e-9])
def test_every_eps_hi_is_misclassified_in_any_batching(dtype, tol):
    """Catches verification in one batch only: 2 of 300 such points were correct alone or in batches of 7."""
    model = random_mlp([64, 256, 256, 10], seed=0, dtype=dtype)
    x = torch.rand(300, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    if dtype == torch.float32 and tol < min_tol(dtype, (0.0, 1.0), 0.5):
        with pytest.raises(ValueError, match="tol"):
            fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-2, tol=tol)
        return
    r = fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-2, tol=tol)
    fooled = r.status == Status.FOOLED
    assert fooled.sum() > 200
    points = ray_points(x[fooled], r.directions[fooled].to(dtype), r.eps_hi[fooled], (0.0, 1.0))
    for batch in (1, 7, 256, len(points)):
        assert _misclassified_in_batches(model, points, y[fooled], batch).all(), batch
    assert ((r.eps_hi - r.eps_lo)[fooled] <= tol).all()
    # the lower ends are classified y (in the batch they are evaluated in)
    lows = ray_points(x[fooled], r.directions[fooled].to(dtype), r.eps_lo[fooled], (0.0, 1.0))
    assert (~_misclassified_in_batches(model, lows, y[fooled], len(lows))).float().mean() > 0.99


def test_a_point_misclassified_only_in_a_batch_is_not_returned():
    """Catches a measure that ignores its verification (or verifies in the same batch only)."""
    model = BatchDependent(bias_alone=2e-3)
    # more inputs than the measure re-evaluates alone by default: the noise it sees in those must
    # make it re-evaluate every one
    n = ALONE_SAMPLE + 36
    x = torch.full((n, 1), 0.05, dtype=torch.float64)
    y = torch.zeros(n, dtype=torch.long)
    r = fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-2, tol=1e-8)
    assert (r.status == Status.FOOLED).all()
    # in a batch the crossing is at ε = 0.25; alone at 0.2502
    assert (r.eps_hi > 0.25 + 2e-4).all()
    points = ray_points(x, r.directions, r.eps_hi, (0.0, 1.0))
    for i in range(n):
        assert model(points[i : i + 1]).argmax(1).item() == 1
    assert (model(points).argmax(1) == 1).all()
    # the band where batch and alone disagree, (0.25, 0.2502], is wider than tol: the bracket keeps width
    # tol and its lower end lies inside the band (misclassified in a batch, correct alone)
    assert (r.eps_hi - r.eps_lo <= 1e-8).all() and (r.eps_lo > 0.25).all()


def test_tol_below_the_dtype_resolution_is_refused_with_the_fix():
    model = random_mlp([4, 3], seed=0)
    x = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"tol=1e-09.*float64"):
        fgsm_robustness(model, x, torch.zeros(3, dtype=torch.long), tol=1e-9)
    assert min_tol(torch.float32, (0.0, 1.0), 0.5) == pytest.approx(2 * 2**-23)
    assert min_tol(torch.float64, (0.0, 1.0), 0.5) < 1e-15


def test_noise_floor_is_a_few_units_in_the_last_place():
    """The allowance the measure documents: a margin below −δ is misclassified in any batching."""
    assert 4 <= NOISE_ULPS <= 64


# --------------------------------------------------------------------------- the scan: first and last points


def test_scan_tries_its_first_point_h():
    """Catches a scan starting at 2h: the only misclassified stretch contains h = 0.1 and not 0.2."""
    model = Piecewise([(0.08, 0.12)])
    x = torch.zeros(1, 1, dtype=torch.float64)
    r = fgsm_robustness(model, x, torch.tensor([0]), eps_max=0.5, resolution=0.1, tol=1e-9)
    assert r.status.item() == Status.FOOLED
    assert r.eps_hi.item() == pytest.approx(0.08, abs=2e-9)


def test_scan_tries_eps_max_itself():
    """Catches a scan that drops ε_max: misclassified only on (0.49, 0.5], past the last multiple of h = 0.3."""
    model = Piecewise([(0.49, 0.6)])
    x = torch.zeros(1, 1, dtype=torch.float64)
    r = fgsm_robustness(model, x, torch.tensor([0]), eps_max=0.5, resolution=0.3, tol=1e-9)
    assert r.status.item() == Status.FOOLED
    assert r.eps_hi.item() == pytest.approx(0.49, abs=2e-9)
    censored = fgsm_robustness(model, x, torch.tensor([0]), eps_max=0.485, resolution=0.3, tol=1e-9)
    assert censored.status.item() == Status.CENSORED


def test_first_crossing_reports_progress_to_the_total():
    model = random_mlp([8, 16, 3], seed=2)
    x = torch.rand(40, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    calls: list[tuple[int, int]] = []
    d = fgsm_direction(model, x, y)
    first_crossing(model, x, y, d, eps_max=0.5, resolution=1e-2, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (40, 40)
    assert all(t == 40 for _, t in calls)
    assert all(a <= b for (a, _), (b, _) in zip(calls, calls[1:]))


# --------------------------------------------------------------------------- the summary statistics


def _result(eps_hi: list[float], status: list[int], eps_max: float = 0.5) -> RobustnessResult:
    n = len(eps_hi)
    hi = torch.tensor(eps_hi, dtype=torch.float64)
    return RobustnessResult(
        eps_lo=hi.clone(),
        eps_hi=hi,
        status=torch.tensor(status),
        labels=torch.zeros(n, dtype=torch.long),
        directions=torch.zeros(n, 1),
        norm="linf",
        eps_max=eps_max,
        resolution=0.01,
        tol=1e-6,
    )


def test_quantiles_with_an_even_count_are_the_inverted_cdf():
    """Catches an off-by-one quantile index: with 4 values the median is the 2nd smallest, not the 3rd."""
    r = _result([0.4, 0.1, 0.3, 0.2], [0, 0, 0, 0])
    q = r.summary().quantiles
    # inverted CDF: the smallest value v with #{ε* <= v}/n >= q
    values = sorted([0.4, 0.1, 0.3, 0.2])
    for key, level in (("10", 0.10), ("25", 0.25), ("50", 0.50), ("75", 0.75), ("90", 0.90)):
        expected = next(v for v in values if sum(u <= v for u in values) / len(values) >= level)
        assert q[key] == expected, key
    assert q["50"] == 0.2 and q["25"] == 0.1 and q["75"] == 0.3


def test_status_fractions_partition_the_inputs():
    """Catches fooled_fraction counting censored inputs: the four fractions must sum to one."""
    inf = math.inf
    r = _result([0.1, 0.0, inf, inf, 0.2, inf], [0, 1, 2, 3, 0, 2])
    s = r.summary()
    assert s.fooled_fraction == pytest.approx(2 / 6)
    assert s.clean_wrong_fraction == pytest.approx(1 / 6)
    assert s.censored_fraction == pytest.approx(2 / 6)
    assert s.no_direction_fraction == pytest.approx(1 / 6)
    assert s.fooled_fraction + s.clean_wrong_fraction + s.censored_fraction + s.no_direction_fraction == pytest.approx(1.0)
    assert s.auc == pytest.approx((0.1 + 0.0 + 0.5 + 0.5 + 0.2 + 0.5) / 6)


# --------------------------------------------------------------------------- faults in the model or the data
# (the one-line errors for bad models, labels and inputs are rows of tests/test_faults.py)


def test_non_finite_logits_along_the_ray_are_an_error_too():
    class Blows(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = x[:, 0]
            margin = torch.where(t > 0.2, torch.full_like(t, float("inf")), 1.0 - t)
            return torch.stack([margin, torch.zeros_like(t)], dim=1)

    with pytest.raises(ValueError, match="non-finite"):
        fgsm_robustness(Blows(), torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.long))


def test_numpy_inputs_and_labels_are_accepted():
    model = random_mlp([4, 3], seed=0)
    x = np.random.default_rng(0).random((6, 4), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    from_numpy = fgsm_robustness(model, x, y, eps_max=0.5)
    from_torch = fgsm_robustness(model, torch.from_numpy(x), torch.from_numpy(y), eps_max=0.5)
    assert torch.equal(from_numpy.eps_hi, from_torch.eps_hi)


# --------------------------------------------------------------------------- edges that mutation testing found untested


def test_defaults_are_the_documented_ones():
    """Catches a changed default tol, resolution, eps_max or norm (the README and PROTOCOL state them)."""
    model = random_mlp([8, 16, 3], seed=4)
    with torch.no_grad():  # logits of a trained model's size (a few units), not a random init's (~0.1)
        model[-1].weight.mul_(30.0)
        model[-1].bias.mul_(30.0)
    x = torch.rand(30, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    r = fgsm_robustness(model, x, y)
    assert (r.norm, r.eps_max, r.resolution, r.tol) == ("linf", 0.5, 1e-2, 1e-6)
    fooled = r.status == Status.FOOLED
    assert fooled.any()
    assert ((r.eps_hi - r.eps_lo)[fooled] <= 1e-6).all()


def test_an_empty_batch_gives_an_empty_result_and_an_undefined_summary():
    model = random_mlp([8, 3], seed=4)
    r = fgsm_robustness(model, torch.empty(0, 8), torch.empty(0, dtype=torch.long))
    assert len(r) == 0
    s = r.summary()
    assert s.n == 0
    for value in (s.auc, s.clean_accuracy, s.fooled_fraction, s.clean_wrong_fraction, s.censored_fraction, s.no_direction_fraction):
        assert math.isnan(value)
    assert all(v is None for v in s.quantiles.values())


def test_one_correct_input_is_every_quantile():
    s = _result([0.25, 0.0], [0, 1]).summary()
    assert all(v == 0.25 for v in s.quantiles.values())


def test_robust_accuracy_compares_in_float64():
    """A float32 ε grid would round 0.1 up past an ε* of 0.1000000001."""
    r = _result([0.1000000001], [0])
    assert r.robust_accuracy(0.1).item() == 1.0
    assert r.robust_accuracy(torch.tensor([0.1], dtype=torch.float64)).item() == 1.0


@pytest.mark.parametrize(
    ("kwargs", "ok"),
    [
        ({"eps_max": math.inf}, False),
        ({"eps_max": math.nan}, False),
        ({"eps_max": 0.0}, False),
        ({"resolution": 0.5}, True),  # the scan is then the single point eps_max
        ({"resolution": 0.0}, False),
        ({"batch_size": 0}, False),
        ({"batch_size": 1}, True),
    ],
)
def test_settings_at_their_limits(kwargs, ok):
    model = random_mlp([8, 3], seed=4)
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(6))
    y = torch.zeros(5, dtype=torch.long)
    if ok:
        assert len(fgsm_robustness(model, x, y, **kwargs)) == 5
    else:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            fgsm_robustness(model, x, y, **kwargs)


def test_batch_size_bounds_every_forward_call():
    seen: list[int] = []

    class Recording(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = random_mlp([8, 16, 3], seed=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return self.inner(x)

    x = torch.rand(40, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = Recording().inner(x).argmax(1)
    fgsm_robustness(Recording(), x, y, batch_size=7)
    assert max(seen) == 7


def test_direction_does_not_depend_on_the_batch_size():
    """Catches a batching loop that skips or overlaps inputs beyond the first batch."""
    model = random_mlp([8, 16, 3], seed=6, dtype=torch.float64)
    x = torch.rand(20, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(10))
    assert torch.equal(fgsm_direction(model, x, y, batch_size=7), fgsm_direction(model, x, y))
    # the L2 direction's last bits follow the BLAS kernel of the batch size
    assert torch.allclose(fgsm_direction(model, x, y, norm="l2", batch_size=7), fgsm_direction(model, x, y, norm="l2"), rtol=1e-12, atol=1e-15)


def test_l2_direction_has_unit_length_even_for_a_small_gradient_and_zero_for_none():
    model = random_mlp([8, 3], seed=6, dtype=torch.float64)
    with torch.no_grad():
        model[-1].weight.mul_(1e-3)  # input gradients of norm ~1e-3
    x = torch.rand(10, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    y = torch.zeros(10, dtype=torch.long)
    d = fgsm_direction(model, x, y, norm="l2")
    assert torch.allclose(d.norm(dim=1), torch.ones(10, dtype=torch.float64))
    with torch.no_grad():
        model[-1].weight.zero_()
    assert (fgsm_direction(model, x, y, norm="l2") == 0).all()


def test_non_finite_gradients_with_finite_logits_are_named():
    class SqrtModel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x[:, :1].sqrt()  # the gradient of sqrt at 0 is inf
            return torch.cat([s, 1 - s], dim=1)

    x = torch.tensor([[0.5], [0.0], [0.25]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"non-finite input gradients .* at indices 1\b"):
        fgsm_direction(SqrtModel(), x, torch.zeros(3, dtype=torch.long))


def test_the_result_and_summary_carry_their_settings():
    """Catches a summary that drops or garbles norm, eps_max, the normalised AUC, the curve or the labels."""
    model = random_mlp([8, 16, 3], seed=4)
    with torch.no_grad():
        model[-1].weight.mul_(30.0)
    x = torch.rand(30, 8, generator=torch.Generator().manual_seed(12))
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(13), dtype=torch.int32)
    calls: list[tuple[int, int]] = []
    r = fgsm_robustness(model, x, y, norm="l2", eps_max=2.0, resolution=0.05, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1] == (30, 30)
    assert r.labels.dtype == torch.int64 and torch.equal(r.labels, y.long())
    s = r.summary(curve_points=11)
    assert (s.norm, s.eps_max, s.n) == ("l2", 2.0, 30)
    assert s.auc_normalised == pytest.approx(s.auc / 2.0)
    assert s.curve_eps == pytest.approx([0.2 * k for k in range(11)])
    assert s.curve_accuracy == pytest.approx([float((r.eps_hi > e).double().mean()) for e in s.curve_eps])
    assert s.clean_accuracy == pytest.approx(float((r.status != Status.CLEAN_WRONG).double().mean()))


@pytest.mark.parametrize(("rows", "per_row", "batch_size"), [(30, 2, 16), (7, 3, 256), (5, 40, 16), (1, 1, 1)])
def test_ray_points_made_a_batch_at_a_time_are_the_ray_points_bit_for_bit(rows, per_row, batch_size):
    """The scan's evaluation builds each batch of ray points just before its forward pass (never all in memory);
    its margins, noise floors and argmax flags equal those of ray_points evaluated the plain way, in row-major
    order, however the points split into batches (more points per input than a batch holds too)."""
    from sparank.attacks.base import _evaluate
    from sparank.attacks.fgsm import _evaluate_ray

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4)).eval()
    x = torch.rand(10, 1, 3, 4)
    d = torch.randn(10, 1, 3, 4).sign()
    y = torch.randint(0, 4, (10,))
    who = torch.randint(0, 10, (rows,))  # repeats allowed
    eps = torch.rand(rows, per_row, dtype=torch.float64) * 0.6
    owners = who.repeat_interleave(per_row)
    expected = _evaluate(model, ray_points(x[owners], d[owners], eps.flatten(), (0.0, 1.0)), y[owners], owners, batch_size)
    got = _evaluate_ray(model, x, y, d, who, eps, (0.0, 1.0), batch_size)
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(e, g)
