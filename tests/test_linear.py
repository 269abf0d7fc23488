"""Tests of the closed-form ε* of linear classifiers (sparank.linear) and the L1 path (sparank.linear_path).

The closed form is checked against independent computations: a brute-force
scan of the ray (its own direction by autograd, its own clipping, argmax by
torch's first-index rule, refined by bisection), the general
``fgsm_robustness``, PROTOCOL §7's binary formula, a linear program for the
minimal perturbation, and the hand-worked example of ``docs/linear.md``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sparank.linear import (
    affine_fgsm_direction,
    affine_parameters,
    binary_as_multiclass,
    binary_eps_star_unclipped,
    boxed_minimal_perturbation,
    linear_fgsm_robustness,
    model_fgsm_robustness,
    unboxed_minimal_perturbation,
)
from sparank.robustness import CENSORED, CLEAN_WRONG, FOOLED, NO_DIRECTION, fgsm_robustness

# --------------------------------------------------------------------------- brute force


def _direction_autograd(w, b, x, y, norm):
    """The FGSM direction by autograd on cross-entropy (float64), independent of the closed form."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(x @ w.T + b, y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    if norm == "linf":
        return g.sign()
    length = g.norm(dim=1, keepdim=True)
    return torch.where(length > 0, g / length.clamp_min(1e-300), 0.0)


def _brute_force(w, b, x, y, d, *, eps_max, bounds=(0.0, 1.0), grid_points=4001):
    """ε* per input by scanning ``clip(x + ε·d)`` and bisecting the first misclassified cell (float64).

    The scan grid is a uniform grid plus every ε where a coordinate reaches the box
    (the margins are affine in between, so a misclassified stretch cannot hide
    between two scanned points). Returns (eps (N,), status (N,)).
    """
    lo, hi = bounds

    def wrong(xi, di, yi, eps):  # eps (M,) -> (M,) bool, torch's first-index argmax
        pts = (xi[None, :] + eps[:, None] * di[None, :]).clamp(lo, hi)
        return (pts @ w.T + b).argmax(dim=1) != yi

    eps_out, status = [], []
    for xi, di, yi in zip(x, d, y):
        with np.errstate(divide="ignore"):
            to_hi = torch.where(di > 0, (hi - xi) / di, torch.inf)
            to_lo = torch.where(di < 0, (lo - xi) / di, torch.inf)
        kinks = torch.cat([to_hi, to_lo])
        kinks = kinks[(kinks > 0) & (kinks <= eps_max)]
        grid = torch.cat([torch.linspace(0.0, eps_max, grid_points, dtype=torch.float64), kinks]).unique()  # sorted
        bad = wrong(xi, di, yi, grid)
        if bad[0]:
            eps_out.append(0.0)
            status.append(int(CLEAN_WRONG))
            continue
        if not bad.any():
            eps_out.append(math.inf)
            status.append(int(CENSORED))
            continue
        i = int(bad.int().argmax())
        a, c = float(grid[i - 1]), float(grid[i])
        for _ in range(200):  # bisection: a correct, c misclassified
            if c - a <= 1e-14:
                break
            mid = 0.5 * (a + c)
            if wrong(xi, di, yi, torch.tensor([mid], dtype=torch.float64))[0]:
                c = mid
            else:
                a = mid
        eps_out.append(c)
        status.append(int(FOOLED))
    return torch.tensor(eps_out, dtype=torch.float64), torch.tensor(status)


