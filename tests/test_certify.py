"""Certified first crossing (sparank.certify): known answers, a dense brute-force grid, a hidden stretch, sound bounds.

Independent checks: the exact closed form of affine models (sparank.linear),
a dense grid of forward passes along each ray, a network built by hand whose
misclassified stretch is 1e-5 wide and whose crossing is known in closed form,
and forward passes at sampled points of random segments against the bounds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sparank import certify
from sparank.attacks import FGSM, fgsm_direction
from sparank.attacks.fgsm import ray_points
from sparank.certify import Unsupported, bound_network, check_walk, margin_bounds
from sparank.linear import affine_parameters, linear_fgsm_robustness
from sparank.robustness import CENSORED, CLEAN_WRONG, FOOLED, NO_DIRECTION, fgsm_robustness

# --------------------------------------------------------------------------- helpers


def _random_mlp(seed: int, dim: int = 16, widths: tuple[int, ...] = (24, 12), k: int = 5) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    width = dim
    for w in widths:
        lin = nn.Linear(width, w)
        layers += [lin, nn.ReLU()]
        width = w
    layers.append(nn.Linear(width, k))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model.eval()


def _random_cnn(seed: int, pool: str = "max", batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    pool1 = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
    layers: list[nn.Module] = [nn.Conv2d(1, 3, 3, padding=1)]
    if batchnorm:
        bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
        layers.append(bn)
    layers += [
        nn.ReLU(),
        pool1,
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
    ]
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():  # He-scaled weights, small biases: the inputs, not the biases, decide the class
        for m in model:
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape) * math.sqrt(2.0 / m.weight[0].numel()))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape))
    return model


def _dense_grid(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, d: torch.Tensor, eps_max: float, points: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input: the first grid ε whose point is misclassified (by argmax) and the grid point before it; inf if none."""
    grid = torch.linspace(0.0, eps_max, points, dtype=torch.float64)
    first = torch.full((len(x),), math.inf, dtype=torch.float64)
    before = torch.full((len(x),), math.inf, dtype=torch.float64)
    with torch.inference_mode():
        for i in range(len(x)):
            pts = ray_points(x[i : i + 1].expand(points, *x.shape[1:]), d[i : i + 1].expand(points, *x.shape[1:]), grid, (0.0, 1.0))
            wrong = model(pts).argmax(dim=1) != y[i]
            if bool(wrong.any()):
                j = int(wrong.int().argmax())
                first[i] = grid[j]
                before[i] = grid[max(j - 1, 0)]
    return first, before


# --------------------------------------------------------------------------- affine models: the closed form


@pytest.mark.parametrize(("seed", "boost", "eps_max"), [(0, 0.8, 0.2), (2, 1.0, 0.2), (2, 0.3, 0.5)])
def test_affine_models_match_the_closed_form(seed, boost, eps_max):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6)).double().eval()
    x = torch.rand(60, 1, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        model[1].bias[0] += boost  # class 0 wins by far on some inputs: censored ones
        y = model(x).argmax(dim=1)
    y[:5] = (y[:5] + 1) % 6  # clean-wrong ones
    tol = 1e-9
    result = fgsm_robustness(model, x, y, eps_max=eps_max, resolution=1e-2, tol=tol, certify=True)
    w, b = affine_parameters(model)
    exact = linear_fgsm_robustness(w, b, x, y, eps_max=eps_max, directions=result.directions)
    assert result.certified is not None and bool(result.certified.all())
    assert torch.equal(result.status, exact.status)
    fooled = exact.status == FOOLED
    assert int(fooled.sum()) >= 10 and int((exact.status == CENSORED).sum()) >= 5 and int((exact.status == CLEAN_WRONG).sum()) >= 1
    # the certified bracket holds the exact crossing: eps_lo <= ε* <= eps_hi, and eps_hi is within tol of it
    assert bool((result.eps_lo[fooled] <= exact.eps_hi[fooled] + 1e-12).all())
    assert bool((result.eps_hi[fooled] >= exact.eps_hi[fooled] - 1e-12).all())
    assert float((result.eps_hi[fooled] - exact.eps_hi[fooled]).max()) <= tol


# --------------------------------------------------------------------------- ReLU networks: a dense brute-force grid


@pytest.mark.parametrize(
    "make", [lambda: _random_mlp(3), lambda: _random_mlp(4, widths=(40,)), lambda: _random_cnn(5), lambda: _random_cnn(6, "avg", True)]
)
def test_random_relu_networks_against_a_dense_grid(make):
    model = make().double()
    shape = (1, 4, 4) if isinstance(model[0], nn.Flatten) else (1, 8, 8)
    torch.manual_seed(11)
    x = torch.rand(40, *shape, dtype=torch.float64)
    with torch.no_grad():
        model[-1].bias -= model(x).mean(dim=0)  # every class about as likely: crossings within eps_max
        y = model(x).argmax(dim=1)
    y[:3] = (y[:3] + 1) % model[-1].out_features  # a few clean-wrong inputs
    tol = 1e-9
    r = fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-2, tol=tol, certify=True)
    assert r.certified is not None and float(r.certified.double().mean()) >= 0.95
    grid_first, grid_before = _dense_grid(model, x, y, r.directions, 0.5, 5001)  # step 1e-4
    c = r.certified & (r.status != CLEAN_WRONG)
    # never beyond the grid's first misclassified point; censored only where the grid found nothing
    assert bool((r.eps_hi[c] <= grid_first[c] + tol).all())
    assert torch.equal(r.status[c] == CENSORED, ~torch.isfinite(grid_first[c]))
    # equal wherever the grid resolves the crossing: inside the grid's bracket
    hit = c & torch.isfinite(grid_first) & (r.status == FOOLED)
    assert int(hit.sum()) >= 5
    inside = (r.eps_hi[hit] > grid_before[hit] - tol) & (r.eps_hi[hit] <= grid_first[hit] + tol)
    assert bool(inside.all())
    assert bool((r.eps_hi[c & (r.status == FOOLED)] - r.eps_lo[c & (r.status == FOOLED)] <= tol).all())


