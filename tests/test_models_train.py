"""Model specs and the training loop: shapes, errors, determinism, regulariser hooks."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from sparank.models import build_model, load_state, parse_spec, weight_layers
from sparank.regularisers import REGISTRY, Regulariser, counterpart, get
from sparank.regularisers.lowrank import Nuclear
from sparank.train import TrainConfig, TrainingBudget, accuracy, seeded_generator, train, train_model, training_budget


@pytest.mark.parametrize(
    ("spec", "shape", "n_weight_layers"),
    [("linear", (1, 8, 8), 1), ("mlp", (1, 28, 28), 3), ("mlp:64", (1, 8, 8), 2), ("cnn", (1, 8, 8), 4), ("cnn:4,8,16", (1, 28, 28), 4)],
)
def test_models_map_images_to_logits(spec, shape, n_weight_layers):
    model = build_model(spec, shape, 10)
    assert model(torch.rand(3, *shape)).shape == (3, 10)
    assert len(weight_layers(model)) == n_weight_layers


def test_default_mlp_is_fc_300_100():
    model = build_model("mlp", (1, 28, 28), 10)
    shapes = [tuple(m.weight.shape) for m in weight_layers(model).values()]
    assert shapes == [(300, 784), (100, 300), (10, 100)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet", "unknown architecture"),
        ("mlp:3x", "bad widths"),
        ("mlp:0", "positive"),
        ("cnn:4,8", "three widths"),
        ("linear:5", "takes no widths"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_weights_that_do_not_fit_are_refused_in_one_line():
    small = build_model("mlp:16", (1, 8, 8), 10)
    big = build_model("mlp:32", (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"do not fit.*fc1.weight \(16, 64\) vs \(32, 64\)") as info:
        load_state(big, small.state_dict(), source="x.safetensors")
    assert "\n" not in str(info.value)


def test_same_seed_same_weights_other_seed_other_weights(digits):
    config = TrainConfig(epochs=2, seed=3)
    a, _ = train_model("mlp:32", digits, config)
    b, _ = train_model("mlp:32", digits, config)
    c, _ = train_model("mlp:32", digits, TrainConfig(epochs=2, seed=4))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.state_dict()["fc1.weight"], c.state_dict()["fc1.weight"])


def test_training_learns_digits(digits):
    model, history = train_model("mlp:64", digits, TrainConfig(epochs=8, seed=0))
    assert history[-1].test_accuracy > 0.9
    assert history[-1].loss < history[0].loss
    assert not model.training


class Recording(Regulariser):
    """Counts hook calls, penalises the first layer's weights hard, fine-tunes one epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {"prepare": 0, "inputs": 0, "penalty": 0, "after_step": 0, "finalise": 0}
        self.progress: list[float] = []

    def prepare(self, model: nn.Module) -> None:
        self.calls["prepare"] += 1

    def inputs(self, model, x, y):
        self.calls["inputs"] += 1
        return x

    def penalty(self, model):
        self.calls["penalty"] += 1
        return 10.0 * model.fc1.weight.abs().sum()

    def after_step(self, model, progress):
        self.calls["after_step"] += 1
        self.progress.append(progress)

    def finalise(self, model, fine_tune):
        self.calls["finalise"] += 1
        fine_tune(1)