def _random_problem(seed, k, dim, n, *, face_fraction=0.5, correct_fraction=0.8):
    """Random W, b and inputs with many coordinates on or within 1e-3 of the box faces."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, dim, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(k, generator=g, dtype=torch.float64)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64)
    kind = torch.randint(0, 4, (n, dim), generator=g)
    near = 1e-3 * torch.rand(n, dim, generator=g, dtype=torch.float64)
    face = torch.rand(n, dim, generator=g) < face_fraction
    x = torch.where(face & (kind == 0), 0.0, x)
    x = torch.where(face & (kind == 1), 1.0, x)
    x = torch.where(face & (kind == 2), near, x)
    x = torch.where(face & (kind == 3), 1.0 - near, x)
    predicted = (x @ w.T + b).argmax(1)
    random_y = torch.randint(0, k, (n,), generator=g)
    y = torch.where(torch.rand(n, generator=g) < correct_fraction, predicted, random_y)
    return w, b, x, y


# --------------------------------------------------------------------------- closed form vs brute force


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(2, 6),
    dim=st.integers(1, 12),
    eps_max=st.sampled_from([0.05, 0.3, 1.0, 2.0]),
    norm=st.sampled_from(["linf", "l2"]),
    face_fraction=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_breakpoint_walk_matches_brute_force(seed, k, dim, eps_max, norm, face_fraction):
    w, b, x, y = _random_problem(seed, k, dim, 12, face_fraction=face_fraction)
    result = linear_fgsm_robustness(w, b, x, y, norm=norm, eps_max=eps_max)
    d = _direction_autograd(w, b, x, y, norm)
    assert torch.allclose(result.directions.double(), d, atol=1e-6)
    eps_bf, status_bf = _brute_force(w, b, x, y, d, eps_max=eps_max)
    assert torch.equal(result.status, status_bf)
    fooled = status_bf == int(FOOLED)
    assert torch.allclose(result.eps_star[fooled], eps_bf[fooled], rtol=0, atol=1e-9)


def test_brute_force_on_digits_shaped_problem():
    """64 coordinates, most of them exactly 0 (digits' blank border): many breakpoints at 0."""
    w, b, x, y = _random_problem(7, 10, 64, 20, face_fraction=0.9)
    result = linear_fgsm_robustness(w, b, x, y, eps_max=1.0)
    eps_bf, status_bf = _brute_force(w, b, x, y, _direction_autograd(w, b, x, y, "linf"), eps_max=1.0)
    assert torch.equal(result.status, status_bf)
    fooled = status_bf == int(FOOLED)
    assert fooled.sum() >= 5
    assert torch.allclose(result.eps_star[fooled], eps_bf[fooled], rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- edge cases, by hand


def test_coordinate_on_its_bound_never_moves():
    """A coordinate already at the bound it moves towards (breakpoint 0) contributes nothing."""
    w, b, x, y = _random_problem(3, 4, 6, 30, face_fraction=0.0)
    d = affine_fgsm_direction(w, b, x, y)
    # put coordinate 0 on the face d pushes it to: it cannot move
    x[:, 0] = torch.where(d[:, 0] > 0, 1.0, 0.0)
    full = linear_fgsm_robustness(w, b, x, y, eps_max=2.0)
    # the same ray with d_0 = 0 (also: no movement) must give the same ε*
    d0 = affine_fgsm_direction(w, b, x, y)
    d0[:, 0] = 0.0
    frozen = linear_fgsm_robustness(w, b, x, y, eps_max=2.0, directions=d0)
    assert torch.equal(full.status, frozen.status)
    assert torch.allclose(full.eps_star, frozen.eps_star, rtol=0, atol=1e-12)
    # and equal to the brute force
    eps_bf, status_bf = _brute_force(w, b, x, y, affine_fgsm_direction(w, b, x, y), eps_max=2.0)
    assert torch.equal(full.status, status_bf)
    fooled = status_bf == int(FOOLED)
    assert torch.allclose(full.eps_star[fooled], eps_bf[fooled], atol=1e-9)


def test_zero_direction_is_its_own_status():
    """d = 0 (given, or because every w_j = w_y): NO_DIRECTION, never CENSORED; a clean-wrong input stays CLEAN_WRONG."""
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.zeros(2, dtype=torch.float64)
    x = torch.tensor([[0.8, 0.2]], dtype=torch.float64)
    result = linear_fgsm_robustness(w, b, x, torch.tensor([0]), eps_max=0.5, directions=torch.zeros(1, 2))
    assert result.status.tolist() == [int(NO_DIRECTION)]
    assert result.eps_lo.tolist() == [0.5] and result.eps_hi.tolist() == [math.inf]
    # the closed-form direction is exactly zero when all rows of W are equal (the bias decides)
    same = torch.tensor([[0.5, -1.0]] * 3, dtype=torch.float64)
    bias = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    xs = torch.tensor([[0.2, 0.9], [0.7, 0.1]], dtype=torch.float64)
    ys = torch.tensor([1, 2])  # correct, clean-wrong
    assert bool((affine_fgsm_direction(same, bias, xs, ys) == 0).all())
    equal_rows = linear_fgsm_robustness(same, bias, xs, ys, eps_max=0.5)
    assert equal_rows.status.tolist() == [int(NO_DIRECTION), int(CLEAN_WRONG)]
    # a huge margin is NOT a zero direction any more (the old softmax − onehot gave 0 here)
    huge = linear_fgsm_robustness(w, torch.tensor([2000.0, 0.0], dtype=torch.float64), x, torch.tensor([0]), eps_max=0.5)
    assert huge.status.tolist() == [int(CENSORED)] and huge.directions.abs().sum() > 0


def _touching_problem(label):
    """Margin z_y − z_j along the ray: 1 − 2ε… reaches exactly 0 at ε = 0.5, then rises (a breakpoint).

    x = (0.5, 0), d = (+1, +1), box [0, 1]: coordinate 0 stops at 1 when ε = 0.5.
    m(x) = −2·x0 + x1 + 1.5 gives m(ε) = 0.5 − ε for ε ≤ 0.5 and ε − 0.5 after.
    Every number is a binary fraction, so the tie at ε = 0.5 is exact in float64.
    """
    m = torch.tensor([-2.0, 1.0], dtype=torch.float64)
    if label == 1:  # z_1 − z_0 = m: the competitor is class 0 < y
        w, b = torch.stack([torch.zeros(2, dtype=torch.float64), m]), torch.tensor([0.0, 1.5], dtype=torch.float64)
    else:  # z_0 − z_1 = m: the competitor is class 1 > y
        w, b = torch.stack([m, torch.zeros(2, dtype=torch.float64)]), torch.tensor([1.5, 0.0], dtype=torch.float64)
    x = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    return w, b, x, torch.tensor([label]), torch.ones(1, 2, dtype=torch.float64)


def test_tie_rule_touching_zero():
    """A tie goes to the lowest class index (torch.argmax): touching a tie with a lower class misclassifies."""
    w, b, x, y, d = _touching_problem(1)
    lower = linear_fgsm_robustness(w, b, x, y, eps_max=1.0, directions=d)
    assert lower.status.tolist() == [int(FOOLED)] and lower.eps_star.tolist() == [0.5]
    # the tie itself, as torch.argmax sees it
    assert int((torch.tensor([[1.0, 0.0]], dtype=torch.float64) @ w.T + b).argmax()) == 0
    w, b, x, y, d = _touching_problem(0)
    higher = linear_fgsm_robustness(w, b, x, y, eps_max=1.0, directions=d)
    assert higher.status.tolist() == [int(CENSORED)]


def test_tie_at_the_clean_point():
    w = torch.zeros(3, 2, dtype=torch.float64)
    w[1, 0] = 1.0
    b = torch.zeros(3, dtype=torch.float64)
    x = torch.tensor([[0.0, 0.5]] * 3, dtype=torch.float64)  # all logits 0: a three-way tie, argmax = 0
    result = linear_fgsm_robustness(w, b, x, torch.tensor([0, 1, 2]), eps_max=0.5)
    assert result.status.tolist()[1:] == [int(CLEAN_WRONG)] * 2
    assert result.status[0] != int(CLEAN_WRONG)
    assert unboxed_minimal_perturbation(w, b, x, torch.tensor([0, 1, 2])).tolist()[1:] == [0.0, 0.0]


def test_exact_result_fields():
    w, b, x, y = _random_problem(11, 5, 8, 50)
    result = linear_fgsm_robustness(w, b, x, y, eps_max=0.3)
    assert result.tol == 0.0 and result.resolution == 0.0 and result.eps_max == 0.3
    fooled, wrong, censored = (result.status == s for s in (int(FOOLED), int(CLEAN_WRONG), int(CENSORED)))
    assert fooled.any() and wrong.any() and censored.any()
    assert torch.equal(result.eps_lo[fooled], result.eps_hi[fooled])
    assert bool((result.eps_hi[fooled] > 0).all() and (result.eps_hi[fooled] <= 0.3).all())
    assert bool((result.eps_hi[wrong] == 0).all() and (result.eps_lo[wrong] == 0).all())
    assert bool((result.eps_lo[censored] == 0.3).all() and torch.isinf(result.eps_hi[censored]).all())
    assert result.directions.shape == x.shape and result.directions.dtype == torch.float32
    assert result.summary().n == 50


# --------------------------------------------------------------------------- against the general measure


def _as_linear_module(w, b, dtype):
    layer = nn.Linear(w.shape[1], w.shape[0]).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    return layer


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_agrees_with_fgsm_robustness_float64(norm):
    w, b, x, y = _random_problem(5, 6, 20, 150)
    tol = 1e-8
    general = fgsm_robustness(_as_linear_module(w, b, torch.float64), x, y, norm=norm, eps_max=1.0, resolution=1e-3, tol=tol)
    exact = linear_fgsm_robustness(w, b, x, y, norm=norm, eps_max=1.0)
    assert torch.equal(exact.status, general.status)
    fooled = exact.status == int(FOOLED)
    assert fooled.sum() >= 10
    # the exact ε* lies in the general measure's verified bracket (to rounding)
    assert bool((exact.eps_star[fooled] <= general.eps_hi[fooled] + 1e-12).all())
    assert bool((exact.eps_star[fooled] >= general.eps_lo[fooled] - 1e-12).all())
    assert torch.allclose(exact.eps_star[fooled], general.eps_star[fooled], rtol=0, atol=tol)


def test_agrees_with_fgsm_robustness_trained_float32(digits):
    """A float32 linear model trained on digits, measured both ways on 300 test inputs."""
    from sparank.models import build_model
    from sparank.train import TrainConfig, train

    torch.manual_seed(0)
    model = build_model("linear", digits.input_shape, digits.num_classes)
    train(model, digits, TrainConfig(epochs=3, lr=1e-2, seed=0))
    x, y = digits.test_x[:300], digits.test_y[:300]
    tol = 1e-6
    general = fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-2, tol=tol)
    w, b = affine_parameters(model)
    # the same rays (float32 directions from autograd); the closed form runs in float64
    exact = linear_fgsm_robustness(w, b, x, y, eps_max=0.5, directions=general.directions)
    same = exact.status == general.status
    assert same.double().mean() >= 0.99  # float32 vs float64 logits can split an exact near-tie
    fooled = same & (exact.status == int(FOOLED))
    assert fooled.sum() >= 100
    assert torch.allclose(exact.eps_star[fooled], general.eps_star[fooled], rtol=0, atol=tol + 1e-5)
    # the closed-form direction is the float32 one, except where the gradient is ~0
    closed = affine_fgsm_direction(w, b, x, y).view_as(general.directions).float()
    assert (closed == general.directions).float().mean() >= 0.99


# --------------------------------------------------------------------------- formulas and the optimal perturbation


def test_binary_formula_unclipped():
    g = torch.Generator().manual_seed(2)
    dim, n = 7, 200
    w = torch.randn(dim, generator=g, dtype=torch.float64)
    b = 0.3
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y_pm = torch.where(torch.rand(n, generator=g) < 0.5, -1, 1)
    formula = binary_eps_star_unclipped(w, b, x, y_pm)
    weight, bias = binary_as_multiclass(w, b)
    result = linear_fgsm_robustness(weight, bias, x, (y_pm + 1) // 2, bounds=None, eps_max=100.0)
    correct = formula > 0
    assert correct.any() and (~correct).any()
    assert torch.allclose(result.eps_star[correct], formula[correct], rtol=1e-12, atol=0)
    assert bool((result.status[~correct] == int(CLEAN_WRONG)).all())
    # the direction is −y·sign(w)
    expected = -y_pm[:, None].double() * w.sign()[None, :]
    assert torch.equal(result.directions.double(), expected)
    # and for a binary classifier FGSM is optimal
    optimal = unboxed_minimal_perturbation(weight, bias, x, (y_pm + 1) // 2)
    assert torch.allclose(optimal[correct], formula[correct], rtol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_never_beats_the_optimal_perturbation(norm):
    w, b, x, y = _random_problem(9, 8, 15, 300)
    result = linear_fgsm_robustness(w, b, x, y, bounds=None, norm=norm, eps_max=50.0)
    optimal = unboxed_minimal_perturbation(w, b, x, y, norm=norm)
    fooled = result.status == int(FOOLED)
    assert fooled.sum() >= 100
    assert bool((result.eps_star[fooled] >= optimal[fooled] * (1 - 1e-12)).all())
    # multiclass FGSM is usually strictly worse than optimal somewhere
    assert bool((result.eps_star[fooled] > optimal[fooled] * 1.01).any())
    # with the box too: a clipped step is still a perturbation of norm <= ε
    boxed = linear_fgsm_robustness(w, b, x, y, bounds=(0.0, 1.0), norm=norm, eps_max=50.0)
    fooled = boxed.status == int(FOOLED)
    assert fooled.sum() >= 50
    assert bool((boxed.eps_star[fooled] >= optimal[fooled] * (1 - 1e-12)).all())


def test_minimal_perturbation_is_the_linear_program_optimum():
    """min ||δ||_∞ s.t. some class k reaches z_y, solved per k by scipy's LP solver (no box)."""
    w, b, x, y = _random_problem(4, 4, 5, 15, correct_fraction=1.0)
    ours = unboxed_minimal_perturbation(w, b, x, y)
    lp = _lp_boxed_minimum(w, b, x, y, lo=-math.inf, hi=math.inf)
    assert torch.isfinite(lp).all()
    assert torch.allclose(ours, lp, rtol=1e-7, atol=1e-9)


def _lp_boxed_minimum(w, b, x, y, lo=0.0, hi=1.0):
    """min ||δ||_∞ s.t. some class k reaches z_y and lo <= x + δ <= hi: one scipy LP per input and class.

    Variables (δ, t): minimise t s.t. a·δ <= −margin, δ_j − t <= 0, −δ_j − t <= 0, δ within the box.
    """
    from scipy.optimize import linprog

    dim = w.shape[1]
    out = []
    for i in range(len(x)):
        best = math.inf
        for k in range(w.shape[0]):
            if k == y[i]:
                continue
            a = (w[y[i]] - w[k]).numpy()
            margin = float(a @ x[i].numpy() + b[y[i]] - b[k])
            a_ub = np.vstack([np.append(a, 0.0), np.hstack([np.eye(dim), -np.ones((dim, 1))]), np.hstack([-np.eye(dim), -np.ones((dim, 1))])])
            b_ub = np.concatenate([[-margin], np.zeros(2 * dim)])
            box = [(lo - float(v), hi - float(v)) for v in x[i]] + [(0.0, None)]
            lp = linprog(np.append(np.zeros(dim), 1.0), A_ub=a_ub, b_ub=b_ub, bounds=box)
            assert lp.status in (0, 2)  # 2: infeasible, no point of the box reaches class k
            if lp.status == 0:
                best = min(best, lp.fun)
        out.append(best)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boxed_minimal_perturbation_is_the_box_constrained_lp_optimum(seed):
    """The greedy walk against scipy's LP, with many coordinates on the faces (catches a wrong room, kink or class)."""
    w, b, x, y = _random_problem(seed, 5, 7, 25, face_fraction=0.6, correct_fraction=1.0)
    w = 3 * w  # larger margins: some inputs cannot be fooled inside the box at all
    ours = boxed_minimal_perturbation(w, b, x, y)
    lp = _lp_boxed_minimum(w, b, x, y)
    assert torch.equal(torch.isinf(ours), torch.isinf(lp))
    finite = torch.isfinite(lp)
    assert finite.sum() >= 10
    assert torch.allclose(ours[finite], lp[finite], rtol=1e-7, atol=1e-9)


def test_boxed_minimum_sits_between_the_unboxed_minimum_and_fgsm():
    """unboxed <= boxed <= clipped FGSM ε*, and the box binds somewhere (catches swapped names or a box that is ignored)."""
    w, b, x, y = _random_problem(8, 6, 12, 300, face_fraction=0.5)
    boxed = boxed_minimal_perturbation(w, b, x, y)
    unboxed = unboxed_minimal_perturbation(w, b, x, y)
    fgsm = linear_fgsm_robustness(w, b, x, y, eps_max=50.0)
    assert bool((boxed >= unboxed * (1 - 1e-12)).all())
    assert bool((boxed > unboxed * 1.05).sum() >= 20)
    fooled = fgsm.status == int(FOOLED)
    assert bool((fgsm.eps_star[fooled] >= boxed[fooled] * (1 - 1e-12)).all())
    assert bool((boxed[fgsm.status == int(CLEAN_WRONG)] == 0).all())
    # another box
    boxed_wide = boxed_minimal_perturbation(w, b, x, y, bounds=(-1.0, 2.0))
    assert bool((boxed_wide <= boxed * (1 + 1e-12)).all())
    with pytest.raises(ValueError, match="outside bounds"):
        boxed_minimal_perturbation(w, b, x + 3.0, y)


# --------------------------------------------------------------------------- the direction at any margin and scale


def _mp_direction(w, b, x, y, norm="linf"):
    """The FGSM direction in (600 + margin/2.3)-digit arithmetic, by the textbook formula Wᵀ(softmax(z) − e_y) (mpmath)."""
    import mpmath

    z64 = x @ w.T + b
    spread = float((z64.amax(1) - z64.amin(1)).max())
    mpmath.mp.dps = 600 + int(spread / 2.3)  # enough digits that 1 − p_y ≈ exp(−margin) stays resolved
    out = []
    for xi, yi in zip(x.tolist(), y.tolist()):
        z = [mpmath.fsum(mpmath.mpf(wkj) * mpmath.mpf(xj) for wkj, xj in zip(wk, xi)) + mpmath.mpf(bk) for wk, bk in zip(w.tolist(), b.tolist())]
        top = max(z)
        e = [mpmath.exp(zk - top) for zk in z]
        total = mpmath.fsum(e)
        coef = [ek / total - (1 if k == yi else 0) for k, ek in enumerate(e)]
        g = [mpmath.fsum(c * mpmath.mpf(wk[j]) for c, wk in zip(coef, w.tolist())) for j in range(w.shape[1])]
        if norm == "linf":
            out.append([float(mpmath.sign(v)) for v in g])
        else:
            length = mpmath.sqrt(mpmath.fsum(v * v for v in g))
            out.append([float(v / length) for v in g])
    return torch.tensor(out, dtype=torch.float64)


def _naive_direction(w, b, x, y):
    """The old closed form, softmax − onehot in float64: saturates once p_y rounds to 1."""
    p = torch.softmax(x @ w.T + b, dim=1) - F.one_hot(y, w.shape[0]).double()
    return (p @ w).sign()


@pytest.mark.parametrize("margin", [1.0, 20.0, 50.0, 200.0, 1000.0])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_direction_is_exact_at_any_margin(margin, norm):
    """z_y − max_{j≠y} z_j = margin; the direction equals the high-precision one (catches the softmax − onehot saturation)."""
    g = torch.Generator().manual_seed(int(margin))
    k, dim, n = 4, 9, 12
    w = torch.randn(k, dim, generator=g, dtype=torch.float64)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64)
    y = torch.arange(n) % k
    z = x @ w.T
    # one bias per input would be needed to plant a margin exactly; plant it with one input at a time
    directions, expected = [], []
    for i in range(n):
        b = -z[i].clone()  # all logits 0 at x_i ...
        b[y[i]] += margin  # ... then y leads by `margin`, the others spread below the runner-up
        b += torch.where(torch.arange(k) == y[i], 0.0, -torch.tensor([0.0, 0.7, 3.0, 9.0], dtype=torch.float64)[: k])
        b[(y[i] + 1) % k] = -z[i, (y[i] + 1) % k]
        xi, yi = x[i : i + 1], y[i : i + 1]
        zi = xi @ w.T + b
        others = zi.clone()
        others[0, yi] = -math.inf
        assert float(zi[0, yi] - others.max()) == pytest.approx(margin)
        directions.append(affine_fgsm_direction(w, b, xi, yi, norm=norm))
        expected.append(_mp_direction(w, b, xi, yi, norm))
        if norm == "linf" and margin >= 50:  # the bug the fix removes: the old form is 0 or wrong here
            assert not torch.equal(_naive_direction(w, b, xi, yi), expected[-1])
    ours, truth = torch.cat(directions), torch.cat(expected)
    if norm == "linf":
        assert torch.equal(ours, truth)
    else:
        assert torch.allclose(ours, truth, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scale", [10.0, 100.0, 1000.0])
def test_binary_direction_and_eps_star_do_not_depend_on_scale(scale):
    """A binary model scaled by c keeps the direction sign(w_k − w_y) and every ε* (boxed and unboxed) exactly."""
    g = torch.Generator().manual_seed(3)
    dim, n = 10, 200
    w = torch.randn(dim, generator=g, dtype=torch.float64)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64)
    f = x @ w - 0.2
    y01 = (f > 0).long()
    y01[:20] = 1 - y01[:20]  # some misclassified
    weight, bias = binary_as_multiclass(w, -0.2)
    big_w, big_b = binary_as_multiclass(scale * w, -0.2 * scale)
    d1 = affine_fgsm_direction(weight, bias, x, y01)
    dc = affine_fgsm_direction(big_w, big_b, x, y01)
    assert torch.equal(d1, dc)
    other = 1 - y01
    assert torch.equal(dc, (weight[other] - weight[y01]).sign())  # sign(w_k − w_y) at every temperature
    for bounds in (None, (0.0, 1.0)):
        base = linear_fgsm_robustness(weight, bias, x, y01, bounds=bounds, eps_max=5.0)
        scaled = linear_fgsm_robustness(big_w, big_b, x, y01, bounds=bounds, eps_max=5.0)
        assert torch.equal(base.status, scaled.status)
        assert torch.allclose(base.eps_star, scaled.eps_star, rtol=1e-9, atol=1e-12)  # rounding of small margins only
        assert (base.status == int(FOOLED)).sum() >= 50


@pytest.mark.parametrize("scale", [10.0, 100.0, 1000.0])
def test_multiclass_direction_at_every_scale_is_the_high_precision_one(scale):
    """K = 5 scaled by c: the direction is the high-precision one at that scale, and it differs from scale 1 (temperature)."""
    g = torch.Generator().manual_seed(5)
    k, dim, n = 5, 8, 20
    w = torch.randn(k, dim, generator=g, dtype=torch.float64)
    b = 0.3 * torch.randn(k, generator=g, dtype=torch.float64)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64)
    y = (x @ w.T + b).argmax(1)
    ours = affine_fgsm_direction(scale * w, scale * b, x, y)
    assert torch.equal(ours, _mp_direction(scale * w, scale * b, x, y))
    assert not torch.equal(ours, affine_fgsm_direction(w, b, x, y))


def test_multiclass_eps_star_depends_on_scale():
    """README's multiclass claim, by hand: scaling (W, b) changes the direction and so ε* (catches a scale-free claim).

    Three classes, x = (0.5, 0.5), y = 0; logits (1, 0, −0.15) at scale 1, so q1 = 1 and
    q2 = exp(−0.15c) at scale c. g ∝ q1 (w1 − w0) + q2 (w2 − w0) = (1 − 1.2 q2, −1 − 0.9 q2):
    its first sign is −1 at c = 1 (q2 ≈ 0.86) and +1 at c = 10 (q2 ≈ 0.22). For each direction
    the crossing is checked against min_j (z_y − z_j)/((w_j − w_y)·d), which is scale-free.
    """
    w = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-1.2, -0.9]], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0, 0.9], dtype=torch.float64)
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([0])
    # logits at scale 1: (1, 0, 0.9 − 1.05) = (1, 0, −0.15): q1 = 1, q2 = exp(−0.15) ≈ 0.86
    # g ∝ q1 (1, −1) + q2 (−1.2, −0.9): first coordinate 1 − 1.2·0.86 < 0 at scale 1, > 0 at scale 10
    results = {}
    for c in (1.0, 10.0):
        d = affine_fgsm_direction(c * w, c * b, x, y)
        q2 = math.exp(c * (-0.15))
        assert d.tolist() == [[math.copysign(1.0, 1 - 1.2 * q2), -1.0]]
        results[c] = linear_fgsm_robustness(c * w, c * b, x, y, bounds=None, eps_max=10.0)
        # for a fixed direction the crossing is scale-free: ε* = min_j (z_y − z_j)/((w_j − w_y)·d)
        a = (w - w[0]) @ d[0]
        margins = (x @ w.T + b)[0, 0] - (x @ w.T + b)[0]
        expected = min(float(margins[j] / a[j]) for j in (1, 2) if a[j] > 0)
        assert results[c].eps_star.item() == pytest.approx(expected, rel=1e-12)
    assert results[1.0].eps_star.item() != pytest.approx(results[10.0].eps_star.item(), rel=1e-3)