def test_trained_digits_mlp_float32_against_a_dense_grid_and_the_scan(digits, digits_mlp):
    x, y = digits.test_x[:120], digits.test_y[:120]
    r = fgsm_robustness(digits_mlp, x, y, eps_max=0.5, resolution=1e-2, certify=True)
    scan = fgsm_robustness(digits_mlp, x, y, eps_max=0.5, resolution=1e-3)
    assert r.certified is not None and bool(r.certified.all())
    assert torch.equal(r.status, scan.status)
    grid_first, grid_before = _dense_grid(digits_mlp, x, y, r.directions, 0.5, 5001)
    fooled = r.status == FOOLED
    assert bool((r.eps_hi[fooled] <= grid_first[fooled] + 1e-6).all())
    assert bool((r.eps_hi[fooled] > grid_before[fooled] - 1e-6).all())
    assert float((r.eps_hi[fooled] - scan.eps_hi[fooled]).abs().max()) <= 2e-6
    assert r.bound_passes > 0 and r.settings["certify"] is True


def test_trained_digits_cnn_is_certified(digits):
    from sparank.train import TrainConfig, train_model

    model, _ = train_model("cnn:4,8,16", digits, TrainConfig(epochs=4, seed=0))
    x, y = digits.test_x[:80], digits.test_y[:80]
    r = fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-2, certify=True)
    scan = fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-3)
    assert r.certified is not None and float(r.certified.double().mean()) >= 0.95
    both = r.certified & (r.status == FOOLED) & (scan.status == FOOLED)
    # the certified ε* is never above the scan's (the scan's point is misclassified), and equal where no dip hides
    assert bool((r.eps_hi[both] <= scan.eps_hi[both] + 1e-6).all())
    assert float((r.eps_hi[both] - scan.eps_hi[both]).abs().median()) <= 1e-6


@pytest.mark.parametrize("width", [3e-4, 1e-6])
def test_placing_scan_brackets_a_change_of_class_on_every_ray(digits, digits_mlp, width):
    """The hint that places the segments: x(lo) classified y and x(hi) not, checked by forward passes; inputs with
    nothing found are classified y at every point of the coarse grid. Narrowed to 3e-4 every bracket is within the
    width; to 1e-6 (what the certified walk asks for) nearly every one (one in a noise band may stay wider), and
    the secant points cost fewer forward rows than bisection would (about 16 per input from a 0.05 bracket)."""
    from sparank.attacks.fgsm import place_crossings

    x, y = digits.test_x[:150], digits.test_y[:150]
    d = fgsm_direction(digits_mlp, x, y)
    lo, hi, rows, _, _ = place_crossings(digits_mlp, x, y, d, step=0.05, width=width, bounds=(0.0, 1.0), eps_max=0.5, batch_size=64)
    with torch.inference_mode():
        wrong0 = digits_mlp(x).argmax(dim=1) != y
        found = torch.isfinite(hi) & ~wrong0
        at_lo = digits_mlp(ray_points(x, d, lo, (0.0, 1.0))).argmax(dim=1)
        at_hi = digits_mlp(ray_points(x, d, torch.where(found, hi, 0.0), (0.0, 1.0))).argmax(dim=1)
        grid = torch.arange(1, 11, dtype=torch.float64) * 0.05
        never = ~found & ~wrong0
        along = [
            digits_mlp(ray_points(x[never], d[never], torch.full((int(never.sum()),), float(e)), (0.0, 1.0))).argmax(dim=1) for e in grid
        ]
    assert bool(wrong0.any()) and bool((lo[wrong0] == 0).all()) and bool((hi[wrong0] == 0).all())
    assert int(found.sum()) >= 100
    assert bool((at_lo[found] == y[found]).all()) and bool((at_hi[found] != y[found]).all())
    assert bool((lo[found] < hi[found]).all())
    within = (hi[found] - lo[found] <= width).double().mean()
    assert float(within) >= (1.0 if width > 1e-5 else 0.95)
    assert all(bool((p == y[never]).all()) for p in along) and bool((lo[never] == 0.5).all())
    assert len(x) + int(found.sum()) <= rows < len(x) * 14


# --------------------------------------------------------------------------- a stretch narrower than any scan step


def _bump_network(center: float, half_width: float) -> nn.Sequential:
    """1-D input u; logits f_0 = 1 and f_1 = 0.01·u + a triangle of height 2 at ``center``, half-width ``half_width``."""
    a = 2.0 / half_width
    hidden = nn.Linear(1, 4, dtype=torch.float64)  # float64 from the start: a float32 bias would move the stretch
    out = nn.Linear(4, 2, dtype=torch.float64)
    with torch.no_grad():
        hidden.weight.copy_(torch.ones(4, 1))
        hidden.bias.copy_(torch.tensor([-(center - half_width), -center, -(center + half_width), 0.0], dtype=torch.float64))
        out.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [a, -2 * a, a, 0.01]], dtype=torch.float64))
        out.bias.copy_(torch.tensor([1.0, 0.0]))
    return nn.Sequential(hidden, nn.ReLU(), out).eval()


