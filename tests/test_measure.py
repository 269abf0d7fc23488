"""The one attack convention: measure() verifies every claim, the FGSM ray as an attack, transfer, random rays,
best ε* over attacks and the gradient-masking flags, on models whose answers are known."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from sparank.attacks import ATTACKS, FGSM, Found, MinimalAttack, RandomRay, Status, Transfer, distances, ray_points
from sparank.linear import boxed_minimal_perturbation
from sparank.robustness import best_of, fgsm_robustness, masking_flags, measure


def affine(d: int = 6, k: int = 3, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, k).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64) * 0.1)
    return model


def inputs_for(model: nn.Linear, n: int = 60, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, model.in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[:3] = (y[:3] + 1) % model.out_features  # three clean-wrong inputs
    return x, y


@dataclass(frozen=True, kw_only=True)
class Claims(MinimalAttack):
    """A test attack that reports whatever it is told to: a point per input and a radius."""

    name: ClassVar[str] = "claims"
    points: torch.Tensor
    radius: float
    refine: int = 0
    verified: bool = False  # report the points as already accepted by verify_points (Found.verified)

    def settings(self) -> dict:
        return {"attack": self.name, "radius": self.radius, "refine": self.refine}

    def run(self, model, inputs, labels, *, bounds, norm, eps_max, batch_size, progress=None) -> Found:
        n = len(inputs)
        return Found(
            adversarials=self.points[:n].clone(),
            found=torch.ones(n, dtype=torch.bool),
            eps=torch.full((n,), self.radius, dtype=torch.float64),
            eps_lo=torch.zeros(n, dtype=torch.float64),
            no_direction=torch.zeros(n, dtype=torch.bool),
            forward_rows=0,
            verified=torch.full((n,), self.verified) if self.verified else None,
        )


def binary_model() -> nn.Linear:
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64))
        model.bias.zero_()
    return model  # class 0 iff x_0 > 0 (ties go to class 0: argmax picks the first)


def test_measure_refuses_claims_that_are_not_adversarial_outside_the_box_or_outside_the_ball():
    model = binary_model()
    x = torch.tensor([[0.3, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    bounds = (-1.0, 1.0)
    not_adversarial = x + torch.tensor([[-0.1, 0.0]], dtype=torch.float64)  # still class 0
    r = measure(Claims(points=not_adversarial, radius=0.1), model, x, y, bounds=bounds, eps_max=0.5)
    assert r.status.tolist() == [int(Status.CENSORED)] and r.rejected == 1 and math.isinf(float(r.eps_hi[0]))
    outside_ball = x + torch.tensor([[-0.5, 0.0]], dtype=torch.float64)  # class 1, distance 0.5 > radius 0.35
    r = measure(Claims(points=outside_ball, radius=0.35), model, x, y, bounds=bounds, eps_max=1.0)
    assert r.status.tolist() == [int(Status.CENSORED)] and r.rejected == 1
    beyond_eps_max = x + torch.tensor([[-0.5, 0.0]], dtype=torch.float64)
    r = measure(Claims(points=beyond_eps_max, radius=0.5), model, x, y, bounds=bounds, eps_max=0.4)
    assert r.status.tolist() == [int(Status.CENSORED)] and r.rejected == 0  # not a claim within eps_max
    out_of_box = torch.tensor([[-0.3, 1.5]], dtype=torch.float64)  # class 1 but x_1 > 1
    r = measure(Claims(points=out_of_box, radius=2.0), model, x, y, bounds=bounds, eps_max=2.0)
    assert r.status.tolist() == [int(Status.CENSORED)] and r.rejected == 1
    good = x + torch.tensor([[-0.31, 0.0]], dtype=torch.float64)
    r = measure(Claims(points=good, radius=0.31), model, x, y, bounds=bounds, eps_max=0.5, keep_adversarials=True)
    assert r.status.tolist() == [int(Status.FOOLED)] and r.rejected == 0
    assert float(r.eps_hi[0]) == 0.31 and float(r.distance[0]) == pytest.approx(0.31, abs=1e-15)
    assert torch.equal(r.adversarials, good)


def test_a_claim_on_the_boundary_is_pushed_past_it_and_verified_by_a_forward_pass():
    model = binary_model()
    x = torch.tensor([[0.3, 0.2]], dtype=torch.float64)
    y = torch.tensor([0])
    on_boundary = torch.tensor([[0.0, 0.2]], dtype=torch.float64)  # a tie: argmax says class 0
    r = measure(Claims(points=on_boundary, radius=0.3), model, x, y, bounds=(-1.0, 1.0), eps_max=0.5, keep_adversarials=True)
    assert r.status.tolist() == [int(Status.FOOLED)]
    assert 0.3 < float(r.eps_hi[0]) < 0.3 * 1.01
    with torch.no_grad():
        assert int(model(r.adversarials).argmax()) == 1
    assert float(distances(r.adversarials, x, "linf")[0]) <= float(r.eps_hi[0])


def test_a_claim_already_verified_is_not_evaluated_again_but_its_box_and_ball_are_checked(monkeypatch):
    import sparank.robustness as robustness

    rows = []
    real = robustness.verify_points

    def spy(model, points, labels, owners, batch_size):
        rows.append(len(points))
        return real(model, points, labels, owners, batch_size)

    monkeypatch.setattr(robustness, "verify_points", spy)
    model = binary_model()
    x = torch.tensor([[0.3, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    good = x + torch.tensor([[-0.31, 0.0]], dtype=torch.float64)
    r = measure(Claims(points=good, radius=0.31, verified=True), model, x, y, bounds=(-1.0, 1.0), eps_max=0.5)
    assert r.status.tolist() == [int(Status.FOOLED)] and rows == []  # accepted without a second forward pass
    outside_ball = x + torch.tensor([[-0.5, 0.0]], dtype=torch.float64)
    r = measure(Claims(points=outside_ball, radius=0.35, verified=True), model, x, y, bounds=(-1.0, 1.0), eps_max=1.0)
    assert r.status.tolist() == [int(Status.CENSORED)] and r.rejected == 1
    out_of_box = torch.tensor([[-0.3, 1.5]], dtype=torch.float64)
    r = measure(Claims(points=out_of_box, radius=2.0, verified=True), model, x, y, bounds=(-1.0, 1.0), eps_max=2.0)
    assert r.status.tolist() == [int(Status.CENSORED)] and r.rejected == 1
    unflagged = measure(Claims(points=good, radius=0.31), model, x, y, bounds=(-1.0, 1.0), eps_max=0.5)
    assert unflagged.status.tolist() == [int(Status.FOOLED)] and rows == [1]  # without the flag: checked here


@pytest.mark.parametrize("options", [{}, {"certify": True}, {"fast": True}], ids=["scan", "certify", "fast"])
def test_fgsm_reports_verified_only_points_that_an_independent_check_accepts(digits, digits_mlp, options, monkeypatch):
    """The FGSM search flags its adversarials as verified (so the measure does not evaluate them twice): each one is
    accepted by a fresh verify_points call here, on the model, alone and in a batch of another composition."""
    import sparank.robustness as robustness
    from sparank.attacks.base import verify_points

    rows = []
    real = robustness.verify_points
    monkeypatch.setattr(robustness, "verify_points", lambda *a: rows.append(len(a[1])) or real(*a))
    x, y = digits.test_x[:120], digits.test_y[:120]
    r = measure(FGSM(resolution=1e-2, **options), digits_mlp, x, y, keep_adversarials=True)
    assert rows == []  # every claim came verified
    fooled = torch.nonzero(r.status == int(Status.FOOLED)).squeeze(1)
    assert len(fooled) > 50
    order = fooled.flip(0)  # another batch composition than the search's
    ok, _, _ = verify_points(digits_mlp, r.adversarials[order], y[order], order, 7)
    assert bool(ok.all())
    with torch.no_grad():
        for i in fooled[:20].tolist():
            assert int(digits_mlp(r.adversarials[i : i + 1]).argmax()) != int(y[i])


def test_measure_never_attacks_clean_wrong_inputs_and_changes_nothing_it_is_given():
    model = affine()
    x, y = inputs_for(model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before_x, before_params = x.clone(), [p.detach().clone() for p in model.parameters()]
    model.train()
    r = measure(FGSM(resolution=1e-2, tol=1e-9), model, x, y, eps_max=1.0)
    assert model.training  # mode restored
    assert torch.equal(x, before_x)
    for p, q in zip(model.parameters(), before_params, strict=True):
        assert torch.equal(p, q) and torch.equal(p.grad, torch.full_like(p, 7.0))
    assert r.status[:3].tolist() == [int(Status.CLEAN_WRONG)] * 3
    assert r.eps_hi[:3].tolist() == [0.0] * 3 and r.distance[:3].tolist() == [0.0] * 3


def test_fgsm_as_an_attack_gives_fgsm_robustness_brackets_and_its_adversarials_are_the_ray_points():
    model = affine()
    x, y = inputs_for(model)
    a = measure(FGSM(resolution=1e-2, tol=1e-9), model, x, y, eps_max=1.0, keep_adversarials=True)
    b = fgsm_robustness(model, x, y, eps_max=1.0, resolution=1e-2, tol=1e-9)
    assert torch.equal(a.eps_hi, b.eps_hi) and torch.equal(a.eps_lo, b.eps_lo) and torch.equal(a.status, b.status)
    fooled = a.status == int(Status.FOOLED)
    assert torch.equal(a.adversarials[fooled], ray_points(x[fooled], b.directions[fooled], b.eps_hi[fooled], (0.0, 1.0)))
    with torch.no_grad():
        assert (model(a.adversarials[fooled]).argmax(dim=1) != y[fooled]).all()
    assert a.settings == {"attack": "fgsm", "resolution": 1e-2, "tol": 1e-9}


def test_fgsm_is_at_least_best_which_is_at_least_the_exact_optimum_on_an_affine_model():
    model = affine(d=8, k=4, seed=3)
    x, y = inputs_for(model, n=80, seed=4)
    fgsm = measure(FGSM(resolution=1e-2, tol=1e-9), model, x, y, eps_max=1.0)
    rand = measure(RandomRay(draws=4, seed=0, tol=1e-9), model, x, y, eps_max=1.0)
    best = best_of([fgsm, rand])
    optimum = boxed_minimal_perturbation(model.weight.detach(), model.bias.detach(), x, y)
    fooled = best.status == int(Status.FOOLED)
    assert fooled.sum() > 40
    assert (best.eps_hi <= fgsm.eps_hi).all() and (best.eps_hi <= rand.eps_hi).all()
    assert (best.eps_hi[fooled] >= optimum[fooled] - 1e-12).all()
    assert best.settings["of"] == [fgsm.settings, rand.settings]


def test_transfer_from_a_model_to_itself_is_its_own_fgsm_measure(digits, digits_mlp):
    x, y = digits.test_x[:120], digits.test_y[:120]
    own = measure(FGSM(resolution=1e-2, tol=1e-6), digits_mlp, x, y)
    self_transfer = measure(Transfer(source=digits_mlp, source_name="self"), digits_mlp, x, y)
    assert torch.equal(own.eps_hi, self_transfer.eps_hi) and torch.equal(own.status, self_transfer.status)
    assert self_transfer.settings == {"attack": "transfer", "kind": "fgsm", "source": "self", "resolution": 1e-2, "tol": 1e-6}
    assert not ATTACKS["transfer"].white_box and ATTACKS["fgsm"].white_box


class Quantised(nn.Module):
    """A model whose first layer rounds its input to 1/4: the input gradient is exactly 0 everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