# --------------------------------------------------------------------------- models and validation


def test_affine_parameters_and_model_wrapper(digits):
    from sparank.models import build_model

    torch.manual_seed(1)
    model = build_model("linear", digits.input_shape, digits.num_classes)
    w, b = affine_parameters(model)
    assert w.shape == (10, 64) and b.shape == (10,) and w.dtype == torch.float64
    x, y = digits.test_x[:40], digits.test_y[:40]
    assert torch.allclose(x.reshape(40, -1).double() @ w.T + b, model(x).double(), atol=1e-5)
    direct = linear_fgsm_robustness(w, b, x, y)
    wrapped = model_fgsm_robustness(model, x, y)
    assert torch.equal(direct.eps_star, wrapped.eps_star)
    with pytest.raises(ValueError, match="not affine"):
        affine_parameters(build_model("mlp:8", digits.input_shape, digits.num_classes))
    # a weight behind a parametrisation (a mask) is read as the model computes with it
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def forward(self, weight):
            return weight * (weight.abs() > 0.05)

    parametrize.register_parametrization(model.out, "weight", Mask())
    masked, _ = affine_parameters(model)
    assert bool((masked == 0).any()) and torch.equal(masked.float(), model.out.weight)


def test_validation_errors():
    w, b, x, y = _random_problem(0, 3, 4, 5)
    with pytest.raises(ValueError, match="outside bounds"):
        linear_fgsm_robustness(w, b, x + 2.0, y)
    with pytest.raises(ValueError, match="norm"):
        linear_fgsm_robustness(w, b, x, y, norm="l1")
    with pytest.raises(ValueError, match="eps_max"):
        linear_fgsm_robustness(w, b, x, y, eps_max=math.inf)
    with pytest.raises(ValueError, match="values per input"):
        linear_fgsm_robustness(w, b, x[:, :3], y)
    with pytest.raises(ValueError, match="labels"):
        linear_fgsm_robustness(w, b, x, y + 3)
    with pytest.raises(ValueError, match="directions"):
        linear_fgsm_robustness(w, b, x, y, directions=torch.zeros(5, 3))
    with pytest.raises(ValueError, match="-1 or \\+1"):
        binary_eps_star_unclipped(w[0], 0.0, x, y)


