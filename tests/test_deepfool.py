"""DeepFool (Moosavi-Dezfooli et al. 2016) against closed forms: affine models, a circle, and forward passes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sparank.attacks.base import Bounds
from sparank.attacks.deepfool import DeepFool, rho_adv
from sparank.attacks.fgsm import FGSM
from sparank.linear import boxed_minimal_perturbation, unboxed_minimal_perturbation
from sparank.robustness import CENSORED, CLEAN_WRONG, FOOLED, NO_DIRECTION, measure

WIDE = (-50.0, 50.0)  # a box that does not bind for the affine models below


class Affine(nn.Module):
    """Logits ``x @ W.T + b`` in float64, for known closed-form answers."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.double())
        self.bias = nn.Parameter(bias.double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


class Circle(nn.Module):
    """Two classes in 2-D: class 0 outside the unit circle (logits ``(||x||² − 1, 0)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = (x * x).sum(dim=1) - 1.0
        return torch.stack([f, torch.zeros_like(f)], dim=1)


def random_affine(k: int, d: int, n: int, seed: int = 0) -> tuple[Affine, torch.Tensor, torch.Tensor]:
    """A float64 affine model, ``n`` inputs in [0, 1]^d and the model's own predictions as labels."""
    g = torch.Generator().manual_seed(seed)
    model = Affine(torch.randn(k, d, generator=g), torch.randn(k, generator=g)).eval()
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


def norm_of(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.double().flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_first_step_lands_on_the_closest_boundary_of_an_affine_model(norm):
    model, x, y = random_affine(k=6, d=20, n=120)
    found = DeepFool(overshoot=0.0, steps=1).run(model, x, y, bounds=Bounds(*WIDE), norm=norm, eps_max=100.0, batch_size=32)
    w, b = model.weight.detach(), model.bias.detach()
    optimum = unboxed_minimal_perturbation(w, b, x, y, norm=norm)
    dist = norm_of(found.adversarials - x, norm)
    torch.testing.assert_close(dist, optimum, rtol=1e-9, atol=0.0)
    # on the boundary: the nearest competitor by hand (margin / dual norm) ties with y, no class is above
    with torch.no_grad():
        z0, z = model(x), model(found.adversarials)
    diff = w[y].unsqueeze(1) - w.unsqueeze(0)  # (N, K, D)
    dual = diff.abs().sum(2) if norm == "linf" else diff.norm(dim=2)
    hand = ((z0.gather(1, y[:, None]) - z0) / dual).scatter(1, y[:, None], math.inf)
    nearest = hand.argmin(dim=1)
    scale = z.abs().amax(dim=1)
    assert bool(((z.gather(1, y[:, None]) - z.gather(1, nearest[:, None])).squeeze(1).abs() <= 1e-12 * scale).all())
    assert bool((z.amax(dim=1) - z.gather(1, y[:, None]).squeeze(1) <= 1e-12 * scale).all())
    # the step has the paper's form: L∞ moves every coordinate by the same amount, L2 along w_l − w_y
    delta = found.adversarials - x
    step_dir = (w[nearest] - w[y]).double()
    if norm == "linf":
        torch.testing.assert_close(delta, optimum[:, None] * step_dir.sign(), rtol=1e-9, atol=1e-12)
    else:
        torch.testing.assert_close(delta, optimum[:, None] * step_dir / step_dir.norm(dim=1, keepdim=True), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_default_overshoot_gives_one_point_two_percent_past_the_optimum_of_a_binary_affine_model(norm):
    model, x, y = random_affine(k=2, d=15, n=80, seed=1)
    attack = DeepFool()
    assert attack.overshoot == 0.02
    r = measure(attack, model, x, y, bounds=WIDE, norm=norm, eps_max=100.0, keep_adversarials=True)
    optimum = unboxed_minimal_perturbation(model.weight.detach(), model.bias.detach(), x, y, norm=norm)
    assert bool((r.status == FOOLED).all()) and r.rejected == 0
    torch.testing.assert_close(r.distance, 1.02 * optimum, rtol=1e-9, atol=0.0)
    with torch.no_grad():
        assert bool((model(r.adversarials).argmax(dim=1) != y).all())
    # one linearisation step suffices for an affine model: steps=1 gives the same points
    one = measure(DeepFool(steps=1), model, x, y, bounds=WIDE, norm=norm, eps_max=100.0, keep_adversarials=True)
    torch.testing.assert_close(one.adversarials, r.adversarials, rtol=0.0, atol=0.0)


def test_it_stops_as_soon_as_misclassified():
    model, x, y = random_affine(k=4, d=10, n=50, seed=2)
    found = DeepFool(candidates=None).run(model, x, y, bounds=Bounds(*WIDE), norm="l2", eps_max=100.0, batch_size=16)
    assert bool(found.found.all())
    # a check, one step with gradients (3 candidates per input), a check that finds them all misclassified
    assert found.forward_rows == len(x) + len(x) * 3 + len(x)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_iterates_on_a_curved_boundary(norm):
    """Outside the unit circle, each linearised step falls short (Newton from above): it needs several steps."""
    model = Circle()
    if norm == "linf":  # on an axis the L∞ step is along the axis too, and the L∞ distance to the disc is s − 1
        x = torch.tensor([[3.0, 0.0], [0.0, -2.0], [1.5, 0.0]], dtype=torch.float64)
    else:
        g = torch.Generator().manual_seed(3)
        u = torch.randn(20, 2, generator=g, dtype=torch.float64)
        x = u / u.norm(dim=1, keepdim=True) * (1.1 + 3 * torch.rand(20, 1, generator=g, dtype=torch.float64))
    y = torch.zeros(len(x), dtype=torch.int64)
    optimum = norm_of(x, "l2") - 1.0
    r = measure(DeepFool(), model, x, y, bounds=(-10.0, 10.0), norm=norm, eps_max=10.0, keep_adversarials=True)
    assert bool((r.status == FOOLED).all())
    assert bool((r.distance >= optimum * (1 - 1e-12)).all()) and bool((r.distance <= 1.02 * optimum * (1 + 1e-12)).all())
    with torch.no_grad():
        assert bool((model(r.adversarials).argmax(dim=1) == 1).all())
    one = measure(DeepFool(steps=1), model, x[:1], y[:1], bounds=(-10.0, 10.0), norm=norm, eps_max=10.0)
    assert int(one.status[0]) == CENSORED  # 3 → 3 − 1.02·4/3 = 1.64: still outside after one step


def test_candidates_are_the_top_classes_by_clean_logit():
    # y = 0; class 1 has the second logit, class 2 the nearer boundary: distances 1 and 0.5
    model = Affine(torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]]), torch.tensor([0.0, -1.0, -5.0]))
    x = torch.zeros(1, 2, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.int64)
    for norm in ("l2", "linf"):
        for candidates, expected in ((2, 1.0), (3, 0.5), (None, 0.5), (10, 0.5)):
            found = DeepFool(overshoot=0.0, steps=1, candidates=candidates).run(
                model, x, y, bounds=Bounds(*WIDE), norm=norm, eps_max=10.0, batch_size=4
            )
            assert norm_of(found.adversarials - x, norm).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_clean_wrong_and_censored_inputs_and_rho_adv(norm):
    model, x, y = random_affine(k=5, d=12, n=60, seed=4)
    y = y.clone()
    y[:7] = (y[:7] + 1) % 5  # clean-wrong
    w, b = model.weight.detach(), model.bias.detach()
    optimum = unboxed_minimal_perturbation(w, b, x, y, norm=norm)
    eps_max = float(np.quantile((1.02 * optimum[7:]).numpy(), 0.7))  # about 30 % censored
    r = measure(DeepFool(), model, x, y, bounds=WIDE, norm=norm, eps_max=eps_max, keep_adversarials=True)
    assert bool((r.status[:7] == CLEAN_WRONG).all())
    assert bool((r.eps_hi[:7] == 0).all()) and bool((r.distance[:7] == 0).all())
    expected_fooled = 1.02 * optimum[7:] <= eps_max
    assert torch.equal(r.status[7:] == FOOLED, expected_fooled)
    assert bool((r.status[7:][~expected_fooled] == CENSORED).all())
    # ρ_adv by hand: mean ||r||/||x|| over the fooled inputs only (the closed-form distances, numpy norms)
    xs = x.numpy()[7:][expected_fooled.numpy()]
    sizes = np.abs(xs).max(axis=1) if norm == "linf" else np.linalg.norm(xs, axis=1)
    hand = float(np.mean((1.02 * optimum[7:][expected_fooled]).numpy() / sizes))
    assert rho_adv(r, x) == pytest.approx(hand, rel=1e-9)
    # counting the clean-wrong inputs as 0 (torchattacks #51) would give a smaller, different number
    buggy = hand * len(sizes) / (len(sizes) + 7)
    assert rho_adv(r, x) > 1.1 * buggy


