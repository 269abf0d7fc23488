"""Low-rank regularisers and the l2 baseline: hooks against closed forms, trained models against `none`.

Structure is computed here with plain torch (``svdvals``, ``matrix_rank``),
not with the package's own structure module, so the checks are independent.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from sparank.data import Dataset
from sparank.models import build_model, weight_layers
from sparank.regularisers import REGISTRY, L2, get
from sparank.regularisers.lowrank import (
    SVT,
    Factorised,
    LowRank,
    Nuclear,
    SVDTruncate,
    as_matrix,
    bake,
    factorise,
    polar_factor,
    singular_value_threshold,
    spectral_map,
    target_rank,
)
from sparank.train import TrainConfig, accuracy, train_model

SPEC = "mlp:64"
LOWRANK = ("nuclear", "svt", "factorised", "svd_truncate")


# ---------------------------------------------------------------- helpers (plain torch)


def matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().reshape(m.weight.shape[0], -1) for name, m in weight_layers(model).items()}


def nuclear_norm(w: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(w).sum())


def effective_rank(w: torch.Tensor) -> float:
    """exp of the entropy of σ/Σσ (Roy & Vetterli 2007)."""
    s = torch.linalg.svdvals(w.double())
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


# ---------------------------------------------------------------- trained models, shared


@pytest.fixture(scope="module")
def trained(digits: Dataset) -> Callable[..., nn.Module]:
    """``trained(name, strength, **options)``: a model trained on digits at seed 0 (cached per module)."""
    cache: dict[tuple, nn.Module] = {}

    def get_model(name: str, strength: float | None = None, **options: object) -> nn.Module:
        key = (name, strength, tuple(sorted(options.items())))
        if key not in cache:
            model, _ = train_model(SPEC, digits, TrainConfig(epochs=20, seed=0), get(name, strength, **options))
            cache[key] = model
        return cache[key]

    return get_model


def test_registry_lists_the_methods_with_their_metadata() -> None:
    names = list(REGISTRY)
    assert names[:2] == ["none", "l2"]
    for name in ("l2", *LOWRANK):
        cls = REGISTRY[name]
        assert cls.name == name
        assert cls.reference.startswith("https://")
        assert cls.summary and cls.strength_meaning
        assert cls.default_strength is not None
        low, high = cls.strength_range
        assert low <= cls.default_strength <= high


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("name", "strength", "options", "match"),
    [
        ("l2", -1e-3, {}, "strength"),
        ("nuclear", float("nan"), {}, "strength"),
        ("nuclear", 1e-3, {"every": 0}, "every"),
        ("nuclear", 1e-3, {"every": 2.5}, "every"),
        ("svt", -1.0, {}, "strength"),
        ("svt", 1.0, {"step_size": 0.0}, "step_size"),
        ("svt", 1.0, {"every": 0}, "every"),
        ("factorised", 0.0, {}, "strength"),
        ("factorised", 1.5, {}, "strength"),
        ("factorised", 0.5, {"layers": ["fc1"], "include_output": True}, "include_output"),
        ("svd_truncate", 0.0, {}, "strength"),
        ("svd_truncate", -0.2, {}, "strength"),
        ("svd_truncate", 0.5, {"fine_tune_epochs": -1}, "fine_tune_epochs"),
        ("nuclear", 1e-3, {"exact_steps": -1}, "exact_steps"),
        ("factorised", 0.5, {"frobenius_decay": -1e-4}, "frobenius_decay"),
        ("factorised", 0.5, {"frobenius_decay": float("inf")}, "frobenius_decay"),
        ("nuclear", 1e-3, {"layers": []}, "layers must name at least one layer"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_parameter(name: str, strength: float, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get(name, strength, **options)


def test_unknown_layer_is_a_value_error() -> None:
    model = build_model(SPEC, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="fc9"):
        Factorised(0.5, layers=["fc9"]).prepare(model)


# ---------------------------------------------------------------- building blocks against closed forms


def test_as_matrix_and_target_rank() -> None:
    conv = torch.zeros(8, 3, 3, 3)
    assert as_matrix(conv).shape == (8, 27)
    assert target_rank((8, 3, 3, 3), 0.5) == 4  # ceil(0.5 · min(8, 27))
    assert target_rank((64, 64), 0.25) == 16
    assert target_rank((10, 64), 0.25) == 3  # ceil(2.5)
    assert target_rank((10, 64), 1e-6) == 1  # never below 1
    assert target_rank((10, 64), 1.0) == 10


def test_singular_value_threshold_shrinks_the_spectrum_by_t() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 2, 2, 2, dtype=torch.float64)  # a conv kernel: matrix (6, 8)
    s = torch.linalg.svdvals(w.reshape(6, -1))
    t = float(s[2])  # kills the 3rd..6th singular values
    out = singular_value_threshold(w, t)
    assert out.shape == w.shape
    expected = torch.clamp(s - t, min=0.0)
    assert torch.allclose(torch.linalg.svdvals(out.reshape(6, -1)), expected, atol=1e-10)
    assert int(torch.linalg.matrix_rank(out.reshape(6, -1))) == 2
    # a diagonal matrix: soft-thresholding of the diagonal, by hand
    d = torch.diag(torch.tensor([3.0, 1.0, 0.25], dtype=torch.float64))
    assert torch.allclose(singular_value_threshold(d, 0.5), torch.diag(torch.tensor([2.5, 0.5, 0.0], dtype=torch.float64)))


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (4, 2, 3, 3), (300, 784)])
def test_spectral_map_agrees_with_the_svd(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    w = torch.randn(shape) / 10
    u, s, vh = torch.linalg.svd(w.reshape(shape[0], -1), full_matrices=False)
    fn = lambda sigma: sigma**2 + 1.0  # noqa: E731 - any spectral function
    expected = ((u * fn(s)) @ vh).reshape(shape)
    assert torch.allclose(spectral_map(w, fn), expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(polar_factor(w), (u @ vh).reshape(shape), atol=1e-5)


def test_polar_factor_of_a_rank_deficient_matrix_is_zero_on_its_null_space() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(7, 2, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    g = polar_factor(a @ b)  # rank 2
    u, _, vh = torch.linalg.svd(a @ b, full_matrices=False)
    assert torch.allclose(g, u[:, :2] @ vh[:2], atol=1e-10)
    assert torch.allclose(torch.linalg.svdvals(g), torch.tensor([1.0, 1.0, 0, 0, 0], dtype=torch.float64), atol=1e-10)


def test_lowrank_parametrisation_starts_at_the_best_rank_r_approximation() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(20, 12).double()
    w = layer.weight.detach().clone()
    s = torch.linalg.svdvals(w)
    factorise(layer, 4)
    assert parametrize.is_parametrized(layer, "weight")
    u, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    assert u.shape == (12, 4) and v.shape == (20, 4)
    # Eckart–Young: the best rank-4 approximation leaves exactly the tail of the spectrum
    residual = torch.linalg.matrix_norm(layer.weight.detach() - w) ** 2
    assert float(residual) == pytest.approx(float((s[4:] ** 2).sum()), rel=1e-9)
    assert int(torch.linalg.matrix_rank(layer.weight.detach())) == 4

    bake(layer)
    assert type(layer) is nn.Linear and not parametrize.is_parametrized(layer)
    assert list(layer.state_dict()) == ["weight", "bias"]
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.is_leaf
    assert int(torch.linalg.matrix_rank(layer.weight.detach())) == 4


@pytest.mark.parametrize(
    ("make", "input_shape"),
    [
        (lambda: nn.Linear(20, 12), (20,)),
        (lambda: nn.Conv2d(3, 8, 3, stride=2, padding=1), (3, 9, 11)),
        (lambda: nn.Conv2d(3, 8, (3, 2), padding="same", dilation=2, bias=False), (3, 9, 11)),
        (lambda: nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), (3, 9, 11)),
        (lambda: nn.Conv1d(4, 6, 5, stride=2), (4, 13)),
        (lambda: nn.Conv2d(4, 6, 3, groups=2), (4, 9, 11)),  # grouped: falls back to the dense weight
    ],
)
def test_factorised_forward_equals_the_dense_u_vt_layer(make: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = make().double()
    factorise(layer, 3)
    u, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    # independent reference: a fresh plain layer of the same class holding the dense U Vᵀ
    dense = make().double()
    with torch.no_grad():
        dense.weight.copy_((u @ v.T).reshape(dense.weight.shape))
        if dense.bias is not None:
            dense.bias.copy_(layer.bias)
    x = torch.randn(5, *input_shape, dtype=torch.float64)
    calls = []
    layer.parametrizations.weight[0].register_forward_hook(lambda *_: calls.append(1))
    out = layer(x)
    assert out.shape == dense(x).shape
    assert torch.allclose(out, dense(x), atol=1e-12)
    grouped = isinstance(layer, nn.Conv2d) and layer.groups != 1
    assert len(calls) == (1 if grouped else 0)  # the fast path never forms U Vᵀ
    # gradients reach U and V (the optimiser's parameters), equal to the chain rule through W = U Vᵀ
    out.square().sum().backward()
    dense(x).square().sum().backward()
    g = dense.weight.grad.reshape(dense.weight.shape[0], -1)
    assert torch.allclose(u.grad, g @ v.detach(), atol=1e-10)
    assert torch.allclose(v.grad, g.T @ u.detach(), atol=1e-10)
    assert {id(p) for p in layer.parameters()} >= {id(u), id(v)}

    bake(layer)
    assert "forward" not in vars(layer) and type(layer) is type(dense)
    assert torch.allclose(layer(x), dense(x), atol=1e-12)


def test_factorised_frobenius_decay_is_half_lambda_times_the_products_squared_norm() -> None:
    # catches decay on ||U||² + ||V||² (ordinary weight decay on the factors) instead of Khodak et al.'s ||U Vᵀ||_F²
    torch.manual_seed(0)
    model = build_model("mlp:16,12", (1, 8, 8), 10)
    reg = Factorised(0.5, frobenius_decay=0.3)
    reg.prepare(model)
    penalty = reg.penalty(model)
    expected = 0.5 * 0.3 * sum(float(model.get_submodule(n).weight.detach().square().sum()) for n in ("fc1", "fc2"))
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    u = model.fc1.parametrizations.weight.original0
    v = model.fc1.parametrizations.weight.original1
    w = (u @ v.T).detach()
    torch.testing.assert_close(u.grad, 0.3 * w @ v.detach(), rtol=1e-4, atol=1e-6)  # ∂/∂U (λ/2)||U Vᵀ||² = λ W V
    assert Factorised(0.5).penalty(model) is None  # default 0: no term, no cost


def test_lowrank_rejects_an_impossible_rank() -> None:
    with pytest.raises(ValueError, match="rank"):
        LowRank((10, 64), 11)
    with pytest.raises(ValueError, match="rank"):
        LowRank((10, 64), 0)


def test_l2_penalty_and_its_gradient_by_hand() -> None:
    torch.manual_seed(0)
    model = build_model(SPEC, (1, 8, 8), 10)
    lam = 0.3
    penalty = L2(lam).penalty(model)
    weights = [m.weight for m in weight_layers(model).values()]
    assert float(penalty.detach()) == pytest.approx(0.5 * lam * sum(float((w.detach() ** 2).sum()) for w in weights), rel=1e-6)
    penalty.backward()
    for name, m in weight_layers(model).items():
        assert torch.allclose(m.weight.grad, lam * m.weight.detach(), atol=1e-7), name
        assert m.bias.grad is None  # biases never touched


def test_nuclear_penalty_equals_the_sum_of_singular_values_with_subgradient_u_vt() -> None:
    torch.manual_seed(0)
    model = build_model("cnn:4,6,16", (1, 8, 8), 10)  # conv kernels are viewed as (out, in·kh·kw)
    lam = 0.05
    reg = Nuclear(lam, every=1)
    reg.prepare(model)
    penalty = reg.penalty(model)
    expected = lam * sum(nuclear_norm(w) for w in matrices(model).values())
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    # independent: autograd through svdvals
    for name, m in weight_layers(model).items():
        w = m.weight.detach().clone().requires_grad_(True)
        (lam * torch.linalg.svdvals(w.reshape(w.shape[0], -1)).sum()).backward()
        assert torch.allclose(m.weight.grad, w.grad, atol=1e-5), name


def test_nuclear_every_k_reuses_the_subgradient_between_refreshes() -> None:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(5, 4))
    reg = Nuclear(1.0, every=3)
    reg.prepare(layer)
    first = float(reg.penalty(layer).detach())
    assert first == pytest.approx(nuclear_norm(layer[0].weight.detach()), rel=1e-5)
    with torch.no_grad():
        layer[0].weight.mul_(2.0)  # same singular vectors: the stale subgradient is still exact
    assert float(reg.penalty(layer).detach()) == pytest.approx(2 * first, rel=1e-5)
    with torch.no_grad():
        layer[0].weight.copy_(torch.randn(4, 5))
    stale = float(reg.penalty(layer).detach())  # 3rd call: still the old G, a lower bound of the new norm
    assert stale <= nuclear_norm(layer[0].weight.detach()) + 1e-5
    assert float(reg.penalty(layer).detach()) == pytest.approx(nuclear_norm(layer[0].weight.detach()), rel=1e-5)  # refreshed


def test_nuclear_refreshes_every_step_in_the_last_exact_steps() -> None:
    # catches an end-game that never starts (or starts at the wrong step): the stale G must be replaced per step there
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(5, 4))
    total = 10
    reg = Nuclear(1.0, every=100, exact_steps=3)
    reg.prepare(layer)
    fresh = []
    for step in range(1, total + 1):
        with torch.no_grad():
            layer[0].weight.copy_(torch.randn(4, 5))
        value = float(reg.penalty(layer).detach())
        fresh.append(value == pytest.approx(nuclear_norm(layer[0].weight.detach()), rel=1e-5))
        reg.after_step(layer, step / total)
    # step 1 refreshes (every), steps 2..7 reuse the stale G, steps 8, 9, 10 (the last 3) are exact
    assert fresh == [True] + [False] * 6 + [True] * 3


def test_svt_thresholds_every_k_steps_by_k_times_t_and_at_the_last_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    w0 = model[0].weight.detach().clone()
    reg = SVT(2.0, step_size=0.01, every=3)
    reg.prepare(model)
    reg.after_step(model, 0.2)
    reg.after_step(model, 0.4)
    assert torch.equal(model[0].weight.detach(), w0)  # nothing before the 3rd step
    reg.after_step(model, 0.6)
    w3 = model[0].weight.detach().clone()
    assert torch.allclose(w3, singular_value_threshold(w0, 3 * 2.0 * 0.01), atol=1e-6)
    reg.after_step(model, 1.0)  # the last step thresholds by the one step since
    assert torch.allclose(model[0].weight.detach(), singular_value_threshold(w3, 2.0 * 0.01), atol=1e-6)


# ---------------------------------------------------------------- trained on digits against `none`


@pytest.mark.slow
def test_l2_lowers_the_frobenius_norm(trained) -> None:
    dense, l2 = matrices(trained("none")), matrices(trained("l2", 1e-2))
    for name in dense:
        assert torch.linalg.matrix_norm(l2[name]) < torch.linalg.matrix_norm(dense[name]), name


@pytest.mark.slow
@pytest.mark.parametrize(("name", "strength"), [("nuclear", 1e-2), ("svt", 1.0)])
def test_nuclear_and_svt_lower_nuclear_norm_and_effective_rank(trained, name: str, strength: float) -> None:
    dense, reg = matrices(trained("none")), matrices(trained(name, strength))
    for layer in dense:
        assert nuclear_norm(reg[layer]) < nuclear_norm(dense[layer]), layer
        assert effective_rank(reg[layer]) < effective_rank(dense[layer]), layer
    # the hidden layer clearly: at least a quarter lower
    assert effective_rank(reg["fc1"]) < 0.75 * effective_rank(dense["fc1"])


@pytest.mark.slow
def test_nuclear_default_gives_low_numerical_rank_as_the_exact_subgradient_does(trained) -> None:
    # catches a default (every=32 alone) whose stale sub-gradient leaves fc1 at numerical rank 62 of 64 (dense: 63):
    # the default must reach the rank of the exact per-step method (23 at seed 0)
    def rank(w: torch.Tensor) -> int:
        s = torch.linalg.svdvals(w)
        return int((s > 1e-3 * s[0]).sum())

    dense = rank(matrices(trained("none"))["fc1"])
    default = rank(matrices(trained("nuclear", 1e-2))["fc1"])
    exact = rank(matrices(trained("nuclear", 1e-2, every=1))["fc1"])
    stale = rank(matrices(trained("nuclear", 1e-2, exact_steps=0))["fc1"])
    assert default <= 0.5 * dense and default <= exact + 3, (dense, default, exact)
    assert stale > default + 20, (stale, default)  # what the end-game buys


@pytest.mark.slow
def test_svt_zeroes_singular_values_exactly(trained) -> None:
    # a proximal step sets singular values to zero (a penalty only shrinks them)
    w = matrices(trained("svt", 1.0))["fc1"]
    assert int(torch.linalg.matrix_rank(w, rtol=1e-5)) < min(w.shape) - 8


@pytest.mark.slow
def test_svt_with_every_beyond_the_run_still_thresholds_at_the_end(digits: Dataset) -> None:
    model, _ = train_model(SPEC, digits, TrainConfig(epochs=1, seed=0), SVT(30.0, every=10**6))
    w = matrices(model)["fc1"]
    assert int(torch.linalg.matrix_rank(w, rtol=1e-5)) < min(w.shape) // 2


@pytest.mark.slow
def test_factorised_holds_rank_r_in_touched_layers_and_leaves_the_output_layer(trained) -> None:
    model = trained("factorised", 0.25)
    w = matrices(model)
    r = math.ceil(0.25 * 64)
    assert int(torch.linalg.matrix_rank(w["fc1"])) <= r
    assert int(torch.linalg.matrix_rank(w["out"])) == 10  # the output layer is not touched by default
    config = Factorised(0.25).config(model)
    assert config["layers"] == ["fc1"] and config["ranks"] == {"fc1": r} and config["include_output"] is False


@pytest.mark.slow
def test_factorised_with_the_output_layer(trained) -> None:
    model = trained("factorised", 0.5, include_output=True)
    w = matrices(model)
    assert int(torch.linalg.matrix_rank(w["fc1"])) <= 32
    assert int(torch.linalg.matrix_rank(w["out"])) <= 5  # ceil(0.5 · 10)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_svd_truncate_gives_rank_exactly_r(trained, fraction: float) -> None:
    w = matrices(trained("svd_truncate", fraction))["fc1"]
    r = math.ceil(fraction * 64)
    s = torch.linalg.svdvals(w.double())
    assert int(torch.linalg.matrix_rank(w.double(), rtol=1e-4)) == r
    assert s[r - 1] > 1e-2 * s[0]  # the r-th singular value is far from zero: the rank is exactly r, not less


@pytest.mark.slow
def test_fixed_rank_on_a_conv_net(digits: Dataset) -> None:
    small = Dataset("digits", digits.train_x[:256], digits.train_y[:256], digits.test_x, digits.test_y, digits.classes)
    for reg in (Factorised(0.5), SVDTruncate(0.5, fine_tune_epochs=1)):
        model, _ = train_model("cnn:4,6,16", small, TrainConfig(epochs=1, seed=0), reg)
        w = matrices(model)
        assert int(torch.linalg.matrix_rank(w["conv1"], rtol=1e-4)) <= 2  # (4, 9): r = ceil(0.5·4)
        assert int(torch.linalg.matrix_rank(w["conv2"], rtol=1e-4)) <= 3  # (6, 36): r = 3
        assert int(torch.linalg.matrix_rank(w["fc1"], rtol=1e-4)) <= 8  # (16, 6·2·2)
        assert all(not parametrize.is_parametrized(m) for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "strength"),
    [("l2", 1e-3), ("nuclear", 1e-3), ("svt", 1.0), ("factorised", 0.25), ("svd_truncate", 0.25)],
)
def test_mild_strength_keeps_accuracy(trained, digits: Dataset, name: str, strength: float) -> None:
    dense = accuracy(trained("none"), digits.test_x, digits.test_y)
    reg = accuracy(trained(name, strength), digits.test_x, digits.test_y)
    assert reg >= dense - 0.04, f"{name}: {reg:.3f} against {dense:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["l2", *LOWRANK])
def test_safetensors_round_trip_gives_identical_predictions(trained, digits: Dataset, tmp_path, name: str) -> None:
    model = trained(name, REGISTRY[name].default_strength)
    fresh = build_model(SPEC, digits.input_shape, digits.num_classes)
    state = model.state_dict()
    assert [(k, v.shape) for k, v in state.items()] == [(k, v.shape) for k, v in fresh.state_dict().items()]
    assert all(type(m) in (nn.Sequential, nn.Flatten, nn.ReLU, nn.Linear) for m in model.modules())  # plain modules
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    fresh.load_state_dict(load_file(str(path)))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(digits.test_x), model(digits.test_x))