# --------------------------------------------------------------------------- the worked example of docs/linear.md

# The L1-regularised logistic regression of docs/linear.md: four training points,
# mean logistic loss + λ(|w1| + |w2|), and its hand-derived solution.
EXAMPLE_X = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
EXAMPLE_Y = np.array([1.0, -1.0, 1.0, -1.0])


def _hand_solution(lam):
    """w1 = ½·ln((1−λ)/λ) for λ < ½, w2 = ln((1−2λ)/(2λ)) for λ < ¼ (else 0), b = 0."""
    w1 = 0.5 * math.log((1 - lam) / lam) if lam < 0.5 else 0.0
    w2 = math.log((1 - 2 * lam) / (2 * lam)) if lam < 0.25 else 0.0
    return np.array([w1, w2]), 0.0


def _solve_numerically(lam):
    """The same problem by L-BFGS-B on the split w = u − v, u, v >= 0 (smooth), independent of the derivation."""
    from scipy.optimize import minimize

    def objective(z):
        u, v, b = z[:2], z[2:4], z[4]
        s = EXAMPLE_Y * (EXAMPLE_X @ (u - v) + b)
        loss = np.logaddexp(0.0, -s).mean() + lam * (u + v).sum()
        r = -EXAMPLE_Y * (1.0 / (1.0 + np.exp(s))) / len(s)  # d loss / d f_n
        grad_w = EXAMPLE_X.T @ r
        return loss, np.concatenate([grad_w + lam, -grad_w + lam, [r.sum()]])

    bounds = [(0, None)] * 4 + [(None, None)]
    res = minimize(objective, np.full(5, 0.1), jac=True, method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000})
    z = res.x
    return z[:2] - z[2:4], z[4]


