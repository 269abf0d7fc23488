"""The sparse regularisers (PROTOCOL §5): each makes the structure it is for, keeps accuracy honest, saves plainly.

Structure is counted here with plain torch (``(w == 0)``), independently of
``sparank.structure``. Models are small (``mlp:64``, ``cnn:4,8,16``) and
trained on digits for a few hundred steps; every trained model is cached for
the module, so each (method, strength) is trained once.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from sparank import regularisers
from sparank.models import build_model, weight_layers
from sparank.regularisers.sparse import HardConcreteGate, magnitude_mask
from sparank.train import TrainConfig, accuracy, train_model

EPOCHS = 20  # ~440 Adam steps on digits: mlp:64 reaches ~94 % test accuracy
SPEC = "mlp:64"


@pytest.fixture(scope="module")
def fit(digits):
    """``fit(name, strength, spec=..., epochs=..., **options) -> (model, regulariser, test accuracy)``, cached."""
    cache: dict[str, tuple[nn.Module, regularisers.Regulariser, float]] = {}

    def run(name: str, strength: float | None = None, *, spec: str = SPEC, epochs: int = EPOCHS, **options):
        key = repr((name, strength, spec, epochs, sorted(options.items())))
        if key not in cache:
            reg = regularisers.get(name, strength, **options)
            model, _ = train_model(spec, digits, TrainConfig(epochs=epochs, seed=0), reg)
            cache[key] = (model, reg, accuracy(model, digits.test_x, digits.test_y))
        return cache[key]

    return run


def touched(model: nn.Module, reg: regularisers.Regulariser) -> list[torch.Tensor]:
    """The weights a regulariser acts on (every weight layer for ``none``)."""
    layers = weight_layers(model) if reg.name == "none" else reg.targets(model)
    return [m.weight.detach() for m in layers.values()]


def zero_fraction(weights: list[torch.Tensor]) -> float:
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def zero_rows(w: torch.Tensor) -> int:
    """Rows (neurons / filters) of ``w`` viewed as ``(out, -1)`` that are entirely zero."""
    return int((w.flatten(1) == 0).all(dim=1).sum())


# --------------------------------------------------------------------------- exact zeros


@pytest.mark.slow
def test_none_has_no_exact_zeros(fit):
    model, reg, _ = fit("none")
    assert zero_fraction(touched(model, reg)) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize(("name", "strength"), [("prox_l1", 0.7), ("l0", 3.0)])
def test_strong_setting_makes_most_weights_exactly_zero_and_still_classifies(fit, name, strength):
    model, reg, acc = fit(name, strength)
    assert zero_fraction(touched(model, reg)) >= 0.5
    assert acc >= 0.8  # sparse, not collapsed (none: ~0.94)


@pytest.mark.slow
@pytest.mark.parametrize("s", [0.5, 0.9, 1 / 3])
@pytest.mark.parametrize("name", ["magnitude", "magnitude_gradual"])
def test_magnitude_pruning_hits_the_target_sparsity_exactly_per_layer(fit, name, s):
    model, reg, _ = fit(name, s)
    for w in touched(model, reg):
        assert int((w == 0).sum()) == round(s * w.numel())


@pytest.mark.slow
def test_one_shot_pruning_removes_the_smallest_weights_of_the_trained_model(digits, fit):
    dense, _, _ = fit("magnitude", 0.0, fine_tune_epochs=0)  # trained, pruned at s = 0: the dense model
    pruned, reg, _ = fit("magnitude", 0.7, fine_tune_epochs=0)  # same seed, pruned at 0.7, no fine-tuning
    for name in reg.targets(pruned):
        w_dense = dict(dense.named_modules())[name].weight.detach()
        w_pruned = dict(pruned.named_modules())[name].weight.detach()
        kept = w_pruned != 0
        assert torch.equal(w_pruned[kept], w_dense[kept])  # kept weights unchanged without fine-tuning
        assert w_dense[~kept].abs().max() <= w_dense[kept].abs().min()  # and they are the largest ones


def test_gradual_schedule_is_zhu_and_gupta_cubic():
    reg = regularisers.get("magnitude_gradual", 0.8, begin=0.2, end=0.6)
    assert reg.sparsity_at(0.0) == 0.0 and reg.sparsity_at(0.2) == 0.0
    assert reg.sparsity_at(0.4) == pytest.approx(0.8 * (1 - 0.5**3))  # halfway through the window: 7/8 of s
    assert reg.sparsity_at(0.6) == pytest.approx(0.8) and reg.sparsity_at(1.0) == pytest.approx(0.8)


@pytest.mark.slow
def test_gradual_pruning_only_grows_the_mask_and_never_revives_a_weight(digits):
    reg = regularisers.get("magnitude_gradual", 0.9, update_every=5)
    snapshots: list[tuple[float, dict[str, torch.Tensor]]] = []
    after_step = reg.after_step

    def recording_after_step(model: nn.Module, progress: float) -> None:
        after_step(model, progress)
        # the effective weight, as the next forward pass computes it
        effective = {n: (m.weight_orig * m.weight_mask).detach() for n, m in reg.targets(model).items()}
        snapshots.append((progress, effective))

    reg.after_step = recording_after_step  # type: ignore[method-assign]
    train_model(SPEC, digits, TrainConfig(epochs=5, seed=0), reg)
    for (_, before), (progress, after) in zip(snapshots, snapshots[1:]):
        for name, w in after.items():
            assert bool(((before[name] == 0) <= (after[name] == 0)).all()), f"a pruned weight of {name} came back at {progress}"
    final = snapshots[-1][1]
    assert all(int((w == 0).sum()) == round(0.9 * w.numel()) for w in final.values())


def test_magnitude_mask_count_is_exact_with_ties_and_prunes_earlier_zeros_first():
    tied = torch.zeros(10, 10)
    assert int((magnitude_mask(tied, 0.37) == 0).sum()) == 37
    w = torch.arange(1.0, 11.0)  # |w| = 1..10
    earlier = torch.ones(10)
    earlier[9] = 0.0  # the largest weight was pruned before
    mask = magnitude_mask(w, 0.3, pruned=earlier)
    assert mask.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0]


# --------------------------------------------------------------------------- group lasso


@pytest.mark.slow
def test_group_lasso_zeros_whole_neurons_and_spares_the_output_layer(fit):
    dense, none, _ = fit("none")
    assert sum(zero_rows(w) for w in touched(dense, none)) == 0
    model, reg, _ = fit("group_lasso", 0.7)
    assert list(reg.targets(model)) == ["fc1"] and reg.config(model)["layers"] == ["fc1"]
    fc1 = model.fc1.weight.detach()
    assert zero_rows(fc1) >= 0.15 * fc1.shape[0]  # 27 of 64 at seed 0; 15 to 26 at seeds 1-3
    # structured: the zeros are whole rows, not scattered weights
    assert int((fc1 == 0).sum()) == zero_rows(fc1) * fc1.shape[1]
    assert zero_rows(model.out.weight.detach()) == 0


@pytest.mark.slow
def test_group_lasso_zeros_whole_conv_filters(digits):
    # the tiny CNN learns slowly at Adam's 1e-3: train it at 1e-2, with the proximal step_size to match
    config = TrainConfig(epochs=10, seed=0, lr=1e-2)
    dense, _ = train_model("cnn:4,8,16", digits, config)
    assert zero_rows(dense.conv2.weight.detach()) == 0
    reg = regularisers.get("group_lasso", 0.5, layers=["conv1", "conv2"], step_size=1e-2)
    model, _ = train_model("cnn:4,8,16", digits, config, reg)
    conv2 = model.conv2.weight.detach()  # (8, 4, 3, 3): 8 filters
    assert 2 <= zero_rows(conv2) < 8
    # structured: every zero lies in an all-zero filter, or in conv2's slice that reads a removed conv1 filter
    conv1 = model.conv1.weight.detach()
    dead1 = (conv1.flatten(1) == 0).all(dim=1)
    assert int((conv1 == 0).sum()) == zero_rows(conv1) * conv1[0].numel()
    live = conv2[~(conv2.flatten(1) == 0).all(dim=1)]  # the filters conv2 keeps
    assert bool((live[:, dead1] == 0).all()) and int((live[:, ~dead1] == 0).sum()) == 0


def test_group_lasso_on_a_linear_model_needs_explicit_layers():
    model = build_model("linear", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="output layer"):
        regularisers.get("group_lasso", 0.3).targets(model)
    assert list(regularisers.get("group_lasso", 0.3, layers=["out"]).targets(model)) == ["out"]


# --------------------------------------------------------------------------- proximal steps: closed forms


def test_prox_l1_step_is_soft_thresholding_and_leaves_biases_alone():
    model = nn.Sequential(nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-0.3, -0.0005, 0.0002, 0.5]]))
        model[0].bias.fill_(1e-4)
    regularisers.get("prox_l1", 1.0, step_size=1e-3).after_step(model, 0.5)
    assert torch.allclose(model[0].weight, torch.tensor([[-0.299, 0.0, 0.0, 0.499]]))
    assert model[0].weight[0, 1] == 0 and model[0].weight[0, 2] == 0
    assert model[0].bias.item() == pytest.approx(1e-4)


def group_prox_numpy(weights: list[np.ndarray], biases: list[np.ndarray], threshold: float, groups: str):
    """The group-lasso proximal step written independently, group by group, with NumPy (float64)."""
    weights = [w.astype(np.float64).copy() for w in weights]
    biases = [b.astype(np.float64).copy() for b in biases]

    def shrink(vector: np.ndarray) -> np.ndarray:
        norm = np.sqrt(np.sum(vector**2))
        factor = max(0.0, 1.0 - threshold * np.sqrt(vector.size) / norm) if norm > 0 else 0.0
        return vector * factor

    for w, b in zip(weights, biases):
        if groups == "incoming":  # neuron i: its row and its bias (Alvarez & Salzmann)
            for i in range(w.shape[0]):
                shrunk = shrink(np.concatenate([w[i].ravel(), [b[i]]]))
                w[i] = shrunk[:-1].reshape(w[i].shape)
                b[i] = shrunk[-1]
        else:  # unit j feeding this layer: its outgoing weights w[:, j]; the bias vector: one group (Scardapane et al.)
            for j in range(w.shape[1]):
                w[:, j] = shrink(w[:, j].ravel()).reshape(w[:, j].shape)
            b[:] = shrink(b)
    return weights, biases


@pytest.mark.parametrize("groups", ["incoming", "outgoing"])
@pytest.mark.parametrize("conv", [False, True])
def test_group_lasso_step_matches_a_numpy_prox_group_by_group(groups, conv):
    # catches: the bias left out of a neuron's group (a zeroed row that still outputs a constant), rows and columns
    # mixed up, the bias vectors not grouped under 'outgoing', a wrong √size
    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3))
    else:
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        model[0].bias[1] = 0.0  # a unit with small incoming weights and zero bias: it must end exactly zero
        model[0].weight[1] *= 1e-3
    layers = [model[0], model[2]]
    weights = [m.weight.detach().numpy().copy() for m in layers]
    biases = [m.bias.detach().numpy().copy() for m in layers]
    strength, step = 0.2, 0.5
    regularisers.get("group_lasso", strength, groups=groups, layers=["0", "2"], step_size=step).after_step(model, 0.5)
    want_w, want_b = group_prox_numpy(weights, biases, strength * step, groups)
    for m, w, b in zip(layers, want_w, want_b):
        np.testing.assert_allclose(m.weight.detach().numpy(), w, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(m.bias.detach().numpy(), b, rtol=1e-5, atol=1e-7)
    if groups == "incoming":
        assert bool((model[0].weight[1] == 0).all()) and model[0].bias[1] == 0


def test_group_lasso_groupings_are_named_and_checked():
    model = build_model(SPEC, (1, 8, 8), 10)
    assert list(regularisers.get("group_lasso", 0.3).targets(model)) == ["fc1"]  # incoming: the output layer left out
    assert list(regularisers.get("group_lasso", 0.3, groups="outgoing").targets(model)) == ["fc1", "out"]
    assert regularisers.get("group_lasso", 0.3, groups="outgoing").config(model)["groups"] == "outgoing"
    with pytest.raises(ValueError, match="groups must be 'incoming'.*'outgoing'"):
        regularisers.get("group_lasso", 0.3, groups="rows")


@pytest.mark.slow
@pytest.mark.parametrize("groups", ["incoming", "outgoing"])
def test_group_lasso_removed_units_have_no_effect_on_any_logit(fit, digits, groups):
    # catches the constant-unit bug: a zeroed fc1 row that keeps its bias (and its outgoing weights) is not removed
    model, reg, _ = fit("group_lasso", 0.5, groups=groups)
    counts = reg.config(model)["units_removed"]
    fc1 = model.fc1
    removed = (fc1.weight == 0).all(dim=1) & (fc1.bias == 0) & (model.out.weight == 0).all(dim=0)
    assert counts["fc1"] == int(removed.sum()) >= 5
    # every fc1 unit whose row is zero is fully removed: no zero row keeps a bias or an outgoing weight
    assert bool(removed[(fc1.weight == 0).all(dim=1)].all())
    # independent checks on the forward pass: a removed unit is silent (random outgoing weights move no logit: a
    # constant unit ReLU(b) > 0 would) and unread (random incoming weights and bias move no logit)
    x = digits.test_x[:256]
    n = int(removed.sum())
    with torch.no_grad():
        before = model(x)
        silent = copy.deepcopy(model)
        silent.out.weight[:, removed] = torch.randn(10, n)
        unread = copy.deepcopy(model)
        unread.fc1.weight[removed] = torch.randn(n, fc1.in_features)
        unread.fc1.bias[removed] = torch.rand(n) + 0.5
        torch.testing.assert_close(silent(x), before, rtol=0, atol=0)
        torch.testing.assert_close(unread(x), before, rtol=0, atol=0)


@pytest.mark.slow
def test_outgoing_groups_drop_input_pixels_and_incoming_groups_do_not(fit):
    # Scardapane et al.'s grouping selects input features (digits: 27 of 64 pixels at λ = 0.5, seed 0)
    model, reg, _ = fit("group_lasso", 0.5, groups="outgoing")
    unused = (model.fc1.weight == 0).all(dim=0)
    assert reg.config(model)["units_removed"]["input"] == int(unused.sum()) >= 10
    incoming, reg_in, _ = fit("group_lasso", 0.5)
    assert reg_in.config(incoming)["units_removed"]["input"] == 0


# --------------------------------------------------------------------------- L0 gates


def test_hard_concrete_prob_nonzero_matches_sampled_gates():
    torch.manual_seed(0)
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 2.0]).repeat(50_000, 1)
    gate = HardConcreteGate(log_alpha)
    z = gate.gate()  # training mode: sampled
    assert bool(((z >= 0) & (z <= 1)).all())
    assert torch.allclose((z > 0).float().mean(0), gate.prob_nonzero()[0], atol=0.01)
    gate.eval()
    # deterministic gate: exactly 0 iff sigmoid(log α) <= 1/12, i.e. log α <= -log 11
    assert gate.gate()[0].tolist()[:2] == [0.0, pytest.approx(1.2 / (1 + math.e) - 0.1)]


def test_hard_concrete_noise_comes_from_its_generator_not_the_global_rng():
    log_alpha = torch.tensor([-3.0, -1.0, 0.0, 2.0]).repeat(1000, 1)
    gate = HardConcreteGate(log_alpha, torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    z = gate.gate()
    assert torch.equal(torch.get_rng_state(), state)
    # the paper's sample, by hand, from a generator seeded alike
    u = torch.rand(log_alpha.shape, generator=torch.Generator().manual_seed(4)).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / (2 / 3))
    assert torch.allclose(z, (s * 1.2 - 0.1).clamp(0, 1), atol=1e-6)
    assert not torch.equal(z, gate.gate())  # a new draw each forward


def test_l0_gates_get_the_regularisers_generator(digits):
    reg = regularisers.get("l0", 1.0)
    reg.generator = torch.Generator().manual_seed(9)
    model = build_model(SPEC, digits.input_shape, digits.num_classes)
    reg.prepare(model)
    gates = [m.parametrizations.weight[0] for m in weight_layers(model).values()]
    assert gates and all(g.generator is reg.generator for g in gates)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "strength"), [("l0", 1.0), ("magnitude_gradual", 0.8)])
def test_finalise_bakes_in_exactly_what_the_eval_model_computed(digits, name, strength):
    reg = regularisers.get(name, strength)
    captured = {}
    finalise = reg.finalise

    def capturing_finalise(model, fine_tune):
        model.eval()
        with torch.no_grad():
            captured["logits"] = model(digits.test_x)
        finalise(model, fine_tune)

    reg.finalise = capturing_finalise  # type: ignore[method-assign]
    model, _ = train_model(SPEC, digits, TrainConfig(epochs=5, seed=0), reg)
    with torch.no_grad():
        assert torch.allclose(model(digits.test_x), captured["logits"], atol=1e-5)


# --------------------------------------------------------------------------- l1 and accuracy


@pytest.mark.slow
def test_l1_shrinks_the_l1_norm_by_a_clear_factor(fit):
    dense, none, _ = fit("none")
    model, reg, _ = fit("l1", 3e-3)
    norm = sum(float(w.abs().sum()) for w in touched(model, reg))
    assert norm < 0.5 * sum(float(w.abs().sum()) for w in touched(dense, none))


#: mild strengths on digits: accuracy within a few points of `none`, and some structure
MILD = [("l1", 1e-4), ("prox_l1", 0.1), ("magnitude", 0.5), ("magnitude_gradual", 0.5), ("group_lasso", 0.3), ("l0", 0.1)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "strength"), MILD)
def test_mild_strength_keeps_accuracy_honest(fit, name, strength):
    _, _, dense_acc = fit("none")
    model, reg, acc = fit(name, strength)
    assert dense_acc >= 0.9
    assert acc >= dense_acc - 0.04
    weights = touched(model, reg)
    if name == "l1":  # shrinks without zeroing: effective sparsity (|w| <= 1e-3·max|w|)
        assert sum(int((w.abs() <= 1e-3 * w.abs().max()).sum()) for w in weights) > 0.1 * sum(w.numel() for w in weights)
    elif name == "group_lasso":
        assert sum(zero_rows(w) for w in weights) >= 1
    else:
        assert zero_fraction(weights) >= 0.02


# --------------------------------------------------------------------------- plain model and safetensors


ROUND_TRIP = [(name, strength, SPEC, EPOCHS, {}) for name, strength in MILD] + [
    ("l0", 1.0, SPEC, 3, {"fine_tune_epochs": 1}),
    ("l0", 1.0, "cnn:4,8,16", 3, {"fine_tune_epochs": 1}),
    ("magnitude", 0.5, "cnn:4,8,16", 3, {"fine_tune_epochs": 1}),
    ("magnitude_gradual", 0.5, "cnn:4,8,16", 3, {"fine_tune_epochs": 1}),
    ("group_lasso", 0.5, "cnn:4,8,16", 3, {}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "strength", "spec", "epochs", "options"), ROUND_TRIP)
def test_finalised_model_is_plain_and_round_trips_through_safetensors(digits, fit, tmp_path, name, strength, spec, epochs, options):
    model, _, _ = fit(name, strength, spec=spec, epochs=epochs, **options)
    fresh = build_model(spec, digits.input_shape, digits.num_classes)
    state = model.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    for layer in weight_layers(model).values():
        assert type(layer) in (nn.Linear, nn.Conv2d) and not parametrize.is_parametrized(layer)
        assert not hasattr(layer, "weight_orig") and not layer._forward_pre_hooks
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    fresh.load_state_dict(load_file(str(path)), strict=True)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(digits.test_x), model(digits.test_x))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("name", "strength", "options", "message"),
    [
        ("l1", -1e-4, {}, "out of range"),
        ("l1", math.nan, {}, "out of range"),
        ("magnitude", 1.0, {}, "out of range"),
        ("magnitude_gradual", -0.1, {}, "out of range"),
        ("l0", math.inf, {}, "out of range"),
        ("prox_l1", 0.3, {"step_size": 0.0}, "step_size"),
        ("group_lasso", 0.3, {"step_size": -1e-3}, "step_size"),
        ("magnitude", 0.5, {"fine_tune_epochs": -1}, "fine_tune_epochs"),
        ("magnitude", 0.5, {"fine_tune_epochs": 1.5}, "fine_tune_epochs"),
        ("magnitude_gradual", 0.5, {"begin": 0.8, "end": 0.5}, "begin must be < end"),
        ("magnitude_gradual", 0.5, {"end": 1.5}, "end"),
        ("magnitude_gradual", 0.5, {"update_every": 0}, "update_every"),
        ("l0", 1.0, {"gate_lr": 0}, "gate_lr"),
        ("l0", 1.0, {"init_log_alpha": math.nan}, "init_log_alpha"),
        ("magnitude", 0.5, {"fine_tune": 3}, "unknown option.*fine_tune_epochs"),
        ("l1", 1e-4, {"step_size": 1e-3}, "unknown option"),
    ],
)
def test_bad_strengths_and_options_raise_value_error_naming_them(name, strength, options, message):
    with pytest.raises(ValueError, match=message):
        regularisers.get(name, strength, **options)


def test_every_method_is_registered_with_docs_and_records_its_options():
    model = build_model(SPEC, (1, 8, 8), 10)
    for name in ("l1", "prox_l1", "magnitude", "magnitude_gradual", "group_lasso", "l0"):
        cls = regularisers.REGISTRY[name]
        assert cls.reference.startswith("https://") and cls.strength_meaning and cls.summary
        reg = regularisers.get(name)  # the default strength is valid
        record = reg.config(model)
        assert record["name"] == name and record["strength"] == cls.default_strength
    assert regularisers.get("prox_l1", 0.3, step_size=0.05).config(model)["step_size"] == 0.05
    assert regularisers.get("magnitude", 0.5, fine_tune_epochs=7).config(model)["fine_tune_epochs"] == 7
