"""run.py: the typed run spec, the pure run(), and record() as the one writer of the store."""

from __future__ import annotations

import inspect
import pickle

import pytest
import torch
from typer.testing import CliRunner

from sparank.attacks import Status
from sparank.cli import app
from sparank.data import eval_subset
from sparank.models import build_model, load_state
from sparank.robustness import fgsm_robustness
from sparank.run import (
    MeasureSpec,
    RunSpec,
    TrainSpec,
    measurement_keys,
    record,
    run,
    stored_results,
    stored_state,
)
from sparank.store import Store
from sparank.structure import model_structure
from sparank.train import accuracy

SETTINGS = dict(dataset="digits", arch="mlp:32", seed=0, train=TrainSpec(epochs=3, lr=3e-3))
MEASURE = MeasureSpec(n=60, attack_n=20, attacks=("pgd", "deepfool"))


@pytest.fixture(scope="module")
def spec() -> RunSpec:
    return RunSpec(**SETTINGS, measure=MEASURE)


@pytest.fixture(scope="module")
def result(spec, digits):
    return run(spec, data=digits)


def _model(result, digits):
    model = build_model(result.spec.arch, digits.input_shape, digits.num_classes)
    load_state(model, result.state_dict, source="result")
    return model.eval()


def test_fgsm_brackets_are_fgsm_robustness_of_the_returned_weights(result, digits):
    model = _model(result, digits)
    fgsm, pgd, deepfool, best = result.measurements
    assert [m.attack for m in result.measurements] == ["fgsm", "pgd", "deepfool", "best"]
    indices, x, y = eval_subset(digits, 60)
    expected = fgsm_robustness(model, x, y, norm="linf", eps_max=0.5, resolution=1e-2, tol=1e-6)
    assert torch.equal(fgsm.indices, indices)
    assert torch.equal(fgsm.result.eps_hi, expected.eps_hi) and torch.equal(fgsm.result.eps_lo, expected.eps_lo)
    assert torch.equal(fgsm.result.status, expected.status)
    # the cross-checks, best and the masking flags are on the first attack_n inputs
    for m in (pgd, deepfool, best):
        assert torch.equal(m.indices, indices[:20]) and torch.equal(m.result.labels, y[:20])
    assert result.masking is not None and result.masking["n_correct"] == int((fgsm.result.status[:20] != Status.CLEAN_WRONG).sum())
    # best ε*: fooled wherever one attack fooled, never above any attack's verified ε*
    fooled = torch.stack([m.result.status == Status.FOOLED for m in (pgd, deepfool)] + [fgsm.result.status[:20] == Status.FOOLED])
    assert torch.equal(best.result.status == Status.FOOLED, fooled.any(dim=0))
    for r in (fgsm.result.eps_hi[:20], pgd.result.eps_hi, deepfool.result.eps_hi):
        assert bool((best.result.eps_hi <= r + 1e-12).all())
    assert all(m.result.directions is None and m.result.adversarials is None for m in result.measurements)
    # metrics and structure are those of the returned weights
    assert result.metrics["test_accuracy"] == accuracy(model, digits.test_x, digits.test_y)
    assert result.structure == model_structure(model).to_dict()
    assert result.metrics["budget"] == {"epochs": 3, "steps": 3 * -(-len(digits.train_x) // 64), "train_epochs": 3, "fine_tune_epochs": 0}
    assert result.trained and len(result.history) == 3


def test_measurement_settings_and_configs_are_the_clis(result, digits):
    fgsm, pgd, _, best = result.measurements
    group = {"norm": "linf", "eps_max": 0.5, "bounds": [0.0, 1.0], "split": "test", "data_source": digits.source}
    assert fgsm.settings == {"attack": "fgsm", "resolution": 1e-2, "tol": 1e-6, **group}
    assert pgd.settings["fgsm_resolution"] == 1e-2 and pgd.settings["restarts"] == 0
    assert best.settings == {"attack": "best", **group}
    assert fgsm.config == {
        "n": 60, "eval_seed": None, "split": "test", "bounds": [0.0, 1.0], "batch_size": 256, "attack": "fgsm",
        "dataset": "digits", "data_source": digits.source, "data_files": list(digits.files),
    }  # fmt: skip
    assert pgd.config["n"] == 20 and pgd.config["first_of"] == 60


def test_record_twice_stores_one_run_and_one_set_of_measurements(result, spec, digits, tmp_path):
    with Store(tmp_path / "s") as store:
        rid = record(store, result)
        again = record(store, pickle.loads(pickle.dumps(result)))  # as a Dask worker returns it
        assert again == rid and len(store.runs()) == 1
        stored = store.measurements(rid)
        assert [m.config["attack"] for m in stored] == ["fgsm", "pgd", "deepfool", "best"]
        assert [m.key for m in stored] == [m.key(rid) for m in result.measurements]
        for m, s in zip(result.measurements, stored, strict=True):
            table = store.brackets(s.id)
            assert torch.equal(table.eps_hi, m.result.eps_hi) and torch.equal(table.input_index, m.indices)
        assert stored[-1].config["of"] == [s.id for s in stored[:-1]]
        assert stored[-1].summary["masking"] == result.masking
        run_record = store.get_run(rid)
        assert run_record.key == spec.train_key() and run_record.kind == "train"
        assert RunSpec.model_validate(run_record.config["spec"]) == spec
        weights = store.load_weights(rid)
        assert all(torch.equal(weights[k], v) for k, v in result.state_dict.items())
        assert stored_state(store, spec) == (rid, set(measurement_keys(rid, MEASURE, digits).values()))
        assert stored_state(store, RunSpec(**{**SETTINGS, "seed": 1})) is None


def test_the_cli_trains_the_same_weights_and_config_and_record_is_then_found(result, spec, tmp_path):
    path = tmp_path / "cli"
    args = ["train", "--dataset", "digits", "--arch", "mlp:32", "--epochs", "3", "--lr", "3e-3", "--seed", "0"]
    out = CliRunner().invoke(app, [*args, "--store", str(path), "--threads", "1"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    with Store(path) as store:
        (cli_run,) = store.runs()
        weights = store.load_weights(cli_run.id)
        assert all(torch.equal(weights[k], v) for k, v in result.state_dict.items())
        for field in ("dataset", "arch", "train", "regulariser", "input_shape", "num_classes"):
            assert cli_run.config[field] == result.config[field], field
        rid = record(store, result)
        assert stored_state(store, spec) == (rid, {m.key(rid) for m in result.measurements})


def test_a_cli_measurement_with_the_same_settings_has_the_same_key(result, tmp_path):
    path = tmp_path / "s"
    with Store(path) as store:
        rid = record(store, result)
        ours = {m.config["attack"]: m.id for m in store.measurements(rid) if m.config["attack"] != "best"}
    runner = CliRunner()
    common = ["--store", str(path), "--threads", "1"]
    out = runner.invoke(app, ["measure", rid, "--n", "60", "--attack", "fgsm", *common], catch_exceptions=False)
    assert out.exit_code == 0 and out.output.count("reusing") == 1
    out = runner.invoke(app, ["measure", rid, "--n", "20", "--attack", "pgd", "--attack", "deepfool", *common], catch_exceptions=False)
    assert out.exit_code == 0 and out.output.count("reusing") == 2
    with Store(path) as store:
        stored = [
            m for m in store.measurements(rid) if (m.config["attack"], m.config["n"]) in {("fgsm", 60), ("pgd", 20), ("deepfool", 20)}
        ]
    assert {m.config["attack"]: m.id for m in stored} == ours  # nothing measured twice: the CLI found each by its key


def test_measure_only_with_weights_skips_training_and_gives_the_same_measurements(result, spec, digits, tmp_path):
    lines: list[str] = []
    again = run(spec, data=digits, weights=result.state_dict, progress=lines.append)
    assert not again.trained and again.history == [] and not any("epoch" in line for line in lines)
    assert again.train_key == result.train_key and again.masking == result.masking and again.structure == result.structure
    assert again.metrics["test_accuracy"] == result.metrics["test_accuracy"]
    for a, b in zip(again.measurements, result.measurements, strict=True):
        assert (a.attack, a.settings, a.config) == (b.attack, b.settings, b.config)
        assert torch.equal(a.indices, b.indices) and torch.equal(a.result.eps_hi, b.result.eps_hi)
        assert torch.equal(a.result.eps_lo, b.result.eps_lo) and torch.equal(a.result.status, b.result.status)
    with Store(tmp_path / "s") as store:
        with pytest.raises(ValueError, match="run_id"):
            record(store, again)  # measured on given weights, and no run of this spec is stored
        rid = record(store, result)
        n = len(store.measurements())
        assert record(store, again) == rid and len(store.measurements()) == n
        # what is stored is reused, not measured again
        known = stored_results(store, rid, MEASURE, digits)
        assert sorted(known) == ["deepfool", "fgsm", "pgd"]
        lines.clear()
        reused = run(spec, data=digits, weights=result.state_dict, known=known, progress=lines.append)
        assert not any(line.startswith(("fgsm", "pgd", "deepfool")) for line in lines), lines
        assert all(torch.equal(a.result.eps_hi, b.result.eps_hi) for a, b in zip(reused.measurements, result.measurements, strict=True))
        assert reused.masking == result.masking


def test_run_is_pure_no_store_no_output_no_global_rng(digits, capfd, monkeypatch):
    assert "store" not in inspect.signature(run).parameters

    def refuse(*args, **kwargs):
        raise AssertionError("run() touched the store")

    monkeypatch.setattr(Store, "__init__", refuse)
    state = torch.get_rng_state()
    spec = RunSpec(dataset="digits", arch="mlp:16", regulariser="l0", train=TrainSpec(epochs=1), measure=MeasureSpec(n=10, attack_n=5))
    run(spec, data=digits)
    assert torch.equal(torch.get_rng_state(), state)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"dataset": "cifar10"}, "dataset"),
        ({"arch": "mlp:"}, "arch"),
        ({"arch": "resnet"}, "arch"),
        ({"regulariser": "l7"}, "regulariser"),
        ({"regulariser": "l1", "strength": -1.0}, "strength"),
        ({"regulariser": "none", "strength": 0.1}, "strength"),
        ({"regulariser": "l0", "options": {"gate_lr": -1}}, "options: gate_lr"),
        ({"regulariser": "l1", "options": {"gates": 3}}, "options: unknown option"),
        ({"regulariser": "l1", "fine_tune_epochs": 2}, "fine_tune_epochs"),
        ({"seed": -1}, "seed"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"optimizer": "rmsprop"}}, "train.optimizer"),
        ({"train": {"lr": float("nan")}}, "train.lr"),
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"measure": {"eps_max": -1}}, "measure.eps_max"),
        ({"measure": {"resolution": 2.0}}, "measure.resolution"),
        ({"measure": {"tol": 1e-9}}, "measure.tol"),
        ({"measure": {"n": 0}}, "measure.n"),
        ({"measure": {"attacks": ["cw"]}}, "measure.attacks"),
        ({"measure": {"attacks": ["pgd", "pgd"]}}, "measure.attacks"),
        ({"measure": {"norm": "l1"}}, "measure.norm"),
        ({"measure": {"closed_form": True}}, "measure.closed_form"),  # exact only for an affine model
        ({"arch": "linear", "measure": {"closed_form": True, "certify": True}}, "measure"),  # exact already
        ({"arch": "linear", "regulariser": "l1", "strength": 1e-3, "sklearn": {"tol": 0}}, "sklearn.tol"),
        ({"arch": "linear", "regulariser": "l1", "strength": 1e-3, "sklearn": {"max_train": 1}}, "sklearn.max_train"),
        ({"regulariser": "l1", "strength": 1e-3, "sklearn": {}}, "sklearn"),  # an MLP
        ({"arch": "linear", "regulariser": "l2", "strength": 1e-3, "sklearn": {}}, "sklearn"),
        ({"arch": "linear", "regulariser": "l1", "sklearn": {}}, "sklearn"),  # no λ
    ],
)
def test_bad_specs_are_one_line_errors_naming_the_field(fields, named):
    base = {"dataset": "digits", "arch": "mlp:32"}
    for make in (lambda: RunSpec(**{**base, **fields}), lambda: RunSpec.model_validate({**base, **fields})):
        with pytest.raises(ValueError) as info:
            make()
        text = str(info.value)
        assert text.startswith(named) or f"{named}" in text.split(";")[0], text
        assert "\n" not in text
        assert str(pickle.loads(pickle.dumps(info.value))) == text  # a Dask worker can send it back


