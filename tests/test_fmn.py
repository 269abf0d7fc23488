"""FMN (Pintor et al. 2021) against exact minimal perturbations of affine models, FGSM on a trained MLP, and a forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparank.attacks.base import ball_tolerance, distances
from sparank.attacks.fgsm import FGSM
from sparank.attacks.fmn import FMN
from sparank.linear import boxed_minimal_perturbation, unboxed_minimal_perturbation
from sparank.robustness import CENSORED, FOOLED, NO_DIRECTION, measure

#: the relative tolerance FMN must reach (its ε schedule ends at γ = 0.001 per step)
REL_TOL = 0.01


def affine(classes: int, dim: int = 64, n: int = 200, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 ``Flatten → Linear(dim, classes)`` model and ``n`` inputs in [0, 1] labelled as it predicts them."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(dim, classes)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, dim, generator=g, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(classes, generator=g, dtype=torch.float64))
        x = torch.rand(n, dim, generator=g, dtype=torch.float64)
        y = model(x).argmax(dim=1)  # correctly classified by construction
    return model.eval(), x, y


def weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return model[1].weight.detach(), model[1].bias.detach()


def check_adversarials(model, x, y, result, bounds, norm):
    """Independently: every fooled input's returned point is misclassified by a forward pass, in the box, within eps_hi."""
    fooled = result.status == FOOLED
    adv = result.adversarials[fooled]
    with torch.no_grad():
        assert (model(adv).argmax(dim=1) != y[fooled]).all()
    assert (adv >= bounds[0]).all() and (adv <= bounds[1]).all()
    dist = distances(adv, x[fooled], norm)
    slack = ball_tolerance(x.dtype, bounds, result.eps_max, norm, x[0].numel())
    assert (dist <= result.eps_hi[fooled] + slack).all()
    assert (dist > 0).all()
    assert torch.equal(result.distance[fooled], dist)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_binary_affine_reaches_the_exact_minimum(norm):
    # L∞ inside the box [0, 1]: the exact boxed minimum; L2 in a box too wide to matter: the closed form
    model, x, y = affine(classes=2)
    w, b = weights(model)
    bounds = (0.0, 1.0) if norm == "linf" else (-50.0, 50.0)
    if norm == "linf":
        best = boxed_minimal_perturbation(w, b, x, y, bounds=bounds)
    else:
        best = unboxed_minimal_perturbation(w, b, x, y, norm="l2")
    eps_max = 5.0
    reachable = best < 0.9 * eps_max
    assert reachable.double().mean() > 0.8  # the test has something to say
    r = measure(FMN(), model, x, y, bounds=bounds, norm=norm, eps_max=eps_max, keep_adversarials=True)
    assert (r.status[reachable] == FOOLED).all()
    assert r.rejected == 0
    check_adversarials(model, x, y, r, bounds, norm)
    slack = ball_tolerance(x.dtype, bounds, eps_max, norm, x.shape[1])
    fooled = r.status == FOOLED
    # never below the optimum (it is the infimum: every adversarial is at least that far)
    assert (r.eps_hi[fooled] >= best[fooled] - slack).all()
    assert (r.distance[fooled] >= best[fooled] - slack).all()
    close = r.eps_hi[reachable] <= best[reachable] * (1 + REL_TOL)
    assert close.double().mean() >= 0.95, float(close.double().mean())  # measured: 1.0


def class_minimum(w, b, x, y, target, norm, bounds):
    """Per input, the minimal perturbation that makes class ``target[i]`` reach ``y[i]``'s logit (that pair alone)."""
    out = torch.empty(len(x), dtype=torch.float64)
    for i in range(len(x)):
        pair = [int(y[i]), int(target[i])]
        label = torch.tensor([0])  # y is row 0 of the pair: a tie is not a flip, as in the full model
        if norm == "linf":
            out[i] = boxed_minimal_perturbation(w[pair], b[pair], x[i : i + 1], label, bounds=bounds)[0]
        else:
            out[i] = unboxed_minimal_perturbation(w[pair], b[pair], x[i : i + 1], label, norm="l2")[0]
    return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_multiclass_affine_reaches_the_minimum_of_the_class_it_flips_to(norm):
    # FMN follows the gradient of the margin against the best other class: it is a local method, and
    # with 10 classes it sometimes settles on the boundary of a class that is not the nearest one
    model, x, y = affine(classes=10, n=300)
    w, b = weights(model)
    bounds = (0.0, 1.0) if norm == "linf" else (-50.0, 50.0)
    if norm == "linf":
        best = boxed_minimal_perturbation(w, b, x, y, bounds=bounds)
    else:
        best = unboxed_minimal_perturbation(w, b, x, y, norm="l2")
    eps_max = 5.0
    r = measure(FMN(), model, x, y, bounds=bounds, norm=norm, eps_max=eps_max, keep_adversarials=True)
    fooled = r.status == FOOLED
    assert fooled.all() and (best < eps_max).all()
    check_adversarials(model, x, y, r, bounds, norm)
    slack = ball_tolerance(x.dtype, bounds, eps_max, norm, x.shape[1])
    assert (r.eps_hi >= best - slack).all()
    # against the optimum over all classes: measured 0.90 (L∞) and 0.93 (L2) within 1 %
    assert (r.eps_hi <= best * (1 + REL_TOL)).double().mean() >= 0.85
    # against the optimum for the class it reached, FMN converges: measured 1.0
    with torch.no_grad():
        reached = model(r.adversarials).argmax(dim=1)
    own = class_minimum(w, b, x, y, reached, norm, bounds)
    assert (r.eps_hi >= own - slack).all()
    close = r.eps_hi <= own * (1 + REL_TOL)
    assert close.double().mean() >= 0.95, float(close.double().mean())


