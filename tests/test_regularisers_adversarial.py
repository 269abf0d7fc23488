"""Adversarial training: the attacks it trains on, checked by hand, and the robustness it buys on digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from sparank.data import Dataset
from sparank.models import build_model
from sparank.regularisers import REGISTRY, get
from sparank.regularisers.adversarial import Adversarial
from sparank.robustness import fgsm_robustness
from sparank.train import TrainConfig, accuracy, train_model

SPEC = "mlp:64"


@pytest.fixture(scope="module")
def batch(digits: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return digits.test_x[:64], digits.test_y[:64]


@pytest.fixture(scope="module")
def dense_and_adversarial(digits: Dataset) -> tuple[nn.Module, nn.Module]:
    """`none` and `adversarial` (FGSM, ε_train = 0.1) trained on digits at the same seed."""
    config = TrainConfig(epochs=20, seed=0)
    dense, _ = train_model(SPEC, digits, config, get("none"))
    robust, _ = train_model(SPEC, digits, config, get("adversarial", 0.1))
    return dense, robust


def plain_input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad


class ModeRecorder(nn.Module):
    """Passes its input through and records the training flag it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


def test_registered_with_metadata() -> None:
    cls = REGISTRY["adversarial"]
    assert cls is Adversarial
    assert "1412.6572" in cls.reference and "1706.06083" in cls.reference
    assert cls.strength_range == (0.0, 1.0)


@pytest.mark.parametrize(
    ("strength", "options", "match"),
    [
        (-0.1, {}, "strength"),
        (1.5, {}, "strength"),
        (0.1, {"attack": "cw"}, "attack"),
        (0.1, {"attack": "pgd", "steps": 0}, "steps"),
        (0.1, {"attack": "pgd", "step_size": -0.01}, "step_size"),
        (0.1, {"clean_fraction": 1.5}, "clean_fraction"),
        (0.1, {"layers": ["fc1"]}, "layers"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_parameter(strength: float, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get("adversarial", strength, **options)


def test_fgsm_inputs_match_a_hand_computation(digits_mlp: nn.Module, batch) -> None:
    x, y = batch
    eps = 0.1
    expected = (x + eps * plain_input_gradient(digits_mlp, x, y).sign()).clamp(0.0, 1.0)
    digits_mlp.zero_grad(set_to_none=True)
    digits_mlp.train()
    x_adv = Adversarial(eps).inputs(digits_mlp, x, y)
    assert torch.equal(x_adv, expected)
    assert not x_adv.requires_grad
    assert all(p.grad is None for p in digits_mlp.parameters())  # nothing leaks into the optimiser step
    assert digits_mlp.training  # train mode restored
    digits_mlp.eval()


def test_attack_runs_in_eval_mode_and_restores_train_mode(batch) -> None:
    x, y = batch
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, nn.Flatten(), nn.Linear(64, 10))
    for attack in ("fgsm", "pgd"):
        recorder.seen.clear()
        model.train()
        Adversarial(0.1, attack=attack, steps=3).inputs(model, x, y)
        assert recorder.seen and not any(recorder.seen), attack
        assert model.training


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_adversarial_inputs_stay_in_the_ball_and_the_box_and_raise_the_loss(digits_mlp: nn.Module, batch, attack: str) -> None:
    x, y = batch
    eps = 0.1
    torch.manual_seed(0)
    x_adv = Adversarial(eps, attack=attack).inputs(digits_mlp, x, y)
    assert x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        assert F.cross_entropy(digits_mlp(x_adv), y) > F.cross_entropy(digits_mlp(x), y) + 0.1


def test_pgd_one_step_without_random_start_is_fgsm(digits_mlp: nn.Module, batch) -> None:
    x, y = batch
    pgd = Adversarial(0.07, attack="pgd", steps=1, step_size=0.07, random_start=False).inputs(digits_mlp, x, y)
    assert torch.equal(pgd, Adversarial(0.07).inputs(digits_mlp, x, y))


def reference_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int, step_size: float, random_start: bool
) -> torch.Tensor:
    """The training PGD loop as it was written before it called :func:`sparank.attacks.pgd.pgd` (the reference)."""
    from sparank.attacks import fgsm_direction

    x = x.detach()
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)) if random_start else x.clone()
    x_adv = x_adv.clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv + step_size * fgsm_direction(model, x_adv, y)
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