@pytest.mark.parametrize("options", [{}, {"steps": 20}, {"restarts": 2, "resolution": 0.02, "tol": 1e-5}])
def test_the_cross_check_attacks_are_built_as_the_cli_builds_them(options):
    from sparank.cli import _attack

    spec = MeasureSpec(attacks=("pgd", "fmn", "deepfool"), **options)
    cli = {"resolution": 1e-2, "tol": 1e-6, "steps": None, "restarts": 0} | options
    for attack in [spec.fgsm(), *spec.attack_objects()]:
        assert attack.settings() == _attack(attack.name, **cli).settings(), attack.name


def test_specs_are_canonical_frozen_and_keyed_by_what_trains():
    a = RunSpec(dataset="Digits", arch="mlp")
    assert (a.dataset, a.arch) == ("digits", "mlp:300,100")
    with pytest.raises(ValueError):
        a.seed = 3  # type: ignore[misc]
    same = RunSpec(dataset="digits", arch="mlp:300,100", measure=MeasureSpec(n=10, attacks=("fmn",)))  # measuring is not training
    assert a.train_key() == same.train_key()
    for other in (
        {"seed": 1},
        {"train": TrainSpec(epochs=19)},
        {"regulariser": "l1"},
        {"regulariser": "l1", "strength": 1e-3},
        {"fine_tune_epochs": 2},
        {"arch": "mlp:64"},
    ):
        assert RunSpec(**{"dataset": "digits", "arch": "mlp", **other}).train_key() != a.train_key(), other
    # an option given at its default value is the same training
    assert (
        RunSpec(dataset="digits", arch="mlp", regulariser="l0").train_key()
        == RunSpec(dataset="digits", arch="mlp", regulariser="l0", options={"gate_lr": 0.05}).train_key()
    )