class Ball(nn.Module):
    """Two classes, float64: class 0 inside the Euclidean ball ``||x − c|| < r`` (margin ``r² − ||x − c||²``, curved)."""

    def __init__(self, center: torch.Tensor, radius: float) -> None:
        super().__init__()
        self.register_buffer("center", center)
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = self.radius**2 - ((x.flatten(1) - self.center) ** 2).sum(dim=1)
        return torch.stack([margin, torch.zeros_like(margin)], dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_curved_boundary_reaches_the_exact_minimum(norm):
    # the linear estimate overshoots a curved boundary, so here the ε schedule (γ) has to close in
    g = torch.Generator().manual_seed(1)
    dim, n, radius = 16, 200, 1.0
    u = torch.randn(n, dim, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=g, dtype=torch.float64) * 0.9 * radius
    y = torch.zeros(n, dtype=torch.int64)
    if norm == "l2":
        best = radius - u.norm(dim=1)  # straight out along u
    else:  # the corner moving every coordinate away from c by e: sum (|u_i| + e)^2 = r^2
        s1, s2 = u.abs().sum(dim=1), (u**2).sum(dim=1)
        best = (-s1 + torch.sqrt(s1**2 - dim * (s2 - radius**2))) / dim
    model = Ball(torch.zeros(dim, dtype=torch.float64), radius)
    bounds = (-50.0, 50.0)
    r = measure(FMN(), model, u, y, bounds=bounds, norm=norm, eps_max=5.0, keep_adversarials=True)
    assert (r.status == FOOLED).all()
    check_adversarials(model, u, y, r, bounds, norm)
    rel = r.eps_hi / best - 1
    assert (rel >= -1e-12).all()
    # measured: 95 % within 5e-5, all within 1e-3 (with gamma_final = 0.01 instead: 95 % within 1.8e-3)
    assert (rel <= 5e-4).double().mean() >= 0.95
    assert (rel <= REL_TOL).all()


@pytest.mark.parametrize(("norm", "eps_max", "tol"), [("linf", 0.5, 1e-6), ("l2", 8.0, 1e-5)])
def test_digits_mlp_no_larger_than_fgsm_on_most_inputs(digits_mlp, digits, norm, eps_max, tol):
    x, y = digits.test_x[:300], digits.test_y[:300]
    fgsm = measure(FGSM(tol=tol), digits_mlp, x, y, norm=norm, eps_max=eps_max)
    r = measure(FMN(), digits_mlp, x, y, norm=norm, eps_max=eps_max, keep_adversarials=True)
    check_adversarials(digits_mlp, x, y, r, (0.0, 1.0), norm)
    assert r.rejected == 0
    by_fgsm = fgsm.status == FOOLED
    assert by_fgsm.double().mean() > 0.7
    assert (r.status[by_fgsm] == FOOLED).double().mean() >= 0.98  # measured: all
    # measured on 500 inputs: FMN <= FGSM on 92 % (L∞) and 98 % (L2) of them; the others are local optima
    no_larger = r.eps_hi[by_fgsm] <= fgsm.eps_hi[by_fgsm]
    assert no_larger.double().mean() >= 0.85, float(no_larger.double().mean())
    assert r.eps_hi[by_fgsm & (r.status == FOOLED)].mean() < fgsm.eps_hi[by_fgsm & (r.status == FOOLED)].mean()


def test_the_attack_claims_the_exact_distance_of_misclassified_points(digits_mlp, digits):
    # run directly, without the measure's re-check: found points are argmax-misclassified, eps is their distance
    x, y = digits.test_x[:100], digits.test_y[:100]
    with torch.no_grad():
        keep = digits_mlp(x).argmax(dim=1) == y
    x, y = x[keep], y[keep]
    for norm in ("linf", "l2"):
        found = FMN(steps=30).run(digits_mlp, x, y, bounds=(0.0, 1.0), norm=norm, eps_max=10.0, batch_size=32)
        assert found.found.any()
        assert found.eps.dtype == torch.float64
        assert torch.equal(found.eps[found.found], distances(found.adversarials, x, norm)[found.found])
        assert torch.isinf(found.eps[~found.found]).all()
        assert (found.eps_lo == 0).all()
        with torch.no_grad():
            assert (digits_mlp(found.adversarials[found.found]).argmax(dim=1) != y[found.found]).all()
        assert found.forward_rows == 31 * len(x)


def test_never_reports_distance_zero():
    # an input the model already misclassifies (never passed by the measure): x itself is not a result
    model, x, y = affine(classes=3, n=20)
    wrong = (y + 1) % 3
    found = FMN(steps=20).run(model, x, wrong, bounds=(0.0, 1.0), norm="linf", eps_max=1.0, batch_size=8)
    assert (found.eps > 0).all()
    assert (distances(found.adversarials, x, "linf")[found.found] > 0).all()


def test_inputs_model_and_gradients_untouched(digits_mlp, digits):
    x, y = digits.test_x[:64].clone(), digits.test_y[:64].clone()
    x_before, y_before = x.clone(), y.clone()
    state = {k: v.clone() for k, v in digits_mlp.state_dict().items()}
    for p in digits_mlp.parameters():
        p.grad = torch.full_like(p, 0.5)
    digits_mlp.train()
    measure(FMN(steps=20), digits_mlp, x, y, norm="l2", eps_max=5.0)
    assert digits_mlp.training
    digits_mlp.eval()
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in digits_mlp.parameters())
    assert all(torch.equal(v, state[k]) for k, v in digits_mlp.state_dict().items())
    digits_mlp.zero_grad(set_to_none=True)