def test_a_stretch_1e5_wide_is_found_by_certify_and_stepped_over_by_the_scan():
    center, half = 0.4234567, 1e-5  # misclassified where the triangle tops 1 - 0.01·u: a stretch of about 1e-5
    model = _bump_network(center, half)
    x = torch.tensor([[0.3], [0.25], [0.2]], dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.int64)
    a = 2.0 / half
    u_star = (1.0 + a * (center - half)) / (a + 0.01)  # 0.01·u + a·(u − center + half) = 1
    exact = u_star - x[:, 0]
    scan = fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-3, tol=1e-9)
    assert bool((scan.status == CENSORED).all())  # the scan steps over it (and over nothing else: there is nothing else)
    r = fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-3, tol=1e-9, certify=True)
    assert r.certified is not None and bool(r.certified.all())
    assert bool((r.status == FOOLED).all())
    assert bool((r.eps_lo <= exact + 1e-12).all()) and bool((r.eps_hi >= exact - 1e-12).all())
    assert float((r.eps_hi - exact).max()) <= 1e-9
    with torch.no_grad():  # independent check: the stretch is real and this narrow
        u = torch.tensor([u_star - 1e-7, u_star + 1e-7, u_star + 2.1e-5], dtype=torch.float64)[:, None]
        assert model(u).argmax(dim=1).tolist() == [0, 1, 0]


# --------------------------------------------------------------------------- the bounds are sound


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    arch=st.sampled_from(["mlp", "cnn-max", "cnn-avg-bn"]),
    start=st.floats(0.0, 0.45),
    width=st.sampled_from([1e-6, 1e-3, 0.05, 0.5]),
    norm=st.sampled_from(["linf", "l2"]),
    pivot=st.sampled_from([None, "start", "end", "far"]),
    choice=st.sampled_from(["mean", "far", "mixed"]),
)
def test_sampled_margins_lie_inside_the_bounds(seed, arch, start, width, norm, pivot, choice):
    if arch == "mlp":
        model = _random_mlp(seed).double()
        shape: tuple[int, ...] = (1, 4, 4)
    else:
        model = _random_cnn(seed, "max" if arch == "cnn-max" else "avg", arch.endswith("bn")).double()
        shape = (1, 8, 8)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((6, *shape), generator=gen, dtype=torch.float64)
    x[:, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.999], dtype=torch.float64)  # on the box, and about to meet it
    y = torch.randint(0, model[-1].out_features, (6,), generator=gen)
    d = fgsm_direction(model, x, y, norm=norm)
    if norm == "l2":
        d = d * 4.0  # longer steps: more pixels meet the box inside the segment
    a = torch.full((6,), start, dtype=torch.float64)
    b = a + width
    net = bound_network(model)
    # float32 offsets from a pivot (where the layers allow it: not with average pooling or batch norm), at
    # either end of the segment or far from it, or every product in float64
    at = {None: None, "start": a, "end": b, "far": torch.full_like(a, 0.9 - start)}[pivot]
    # max-pool windows: the lower line of the largest mean or of the largest far end, per segment
    far = {"mean": None, "far": torch.ones(6, dtype=torch.bool), "mixed": torch.arange(6) % 2 == 0}[choice]
    lo_a, lo_b, up_a, up_b = margin_bounds(net, x, y, d, a, b, (0.0, 1.0), pivot=at, far=far)
    other = ~torch.nn.functional.one_hot(y, model[-1].out_features).bool()
    for t in torch.linspace(0.0, 1.0, 41, dtype=torch.float64):
        with torch.inference_mode():
            z = model(ray_points(x, d, a + t * (b - a), (0.0, 1.0)))
        margin = z.gather(1, y[:, None]) - z
        lower, upper = (1 - t) * lo_a + t * lo_b, (1 - t) * up_a + t * up_b
        slack = 1e-11 * (1 + z.abs().amax())  # the float64 forward pass's own rounding
        assert bool((margin[other] >= lower[other] - slack).all())
        assert bool((margin[other] <= upper[other] + slack).all())


def test_bounds_are_exact_where_nothing_switches():
    model = _random_mlp(7).double()
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    y = torch.tensor([0])
    d = fgsm_direction(model, x, y)
    a, b = torch.tensor([0.1], dtype=torch.float64), torch.tensor([0.1 + 1e-9], dtype=torch.float64)
    lo_a, lo_b, up_a, up_b = margin_bounds(bound_network(model), x, y, d, a, b, (0.0, 1.0))
    assert float((up_a - lo_a)[0, 1:].max()) < 1e-12 and float((up_b - lo_b)[0, 1:].max()) < 1e-12


@pytest.mark.parametrize(("arch", "pivot"), [("mlp", None), ("mlp", "end"), ("cnn-max", None), ("cnn-max", "end")])
def test_bounds_are_exact_at_the_far_end_of_a_long_segment(arch, pivot):
    """Over [0, 0.3] (a max-pool network: over [0.2, 0.3], short enough for max-pool windows to take the far-end
    choice), with pixels meeting the box and ReLUs switching inside, the lower and upper margin bounds at the far
    end are the margin there, up to rounding, while at the near end they are far apart: what lets one bound pass
    prove a whole ray up to the crossing."""
    model = (_random_mlp(21) if arch == "mlp" else _random_cnn(22)).double()
    shape = (1, 4, 4) if arch == "mlp" else (1, 8, 8)
    gen = torch.Generator().manual_seed(5)
    x = torch.rand((8, *shape), generator=gen, dtype=torch.float64)
    y = torch.randint(0, model[-1].out_features, (8,), generator=gen)
    d = fgsm_direction(model, x, y)
    start = 0.0 if arch == "mlp" else 0.2
    a, b = torch.full((8,), start, dtype=torch.float64), torch.full((8,), 0.3, dtype=torch.float64)
    net = bound_network(model)
    inside = (x + start * d < 1) & (x + start * d > 0)
    meets = ((x + 0.3 * d > 1) | (x + 0.3 * d < 0)) & inside
    assert int(meets.flatten(1).sum(dim=1).min()) >= 1  # every ray meets the box inside the segment
    far = torch.ones(8, dtype=torch.bool)
    lo_a, lo_b, up_a, up_b = margin_bounds(net, x, y, d, a, b, (0.0, 1.0), pivot=None if pivot is None else b, far=far)
    with torch.inference_mode():
        z = model(ray_points(x, d, b, (0.0, 1.0)))
    margin = z.gather(1, y[:, None]) - z
    other = ~torch.nn.functional.one_hot(y, model[-1].out_features).bool()
    assert float((margin - lo_b)[other].abs().max()) < 1e-9 and float((up_b - margin)[other].abs().max()) < 1e-9
    assert float((up_a - lo_a)[other].median()) > 1e-2  # loose at the near end: the test is not vacuous