def test_rho_adv_edge_cases():
    model, x, y = random_affine(k=3, d=4, n=5, seed=5)
    r = measure(DeepFool(), model, x, y, bounds=WIDE, norm="l2", eps_max=1e-9)  # nothing within 1e-9
    assert math.isnan(rho_adv(r, x))
    with pytest.raises(ValueError, match="inputs must be the result's 5 inputs"):
        rho_adv(r, x[:3])
    zero = torch.zeros(1, 4, dtype=torch.float64)
    label = model(zero).argmax(dim=1).detach()
    r0 = measure(DeepFool(), model, zero, label, bounds=WIDE, norm="l2", eps_max=100.0)
    with pytest.raises(ValueError, match="input 0 is all zeros"):
        rho_adv(r0, zero)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_every_adversarial_on_the_digits_mlp_passes_a_forward_pass(digits_mlp, digits, norm):
    x, y = digits.test_x[:120], digits.test_y[:120]
    eps_max = 8.0 if norm == "l2" else 1.0
    r = measure(DeepFool(), digits_mlp, x, y, norm=norm, eps_max=eps_max, keep_adversarials=True)
    fooled = r.status == FOOLED
    assert float(fooled.double().mean()) > 0.9  # unbounded-budget DeepFool fools nearly every input
    adv, xf, yf = r.adversarials[fooled], x[fooled], y[fooled]
    with torch.no_grad():
        assert bool((digits_mlp(adv).argmax(dim=1) != yf).all())
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    dist = norm_of(adv.double() - xf.double(), norm)
    torch.testing.assert_close(dist, r.distance[fooled], rtol=0.0, atol=0.0)
    assert bool((dist <= r.eps_hi[fooled] + 1e-5).all())
    # a minimal-norm attack should mostly beat the single FGSM ray in its own norm
    fgsm = measure(FGSM(resolution=eps_max / 200, tol=1e-5), digits_mlp, x, y, norm=norm, eps_max=eps_max)
    both = fooled & (fgsm.status == FOOLED)
    assert float((r.eps_hi[both] <= fgsm.eps_hi[both]).double().mean()) > 0.8