@pytest.mark.parametrize("lam", [0.01, 0.2, 0.3])
def test_worked_example_solution(lam):
    w_hand, b_hand = _hand_solution(lam)
    w_num, b_num = _solve_numerically(lam)
    assert np.allclose(w_num, w_hand, atol=1e-5)
    assert abs(b_num - b_hand) < 1e-5


def test_worked_example_eps_star_numbers():
    """The ε* values printed in docs/linear.md's table, from the closed form on the hand-derived models."""
    test_inputs = torch.tensor([[0.2, 0.6], [0.6, 0.2]], dtype=torch.float64)
    labels = torch.tensor([1, 1])  # y = +1 -> class 1
    printed = {0.01: (0.4515, 0.3485), 0.2: (0.3476, 0.4524), 0.3: (0.2000, 0.6000)}
    in_box = {0.01: (0.4819, 0.3485), 0.2: (0.3476, 0.4830), 0.3: (0.2, 0.6)}  # box [−0.2, 1]
    for lam, expected in printed.items():
        w, b = _hand_solution(lam)
        weight, bias = binary_as_multiclass(torch.tensor(w), b)
        # both class orders: no number may depend on the tie rule (swapped, y = +1 is class 0)
        for wk, bk, lab in ((weight, bias, labels), (weight.flip(0), bias.flip(0), 1 - labels)):
            result = linear_fgsm_robustness(wk, bk, test_inputs, lab, bounds=None, eps_max=10.0)
            assert [round(v, 4) for v in result.eps_star.tolist()] == list(expected)
            boxed = linear_fgsm_robustness(wk, bk, test_inputs, lab, bounds=(-0.2, 1.0), eps_max=1.0)
            assert [round(v, 4) for v in boxed.eps_star.tolist()] == list(in_box[lam])
        # a per-input drop, not a global one: the mean unboxed ε* of A and B is 0.4 at every λ
        assert result.eps_star.mean().item() == pytest.approx(0.4, abs=1e-12)
    # in the box [0, 1] every crossing of the example is a tie (the corner 0 lies on the boundary f = 0):
    # the class order decides, which is why the example uses [−0.2, 1]
    weight, bias = binary_as_multiclass(torch.tensor(_hand_solution(0.3)[0]), 0.0)
    tie_low = linear_fgsm_robustness(weight, bias, test_inputs[:1], labels[:1], bounds=(0.0, 1.0), eps_max=1.0)
    tie_high = linear_fgsm_robustness(weight.flip(0), bias.flip(0), test_inputs[:1], 1 - labels[:1], bounds=(0.0, 1.0), eps_max=1.0)
    assert tie_low.eps_star.tolist() == [0.2] and tie_high.status.tolist() == [int(CENSORED)]
    # the printed weights and the share of ||w||_1 on feature 2
    assert [round(v, 4) for v in _hand_solution(0.01)[0]] == [2.2976, 3.8918]
    assert [round(v, 4) for v in _hand_solution(0.2)[0]] == [0.6931, 0.4055]
    assert [round(v, 4) for v in _hand_solution(0.3)[0]] == [0.4236, 0.0]
    assert [round(w[1] / w.sum(), 2) for w in (_hand_solution(lam)[0] for lam in (0.01, 0.2, 0.3))] == [0.63, 0.37, 0.0]
    # the sparse model puts training point 3, (0, 1) with y = +1, on its boundary: the tie goes to class −1
    w, b = _hand_solution(0.3)
    weight, bias = binary_as_multiclass(torch.tensor(w), b)
    point3 = linear_fgsm_robustness(weight, bias, torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.tensor([1]), bounds=None)
    assert point3.status.tolist() == [int(CLEAN_WRONG)]
    # scaling (w, b) does not change ε*
    w, b = _hand_solution(0.01)
    for scale in (0.1, 7.0):
        weight, bias = binary_as_multiclass(torch.tensor(scale * w), scale * b)
        scaled = linear_fgsm_robustness(weight, bias, test_inputs, labels, bounds=None, eps_max=10.0)
        assert [round(v, 4) for v in scaled.eps_star.tolist()] == list(printed[0.01])