def test_one_bound_pass_proves_most_rays_of_an_mlp(digits, digits_mlp):
    """With the hint narrowed to tol and bounds exact at the far end, one bound pass over [0, lo] proves most rays
    of an MLP up to the hint's misclassified point, which closes the bracket (2 passes each, before)."""
    x, y = digits.test_x[:150], digits.test_y[:150]
    r = fgsm_robustness(digits_mlp, x, y, eps_max=0.5, resolution=1e-2, tol=1e-6, certify=True)
    assert r.certified is not None and bool(r.certified.all())
    walked = int((r.status != CLEAN_WRONG).sum())
    assert r.bound_passes <= 1.3 * walked
    fooled = r.status == FOOLED
    assert float((r.eps_hi[fooled] - r.eps_lo[fooled] <= 1e-6).double().mean()) >= 0.95


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_float32_offset_products_stay_inside_their_error_bound(kind):
    """The float32 product of an offset layer, with its radius and slack, holds the float64 product of every point
    of the box: offsets over twelve orders of magnitude with cancelling signs, float64 weights (rounded to float32)."""
    gen = torch.Generator().manual_seed(3)
    if kind == "linear":
        layer = nn.Linear(1568, 40).double()
        shape: tuple[int, ...] = (1568,)
    else:
        layer = nn.Conv2d(16, 8, 3, padding=1).double()
        shape = (16, 9, 9)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64))
    op = certify._affine(layer)
    rows = 32  # two ends of 16 inputs
    o = (torch.randn((rows, *shape), generator=gen) * 10.0 ** torch.randint(-9, 4, (rows, *shape), generator=gen)).float()
    r = (torch.rand((rows, *shape), generator=gen) * 10.0 ** torch.randint(-9, 1, (rows, *shape), generator=gen)).float()
    r[::3] = 0.0  # rows without a radius take the shortcut
    slack = torch.rand(rows, generator=gen, dtype=torch.float64).view((-1,) + (1,) * len(shape)) * 1e-6
    pivot_err = torch.zeros(rows // 2, layer.weight.shape[0], dtype=torch.float64)
    assert certify._plain_float32(op, o)  # the CPU's float32 products are ordinary sums here
    out = certify._offset_affine(op, (o, r, slack), pivot_err)
    assert out is not None
    out_o, out_r, out_slack = out
    w = layer.weight.detach()
    exact_centre = certify._apply(op, o.double(), w, None)  # float64: off by ~1e-16 relative, the bound by ~1e-4
    worst = certify._apply(op, r.double() + slack, w.abs(), None)  # the farthest any point of the box gets
    gap = (exact_centre - out_o.double()).abs() + worst
    allowed = out_r.double() + out_slack
    assert bool((gap <= allowed).all())
    # and it is a float32-sized allowance, not a vacuous one: beyond the radius, the slack through |W| and the
    # offsets' own error, at most γ_n (~1e-4 here) of Σ|w|·max|o|
    channels = (1, -1) + (1,) * (len(shape) - 1)  # per output feature / channel
    per_row = (-1, 1) + (1,) * (len(shape) - 1)
    row_abs = op.row_abs.view(channels)
    beyond = allowed - certify._apply(op, r.double(), w.abs(), None) - row_abs * slack.flatten(1).amax(dim=1).view(per_row)
    scale = row_abs * o.abs().flatten(1).amax(dim=1).double().view(per_row)
    assert float((beyond / scale).max()) < 4 * certify._gamma32(op.fan_in)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_offsets_are_as_tight_as_float64_near_the_pivot_and_are_float64_without_plain_float32_products(digits):
    from sparank.train import TrainConfig, train_model

    model, _ = train_model("cnn:4,8,16", digits, TrainConfig(epochs=2, seed=0))
    x, y = digits.test_x[:32], digits.test_y[:32]
    d = fgsm_direction(model, x, y)
    net = bound_network(model)
    a = torch.full((32,), 0.05, dtype=torch.float64)
    b = a + 1e-6
    plain = margin_bounds(net, x, y, d, a, b, (0.0, 1.0))
    offset = margin_bounds(net, x, y, d, a, b, (0.0, 1.0), pivot=b)
    other = ~torch.nn.functional.one_hot(y, 10).bool()
    for p, q in zip(plain, offset, strict=True):  # within 1e-5 of the float64 bounds: far below a margin's change over tol
        assert float((p - q)[other].abs().max()) < 1e-5
    assert not all(torch.equal(p, q) for p, q in zip(plain, offset, strict=True))  # the float32 path was taken
    with torch.backends.mkldnn.flags(enabled=False):  # convolutions would go to NNPACK's Winograd: float64 instead
        assert not certify._plain_float32(net.affine[id(model[0])], torch.zeros(64, 1, 8, 8))
        fallback = margin_bounds(net, x, y, d, a, b, (0.0, 1.0), pivot=b)
    assert all(torch.equal(p, q) for p, q in zip(plain, fallback, strict=True))


# --------------------------------------------------------------------------- what is not supported is scanned, and says so


class _Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_unsupported_layers_keep_the_scanned_result_marked_as_such(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).eval()
    x, y = digits.test_x[:40], digits.test_y[:40]
    with pytest.raises(Unsupported, match="Tanh"):
        bound_network(model)
    with pytest.warns(UserWarning, match=r"certify: layer Tanh has no certified bounds; every input keeps the scan's result"):
        r = fgsm_robustness(model, x, y, certify=True)
    scan = fgsm_robustness(model, x, y)
    assert r.certified is not None
    assert torch.equal(r.certified, r.status == CLEAN_WRONG)  # only ε* = 0 needs no proof
    assert torch.equal(r.eps_hi, scan.eps_hi) and torch.equal(r.status, scan.status)
    with pytest.raises(Unsupported):
        bound_network(nn.Sequential(nn.Flatten(), nn.Linear(64, 10), _Doubler()))


def test_a_hook_that_changes_the_forward_pass_is_caught(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    x = digits.test_x[:8]
    net = bound_network(model)
    check_walk(model, net, x)  # the plain model is its layers
    model[1].register_forward_hook(lambda _m, _i, out: out * 3)
    with pytest.raises(Unsupported, match="hook"):
        check_walk(model, net, x)
    with pytest.warns(UserWarning, match="hook or a patched forward"):
        r = fgsm_robustness(model, x, digits.test_y[:8], certify=True)
    assert r.certified is not None and not bool(r.certified[r.status != CLEAN_WRONG].any())


def test_parametrised_and_pruned_layers_are_read_through_their_weight(digits, digits_mlp):
    import copy

    from torch.nn.utils import prune

    model = copy.deepcopy(digits_mlp)
    prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    x, y = digits.test_x[:40], digits.test_y[:40]
    r = fgsm_robustness(model, x, y, certify=True)
    assert r.certified is not None and bool(r.certified.all())


def test_inputs_left_unproved_keep_the_scan_refined_to_tol(digits, digits_mlp, monkeypatch):
    """An input the bounds do not prove (here: the bounds of every other input made useless) gets the scan's
    bracket at the tol asked for, as without certify, marked not certified; the others stay certified."""
    x, y = digits.test_x[:60], digits.test_y[:60]
    tol = 1e-6
    original = certify.margin_bounds_on

    def useless_for_odd_labels(net, ray, labels, a, b, *rest):
        lo_a, lo_b, hi_a, hi_b = original(net, ray, labels, a, b, *rest)
        odd = (labels % 2 == 1)[:, None]
        return lo_a.masked_fill(odd, -math.inf), lo_b.masked_fill(odd, -math.inf), hi_a, hi_b

    monkeypatch.setattr(certify, "margin_bounds_on", useless_for_odd_labels)
    r = fgsm_robustness(digits_mlp, x, y, eps_max=0.5, resolution=1e-2, tol=tol, certify=True)
    scan = fgsm_robustness(digits_mlp, x, y, eps_max=0.5, resolution=1e-2, tol=tol)
    assert r.certified is not None
    left = ~r.certified
    wrong = r.status == CLEAN_WRONG
    assert torch.equal(left, (y % 2 == 1) & ~wrong)
    assert torch.equal(r.eps_hi[left], scan.eps_hi[left]) and torch.equal(r.status, scan.status)
    fooled = left & (r.status == FOOLED)
    assert int(fooled.sum()) >= 5
    assert bool((r.eps_hi[fooled] - r.eps_lo[fooled] <= tol).all())


def test_no_direction_inputs_keep_their_status():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).double().eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.rand(3, 1, 2, 2, dtype=torch.float64)
    r = fgsm_robustness(model, x, torch.zeros(3, dtype=torch.int64), certify=True)
    assert bool((r.status == NO_DIRECTION).all()) and r.certified is not None and bool(r.certified.all())


# --------------------------------------------------------------------------- settings, key, store, command line


def test_certify_enters_the_settings_only_when_true():
    assert "certify" not in FGSM().settings()  # scanned measurements keep the keys they were stored with
    assert FGSM(certify=True).settings() == {"attack": "fgsm", "resolution": 1e-2, "tol": 1e-6, "certify": True}
    with pytest.raises(ValueError, match="certify must be True or False"):
        FGSM(certify=1)  # type: ignore[arg-type]


def test_no_input_to_prove_and_every_input_clean_wrong(digits, digits_mlp):
    x, y = digits.test_x[:20], digits.test_y[:20]
    with torch.inference_mode():
        wrong = (digits_mlp(x).argmax(dim=1) + 1) % 10  # every label wrong: nothing reaches the search
    r = fgsm_robustness(digits_mlp, x, wrong, certify=True)
    assert bool((r.status == CLEAN_WRONG).all()) and r.certified is not None and bool(r.certified.all())
    empty = fgsm_robustness(digits_mlp, x[:0], y[:0], certify=True)
    assert len(empty) == 0 and empty.certified is not None and len(empty.certified) == 0


def test_scanned_results_carry_no_certified_flags(digits, digits_mlp):
    r = fgsm_robustness(digits_mlp, digits.test_x[:10], digits.test_y[:10])
    assert r.certified is None and r.bound_passes == 0


def test_measure_certify_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from sparank.cli import app
    from sparank.store import Store

    runner = CliRunner()
    store = tmp_path / "s"
    assert (
        runner.invoke(
            app, ["train", "--dataset", "digits", "--arch", "mlp:32", "--epochs", "3", "--store", str(store), "--threads", "1"]
        ).exit_code
        == 0
    )
    base = ["measure", "r0001", "--n", "40", "--store", str(store), "--threads", "1"]
    certified = runner.invoke(app, [*base, "--certify", "--json"])
    assert certified.exit_code == 0, certified.output
    payload = json.loads(certified.stdout)
    assert payload["summary"]["certified_fraction"] == 1.0
    scanned = runner.invoke(app, [*base, "--json"])
    assert json.loads(scanned.stdout)["measurement"] != payload["measurement"]  # its own key
    with Store(store, readonly=True) as st:
        assert st.brackets(payload["measurement"]).certified is not None
        assert bool(st.brackets(payload["measurement"]).certified.all())  # type: ignore[union-attr]
        assert st.brackets(json.loads(scanned.stdout)["measurement"]).certified is None
    text = runner.invoke(app, [*base, "--certify"])
    assert text.exit_code == 0 and "certified: 100.0% of inputs" in text.output
    # the fast copy: its own key, the same statuses and ε* to tol as the plain scan (every bracket checked on the model)
    fast = runner.invoke(app, [*base, "--fast", "--json"])
    assert fast.exit_code == 0, fast.output
    fast_id = json.loads(fast.stdout)["measurement"]
    assert fast_id not in (payload["measurement"], json.loads(scanned.stdout)["measurement"])
    with Store(store, readonly=True) as st:
        plain, quick = st.brackets(json.loads(scanned.stdout)["measurement"]), st.brackets(fast_id)
        assert {m.id: m for m in st.measurements()}[fast_id].config["attack_settings"]["fast"] is True
    assert torch.equal(plain.status, quick.status)
    fooled = plain.status == FOOLED
    assert float((plain.eps_hi[fooled] - quick.eps_hi[fooled]).abs().max()) <= 2e-6
    # both flags belong to FGSM: asked with another attack alone they are refused, in one line, not ignored
    for flag in ("--certify", "--fast"):
        refused = runner.invoke(app, [*base, "--attack", "deepfool", flag])
        assert refused.exit_code == 2 and flag in refused.output and "--attack fgsm" in refused.output
        assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output


# --------------------------------------------------------------------------- the fast copy (an opt-in, checked on the model)


def test_fast_copy_scan_gives_brackets_checked_on_the_model(digits):
    from sparank.attacks.base import _evaluate
    from sparank.train import TrainConfig, train_model

    model, _ = train_model("cnn:4,8,16", digits, TrainConfig(epochs=3, seed=0))
    x, y = digits.test_x[:60], digits.test_y[:60]
    plain = fgsm_robustness(model, x, y, resolution=1e-2)
    fast = fgsm_robustness(model, x, y, resolution=1e-2, fast=True)
    assert fast.settings["fast"] is True and "fast" not in plain.settings
    assert torch.equal(fast.status, plain.status)
    fooled = fast.status == FOOLED
    assert float((fast.eps_hi[fooled] - plain.eps_hi[fooled]).abs().max()) <= 2e-6
    # the brackets hold on the model as given: hi misclassified, lo classified y (forward passes on the model itself)
    idx = torch.nonzero(fooled).squeeze(1)
    hi_pts = ray_points(x[idx], fast.directions[idx], fast.eps_hi[idx], (0.0, 1.0))
    lo_pts = ray_points(x[idx], fast.directions[idx], fast.eps_lo[idx], (0.0, 1.0))
    with torch.inference_mode():
        assert bool((model(hi_pts).argmax(dim=1) != y[idx]).all())
    margin, floor, _ = _evaluate(model, lo_pts, y[idx], idx, 256)
    assert bool((margin > -floor).all())  # classified y, up to the noise band its batch leaves (as the scan's own lo)
    both = fgsm_robustness(model, x, y, resolution=1e-2, fast=True, certify=True)
    assert both.certified is not None and float(both.certified.double().mean()) >= 0.95


def test_a_copy_bracket_the_model_refuses_at_its_lower_end_is_narrowed_on_the_model(digits, digits_mlp):
    """A copy whose logit of class 3 is 2e-3 higher crosses later than the model on inputs of class 3: its
    brackets' upper ends are misclassified on the model too, their lower ends are not classified 3 there.
    Those are narrowed again on the model (no search from 0), and every bracket returned holds on the
    model: the same as the model's own scan."""
    from sparank.attacks import fgsm as fgsm_module

    keep = torch.nonzero(digits.test_y == 3).squeeze(1)[:40]
    x, y = digits.test_x[keep], digits.test_y[keep]
    d = fgsm_direction(digits_mlp, x, y)

    class Later(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return digits_mlp(z) + 2e-3 * torch.nn.functional.one_hot(torch.tensor(3), 10).to(z.dtype)

    calls: list[nn.Module] = []
    original = fgsm_module.first_crossing
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fgsm_module, "first_crossing", lambda m, *a, **kw: calls.append(m) or original(m, *a, **kw))
        found = fgsm_module.ray_search(digits_mlp, x, y, d, 1e-2, 1e-6, (0.0, 1.0), 0.5, 256, None, Later().eval())
        # the same copy's brackets, unchecked: how many the model refuses at the lower end
        copy_only = original(Later().eval(), x, y, d, bounds=(0.0, 1.0), eps_max=0.5, resolution=1e-2, tol=1e-6)
    own = fgsm_module.ray_search(digits_mlp, x, y, d, 1e-2, 1e-6, (0.0, 1.0), 0.5, 256)
    f = found.found
    with torch.inference_mode():
        refused = digits_mlp(ray_points(x[f], d[f], copy_only.eps_lo[f], (0.0, 1.0))).argmax(dim=1) != y[f]
        assert int(refused.sum()) >= 5  # the case this test is about does happen
        assert len(calls) == 1 and isinstance(calls[0], Later)  # nothing searched again from 0 on the model
        assert torch.equal(found.found, own.found)
        assert bool((digits_mlp(ray_points(x[f], d[f], found.eps_lo[f], (0.0, 1.0))).argmax(dim=1) == y[f]).all())
        assert bool((digits_mlp(ray_points(x[f], d[f], found.eps[f], (0.0, 1.0))).argmax(dim=1) != y[f]).all())
    assert bool((found.eps[f] - found.eps_lo[f] <= 1e-6).all())
    assert float((found.eps[f] - own.eps[f]).abs().max()) <= 2e-6


def test_certified_progress_counts_the_inputs_whose_proof_is_done(digits, digits_mlp):
    calls: list[tuple[int, int]] = []
    x, y = digits.test_x[:50], digits.test_y[:50]
    fgsm_robustness(digits_mlp, x, y, certify=True, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) >= 3 and all(total == 50 for _, total in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == 50
    assert any(0 < d < 50 for d in done)  # reported while the walk runs, not only at the end


def test_a_point_the_final_verification_refuses_is_replaced_by_a_verified_one_further_on(digits, digits_mlp, monkeypatch):
    """Where the verification refuses the point found past the proved stretch (its margin within the noise of
    some batching; simulated here for three inputs), the first of the points tol·2^k past it that is verified
    becomes ε_hi: the input stays certified with its proved ε_lo, the bracket wider than tol."""
    x, y = digits.test_x[:40], digits.test_y[:40]
    plain = fgsm_robustness(digits_mlp, x, y, certify=True)
    original = certify.verify_points
    first_call = []

    def refuse_three(model, points, labels, owners, batch_size, batched=None):
        ok, need, rows = original(model, points, labels, owners, batch_size, batched)
        if not first_call:
            first_call.append(owners.clone())
            ok = ok.clone()
            ok[:3] = False
        return ok, need, rows

    monkeypatch.setattr(certify, "verify_points", refuse_three)
    r = fgsm_robustness(digits_mlp, x, y, certify=True)
    assert r.certified is not None and bool(r.certified.all())
    fooled = torch.nonzero(plain.status == FOOLED).squeeze(1)
    moved = fooled[:3]  # the walk's first three found points (the measure passes the correct inputs in order)
    assert torch.equal(r.eps_lo[moved], plain.eps_lo[moved])
    assert bool((r.eps_hi[moved] - r.eps_lo[moved] > 1e-6).all()) and bool((r.eps_hi[moved] - r.eps_lo[moved] <= 1e-6 * 2**12 + 1e-6).all())
    with torch.inference_mode():
        assert bool((digits_mlp(ray_points(x[moved], r.directions[moved], r.eps_hi[moved], (0.0, 1.0))).argmax(dim=1) != y[moved]).all())
    rest = fooled[3:]
    assert torch.equal(r.eps_hi[rest], plain.eps_hi[rest])


def test_a_probe_within_the_noise_gets_one_more_pass_unless_the_proof_is_settled():
    """The point tol past the proved end c lies within the model's noise (margin 0.03 − 0.1ε, crossing at
    ε = 0.3, float32: the margin falls by 1e-7 over tol = 1e-6, the noise floor is about 1e-6). After a long
    bound pass the input is handed back for one more (a long segment's root can stop short of the crossing);
    after a short one the ladder beyond c finds a verified point: a certified bracket wider than tol."""
    model = nn.Sequential(nn.Linear(1, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-0.1], [0.0]]))
        model[0].bias.copy_(torch.tensor([0.05, 0.0]))
    x, d, y = torch.tensor([[0.2]]), torch.tensor([[1.0]]), torch.tensor([0])
    c = torch.tensor([0.3 - 1e-9], dtype=torch.float64)
    for settled in (False, True):
        certified = torch.zeros(1, dtype=torch.bool)
        eps_lo = torch.zeros(1, dtype=torch.float64)
        eps_hi = torch.full((1,), math.inf, dtype=torch.float64)
        _, again = certify._probe(
            model, x, y, d, torch.tensor([0]), torch.tensor([settled]), c, 0.5, 1e-6, (0.0, 1.0), 256, certified, eps_lo, eps_hi
        )
        if not settled:
            assert again.tolist() == [0] and not bool(certified[0])
        else:
            assert len(again) == 0 and bool(certified[0]) and float(eps_lo[0]) == float(c[0])
            assert 1e-6 < float(eps_hi[0] - eps_lo[0]) < 1e-4
            with torch.inference_mode():
                assert int(model(ray_points(x, d, eps_hi, (0.0, 1.0))).argmax(dim=1)[0]) == 1


