"""The FGSM measure (PROTOCOL §2) against models whose answer is known, and against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparank.attacks import fgsm_direction, ray_points
from sparank.robustness import CENSORED, CLEAN_WRONG, FOOLED, NO_DIRECTION, RobustnessResult, fgsm_robustness


class CubicMargin(nn.Module):
    """1-D input, two classes; class-0 margin along +x is -c·(t-0.1)(t-0.12)(t-0.3), t = x - x0.

    From x0 the margin is positive, dips below 0 on (0.1, 0.12), recovers, and
    goes negative for good after 0.3: the first crossing is at ε = 0.1.
    """

    def __init__(self, x0: float, c: float = 100.0) -> None:
        super().__init__()
        self.x0, self.c = x0, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x[:, 0] - self.x0
        margin = -self.c * (t - 0.1) * (t - 0.12) * (t - 0.3)
        return torch.stack([margin, torch.zeros_like(margin)], dim=1)


class Affine(nn.Module):
    """Logits ``x @ W.T + b`` in float64, for known closed-form answers."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.double())
        self.bias = nn.Parameter(bias.double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def test_first_crossing_not_any_crossing():
    model = CubicMargin(x0=0.2)
    x = torch.tensor([[0.2]], dtype=torch.float64)
    y = torch.tensor([0])
    # the direction is +1: the margin decreases at t = 0
    assert fgsm_direction(model, x, y).item() == 1.0
    r = fgsm_robustness(model, x, y, eps_max=0.5, resolution=1e-2, tol=1e-9)
    assert r.status.item() == FOOLED
    assert r.eps_lo.item() <= 0.1 <= r.eps_hi.item()
    assert r.eps_hi.item() - r.eps_lo.item() <= 1e-9
    # a bisection over [0, eps_max] would find the crossing at 0.3 instead
    lo, hi = 0.0, 0.5
    for _ in range(60):
        mid = (lo + hi) / 2
        wrong = model(torch.tensor([[0.2 + mid]], dtype=torch.float64)).argmax(1).item() != 0
        lo, hi = (lo, mid) if wrong else (mid, hi)
    assert abs(hi - 0.3) < 1e-9


def test_dip_narrower_than_resolution_is_stepped_over():
    # the dip (0.1, 0.12) lies between scan points 0.0 and 0.15: the first
    # crossing at this resolution is the one at 0.3 (documented behaviour)
    model = CubicMargin(x0=0.2)
    x = torch.tensor([[0.2]], dtype=torch.float64)
    r = fgsm_robustness(model, x, torch.tensor([0]), eps_max=0.45, resolution=0.15, tol=1e-9)
    assert abs(r.eps_hi.item() - 0.3) < 1e-8


def test_affine_closed_form_linf():
    # binary affine model: margin m(ε) = m0 - ε·||w||_1 away from the box faces
    torch.manual_seed(0)
    w = torch.randn(5, dtype=torch.float64)
    weight = torch.stack([w, torch.zeros(5, dtype=torch.float64)])
    bias = torch.tensor([0.3, 0.0], dtype=torch.float64)
    model = Affine(weight, bias)
    x = torch.full((1, 5), 0.5, dtype=torch.float64)
    m0 = (x @ w + 0.3).item()
    label = torch.tensor([0 if m0 > 0 else 1])
    r = fgsm_robustness(model, x, label, eps_max=0.5, resolution=1e-3, tol=1e-10)
    expected = abs(m0) / w.abs().sum().item()
    assert expected < 0.5  # no coordinate reaches the box before the crossing
    assert r.status.item() == FOOLED
    assert r.eps_lo.item() <= expected + 1e-12 and r.eps_hi.item() >= expected - 1e-12
    assert r.eps_hi.item() - expected <= 1e-10


def test_affine_closed_form_l2():
    w = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)
    model = Affine(torch.stack([w, torch.zeros(3, dtype=torch.float64)]), torch.zeros(2, dtype=torch.float64))
    x = torch.full((1, 3), 0.5, dtype=torch.float64)
    m0 = (x @ w).item()
    r = fgsm_robustness(model, x, torch.tensor([0]), norm="l2", eps_max=2.0, resolution=1e-3, tol=1e-10)
    d = r.directions.flatten()
    assert abs(d.norm().item() - 1.0) < 1e-12
    assert torch.allclose(d, -w / w.norm())
    expected = m0 / w.norm().item()
    assert expected < 0.5 / d.abs().max().item()  # before any coordinate reaches the box
    assert abs(r.eps_hi.item() - expected) <= 1e-10


