"""The `sparank` command, end to end on digits: train, measure, show, and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sparank.cli import app
from sparank.models import build_model
from sparank.store import Store, save_weights

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    result = run("train", "--dataset", "digits", "--arch", "mlp:32", "--epochs", "3", "--store", str(store), "--threads", "1")
    assert result.exit_code == 0, result.output
    return store


def test_train_measure_show_round_trip(trained_store):
    st = Store(trained_store, create=False)
    (r,) = st.runs()
    assert r.config["arch"] == "mlp:32" and r.config["train"]["epochs"] == 3
    assert len(r.history) == 3 and r.structure["n_weights"] == 64 * 32 + 32 * 10
    result = run("measure", r.id, "--n", "50", "--store", str(trained_store), "--json", "--threads", "1")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["summary"]["n"] == 50
    brackets = st.brackets(payload["measurement"])
    assert len(brackets) == 50 and brackets.input_index.tolist() == list(range(50))
    shown = json.loads(run("show", "--store", str(trained_store), "--json").stdout)
    assert shown[0]["id"] == r.id and shown[0]["latest_measurement"]["n"] == 50
    detail = json.loads(run("show", r.id, "--store", str(trained_store), "--json").stdout)
    assert detail["measurements"][0]["config"]["n"] == 50


def test_training_the_same_config_again_reuses_the_run(trained_store):
    result = run("train", "--dataset", "digits", "--arch", "mlp:32", "--epochs", "3", "--store", str(trained_store), "--threads", "1")
    assert result.exit_code == 0 and "reusing" in result.output
    assert len(Store(trained_store, create=False).runs()) == 1


def test_measure_a_users_safetensors_file(tmp_path):
    model = build_model("mlp:16", (1, 8, 8), 10)
    path = save_weights(tmp_path / "m.safetensors", model.state_dict())
    store = tmp_path / "s"
    result = run("measure", "--weights", str(path), "--arch", "mlp:16", "--dataset", "digits", "--n", "20", "--store", str(store), "--json")
    assert result.exit_code == 0, result.output
    (r,) = Store(store, create=False).runs()
    assert r.kind == "import" and len(r.config["sha256"]) == 64


def test_weights_that_do_not_fit_the_arch(tmp_path):
    path = save_weights(tmp_path / "m.safetensors", build_model("mlp:16", (1, 8, 8), 10).state_dict())
    result = runner.invoke(app, ["measure", "--weights", str(path), "--arch", "mlp:32", "--dataset", "digits", "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "do not fit" in result.output and "Traceback" not in result.output
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    result = runner.invoke(app, ["measure", "--weights", str(bad), "--arch", "mlp:16", "--dataset", "digits", "--store", str(tmp_path / "s")])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_every_command_has_help_with_an_example():
    for command in ("train", "measure", "show", "regularisers", "demo"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output, command