# --------------------------------------------------------------------------- pieces, batches, the last layer


@pytest.mark.parametrize(("arch", "seed"), [("mlp", 0), ("mlp", 3), ("cnn", 1), ("cnn", 4)])
def test_a_segment_bounded_in_pieces_goes_on_from_the_first_piece_not_proved(arch, seed):
    """`_pieces_bounds` cuts the segments of the inputs marked split into pieces (and one more piece after a stretch
    already proved, where asked) and returns, per input, the piece the walk goes on from. Checked by forward
    passes: every point sampled in the pieces before it is classified correctly (they were proved), the returned
    lower lines lie below the sampled margins of the returned piece, and that piece is where a split input's
    pieces stop being proved, or its last."""
    model = (_random_mlp(seed) if arch == "mlp" else _random_cnn(seed)).double()
    shape = (1, 4, 4) if arch == "mlp" else (1, 8, 8)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((12, *shape), generator=gen, dtype=torch.float64)
    with torch.inference_mode():
        y = model(x).argmax(dim=1)
    d = fgsm_direction(model, x, y)
    net = bound_network(model)
    ray = certify.make_ray(x, d, (0.0, 1.0))
    active = torch.arange(12)
    a = torch.rand(12, generator=gen, dtype=torch.float64) * 0.05
    b = a + 0.02 + torch.rand(12, generator=gen, dtype=torch.float64) * 0.3
    split = torch.arange(12) % 3 != 0
    extra_a = torch.where(torch.arange(12) % 3 == 1, b + 1e-3, math.nan)  # a stretch [b, b + 1e-3] taken as proved
    extra_b = extra_a + 0.01
    seen = b.clone()
    pa, pb, _far, lo_a, lo_b, count, on_extra = certify._pieces_bounds(
        net, ray, y, active, a, b, split, extra_a, extra_b, seen, certify.Pivot({}), 64
    )
    assert torch.equal(count, torch.where(split, len(certify.PIECES) - 1, 1) + (split & ~torch.isnan(extra_a)).long())
    k = len(certify.PIECES) - 1
    other = ~torch.nn.functional.one_hot(y, model[-1].out_features).bool()
    for i in range(12):
        ends = [float(a[i]) + f * float(b[i] - a[i]) for f in certify.PIECES]
        ends[0], ends[-1] = float(a[i]), float(b[i])
        pieces = [(ends[j], ends[j + 1]) for j in range(k)] if split[i] else [(float(a[i]), float(b[i]))]
        if split[i] and not math.isnan(float(extra_a[i])):
            pieces.append((float(extra_a[i]), float(extra_b[i])))
        j = [p for p, _ in pieces].index(float(pa[i]))
        assert (float(pa[i]), float(pb[i])) == pieces[j]
        assert bool(on_extra[i]) == (split[i] and j == k)
        for lo, hi in pieces[:j]:  # proved before the returned piece: correct at every sampled point
            t = torch.linspace(lo, hi, 33, dtype=torch.float64)
            with torch.inference_mode():
                z = model(ray_points(x[i : i + 1].expand(33, *shape), d[i : i + 1].expand(33, *shape), t, (0.0, 1.0)))
            assert bool((z.argmax(dim=1) == y[i]).all())
        t = torch.linspace(0.0, 1.0, 33, dtype=torch.float64)
        with torch.inference_mode():
            eps = float(pa[i]) + t * float(pb[i] - pa[i])
            z = model(ray_points(x[i : i + 1].expand(33, *shape), d[i : i + 1].expand(33, *shape), eps, (0.0, 1.0)))
        margin = z.gather(1, y[i].expand(33, 1)) - z
        lower = (1 - t[:, None]) * lo_a[i] + t[:, None] * lo_b[i]
        assert bool((margin[:, other[i]] >= lower[:, other[i]] - 1e-11).all())
        if j < len(pieces) - 1:  # not the last: not proved whole
            assert not bool(((lo_a[i] > 0) & (lo_b[i] > 0)).all())