def test_run_refuses_other_data_and_an_eval_set_larger_than_the_test_split(digits):
    with pytest.raises(ValueError, match="spec.dataset"):
        run(RunSpec(dataset="mnist", arch="mlp:16"), data=digits)
    with pytest.raises(ValueError, match=r"^measure\.n must be at most 450"):
        run(RunSpec(dataset="digits", arch="mlp:16", measure=MeasureSpec(n=10_000)), data=digits)


def test_closed_form_is_the_exact_crossing_the_scan_brackets(digits):
    """A linear run measured in closed form: sparank.linear's ε* of the returned weights, under a key of its own,
    and never above the scan's verified ε* (the scan finds a crossing; the closed form the first one)."""
    from sparank.linear import linear_fgsm_robustness

    exact = RunSpec(dataset="digits", arch="linear", train=TrainSpec(epochs=2, lr=3e-3), measure=MeasureSpec(n=80, closed_form=True, attack_n=10))
    result = run(exact, data=digits)
    fgsm = result.measurements[0]
    assert fgsm.settings["method"] == "closed_form" and "resolution" not in fgsm.settings
    model = build_model("linear", digits.input_shape, digits.num_classes)
    load_state(model, result.state_dict, source="test")
    w, b = model.out.weight.detach().double(), model.out.bias.detach().double()
    _, x, y = eval_subset(digits, 80)
    expected = linear_fgsm_robustness(w, b, x, y, eps_max=exact.measure.eps_max)
    assert torch.equal(fgsm.result.eps_hi, expected.eps_hi) and torch.equal(fgsm.result.status, expected.status)
    scanned = fgsm_robustness(model, x, y, eps_max=exact.measure.eps_max, resolution=1e-3, tol=1e-6)
    fooled = scanned.status == int(Status.FOOLED)
    assert bool((fooled == (fgsm.result.status == int(Status.FOOLED))).all())
    assert bool((fgsm.result.eps_hi[fooled] <= scanned.eps_hi[fooled] + 1e-6).all())
    scan_spec = exact.model_copy(update={"measure": MeasureSpec(n=80, attack_n=10)})
    assert measurement_keys("r1", exact.measure, digits)["fgsm"] != measurement_keys("r1", scan_spec.measure, digits)["fgsm"]