def _soft_threshold(w, tau):
    return w.sign() * (w.abs() - tau).clamp_min(0.0)


def test_proposition_shrinkage_condition_binary():
    """docs/linear.md Corollary 2: along w(τ) = S_τ(w), b fixed, ε*(τ) falls on a support interval iff ū > ε*.

    ū is the mean of y·sign(w_i)·x_i over the support. Checked against ε* recomputed at 200 values of τ
    for 300 random (w, x) pairs (catches a wrong sign or a wrong average in the stated condition).
    """
    g = torch.Generator().manual_seed(11)
    checked = {True: 0, False: 0}
    for _ in range(300):
        dim = 6
        w = torch.randn(dim, generator=g, dtype=torch.float64)
        b = float(0.3 * torch.randn(1, generator=g, dtype=torch.float64))
        x = torch.randn(1, dim, generator=g, dtype=torch.float64)
        y = 1 if float(x @ w + b) > 0 else -1
        cut = float(w.abs().sort().values[0])  # the first support change
        taus = torch.linspace(0.0, 0.999 * cut, 200, dtype=torch.float64)
        eps = torch.stack([binary_eps_star_unclipped(_soft_threshold(w, t), b, x, torch.tensor([y]))[0] for t in taus])
        u_bar = float((y * w.sign() * x[0]).mean())
        falls = u_bar > float(eps[0])
        steps = eps[1:] - eps[:-1]
        if falls:
            assert bool((steps < 0).all())
        else:
            assert bool((steps >= -1e-15).all())
        checked[falls] += 1
    assert min(checked.values()) >= 30  # both cases occur


