"""PGD: the fixed-ε attack and its minimal ε, checked against closed forms, FGSM and forward passes.

References are independent of the attack: the exact boxed L∞ and unboxed L∞/L2
minimal perturbations of an affine classifier (:mod:`sparank.linear`), the exact
boxed L2 minimum of a binary affine classifier solved here from its KKT
conditions, FGSM's ε* (:class:`~sparank.attacks.fgsm.FGSM` through ``measure``)
and fresh forward passes of every returned point.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparank.attacks.base import ball_tolerance, distances
from sparank.attacks.fgsm import FGSM, fgsm_direction, ray_points
from sparank.attacks.pgd import PGD, pgd, pgd_minimal
from sparank.data import Dataset
from sparank.linear import boxed_minimal_perturbation, unboxed_minimal_perturbation
from sparank.robustness import FOOLED, NO_DIRECTION, measure


def affine(d: int, k: int, seed: int, *, scale: float = 1.0) -> nn.Linear:
    """A float64 ``nn.Linear(d, k)`` with N(0, 1) weights and biases times ``scale`` (sharper softmax for larger scale)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, k).double()
    with torch.no_grad():
        model.weight.copy_(scale * torch.randn(k, d, generator=g, dtype=torch.float64))
        model.bias.copy_(scale * 0.1 * torch.randn(k, generator=g, dtype=torch.float64))
    return model.eval()