def test_a_sagas_fit_is_a_run_keyed_by_its_settings_and_reproducible(digits):
    """SAGA points of the L1 path: keyed by solver settings and seed (not the unused training loop), the same
    weights twice, and converged fits that satisfy the L1 optimality conditions."""
    from sparank.linear_path import kkt_violation
    from sparank.run import SklearnSpec

    base = dict(dataset="digits", arch="linear", regulariser="l1", strength=2e-3, measure=None)
    spec = RunSpec(**base, sklearn=SklearnSpec(tol=1e-6, max_iter=3000))
    assert "train" not in spec.identity() and spec.identity()["sklearn"]["seed"] == 0
    assert spec.train_key() != RunSpec(**base).train_key()  # the training loop's l1 is another model
    assert spec.train_key() != RunSpec(**base, sklearn=SklearnSpec(tol=1e-5, max_iter=3000)).train_key()
    assert spec.train_key() == RunSpec(**base, sklearn=SklearnSpec(tol=1e-6, max_iter=3000), train=TrainSpec(epochs=7)).train_key()
    first, second = run(spec, data=digits), run(spec, data=digits)
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    assert first.metrics["converged"] is True and first.metrics["n_fit"] == len(digits.train_x)
    w, b = first.state_dict["out.weight"].double(), first.state_dict["out.bias"].double()
    x = digits.train_x.reshape(len(digits.train_x), -1).double()
    assert kkt_violation(w, b, x, digits.train_y, 2e-3) < 0.05  # float32 storage rounds the optimum a little
    assert first.structure["sparsity"] > 0.2  # L1 at this λ zeroes weights exactly