def test_proposition_first_order_sign_at_the_crossing_point():
    """docs/linear.md Proposition 1: dε*/dt has the sign of d/dt (z_y − z_j*)(x*) at the crossing point x* = x(ε*).

    Random multiclass models in the box, random weight directions, central finite differences of the
    exact ε* (direction held fixed, as the proposition's hypothesis). Catches a wrong point (x instead of
    x*) or a wrong sign.
    """
    agree = total = 0
    for seed in range(40):
        w, b, x, y = _random_problem(seed, 4, 8, 10, face_fraction=0.3, correct_fraction=1.0)
        d = affine_fgsm_direction(w, b, x, y)
        base = linear_fgsm_robustness(w, b, x, y, eps_max=5.0, directions=d)
        g = torch.Generator().manual_seed(1000 + seed)
        dw = torch.randn(w.shape, generator=g, dtype=torch.float64)
        db = torch.randn(b.shape, generator=g, dtype=torch.float64)
        h = 1e-6
        plus = linear_fgsm_robustness(w + h * dw, b + h * db, x, y, eps_max=5.0, directions=d)
        minus = linear_fgsm_robustness(w - h * dw, b - h * db, x, y, eps_max=5.0, directions=d)
        for i in range(len(x)):
            if base.status[i] != int(FOOLED) or plus.status[i] != int(FOOLED) or minus.status[i] != int(FOOLED):
                continue
            e = base.eps_star[i].item()
            x_star = (x[i] + e * d[i]).clamp(0.0, 1.0)
            z = x_star @ w.T + b
            others = z.clone()
            others[y[i]] = -math.inf
            j = int(others.argmax())
            dmargin = float(x_star @ (dw[y[i]] - dw[j]) + db[y[i]] - db[j])
            deps = (plus.eps_star[i].item() - minus.eps_star[i].item()) / (2 * h)
            if abs(dmargin) < 1e-6 or abs(deps) < 1e-6:
                continue
            total += 1
            agree += (deps > 0) == (dmargin > 0)
    assert total >= 100
    assert agree == total


# --------------------------------------------------------------------------- the L1 path


def test_lambda_max_empties_the_model(digits):
    """scikit-learn's L1 fit is all-zero just above λ_max and not at 0.8·λ_max."""
    from sparank.linear import fit_l1_logistic
    from sparank.linear_path import lambda_max

    top = lambda_max(digits)
    above, *_ = fit_l1_logistic(digits.train_x, digits.train_y, 10, 1.02 * top, tol=1e-6, max_iter=2000)
    below, *_ = fit_l1_logistic(digits.train_x, digits.train_y, 10, 0.8 * top, tol=1e-6, max_iter=2000)
    assert bool((above == 0).all())
    assert bool((below != 0).any())