def test_loop_calls_every_hook_and_the_penalty_acts(digits):
    reg = Recording()
    torch.manual_seed(0)
    model = build_model("mlp:32", digits.input_shape, 10)
    history = train(model, digits, TrainConfig(epochs=2, batch_size=128, seed=0), reg)
    steps = 2 * -(-len(digits.train_x) // 128)
    assert reg.calls["prepare"] == 1 and reg.calls["finalise"] == 1
    assert reg.calls["penalty"] == steps  # not during fine-tuning
    assert reg.calls["inputs"] == reg.calls["after_step"] == steps + steps // 2
    assert reg.progress[steps - 1] == pytest.approx(1.0)
    assert [h.phase for h in history] == ["train", "train", "fine_tune"]
    assert history[0].penalty > 0
    plain, _ = train_model("mlp:32", digits, TrainConfig(epochs=2, batch_size=128, seed=0))
    ratio = float(model.fc1.weight.detach().abs().sum() / plain.fc1.weight.detach().abs().sum())
    assert ratio < 0.8, ratio


def test_train_config_is_validated():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- training budget and the counterpart


def test_history_counts_every_optimiser_step_and_the_budget_sums_both_phases(digits):
    # catches a budget that forgets the fine-tune epochs (the bias the issue found: magnitude +3, svd_truncate +5)
    config = TrainConfig(epochs=2, batch_size=128, seed=0)
    steps = -(-len(digits.train_x) // 128)
    _, history = train_model("mlp:32", digits, config, get("magnitude", 0.5, fine_tune_epochs=1))
    assert [h.steps for h in history] == [steps, 2 * steps, 3 * steps]
    budget = training_budget(history)
    assert budget == TrainingBudget(epochs=3, steps=3 * steps, train_epochs=2, fine_tune_epochs=1)
    assert budget.to_dict()["steps"] == 3 * steps


@pytest.mark.parametrize(
    ("name", "options", "extra"),
    [
        ("magnitude", {}, 3),
        ("svd_truncate", {}, 5),
        ("magnitude_gradual", {}, 0),
        ("l0", {"fine_tune_epochs": 2}, 2),
        ("l1", {}, 0),
        ("nuclear", {}, 0),
        ("factorised", {}, 0),
        ("adversarial", {}, 0),
        ("none", {"fine_tune_epochs": 4}, 4),
    ],
)
def test_every_method_states_its_extra_epochs_and_its_counterpart_matches_them(name, options, extra):
    reg = get(name, **options)
    assert reg.extra_epochs == extra and reg.config()["extra_epochs"] == extra
    dense = counterpart(reg)
    assert dense.name == "none" and dense.extra_epochs == extra


def test_counterpart_has_the_same_budget_and_schedule_as_the_method(digits):
    # catches a dense comparison with fewer epochs/steps than the method, or one fine-tuned on another schedule
    config = TrainConfig(epochs=3, seed=1)
    reg = get("svd_truncate", 1.0, fine_tune_epochs=2)  # f = 1: the truncation changes nothing, only the budget differs
    model, history = train_model("mlp:32", digits, config, reg)
    dense, dense_history = train_model("mlp:32", digits, config, counterpart(reg))
    assert training_budget(history) == training_budget(dense_history)
    assert [h.phase for h in history] == [h.phase for h in dense_history] == ["train"] * 3 + ["fine_tune"] * 2
    # same schedule: at full rank, U Vᵀ fine-tuning and dense fine-tuning reach nearly the same accuracy
    assert abs(accuracy(model, digits.test_x, digits.test_y) - accuracy(dense, digits.test_x, digits.test_y)) < 0.03
    plain, _ = train_model("mlp:32", digits, config)  # fine-tuning changed the weights: the budget is real
    assert not torch.equal(plain.fc1.weight, dense.fc1.weight)


@pytest.mark.parametrize("name", [n for n in REGISTRY if n not in ("none", "adversarial")])
def test_an_empty_layer_list_is_a_one_line_error_for_every_method(name):
    # catches get("l1", layers=[]) silently touching nothing (and L1.penalty returning a plain 0 the loop cannot add)
    with pytest.raises(ValueError, match="layers must name at least one layer") as info:
        get(name, layers=[])
    assert "\n" not in str(info.value)


def test_options_are_declared_once_and_recorded_and_shown():
    reg = get("nuclear", 1e-2, every=4, exact_steps=7)
    assert Nuclear.options() == ("every", "exact_steps")
    assert reg.config() == {"name": "nuclear", "strength": 1e-2, "layers": None, "every": 4, "exact_steps": 7, "extra_epochs": 0}
    assert repr(reg) == "Nuclear(strength=0.01, layers=None, every=4, exact_steps=7)"
    assert get("none").config() == {"name": "none", "strength": None, "layers": None, "fine_tune_epochs": 0, "extra_epochs": 0}


# --------------------------------------------------------------------------- randomness: per-run generators, never the global RNG


@pytest.mark.parametrize(("spec", "shape"), [("mlp:32,16", (1, 8, 8)), ("cnn:4,8,16", (1, 8, 8)), ("linear", (1, 8, 8))])
def test_a_generator_initialises_exactly_as_torch_does_and_leaves_the_global_rng_alone(spec, shape):
    torch.manual_seed(5)
    expected = build_model(spec, shape, 10).state_dict()  # torch's own reset_parameters from the global RNG
    torch.manual_seed(123)
    state = torch.get_rng_state()
    got = build_model(spec, shape, 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.device.type == "cpu" for p in got.parameters())
    for k, v in expected.items():
        assert torch.equal(got.state_dict()[k], v), k


def test_seeded_generator_streams():
    assert torch.equal(torch.rand(5, generator=seeded_generator(7, "init")), torch.rand(5, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(torch.rand(5, generator=seeded_generator(7, "shuffle")), torch.rand(5, generator=torch.Generator().manual_seed(7)))
    regulariser = torch.rand(5, generator=seeded_generator(7, "regulariser"))
    assert torch.equal(regulariser, torch.rand(5, generator=seeded_generator(7, "regulariser")))
    assert not torch.equal(regulariser, torch.rand(5, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(regulariser, torch.rand(5, generator=seeded_generator(8, "regulariser")))
    with pytest.raises(ValueError, match="stream"):
        seeded_generator(7, "dropout")


#: regularisers that draw random numbers while training (hard-concrete noise, PGD's random start), and one that does not
RANDOM_METHODS = [("none", None, {}), ("l0", 0.5, {}), ("adversarial", 0.1, {"attack": "pgd", "steps": 2})]


def _weights(digits, name, strength, options, seed):
    config = TrainConfig(epochs=2, batch_size=128, seed=seed)
    model, _ = train_model("mlp:16", digits, config, get(name, strength, **options))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("name", "strength", "options"), RANDOM_METHODS)
def test_same_seed_same_weights_whatever_ran_before_and_whatever_the_global_rng(digits, name, strength, options):
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = _weights(digits, name, strength, options, seed=3)
    assert torch.equal(torch.get_rng_state(), before)  # training neither used nor advanced the global RNG
    torch.manual_seed(2)  # another global state, consumed, and another run in between
    torch.rand(1000)
    other = _weights(digits, name, strength, options, seed=4)
    torch.randn(77)
    again = _weights(digits, name, strength, options, seed=3)
    for k, v in first.items():
        assert torch.equal(v, again[k]), k
    assert not torch.equal(first["fc1.weight"], other["fc1.weight"])


def test_l0_noise_comes_from_the_runs_regulariser_stream(digits, monkeypatch):
    # the same initialisation and data order with another regulariser stream gives other weights: the gates draw from it
    config = TrainConfig(epochs=1, batch_size=128, seed=3)
    same, _ = train_model("mlp:16", digits, config, get("l0", 0.5))
    again, _ = train_model("mlp:16", digits, config, get("l0", 0.5))
    assert torch.equal(same.fc1.weight, again.fc1.weight)

    def other_noise(seed: int, stream: str) -> torch.Generator:
        return torch.Generator().manual_seed(seed if stream != "regulariser" else 999)

    monkeypatch.setattr(sys.modules["sparank.train"], "seeded_generator", other_noise)  # (sparank.train is also a function)
    other, _ = train_model("mlp:16", digits, config, get("l0", 0.5))
    assert not torch.equal(same.fc1.weight, other.fc1.weight)


def test_concurrent_threads_train_each_spec_to_its_serial_weights(digits):
    """The Dask-worker situation: runs of other seeds and methods train at the same time in the same process."""
    import threading
    import time

    jobs = [("l0", 0.5, {}, 3), ("adversarial", 0.1, {"attack": "pgd", "steps": 2}, 4), ("none", None, {}, 3), ("l0", 0.5, {}, 5)]
    serial = [_weights(digits, *job) for job in jobs]
    start = threading.Barrier(len(jobs))
    got: list[dict | None] = [None] * len(jobs)
    errors: list[BaseException] = []
    spans: list[tuple[float, float]] = []

    def work(i: int) -> None:
        try:
            start.wait()
            began = time.perf_counter()
            torch.manual_seed(100 + i)  # each thread also moves the global RNG
            got[i] = _weights(digits, *jobs[i])
            spans.append((began, time.perf_counter()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert max(b for b, _ in spans) < min(e for _, e in spans)  # they did run at the same time
    for i, expected in enumerate(serial):
        assert got[i] is not None
        for k, v in expected.items():
            assert torch.equal(got[i][k], v), (jobs[i], k)