def boxed_l2_optimum(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Exact minimal L2 perturbation of ``W x + b`` inside the box, per input: (distance, perturbation) by bisection.

    For one competitor ``k`` (``a = w_y − w_k``, margin ``m``) the KKT point of ``min ||δ||₂`` subject to
    ``a·δ <= −m`` and ``lo <= x + δ <= hi`` is ``δ(λ) = clip(−λ a, lo − x, hi − x)`` with the smallest
    ``λ >= 0`` reaching the constraint (``a·δ(λ)`` falls monotonically in ``λ``); then the best ``k``.
    """
    z = x @ w.T + b
    best = torch.full((len(x),), math.inf, dtype=torch.float64)
    steps = torch.zeros_like(x)
    for i in range(len(x)):
        for k in range(len(w)):
            if k == int(y[i]):
                continue
            a, m = w[y[i]] - w[k], float(z[i, y[i]] - z[i, k])
            low, room = lo - x[i], hi - x[i]
            if float((a * torch.clamp(-1e9 * a, low, room)).sum()) > -m:
                continue  # the box cannot reach this boundary
            lam_lo, lam_hi = 0.0, 1.0
            while float((a * torch.clamp(-lam_hi * a, low, room)).sum()) > -m:
                lam_hi *= 2
            for _ in range(200):
                mid = 0.5 * (lam_lo + lam_hi)
                lam_lo, lam_hi = (mid, lam_hi) if float((a * torch.clamp(-mid * a, low, room)).sum()) > -m else (lam_lo, mid)
            delta = torch.clamp(-lam_hi * a, low, room)
            if float(delta.norm()) < best[i]:
                best[i], steps[i] = float(delta.norm()), delta
    return best, steps


def inputs_on_the_box(n: int, d: int, seed: int) -> torch.Tensor:
    """Inputs in [0, 1]^d with about a third of the coordinates at 0, a sixth at 1, the rest in [0.4, 0.6]."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, d, generator=g, dtype=torch.float64)
    mid = 0.4 + 0.2 * torch.rand(n, d, generator=g, dtype=torch.float64)
    return torch.where(u < 1 / 3, 0.0, torch.where(u < 1 / 2, 1.0, mid))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_face_step_is_the_boxed_optimum_of_an_affine_model_when_only_bound_coordinates_bind(norm):
    g = torch.Generator().manual_seed(8)
    model = Affine(torch.randn(4, 10, generator=g), 0.3 * torch.randn(4, generator=g)).eval()
    x = inputs_on_the_box(200, 10, seed=9)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    w, b = model.weight.detach(), model.bias.detach()
    if norm == "linf":
        optimum = boxed_minimal_perturbation(w, b, x, y, bounds=(0.0, 1.0))
        free_ok = optimum < 0.4  # the step moves a free coordinate by at most the distance: it stays inside
    else:
        optimum, delta = boxed_l2_optimum(w, b, x, y, 0.0, 1.0)
        free = (x > 0) & (x < 1)
        free_ok = torch.isfinite(optimum) & ~(free & (delta.abs() >= 0.4)).any(dim=1)
    assert int(free_ok.sum()) >= 30
    xs, ys = x[free_ok], y[free_ok]
    found = DeepFool(overshoot=0.0, steps=1).run(model, xs, ys, bounds=Bounds(0.0, 1.0), norm=norm, eps_max=10.0, batch_size=64)
    torch.testing.assert_close(norm_of(found.adversarials - xs, norm), optimum[free_ok], rtol=1e-9, atol=0.0)
    with torch.no_grad():
        z = model(found.adversarials)
    gap = z.amax(dim=1) - z.gather(1, ys[:, None]).squeeze(1)  # 0 on the boundary
    assert bool((gap.abs() <= 1e-12 * z.abs().amax(dim=1)).all())
    # the clip alone: the paper's unrestricted step, clipped, falls short of the boundary where the box binds
    clip = DeepFool(overshoot=0.0, steps=1, box="clip").run(model, xs, ys, bounds=Bounds(0.0, 1.0), norm=norm, eps_max=10.0, batch_size=64)
    z0 = model(xs).detach()
    diff = w.unsqueeze(0) - w[ys].unsqueeze(1)  # (n, K, D): w_k − w_y
    dual = diff.abs().sum(2) if norm == "linf" else diff.norm(dim=2)
    dist = ((z0 - z0.gather(1, ys[:, None])).abs() / dual).scatter(1, ys[:, None], math.inf)
    wl = diff[torch.arange(len(xs)), dist.argmin(dim=1)]
    step = dist.amin(dim=1)[:, None] * (wl.sign() if norm == "linf" else wl / wl.norm(dim=1, keepdim=True))
    torch.testing.assert_close(clip.adversarials, (xs + step).clamp(0.0, 1.0), rtol=1e-12, atol=1e-12)


def test_face_mode_fools_every_input_of_the_digits_mlp_in_a_few_steps(digits_mlp, digits):
    x, y = digits.test_x[:200], digits.test_y[:200]
    correct = digits_mlp(x).argmax(dim=1) == y
    for norm in ("l2", "linf"):
        found = DeepFool(steps=5).run(digits_mlp, x[correct], y[correct], bounds=Bounds(0.0, 1.0), norm=norm, eps_max=8.0, batch_size=256)
        assert bool(found.found.all())  # 100 % success at an unbounded budget: no false masking flag


def test_a_binding_box_keeps_points_inside_and_never_beats_the_boxed_optimum():
    model, x, y = random_affine(k=4, d=8, n=60, seed=6)
    r = measure(DeepFool(), model, x, y, bounds=(0.0, 1.0), norm="linf", eps_max=1.0, keep_adversarials=True)
    fooled = r.status == FOOLED
    assert int(fooled.sum()) > 20
    assert float(r.adversarials.min()) >= 0.0 and float(r.adversarials.max()) <= 1.0
    boxed = boxed_minimal_perturbation(model.weight.detach(), model.bias.detach(), x, y, bounds=(0.0, 1.0))
    assert bool((r.distance[fooled] >= boxed[fooled] * (1 - 1e-9)).all())


def test_inputs_and_gradients_are_left_unchanged(digits_mlp, digits):
    x, y = digits.test_x[:40].clone(), digits.test_y[:40]
    before = x.clone()
    params = list(digits_mlp.parameters())
    assert all(p.grad is None for p in params)
    x.requires_grad_(False)
    DeepFool().run(digits_mlp.eval(), x, y, bounds=Bounds(0.0, 1.0), norm="l2", eps_max=8.0, batch_size=16)
    assert torch.equal(x, before) and x.grad is None
    assert all(p.grad is None for p in params)
    marker = [torch.full_like(p, 3.0) for p in params]
    for p, m in zip(params, marker, strict=True):
        p.grad = m.clone()
    try:
        measure(DeepFool(), digits_mlp, x, y, norm="linf", eps_max=1.0)
        assert all(torch.equal(p.grad, m) for p, m in zip(params, marker, strict=True))
    finally:
        for p in params:
            p.grad = None


def test_batching_does_not_change_the_result():
    model, x, y = random_affine(k=5, d=10, n=30, seed=7)
    one = DeepFool().run(model, x, y, bounds=Bounds(*WIDE), norm="linf", eps_max=100.0, batch_size=1)
    many = DeepFool().run(model, x, y, bounds=Bounds(*WIDE), norm="linf", eps_max=100.0, batch_size=64)
    torch.testing.assert_close(one.eps, many.eps, rtol=1e-12, atol=0.0)


def test_no_direction_when_every_gradient_difference_is_zero():
    model = Affine(torch.zeros(3, 4), torch.tensor([1.0, 0.0, -1.0]))
    x = torch.rand(5, 4, dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.int64)
    r = measure(DeepFool(), model, x, y, bounds=(0.0, 1.0), norm="l2", eps_max=1.0)
    assert bool((r.status == NO_DIRECTION).all())
    assert bool(torch.isinf(r.eps_hi).all())


def test_progress_reaches_the_total(digits_mlp, digits):
    seen = []
    measure(
        DeepFool(), digits_mlp, digits.test_x[:30], digits.test_y[:30], norm="l2", eps_max=8.0, progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (30, 30)
    assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 2.5}, "steps must be an integer >= 1"),
        ({"candidates": 1}, "candidates must be an integer >= 2"),
        ({"candidates": True}, "candidates must be an integer >= 2"),
        ({"overshoot": -0.1}, "overshoot must be a finite number >= 0"),
        ({"overshoot": math.inf}, "overshoot must be a finite number >= 0"),
        ({"box": "project"}, "box must be 'face'"),
    ],
)
def test_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepFool(**kwargs)


def test_settings_are_recorded():
    assert DeepFool().settings() == {"attack": "deepfool", "steps": 50, "candidates": 10, "overshoot": 0.02, "box": "face", "refine": 0}
    with pytest.raises(TypeError):
        DeepFool(50)  # keyword-only