def test_a_certified_run_proves_its_brackets_under_a_key_of_its_own(digits):
    """MeasureSpec(certify=True): the FGSM measurement is sparank measure --certify's, every correct input of a ReLU MLP
    is proved (not only scanned), and its eps* lies within tol of the scan's wherever the scan did not step over a crossing."""
    spec = RunSpec(dataset="digits", arch="mlp:16", train=TrainSpec(epochs=2, lr=3e-3), measure=MeasureSpec(n=40, certify=True, attack_n=5))
    result = run(spec, data=digits)
    fgsm = result.measurements[0]
    assert fgsm.settings["certify"] is True
    assert fgsm.result.certified is not None and bool(fgsm.result.certified.all())
    assert measurement_keys("r1", spec.measure, digits)["fgsm"] != measurement_keys("r1", MeasureSpec(n=40, attack_n=5), digits)["fgsm"]
    model = build_model("mlp:16", digits.input_shape, digits.num_classes)
    load_state(model, result.state_dict, source="test")
    _, x, y = eval_subset(digits, 40)
    scanned = fgsm_robustness(model, x, y, resolution=1e-2, tol=1e-6)
    fooled = scanned.status == int(Status.FOOLED)
    # the proof can only find an earlier crossing than the scan, never a later one
    assert bool((fgsm.result.eps_hi[fooled] <= scanned.eps_hi[fooled] + 1e-6).all())