def points_and_labels(model: nn.Module, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform inputs in [0, 1]^d (float64) labelled by the model itself, so every input is correct."""
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        return x, model(x).argmax(dim=1)


def weights(model: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return model.weight.detach(), model.bias.detach()


def recheck(result, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: tuple[float, float], norm: str) -> None:
    """Every fooled input's adversarial is misclassified by a fresh forward pass, in the box and in its ball."""
    fooled = result.status == int(FOOLED)
    adv = result.adversarials[fooled]
    with torch.no_grad():
        assert bool((model(adv).argmax(dim=1) != y[fooled]).all())
    assert float(adv.min()) >= bounds[0] and float(adv.max()) <= bounds[1]
    slack = ball_tolerance(x.dtype, bounds, result.eps_max, norm, x[0].numel())
    assert bool((distances(adv, x[fooled], norm) <= result.eps_hi[fooled] + slack).all())


def boxed_l2_binary(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Exact ``min ||δ||_2`` with ``x + δ`` in the box that flips a binary affine classifier (float64, ``(N,)``).

    KKT: ``δ(λ) = clip(−λ·a, lo − x, hi − x)`` with ``a = w_y − w_other``; ``a·δ(λ)`` falls
    monotonically in ``λ``, so bisection on ``λ`` finds the ``λ`` at which it meets the margin.
    """
    w, b = weights(model)
    a = w[y] - w[1 - y]
    margin = (a * x).sum(dim=1) + b[y] - b[1 - y]
    low, high = bounds[0] - x, bounds[1] - x

    def step(lam: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(-lam[:, None] * a, low), high)

    feasible = (a * torch.where(a > 0, low, high)).sum(dim=1) < -margin
    lam_lo = torch.zeros(len(x), dtype=torch.float64)
    lam_hi = torch.ones(len(x), dtype=torch.float64)
    for _ in range(200):
        short = feasible & ((a * step(lam_hi)).sum(dim=1) > -margin)
        lam_hi = torch.where(short, 2 * lam_hi, lam_hi)
    for _ in range(200):
        mid = 0.5 * (lam_lo + lam_hi)
        ok = (a * step(mid)).sum(dim=1) <= -margin
        lam_hi, lam_lo = torch.where(ok, mid, lam_hi), torch.where(ok, lam_lo, mid)
    return torch.where(feasible, step(lam_hi).norm(dim=1), math.inf)


# ---------------------------------------------------------------- the minimal ε against exact answers


def test_linf_binary_affine_is_exact_to_fgsm_tol() -> None:
    """Binary affine, box [0, 1]: the FGSM corner is optimal, so PGD's ε is the exact boxed optimum to tol 1e-6."""
    model = affine(12, 2, seed=0)
    x, y = points_and_labels(model, 80, 12, seed=1)
    exact = boxed_minimal_perturbation(*weights(model), x, y)
    result = measure(PGD(), model, x, y, eps_max=1.0, keep_adversarials=True)
    reachable = torch.isfinite(exact)
    assert bool((result.status[reachable] == int(FOOLED)).all())
    assert bool((result.status[~reachable] != int(FOOLED)).all())
    tol = ball_tolerance(x.dtype, (0.0, 1.0), 1.0, "linf", 12)
    assert bool((result.eps_hi[reachable] >= exact[reachable] - tol).all())  # never below the optimum
    assert bool((result.eps_hi[reachable] <= exact[reachable] + 2e-6).all())  # within twice FGSM's tol
    recheck(result, model, x, y, (0.0, 1.0), "linf")


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_linf_multiclass_affine_is_never_below_the_optimum_nor_above_fgsm(scale: float) -> None:
    """Five classes, box [0, 1]: PGD's ε lies in [exact, FGSM ε*] for every input.

    Cross-entropy PGD moves along a softmax-weighted mix of the competing classes: with a flat
    softmax over them (``scale`` 1) it stays at the FGSM corner, up to 2.3× the optimum here;
    with sharp logits (``scale`` 100) the steps follow the nearest class and the median ratio
    to the optimum is within 1e-3. This is the stated tolerance: no more is claimed.
    """
    model = affine(12, 5, seed=2, scale=scale)
    x, y = points_and_labels(model, 80, 12, seed=3)
    exact = boxed_minimal_perturbation(*weights(model), x, y)
    pgd_result = measure(PGD(), model, x, y, eps_max=1.0, keep_adversarials=True)
    fgsm_result = measure(FGSM(), model, x, y, eps_max=1.0)
    fooled = pgd_result.status == int(FOOLED)
    assert bool((fooled == torch.isfinite(exact)).all())
    tol = ball_tolerance(x.dtype, (0.0, 1.0), 1.0, "linf", 12)
    assert bool((pgd_result.eps_hi[fooled] >= exact[fooled] - tol).all())
    assert bool((pgd_result.eps_hi <= fgsm_result.eps_hi).all())
    ratio = pgd_result.eps_hi[fooled] / exact[fooled]
    if scale == 100.0:
        assert float(ratio.median()) <= 1.001
    assert float(ratio.max()) <= 2.5
    recheck(pgd_result, model, x, y, (0.0, 1.0), "linf")


@pytest.mark.parametrize("classes", [2, 4])
def test_l2_wide_box_against_the_unboxed_optimum(classes: int) -> None:
    """L2 in a box that never binds ([-50, 50]): binary is exact to FGSM's tol; any ``K`` is never below the optimum."""
    model = affine(10, classes, seed=4)
    x, y = points_and_labels(model, 60, 10, seed=5)
    exact = unboxed_minimal_perturbation(*weights(model), x, y, norm="l2")
    bounds = (-50.0, 50.0)
    result = measure(PGD(), model, x, y, bounds=bounds, norm="l2", eps_max=20.0, keep_adversarials=True)
    assert bool((result.status == int(FOOLED)).all())
    tol = ball_tolerance(x.dtype, bounds, 20.0, "l2", 10)
    assert bool((result.eps_hi >= exact - tol).all())
    if classes == 2:
        assert bool((result.eps_hi <= exact + 2e-6).all())
    fgsm_result = measure(FGSM(), model, x, y, bounds=bounds, norm="l2", eps_max=20.0)
    assert bool((result.eps_hi <= fgsm_result.eps_hi).all())
    recheck(result, model, x, y, bounds, "l2")


def test_l2_boxed_binary_steps_reach_the_optimum_where_fgsm_cannot() -> None:
    """L2 in [0, 1], binary affine: the box clips the FGSM ray (up to 13 % above the optimum here); PGD's
    projected steps get within 2 % of the exact boxed optimum (a KKT solution), never below it."""
    model = affine(16, 2, seed=6)
    x, y = points_and_labels(model, 100, 16, seed=7)
    exact = boxed_l2_binary(model, x, y, (0.0, 1.0))
    assert bool(torch.isfinite(exact).all())
    pgd_result = measure(PGD(), model, x, y, norm="l2", eps_max=4.0, keep_adversarials=True)
    fgsm_result = measure(FGSM(), model, x, y, norm="l2", eps_max=4.0)
    assert bool((pgd_result.status == int(FOOLED)).all())
    pgd_ratio, fgsm_ratio = pgd_result.eps_hi / exact, fgsm_result.eps_hi / exact
    assert float(pgd_ratio.min()) >= 1.0 - 1e-9
    assert float(pgd_ratio.max()) <= 1.02
    assert float(fgsm_ratio.max()) >= 1.05  # the box binds: this case exercises PGD's steps, not FGSM's ray
    recheck(pgd_result, model, x, y, (0.0, 1.0), "l2")


# ---------------------------------------------------------------- a real network


@pytest.fixture(scope="module")
def mlp_batch(digits: Dataset, digits_mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """200 test inputs the MLP classifies correctly (so that a fixed-ε run starts from a correct point)."""
    x, y = digits.test_x[:250], digits.test_y[:250]
    with torch.no_grad():
        correct = digits_mlp(x).argmax(dim=1) == y
    return x[correct][:200], y[correct][:200]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_never_above_fgsm_on_the_digits_mlp_and_every_adversarial_rechecked(digits_mlp: nn.Module, mlp_batch, norm: str) -> None:
    x, y = mlp_batch
    eps_max = 0.5 if norm == "linf" else 4.0
    fgsm_result = measure(FGSM(), digits_mlp, x, y, norm=norm, eps_max=eps_max)
    pgd_result = measure(PGD(), digits_mlp, x, y, norm=norm, eps_max=eps_max, keep_adversarials=True, batch_size=64)
    fgsm_fooled = fgsm_result.status == int(FOOLED)
    assert bool((pgd_result.status[fgsm_fooled] == int(FOOLED)).all())
    assert bool((pgd_result.eps_hi <= fgsm_result.eps_hi).all())
    assert float((pgd_result.eps_hi[fgsm_fooled] < fgsm_result.eps_hi[fgsm_fooled]).double().mean()) > 0.5
    assert pgd_result.rejected == 0
    assert bool((pgd_result.eps_lo <= pgd_result.eps_hi).all())
    recheck(pgd_result, digits_mlp, x, y, (0.0, 1.0), norm)


def test_eps_lo_is_an_eps_where_pgd_failed(digits_mlp: nn.Module, mlp_batch) -> None:
    """Re-running the same deterministic PGD (FGSM start, no restarts) at ``eps_lo`` fails; at ``eps`` it succeeds."""
    x, y = mlp_batch
    x, y = x[:60].double(), y[:60]
    model = _double(digits_mlp)
    found = pgd_minimal(model, x, y, eps_max=0.5)
    tried = found.found & (found.eps_lo > 0)
    assert int(tried.sum()) > 30
    d = fgsm_direction(model, x, y)
    for radius, expect in ((found.eps_lo, False), (found.eps, True)):
        eps = torch.where(tried, radius, 0.0)[tried]
        _, success = pgd(
            model, x[tried], y[tried], eps, steps=20, rel_stepsize=0.125, start=ray_points(x[tried], d[tried], eps, (0.0, 1.0))
        )
        assert bool((success == expect).all())  # at eps: the FGSM point or the same PGD run


def _double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double().eval()


def test_inputs_and_parameter_grads_are_untouched(digits_mlp: nn.Module, mlp_batch) -> None:
    x, y = mlp_batch
    x, y = x[:40], y[:40]
    x0 = x.clone()
    params = list(digits_mlp.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.grad.clone() for p in params]
    try:
        measure(PGD(restarts=1), digits_mlp, x, y)
        pgd(digits_mlp, x, y, 0.1, steps=5, rel_stepsize=0.25, random_start=True, generator=torch.Generator().manual_seed(0))
        pgd(digits_mlp, x, y, 0.1, norm="l2", steps=5, rel_stepsize=0.25, gradient_model=digits_mlp)
        assert torch.equal(x, x0)
        assert all(torch.equal(p.grad, g) for p, g in zip(params, before, strict=True))
        digits_mlp.zero_grad(set_to_none=True)
        measure(PGD(), digits_mlp, x, y, norm="l2", eps_max=4.0)
        assert all(p.grad is None for p in params)
    finally:
        digits_mlp.zero_grad(set_to_none=True)


def test_restarts_with_a_seed_reproduce_bit_for_bit(digits_mlp: nn.Module, mlp_batch) -> None:
    x, y = mlp_batch
    x, y = x[:50], y[:50]
    runs = [measure(PGD(restarts=2, seed=seed), digits_mlp, x, y, keep_adversarials=True) for seed in (5, 5, 6)]
    a, b, c = runs
    assert torch.equal(a.eps_hi, b.eps_hi) and torch.equal(a.eps_lo, b.eps_lo)
    assert torch.equal(a.adversarials, b.adversarials)
    assert not torch.equal(a.adversarials, c.adversarials)  # the random starts are used, and drawn from the seed
    draws = [
        pgd(digits_mlp, x, y, 0.05, steps=2, rel_stepsize=0.25, random_start=True, generator=torch.Generator().manual_seed(s))[0]
        for s in (1, 1, 2)
    ]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


# ---------------------------------------------------------------- fixed-ε pgd


def test_fixed_eps_succeeds_at_the_optimum_of_a_binary_affine_model() -> None:
    """Binary affine, box [0, 1]: four steps of ε/4 along the constant sign reach the optimal corner."""
    model = affine(12, 2, seed=8)
    x, y = points_and_labels(model, 80, 12, seed=9)
    exact = boxed_minimal_perturbation(*weights(model), x, y)
    reachable = torch.isfinite(exact)
    x, y, exact = x[reachable], y[reachable], exact[reachable]
    x_adv, success = pgd(model, x, y, exact * (1 + 1e-9), steps=4, rel_stepsize=0.25)
    assert bool(success.all())
    with torch.no_grad():
        assert bool((model(x_adv).argmax(dim=1) != y).all())
    assert bool((distances(x_adv, x, "linf") <= exact * (1 + 1e-9) + 1e-15).all())


@pytest.mark.parametrize(("norm", "bounds"), [("linf", (0.0, 1.0)), ("l2", (-50.0, 50.0))])
def test_fixed_eps_never_succeeds_below_the_exact_optimum(norm: str, bounds: tuple[float, float]) -> None:
    model = affine(12, 5, seed=10, scale=10.0)
    x, y = points_and_labels(model, 80, 12, seed=11)
    if norm == "linf":
        exact = boxed_minimal_perturbation(*weights(model), x, y, bounds=bounds)
    else:
        exact = unboxed_minimal_perturbation(*weights(model), x, y, norm="l2")
    keep = torch.isfinite(exact)
    x, y, eps = x[keep], y[keep], exact[keep] * (1 - 1e-6)
    for options in ({}, {"random_start": True, "generator": torch.Generator().manual_seed(0)}):
        x_adv, success = pgd(model, x, y, eps, norm=norm, bounds=bounds, steps=30, rel_stepsize=0.1, **options)
        assert not bool(success.any())
        with torch.no_grad():
            assert bool((model(x_adv).argmax(dim=1) == y).all())
    # and just above it, most inputs are fooled (sharp logits: the steps follow the nearest class)
    _, success = pgd(model, x, y, exact[keep] * 1.05, norm=norm, bounds=bounds, steps=30, rel_stepsize=0.1)
    assert float(success.double().mean()) > 0.7


def test_first_misclassified_iterate_is_kept_and_stops(digits_mlp: nn.Module, mlp_batch) -> None:
    x, y = mlp_batch
    short, ok_short = pgd(digits_mlp, x, y, 0.08, steps=2, rel_stepsize=0.25)
    long, ok_long = pgd(digits_mlp, x, y, 0.08, steps=12, rel_stepsize=0.25)
    assert 0 < int(ok_short.sum()) < int(ok_long.sum())
    assert bool(ok_long[ok_short].all())
    assert torch.equal(long[ok_short], short[ok_short])  # an input that succeeded stops moving
    with torch.no_grad():
        assert bool((digits_mlp(long).argmax(dim=1) != y).eq(ok_long).all())
    # a start the model already misclassifies is returned as it is, and counts
    start = long.clone()
    again, ok_again = pgd(digits_mlp, x, y, 0.08, steps=5, rel_stepsize=0.25, start=start)
    assert torch.equal(again[ok_long], start[ok_long]) and bool(ok_again[ok_long].all())
    # without early stopping every input takes every step (adversarial training)
    full, _ = pgd(digits_mlp, x, y, 0.08, steps=12, rel_stepsize=0.25, early_stop=False)
    assert not torch.equal(full[ok_short], short[ok_short])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_input_eps_ball_box_and_zero_radius(digits_mlp: nn.Module, mlp_batch, norm: str) -> None:
    x, y = mlp_batch
    eps = torch.linspace(0.0, 0.3 if norm == "linf" else 2.0, len(x), dtype=torch.float64)
    for options in ({}, {"random_start": True, "generator": torch.Generator().manual_seed(1)}):
        x_adv, success = pgd(digits_mlp, x, y, eps, norm=norm, steps=10, rel_stepsize=0.25, **options)
        assert torch.equal(x_adv[0], x[0]) and not bool(success[0])
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        slack = ball_tolerance(x.dtype, (0.0, 1.0), float(eps.max()), norm, x[0].numel())
        assert bool((distances(x_adv, x, norm) <= eps + slack).all())
    with torch.no_grad():
        assert bool((digits_mlp(x_adv).argmax(dim=1) != y).eq(success).all())


# ---------------------------------------------------------------- transfer and masked gradients


class Staircase(nn.Module):
    """``floor(16·x)/16``: the input gradient is exactly 0 everywhere (a masked model when put in front of a layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(16 * x) / 16


def test_gradient_model_drives_the_steps_and_success_is_judged_on_the_target() -> None:
    source = affine(12, 2, seed=12)
    target = nn.Sequential(Staircase(), source).eval()
    x, y = points_and_labels(target, 60, 12, seed=13)
    eps = 0.5
    alone, ok_alone = pgd(target, x, y, eps, steps=10, rel_stepsize=0.25)
    assert torch.equal(alone, x) and not bool(ok_alone.any())  # a zero gradient never moves
    moved, ok_moved = pgd(target, x, y, eps, steps=10, rel_stepsize=0.25, gradient_model=source)
    assert float(ok_moved.double().mean()) > 0.8
    with torch.no_grad():
        assert bool((target(moved).argmax(dim=1) != y).eq(ok_moved).all())  # judged on the target
    # the minimal search: alone, every input has no direction; with the source, the target is fooled
    masked = measure(PGD(), target, x, y, eps_max=1.0)
    assert bool((masked.status == int(NO_DIRECTION)).all())
    transfer = pgd_minimal(target, x, y, eps_max=1.0, gradient_model=source)
    assert float(transfer.found.double().mean()) > 0.8 and not bool(transfer.no_direction.any())
    adv = transfer.adversarials[transfer.found]
    with torch.no_grad():
        assert bool((target(adv).argmax(dim=1) != y[transfer.found]).all())
    assert bool((distances(adv, x[transfer.found], "linf") <= transfer.eps[transfer.found] + 1e-12).all())


# ---------------------------------------------------------------- settings, errors, progress


def test_settings_are_recorded_with_defaults() -> None:
    assert PGD().settings() == {
        "attack": "pgd", "steps": 20, "rel_stepsize": 0.125, "restarts": 0, "seed": 0, "search_steps": 12,
        "fgsm_resolution": 1e-2, "fgsm_tol": 1e-6, "refine": 30,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"rel_stepsize": 0.0}, "rel_stepsize"),
        ({"rel_stepsize": math.inf}, "rel_stepsize"),
        ({"restarts": -1}, "restarts"),
        ({"seed": -1}, "seed"),
        ({"search_steps": True}, "search_steps"),
        ({"fgsm_resolution": 0.0}, "fgsm_resolution"),
        ({"fgsm_tol": 0.0}, "fgsm_tol"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_setting(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PGD(**options)


def test_bad_calls_are_value_errors(digits_mlp: nn.Module, mlp_batch) -> None:
    x, y = mlp_batch
    x, y = x[:8], y[:8]
    with pytest.raises(ValueError, match="fgsm_resolution"):
        measure(PGD(fgsm_resolution=0.1), digits_mlp, x, y, eps_max=0.05)
    with pytest.raises(ValueError, match="start"):
        pgd(digits_mlp, x, y, 0.1, steps=1, rel_stepsize=1.0, random_start=True, start=x)
    with pytest.raises(ValueError, match="start"):
        pgd(digits_mlp, x, y, 0.1, steps=1, rel_stepsize=1.0, start=x[:4])
    with pytest.raises(ValueError, match="eps"):
        pgd(digits_mlp, x, y, -0.1, steps=1, rel_stepsize=1.0)
    with pytest.raises(ValueError, match="eps"):
        pgd(digits_mlp, x, y, torch.full((3,), 0.1), steps=1, rel_stepsize=1.0)
    with pytest.raises(ValueError, match="steps"):
        pgd(digits_mlp, x, y, 0.1, steps=-1, rel_stepsize=1.0)
    with pytest.raises(ValueError, match="rel_stepsize"):
        pgd(digits_mlp, x, y, 0.1, steps=1, rel_stepsize=-1.0)
    with pytest.raises(ValueError, match="norm"):
        pgd(digits_mlp, x, y, 0.1, norm="l1", steps=1, rel_stepsize=1.0)


def test_progress_is_monotone_and_ends_at_the_total(digits_mlp: nn.Module, mlp_batch) -> None:
    x, y = mlp_batch
    seen: list[tuple[int, int]] = []
    result = measure(PGD(search_steps=4), digits_mlp, x[:30], y[:30], progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(result), len(result))
    assert all(total == 30 for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_empty_batch() -> None:
    model = affine(4, 3, seed=0)
    found = pgd_minimal(model, torch.empty(0, 4, dtype=torch.float64), torch.empty(0, dtype=torch.int64))
    assert len(found.eps) == 0 and found.forward_rows >= 0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_uniform_in_the_ball(digits_mlp: nn.Module, mlp_batch, norm: str) -> None:
    """With ``steps=0`` and a box that never binds, the start is the point: uniform coordinates (L∞) or uniform in the ball (L2)."""
    x, y = mlp_batch
    eps = 0.2
    start, _ = pgd(digits_mlp, x, y, eps, norm=norm, bounds=(-50.0, 50.0), steps=0, rel_stepsize=1.0, random_start=True,
                   generator=torch.Generator().manual_seed(2))  # fmt: skip
    delta = (start - x).double().flatten(1) / eps
    if norm == "linf":
        assert float(delta.abs().max()) <= 1.0 + 1e-6
        assert abs(float(delta.mean())) < 0.02 and abs(float(delta.abs().mean()) - 0.5) < 0.02
    else:  # P(r <= t·ε) = t^D for uniform in the D-ball, so (r/ε)^D is uniform on [0, 1]
        u = delta.norm(dim=1).clamp(max=1.0) ** delta.shape[1]
        assert float(delta.norm(dim=1).max()) <= 1.0 + 1e-6
        assert abs(float(u.mean()) - 0.5) < 0.1 and float(u.min()) < 0.2 and float(u.max()) > 0.8


class Tied(nn.Module):
    """Two classes, logits ``(0, Σ floor(16·x)/16 − c)``: on the staircase the margin is often exactly 0,
    a tie that ``argmax`` gives to class 0 (misclassified for label 1) but that is not misclassified in any batching."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (torch.floor(16 * x) / 16).flatten(1).sum(dim=1) - self.c
        return torch.stack([torch.zeros_like(s), s], dim=1)


class Smooth(nn.Module):
    """The gradient source for :class:`Tied`: the same logits without the staircase."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(dim=1) - self.c
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_claims_are_misclassified_beyond_the_noise_not_ties() -> None:
    """A PGD success on an exact tie is refused by the search itself: every claim passes ``verify_points``."""
    from sparank.attacks.base import verify_points

    d, c = 4, 1.0
    g = torch.Generator().manual_seed(3)
    x = (torch.floor(16 * (0.4 + 0.6 * torch.rand(200, d, generator=g, dtype=torch.float64))) / 16).clamp(max=1.0)
    y = torch.ones(len(x), dtype=torch.int64)
    target, source = Tied(c), Smooth(c)
    with torch.no_grad():
        keep = target(x).argmax(dim=1) == 1
    x, y = x[keep], y[keep]
    found = pgd_minimal(target, x, y, eps_max=0.5, gradient_model=source, fgsm_resolution=1 / 64)
    assert int(found.found.sum()) > len(x) // 2
    accepted, _, _ = verify_points(target, found.adversarials[found.found], y[found.found], torch.nonzero(found.found).squeeze(1), 64)
    assert bool(accepted.all())
    with torch.no_grad():
        margin = target(found.adversarials[found.found]) @ torch.tensor([-1.0, 1.0], dtype=torch.float64)
    assert bool((margin < 0).all())  # strictly past the tie