@pytest.fixture(scope="module")
def digits_cnn(digits):
    from sparank.train import TrainConfig, train_model

    model, _ = train_model("cnn:4,8,16", digits, TrainConfig(epochs=4, seed=0))
    return model


def test_walks_that_go_on_in_pieces_stay_below_a_dense_grid(digits, digits_cnn, monkeypatch):
    """On the digits CNN some first segments prove nothing from their start (their lines are chosen exact at the far
    end) and are bounded again in pieces; those inputs are still certified, never beyond a dense grid's first
    misclassified point and inside its bracket."""
    x, y = digits.test_x[:80], digits.test_y[:80]
    split: list[torch.Tensor] = []
    original = certify._pieces_bounds

    def spy(net, ray, labels, active, a, b, cut, *rest):
        split.append(active[cut].clone())
        return original(net, ray, labels, active, a, b, cut, *rest)

    monkeypatch.setattr(certify, "_pieces_bounds", spy)
    r = fgsm_robustness(digits_cnn, x, y, eps_max=0.5, resolution=1e-2, certify=True)
    assert split, "no walk went on in pieces"
    correct = torch.nonzero(r.status != CLEAN_WRONG).squeeze(1)  # the walk's inputs, in order
    walked = correct[torch.unique(torch.cat(split))]
    assert bool(r.certified[walked].all())
    grid_first, grid_before = _dense_grid(digits_cnn, x[walked], y[walked], r.directions[walked], 0.5, 5001)
    fooled = r.status[walked] == FOOLED
    assert bool((r.eps_hi[walked][fooled] <= grid_first[fooled] + 1e-6).all())
    assert bool((r.eps_hi[walked][fooled] > grid_before[fooled] - 1e-6).all())