@pytest.mark.slow
def test_l1_path_on_digits(digits, tmp_path):
    from sparank.linear_path import CONTROLS, SklearnConfig, run_l1_path
    from sparank.models import build_model
    from sparank.store import Store
    from sparank.train import TrainConfig

    lambdas = [1e-4, 2e-3, 2e-2]
    l2_lambdas = [1e-4, 1e-2, 1.0]
    seeds = [0, 1]
    config = TrainConfig(epochs=5, batch_size=32, lr=0.2, optimizer="sgd", momentum=0.0, seed=0)
    calls = []
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("pdf")  # a caller's own choice, which drawing the path's figure must not switch
    with Store(tmp_path / "store") as store:
        path = run_l1_path(
            digits,
            out_dir=tmp_path / "out",
            lambdas=lambdas,
            l2_lambdas=l2_lambdas,
            seeds=seeds,
            store=store,
            n_eval=60,
            train_config=config,
            sklearn_config=SklearnConfig(tol=1e-3, max_iter=300),
            n_boot=100,
            progress=lambda done, total, message: calls.append((done, total)),
        )
        n_models = len(seeds) * (3 * len(lambdas) + len(l2_lambdas))
        runs = store.runs()
        # one run per point, each with its exact FGSM measurement and the best-ε* record beside it
        assert len(runs) == n_models and len(store.measurements()) == 2 * n_models
        assert {p.run_id for p in path.points} == {r.id for r in runs}
        point = path.point("sklearn", lambdas[1], 1)
        stored = store.load_weights(point.run_id)
        model = build_model("linear", digits.input_shape, digits.num_classes)
        model.load_state_dict(stored)
        w, b = path.weights[("sklearn", lambdas[1], 1)]
        assert torch.equal(model.out.weight.double(), w) and torch.equal(model.out.bias.double(), b)
        fgsm = next(m for m in store.measurements(point.run_id) if m.config["attack"] == "fgsm")
        assert fgsm.config["attack_settings"]["method"] == "closed_form"
        assert torch.equal(store.brackets(fgsm.id).eps_hi, path.eps_star[("sklearn", lambdas[1], 1)])
        assert store.get_run(point.run_id).metrics["converged"] is point.converged
    assert calls[-1] == (n_models, n_models)
    assert matplotlib.get_backend() == "pdf"
    matplotlib.use(backend)
    for key in ("png", "svg", "csv", "md", "comparisons_csv"):
        assert path.files[key].stat().st_size > 0
    assert len(path.files["csv"].read_text().strip().splitlines()) == 1 + n_models
    assert len(path.comparisons) == 3 * len(lambdas) * len(CONTROLS)
    for method in ("l1", "prox_l1", "sklearn"):
        for seed in seeds:
            pts = [path.point(method, lam, seed) for lam in lambdas]
            norms = [p.l1_norm for p in pts]
            assert norms[0] > norms[1] > norms[2], (method, norms)
            assert pts[0].clean_accuracy > 0.85
        # the reference against itself is exactly 1; the rescaled control has the L1 model's norm
        ref = path.comparison(method, lambdas[0], "reference")
        assert (ref.ratio, ref.low, ref.high) == (1.0, 1.0, 1.0)
        rescaled = path.comparison(method, lambdas[2], "rescaled")
        assert rescaled.control_l1_norm == pytest.approx(np.mean([path.point(method, lambdas[2], s).l1_norm for s in seeds]))
        assert rescaled.low <= rescaled.ratio <= rescaled.high
    for method in ("prox_l1", "sklearn"):  # the methods with exact zeros
        sparsity = [path.point(method, lam).sparsity for lam in lambdas]
        assert sparsity[0] <= sparsity[1] < sparsity[2], (method, sparsity)
    # the matched-accuracy control is the L2 model of the same seed with the closest accuracy
    c = path.comparison("prox_l1", lambdas[1], "l2_accuracy")
    expected = np.mean([min((path.point("l2", v, s) for v in l2_lambdas), key=lambda p: abs(p.clean_accuracy - path.point("prox_l1", lambdas[1], s).clean_accuracy)).clean_accuracy for s in seeds])
    assert c.control_accuracy == pytest.approx(expected)
    # the path's exact ε* against the brute force, on a few inputs of each model
    x = digits.test_x[path.eval_indices[:6]].reshape(6, -1).double()
    y = digits.test_y[path.eval_indices[:6]]
    for key, (w, b) in path.weights.items():
        eps_bf, status_bf = _brute_force(w, b, x, y, _direction_autograd(w, b, x, y, "linf"), eps_max=path.eps_max)
        eps = path.eps_star[key][:6]
        fooled = status_bf == int(FOOLED)
        assert torch.allclose(eps[fooled], eps_bf[fooled], atol=1e-9)
        assert bool(torch.isinf(eps[status_bf == int(CENSORED)]).all())


def test_unconverged_reference_is_refused(digits, tmp_path):
    """A SAGA reference stopped by its cap: its reference ratios are refused, not reported (catches a silent bad baseline)."""
    from sparank.linear_path import SklearnConfig, run_l1_path
    from sparank.train import TrainConfig

    config = TrainConfig(epochs=1, batch_size=64, lr=0.2, optimizer="sgd", momentum=0.0, seed=0)
    with pytest.warns(UserWarning, match="did not converge"):
        path = run_l1_path(
            digits, out_dir=tmp_path, lambdas=[1e-5, 1e-2], methods=["sklearn"], seeds=[0], l2_lambdas=[], n_eval=30,
            train_config=config, sklearn_config=SklearnConfig(tol=1e-8, max_iter=2), n_boot=20,
        )  # fmt: skip
    assert path.point("sklearn", 1e-5).converged is False
    refused = path.comparison("sklearn", 1e-2, "reference")
    assert refused.ratio is None and refused.note.startswith("refused")
    assert "refused" in path.files["md"].read_text()


def test_kkt_violation_is_zero_at_the_optimum_only(digits):
    """The optimality check: small for a tightly converged SAGA fit, large for W = 0 below λ_max."""
    from sparank.linear import fit_l1_logistic
    from sparank.linear_path import kkt_violation, lambda_max

    x = digits.train_x.reshape(len(digits.train_x), -1).double()
    lam = 0.3 * lambda_max(digits)
    w, b, info = fit_l1_logistic(digits.train_x, digits.train_y, 10, lam, tol=1e-8, max_iter=5000)
    assert info["converged"] and info["C"] == pytest.approx(1 / (lam * len(x)))
    assert kkt_violation(w, b, x, digits.train_y, lam) < 0.05
    assert kkt_violation(torch.zeros_like(w), b, x, digits.train_y, lam) > 1.0