class Detached(nn.Module):
    """A model that detaches its input inside forward: no gradient reaches the input at all."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.detach())


@pytest.mark.parametrize("wrapper", [Quantised, Detached])
def test_a_masked_gradient_raises_the_zero_gradient_flag_and_is_caught_by_a_gradient_free_attack(digits, digits_mlp, wrapper):
    model = wrapper(digits_mlp)
    x, y = digits.test_x[:60], digits.test_y[:60]
    fgsm = measure(FGSM(), model, x, y)
    correct = fgsm.status != int(Status.CLEAN_WRONG)
    assert (fgsm.status[correct] == int(Status.NO_DIRECTION)).all()  # the ray never moves
    rand = measure(RandomRay(draws=4), model, x, y)
    assert (rand.status == int(Status.FOOLED)).sum() > 0
    flags = masking_flags(model, x, y, [fgsm, rand])
    assert flags.zero_gradient_fraction == 1.0 and flags.flags["gradient"]
    assert flags.beaten_fraction > 0 and flags.flags["transfer_beats_white_box"]
    assert flags.unbounded_success < 1.0 and flags.flags["unbounded"] and flags.masked
    # the unmasked model's own FGSM ray, transferred, fools the masked one wherever the mask does not change the class
    transfer = measure(Transfer(source=digits_mlp, source_name="unmasked"), model, x, y, keep_adversarials=True)
    fooled = transfer.status == int(Status.FOOLED)
    assert fooled.sum() >= correct.sum() // 2
    with torch.no_grad():
        assert (model(transfer.adversarials[fooled]).argmax(dim=1) != y[fooled]).all()
    flags = masking_flags(model, x, y, [fgsm, transfer], unbounded=False)
    assert flags.beaten_fraction == pytest.approx(float(fooled.sum()) / float(correct.sum()))
    assert flags.flags["transfer_beats_white_box"] and "unbounded" not in flags.flags


def test_an_honest_model_raises_no_masking_flag(digits, digits_mlp):
    x, y = digits.test_x[:60], digits.test_y[:60]
    fgsm = measure(FGSM(), digits_mlp, x, y)
    flags = masking_flags(digits_mlp, x, y, [fgsm])
    assert flags.zero_gradient_fraction == 0.0 and flags.unbounded_success == 1.0
    assert not flags.masked and flags.beaten_fraction is None  # no non-white-box attack ran


def test_refine_pulls_a_verified_adversarial_back_along_its_segment_to_the_boundary():
    model = binary_model()  # class 0 iff x_0 > 0: the boundary is x_0 = 0
    x = torch.tensor([[0.3, 0.2], [0.1, -0.4]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    far = torch.tensor([[-0.3, 0.5], [-0.5, -0.4]], dtype=torch.float64)  # segment crosses x_0 = 0 at t = 1/2 and t = 1/6
    for norm in ("linf", "l2"):
        plain = measure(Claims(points=far, radius=10.0), model, x, y, bounds=(-1.0, 1.0), norm=norm, eps_max=10.0)
        pulled = measure(
            Claims(points=far, radius=10.0, refine=40), model, x, y, bounds=(-1.0, 1.0), norm=norm, eps_max=10.0, keep_adversarials=True
        )
        full = distances(far, x, norm)
        exact = full * torch.tensor([0.5, 1 / 6], dtype=torch.float64)  # the crossing on each segment
        assert torch.equal(plain.distance, full)
        assert (pulled.distance >= exact).all() and (pulled.distance <= exact + 1e-9).all()
        assert (pulled.eps_hi == pulled.distance).all()
        with torch.no_grad():
            assert (model(pulled.adversarials).argmax(dim=1) == 1).all()  # still misclassified, by a forward pass


class _NoCleanPass(FGSM):
    """FGSM without its clean pass: the measure evaluates the clean inputs itself, as for any other attack."""

    def clean_pass(self, model, inputs, labels, *, norm, batch_size):
        return None


@pytest.mark.parametrize("certify", [False, True])
def test_fgsm_clean_pass_spares_the_measure_a_forward_pass_and_changes_no_result(digits, digits_mlp, certify):
    """The direction's forward pass says which inputs are misclassified at ε = 0: the measure takes them from it, so
    the model sees one row fewer per correctly classified input, and every result is the same bit for bit."""
    x, y = digits.test_x[:150], digits.test_y[:150]
    rows = []
    hook = digits_mlp.register_forward_pre_hook(lambda _m, args: rows.append(len(args[0])))
    try:
        own = measure(FGSM(resolution=1e-2, certify=certify), digits_mlp, x, y, eps_max=0.5)
        seen_own = sum(rows)
        rows.clear()
        plain = measure(_NoCleanPass(resolution=1e-2, certify=certify), digits_mlp, x, y, eps_max=0.5)
        seen_plain = sum(rows)
    finally:
        hook.remove()
    correct = int((own.status != int(Status.CLEAN_WRONG)).sum())
    assert 0 < correct < len(x)  # some inputs of each kind
    assert seen_plain - seen_own == correct
    for field in ("status", "eps_lo", "eps_hi", "distance", "directions"):
        assert torch.equal(getattr(own, field), getattr(plain, field)), field
    if certify:
        assert torch.equal(own.certified, plain.certified)


def test_fgsm_robustness_gives_clean_wrong_inputs_their_own_fgsm_direction(digits, digits_mlp):
    """Clean-wrong inputs keep the FGSM direction of their own (x, y), as the direction function gives it."""
    x, y = digits.test_x[:200], digits.test_y[:200]
    r = fgsm_robustness(digits_mlp, x, y, eps_max=0.5)
    wrong = r.status == int(Status.CLEAN_WRONG)
    assert bool(wrong.any())
    from sparank.attacks import fgsm_direction

    assert torch.equal(r.directions[wrong], fgsm_direction(digits_mlp, x[wrong], y[wrong]))