def test_clipping_at_the_box_changes_the_answer():
    # logits (0, w·x + b), label 0: the class-0 margin is -(w·x + b) and d = sign(w) = (-1, -1)
    w = torch.tensor([-2.0, -1.0], dtype=torch.float64)
    model = Affine(torch.stack([torch.zeros(2, dtype=torch.float64), w]), torch.tensor([0.0, 1.5], dtype=torch.float64))
    x = torch.tensor([[1.0, 0.3]], dtype=torch.float64)  # margin 0.8
    r = fgsm_robustness(model, x, torch.tensor([0]), eps_max=0.5, resolution=1e-3, tol=1e-10)
    assert torch.equal(r.directions, torch.tensor([[-1.0, -1.0]], dtype=torch.float64))
    # along d = (-1, -1) the class-1 logit rises by 2 per unit ε in coordinate 0 and 1 in coordinate 1,
    # unclipped the crossing is at 0.8 / 3; clipping at 0 stops coordinate 1 at ε = 0.3
    unclipped = 0.8 / 3
    assert unclipped < 0.3
    assert abs(r.eps_hi.item() - unclipped) < 1e-9
    # now move x so coordinate 1 starts at the lower face: it cannot move, only coordinate 0 counts
    x2 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    m2 = -((x2 @ w).item() + 1.5)  # class-0 margin = 0 - (w·x + b) = 0.5
    r2 = fgsm_robustness(model, x2, torch.tensor([0]), eps_max=0.5, resolution=1e-3, tol=1e-10)
    assert abs(r2.eps_hi.item() - m2 / 2.0) < 1e-9
    assert abs(m2 / 3.0 - r2.eps_hi.item()) > 0.05  # the unclipped formula would be wrong here
    for res in (r, r2):
        pts = ray_points(x if res is r else x2, res.directions, res.eps_hi, (0.0, 1.0))
        assert pts.min() >= 0.0 and pts.max() <= 1.0