@pytest.mark.parametrize(
    ("eps", "options"),
    [
        (0.1, {}),
        (0.3, {"steps": 3, "random_start": False}),
        (8 / 255, {"steps": 10, "step_size": 2 / 255}),
        (0.07, {"steps": 4, "step_size": 0.013}),
        (0.23, {"steps": 1, "step_size": 0.23, "random_start": False}),
    ],
)
def test_pgd_training_inputs_are_bit_identical_to_the_reference_loop(digits_mlp: nn.Module, batch, eps: float, options: dict) -> None:
    """Seeded adversarial training repeats the numbers it gave before: same points, same draws from the global RNG."""
    x, y = batch
    method = Adversarial(eps, attack="pgd", **options)
    digits_mlp.eval()
    torch.manual_seed(11)
    expected = reference_pgd(digits_mlp, x, y, eps, steps=method.steps, step_size=method.pgd_step_size, random_start=method.random_start)
    rng_after = torch.rand(4)
    torch.manual_seed(11)
    got = method.inputs(digits_mlp, x, y)
    assert torch.equal(got, expected)
    assert torch.equal(torch.rand(4), rng_after)  # the same number of draws from the global RNG


def test_pgd_random_start_draws_from_the_runs_generator(digits_mlp: nn.Module, batch) -> None:
    """In training the loop sets ``generator``: the random starts come from it and the global RNG is left alone."""
    x, y = batch
    method = Adversarial(0.1, attack="pgd", steps=2)

    def inputs(seed: int) -> torch.Tensor:
        method.generator = torch.Generator().manual_seed(seed)
        return method.inputs(digits_mlp, x, y)

    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = inputs(5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(1)
    assert torch.equal(inputs(5), a)
    assert not torch.equal(inputs(6), a)  # the random start is used
    assert float((a - x).abs().max()) <= 0.1 + 1e-6 and float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_pgd_is_stronger_than_fgsm_on_average(digits_mlp: nn.Module, batch) -> None:
    x, y = batch
    torch.manual_seed(0)
    with torch.no_grad():
        loss_fgsm = F.cross_entropy(digits_mlp(Adversarial(0.1).inputs(digits_mlp, x, y)), y)
        loss_pgd = F.cross_entropy(digits_mlp(Adversarial(0.1, attack="pgd", steps=10).inputs(digits_mlp, x, y)), y)
    assert loss_pgd > loss_fgsm


def test_clean_fraction_keeps_the_tail_of_the_batch_clean(digits_mlp: nn.Module, batch) -> None:
    x, y = batch
    mixed = Adversarial(0.1, clean_fraction=0.25).inputs(digits_mlp, x, y)
    assert torch.equal(mixed[48:], x[48:])  # round(0.25·64) = 16 clean rows at the end
    assert torch.equal(mixed[:48], Adversarial(0.1).inputs(digits_mlp, x[:48], y[:48]))
    assert torch.equal(Adversarial(0.1, clean_fraction=1.0).inputs(digits_mlp, x, y), x)
    assert torch.equal(Adversarial(0.0).inputs(digits_mlp, x, y), x)


def test_config_records_the_attack() -> None:
    model = build_model(SPEC, (1, 8, 8), 10)
    config = Adversarial(0.1, attack="pgd", steps=5).config(model)
    assert config["name"] == "adversarial" and config["strength"] == 0.1 and config["layers"] == []
    assert config["attack"] == "pgd" and config["steps"] == 5
    assert config["step_size"] == pytest.approx(2.5 * 0.1 / 5)
    assert config["clean_fraction"] == 0.0


@pytest.mark.slow
def test_pgd_training_is_deterministic_for_a_seed(digits: Dataset) -> None:
    small = Dataset("digits", digits.train_x[:256], digits.train_y[:256], digits.test_x, digits.test_y, digits.classes)
    config = TrainConfig(epochs=2, seed=3)
    a, _ = train_model(SPEC, small, config, get("adversarial", 0.1, attack="pgd", steps=3))
    b, _ = train_model(SPEC, small, config, get("adversarial", 0.1, attack="pgd", steps=3))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_adversarial_training_raises_the_fgsm_auc_and_keeps_accuracy(dense_and_adversarial, digits: Dataset) -> None:
    dense, robust = dense_and_adversarial
    auc = {
        name: fgsm_robustness(m, digits.test_x, digits.test_y, eps_max=0.5, resolution=1e-2).summary().auc
        for name, m in (("none", dense), ("adversarial", robust))
    }
    assert auc["adversarial"] > 1.2 * auc["none"], auc
    dense_acc = accuracy(dense, digits.test_x, digits.test_y)
    robust_acc = accuracy(robust, digits.test_x, digits.test_y)
    assert robust_acc >= dense_acc - 0.03, (robust_acc, dense_acc)


@pytest.mark.slow
def test_safetensors_round_trip_gives_identical_predictions(dense_and_adversarial, digits: Dataset, tmp_path) -> None:
    _, robust = dense_and_adversarial
    fresh = build_model(SPEC, digits.input_shape, digits.num_classes)
    state = robust.state_dict()
    assert [(k, v.shape) for k, v in state.items()] == [(k, v.shape) for k, v in fresh.state_dict().items()]
    path = tmp_path / "adversarial.safetensors"
    save_file(state, str(path))
    fresh.load_state_dict(load_file(str(path)))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(digits.test_x), robust(digits.test_x))