@pytest.mark.parametrize("classes", [5, 20])
def test_margin_rows_by_label_are_the_gathered_products(classes):
    """The last layer's margins by true class: one product with every class's rows (few classes) or a gather
    (many), the same numbers as the plain per-row product up to float64 rounding."""
    gen = torch.Generator().manual_seed(classes)
    table = torch.randn(classes, classes, 30, generator=gen, dtype=torch.float64)
    z = torch.randn(50, 30, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (50,), generator=gen)
    expected = torch.stack([table[labels[i]] @ z[i] for i in range(50)])
    assert torch.allclose(certify._by_label(z, table, labels), expected, rtol=1e-13, atol=1e-13)


def test_bound_passes_batch_narrow_networks_more_rows_at_a_time():
    """A bound pass's batches hold at least batch_size rows, more where the widest layer is narrow (an MLP on
    28×28 inputs), so that a batch's largest tensors stay about the same size."""
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10)).eval()
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 784, 10)).eval()
    x = torch.rand(3, 1, 28, 28)
    assert certify._bound_batch(bound_network(mlp), x, 256) == certify.BOUND_BATCH_ELEMENTS // 784
    assert certify._bound_batch(bound_network(cnn), x, 256) == 256


def test_verification_takes_the_batched_margins_a_search_already_has(digits, digits_mlp):
    """verify_points evaluates in a batch only the points whose batched margins it is not given (NaN); given the
    margins a batched pass of the same points produced, it accepts exactly what it accepts on its own."""
    from sparank.attacks.base import _evaluate, verify_points

    x, y = digits.test_x[:60], digits.test_y[:60]
    d = fgsm_direction(digits_mlp, x, y)
    eps = torch.linspace(0.0, 0.5, 60, dtype=torch.float64)
    points = ray_points(x, d, eps, (0.0, 1.0))
    owners = torch.arange(60)
    alone_ok, _, alone_rows = verify_points(digits_mlp, points, y, owners, 16)
    m, f, _ = _evaluate(digits_mlp, points, y, owners, 16)
    m, f = m.clone(), f.clone()
    m[::2], f[::2] = math.nan, math.nan  # half of them not known
    ok, _, rows = verify_points(digits_mlp, points, y, owners, 16, (m, f))
    assert torch.equal(ok, alone_ok)
    assert rows == alone_rows - 30