def test_clean_wrong_censored_and_no_direction_are_flagged_not_dropped():
    # class 0 wins by 5 - 0.1·(x0 + x1) >= 4.8: never overturned inside the box
    model = Affine(torch.tensor([[-0.1, -0.1], [0.0, 0.0]]), torch.tensor([5.0, 0.0]))
    x = torch.rand(6, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    r = fgsm_robustness(model, x, y, eps_max=0.3, resolution=0.05)
    assert len(r) == 6
    assert torch.equal(r.status, torch.where(y == 0, int(CENSORED), int(CLEAN_WRONG)))
    assert torch.equal(r.eps_hi[y == 1], torch.zeros(3, dtype=torch.float64))
    assert torch.isinf(r.eps_hi[y == 0]).all()
    s = r.summary()
    assert s.clean_wrong_fraction == 0.5 and s.censored_fraction == 0.5 and s.no_direction_fraction == 0.0
    # censored inputs contribute eps_max to the AUC, clean-wrong ones 0
    assert s.auc == pytest.approx(0.5 * 0.3)
    assert s.quantiles["50"] == math.inf

    # a constant model: its input gradient is exactly zero, so the ray never moves: no_direction, not censored
    constant = Affine(torch.zeros(2, 2), torch.tensor([5.0, 0.0]))
    r = fgsm_robustness(constant, x, y, eps_max=0.3, resolution=0.05)
    assert torch.equal(r.status, torch.where(y == 0, int(NO_DIRECTION), int(CLEAN_WRONG)))
    assert (r.directions[y == 0] == 0).all()
    s = r.summary()
    assert s.no_direction_fraction == 0.5 and s.censored_fraction == 0.0 and s.fooled_fraction == 0.0


def test_measure_leaves_inputs_model_and_gradients_alone(digits_mlp, digits):
    x = digits.test_x[:64].clone()
    y = digits.test_y[:64].clone()
    x_before, y_before = x.clone(), y.clone()
    state_before = {k: v.clone() for k, v in digits_mlp.state_dict().items()}
    digits_mlp.zero_grad(set_to_none=True)
    digits_mlp.train()
    fgsm_robustness(digits_mlp, x, y, eps_max=0.3, resolution=0.01)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert digits_mlp.training  # mode restored
    digits_mlp.eval()
    assert all(p.grad is None for p in digits_mlp.parameters())
    assert all(torch.equal(v, state_before[k]) for k, v in digits_mlp.state_dict().items())


def test_brackets_are_verified_by_a_forward_pass(digits_mlp, digits):
    x, y = digits.test_x, digits.test_y
    r = fgsm_robustness(digits_mlp, x, y, eps_max=0.5, resolution=1e-2, tol=1e-6)
    fooled = r.status == FOOLED
    assert fooled.sum() > 0.8 * len(x)
    assert (r.eps_hi[fooled] - r.eps_lo[fooled] <= 1e-6).all()
    assert (r.eps_lo[fooled] < r.eps_hi[fooled]).all()
    # recompute the direction independently: sign of the gradient of CE at the true label
    xg = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(digits_mlp(xg), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    assert torch.equal(r.directions, g.sign())
    with torch.no_grad():
        hi_pts = (x[fooled] + r.eps_hi[fooled].float().view(-1, 1, 1, 1) * g.sign()[fooled]).clamp(0, 1)
        assert (digits_mlp(hi_pts).argmax(1) != y[fooled]).all()
        lo_pts = (x[fooled] + r.eps_lo[fooled].float().view(-1, 1, 1, 1) * g.sign()[fooled]).clamp(0, 1)
        assert (digits_mlp(lo_pts).argmax(1) == y[fooled]).float().mean() > 0.99
        # every scanned point below eps_lo is classified correctly
        for k in range(1, 51):
            eps = k * 1e-2
            below = fooled & (r.eps_lo >= eps)
            pts = (x[below] + eps * g.sign()[below]).clamp(0, 1)
            assert (digits_mlp(pts).argmax(1) == y[below]).all(), eps


def test_agrees_with_a_dense_brute_force_scan(digits_mlp, digits):
    x, y = digits.test_x, digits.test_y
    step = 1e-4
    eps_max = 0.5
    r = fgsm_robustness(digits_mlp, x, y, eps_max=eps_max, resolution=1e-3, tol=1e-6)
    d = r.directions
    # brute force: every point of a grid 10x finer than the resolution, first misclassified one
    first = torch.full((len(x),), math.inf, dtype=torch.float64)
    with torch.no_grad():
        wrong0 = digits_mlp(x).argmax(1) != y
        first[wrong0] = 0.0
        for k in range(1, round(eps_max / step) + 1):
            eps = k * step
            todo = torch.isinf(first)
            if not todo.any():
                break
            pts = (x[todo] + eps * d[todo]).clamp(0, 1)
            hit = digits_mlp(pts).argmax(1) != y[todo]
            idx = torch.nonzero(todo).squeeze(1)[hit]
            first[idx] = eps
    assert torch.equal(torch.isinf(first), r.status == CENSORED)
    assert torch.equal(first == 0, r.status == CLEAN_WRONG)
    fooled = r.status == FOOLED
    # the dense scan's first hit lies in (eps*, eps* + step]
    diff = first[fooled] - r.eps_hi[fooled]
    agree = (diff >= -1e-6) & (diff <= step + 1e-6)
    # a disagreement is only allowed where the dense scan found a dip the coarse scan stepped over
    assert agree.float().mean() >= 0.99
    for i in torch.nonzero(fooled).squeeze(1)[~agree]:
        assert first[i] < r.eps_hi[i]


def test_batch_result_equals_per_input_results(digits_mlp, digits):
    x, y = digits.test_x[:20], digits.test_y[:20]
    whole = fgsm_robustness(digits_mlp, x, y, eps_max=0.5, resolution=1e-2, tol=1e-6)
    for i in range(len(x)):
        one = fgsm_robustness(digits_mlp, x[i : i + 1], y[i : i + 1], eps_max=0.5, resolution=1e-2, tol=1e-6)
        assert one.status.item() == whole.status[i].item()
        # the same first bracket at the resolution; refined ends agree to tol
        assert abs(one.eps_hi.item() - whole.eps_hi[i].item()) <= 1e-6 or one.status.item() != FOOLED


def test_summary_auc_is_the_area_under_the_robust_accuracy_curve(digits_mlp, digits):
    r = fgsm_robustness(digits_mlp, digits.test_x, digits.test_y, eps_max=0.3, resolution=1e-2)
    s = r.summary()
    # independent: integrate A(ε) = #{ε* > ε}/N on a fine grid with the midpoint rule
    n_grid = 30000
    mids = (torch.arange(n_grid, dtype=torch.float64) + 0.5) * (0.3 / n_grid)
    eps_star = r.eps_hi
    area = sum(float((eps_star > e).double().mean()) for e in mids[::10]) * (0.3 / n_grid) * 10
    assert s.auc == pytest.approx(area, abs=2e-4)
    assert s.curve_accuracy[0] == pytest.approx(s.clean_accuracy)
    assert all(a >= b for a, b in zip(s.curve_accuracy, s.curve_accuracy[1:]))
    correct = r.eps_hi[r.status != CLEAN_WRONG]
    assert s.quantiles["50"] == pytest.approx(float(correct.sort().values[(len(correct) - 1) // 2]))
    assert s.quantiles["10"] <= s.quantiles["25"] <= s.quantiles["50"] <= s.quantiles["75"] <= s.quantiles["90"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "l1"}, "norm"),
        ({"eps_max": -1.0}, "eps_max"),
        ({"resolution": 0.9}, "resolution"),
        ({"tol": 0.0}, "tol"),
        ({"bounds": (1.0, 0.0)}, "bounds"),
    ],
)
def test_bad_settings_are_named(kwargs, message, digits_mlp, digits):
    with pytest.raises(ValueError, match=message):
        fgsm_robustness(digits_mlp, digits.test_x[:4], digits.test_y[:4], **kwargs)


def test_inputs_outside_the_box_are_refused(digits_mlp, digits):
    with pytest.raises(ValueError, match="outside bounds"):
        fgsm_robustness(digits_mlp, digits.test_x[:4] * 2 - 0.5, digits.test_y[:4])
    with pytest.raises(ValueError, match="labels"):
        fgsm_robustness(digits_mlp, digits.test_x[:4], digits.test_y[:3])


def test_first_k_inputs_slices_every_per_input_field():
    """RobustnessResult.first(k): every per-input tensor cut to k (a field left whole would mis-align best ε* and its flags)."""
    n, k = 6, 4
    full = RobustnessResult(
        eps_lo=torch.arange(n, dtype=torch.float64), eps_hi=torch.arange(n, dtype=torch.float64) + 0.5,
        status=torch.zeros(n, dtype=torch.int64), labels=torch.arange(n), directions=torch.ones(n, 3), norm="linf",
        eps_max=0.5, resolution=1e-2, tol=1e-6, distance=torch.arange(n, dtype=torch.float64), adversarials=torch.zeros(n, 3),
        certified=torch.tensor([True, False] * 3),
    )  # fmt: skip
    head = full.first(k)
    for name in ("eps_lo", "eps_hi", "status", "labels", "directions", "distance", "adversarials", "certified"):
        assert torch.equal(getattr(head, name), getattr(full, name)[:k]), name
    head.eps_hi[0] = 99.0
    assert full.eps_hi[0] == 0.5  # a copy, not a view
    assert (head.norm, head.eps_max, head.tol) == (full.norm, full.eps_max, full.tol)


def test_lean_drops_only_the_directions_and_adversarial_points(digits_mlp, digits):
    """RobustnessResult.lean(): what a store keeps; every other field (ε*, statuses, certified flags, settings) unchanged."""
    import dataclasses

    full = fgsm_robustness(digits_mlp, digits.test_x[:12], digits.test_y[:12], certify=True)
    full = dataclasses.replace(full, adversarials=digits.test_x[:12].clone())
    assert full.directions is not None and full.adversarials is not None
    lean = full.lean()
    assert lean.directions is None and lean.adversarials is None
    for f in dataclasses.fields(full):
        if f.name in ("directions", "adversarials"):
            continue
        a, b = getattr(full, f.name), getattr(lean, f.name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, f.name


def test_a_tol_at_least_the_resolution_gives_the_first_misclassified_grid_point(digits_mlp, digits):
    """``tol >= resolution``: nothing is refined; ε* is the first grid point k·h whose point is misclassified (ART's minimal
    FGSM value), checked against a forward pass of every grid point of every ray."""
    x, y, h = digits.test_x[:80], digits.test_y[:80], 0.01
    r = fgsm_robustness(digits_mlp, x, y, eps_max=0.5, resolution=h, tol=0.05)
    d = fgsm_direction(digits_mlp, x, y)
    grid = torch.arange(1, 51, dtype=torch.float64) * h
    margins = []
    with torch.no_grad():
        for e in grid:
            z = digits_mlp(ray_points(x, d, torch.full((len(x),), float(e)), (0.0, 1.0)))
            own = z.gather(1, y[:, None]).squeeze(1)
            margins.append(own - z.scatter(1, y[:, None], -math.inf).amax(dim=1))
    margin = torch.stack(margins, dim=1)
    wrong = margin < 0  # a tie (margin 0) is in no row kept by `clear`
    clear = (margin.abs() > 1e-4).all(dim=1)  # rows with a grid point within float noise of the boundary are left out
    assert int(clear.sum()) >= 70
    fooled = (r.status == FOOLED) & clear
    assert bool(fooled.any())
    first = grid[wrong.int().argmax(dim=1)]
    assert torch.allclose(r.eps_hi[fooled], first[fooled], rtol=0, atol=1e-12)
    assert bool((r.eps_hi[fooled] - r.eps_lo[fooled] <= h + 1e-12).all())
    assert not bool(wrong[(r.status == CENSORED) & clear].any())