def test_reproducible_and_batch_size_does_not_matter(digits_mlp, digits):
    x, y = digits.test_x[:80], digits.test_y[:80]
    a = measure(FMN(steps=40), digits_mlp, x, y, norm="linf", eps_max=0.5)
    b = measure(FMN(steps=40), digits_mlp, x, y, norm="linf", eps_max=0.5)
    assert torch.equal(a.eps_hi, b.eps_hi) and torch.equal(a.status, b.status)
    # float64 affine model: batches of 7 and one batch give the same search
    model, xa, ya = affine(classes=10, n=40, seed=3)
    calls = []
    one = measure(FMN(steps=40), model, xa, ya, norm="l2", eps_max=5.0, batch_size=7, progress=lambda d, n: calls.append((d, n)))
    whole = measure(FMN(steps=40), model, xa, ya, norm="l2", eps_max=5.0, batch_size=256)
    assert torch.equal(one.status, whole.status)
    assert torch.allclose(one.eps_hi, whole.eps_hi, rtol=1e-9, atol=0)
    assert calls[-1] == (40, 40) and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))


def test_eps_max_caps_the_search():
    model, x, y = affine(classes=2, n=100)
    best = boxed_minimal_perturbation(*weights(model), x, y, bounds=(0.0, 1.0))
    eps_max = float(best.median())
    r = measure(FMN(), model, x, y, norm="linf", eps_max=eps_max)
    assert (r.eps_hi[r.status == FOOLED] <= eps_max).all()
    assert (r.status[best > eps_max] == CENSORED).all()
    assert (r.status[best < 0.95 * eps_max] == FOOLED).all()


class DeadBelowOne(nn.Module):
    """Two classes, float64: ``s = relu(x_1 + x_2 − 1)``, logits ``(0.5 − s, s)``; flat (zero gradient) where ``x_1 + x_2 < 1``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(x.flatten(1).sum(dim=1) - 1.0)
        return torch.stack([0.5 - s, s], dim=1)


def test_zero_gradient_is_no_direction_and_a_live_input_is_searched():
    x = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.6, 0.6]], dtype=torch.float64)  # sums 0.3, 0.7 (dead), 1.2 (live)
    y = torch.zeros(3, dtype=torch.int64)
    r = measure(FMN(steps=30), DeadBelowOne(), x, y, norm="linf", eps_max=0.5)
    assert r.status.tolist() == [NO_DIRECTION, NO_DIRECTION, FOOLED]
    # the live one: both coordinates up by e gives s = 0.2 + 2e, which passes 0.5 − s past e = 0.025
    assert 0.025 <= r.eps_hi[2].item() <= 0.025 * (1 + REL_TOL)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"alpha_init": 0.0}, "alpha_init"),
        ({"alpha_final": 2.0}, "alpha_final"),
        ({"gamma_init": 1.0}, "gamma_init"),
        ({"gamma_final": 0.1}, "gamma_final"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FMN(**kwargs)


def test_settings_are_recorded():
    assert FMN().settings() == {
        "attack": "fmn",
        "steps": 100,
        "alpha_init": 1.0,
        "alpha_final": 0.01,
        "gamma_init": 0.05,
        "gamma_final": 0.001,
        "refine": 30,
    }
