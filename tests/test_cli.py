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


# --------------------------------------------------------------------------- hardening (issue 8)


def test_two_identical_train_commands_at_once_give_one_run(tmp_path):
    """Two real processes race on a new store: both exit 0, the loser reuses the winner's run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    sparank = str(Path(sys.executable).parent / "sparank")
    args = [sparank, "train", "--arch", "mlp:16", "--epochs", "2", "--store", str(tmp_path / "s"), "--threads", "1"]
    env = {**os.environ, "SPARANK_DEBUG": ""}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("Traceback" not in o + e for o, e in outputs)
    with Store(tmp_path / "s", readonly=True) as st:
        assert len(st.runs()) == 1
    assert sorted(p.name for p in (tmp_path / "s" / "weights").iterdir()) == ["r0001.safetensors"]


def test_measuring_twice_stores_one_measurement_and_force_replaces_it(trained_store):
    args = ["measure", "r0001", "--n", "30", "--eval-seed", "3", "--store", str(trained_store), "--threads", "1", "--json"]
    first = run(*args)
    again = run(*args)
    assert first.exit_code == 0 and again.exit_code == 0, again.output
    assert "reusing it" in again.stderr
    assert json.loads(first.stdout)["measurement"] == json.loads(again.stdout)["measurement"]
    with Store(trained_store, readonly=True) as st:
        keyed = [m for m in st.measurements() if m.config["n"] == 30 and m.config["attack"] == "fgsm"]
    assert len(keyed) == 1
    assert keyed[0].config["data_source"].startswith("scikit-learn") and keyed[0].config["data_files"][0].endswith("digits.csv.gz")
    forced = run(*args, "--force")
    assert forced.exit_code == 0 and "reusing" not in forced.output
    with Store(trained_store, readonly=True) as st:
        assert len([m for m in st.measurements() if m.config["n"] == 30 and m.config["attack"] == "fgsm"]) == 1
    other = run("measure", "r0001", "--n", "30", "--eval-seed", "4", "--store", str(trained_store), "--threads", "1", "--json")
    assert json.loads(other.stdout)["measurement"] != json.loads(again.stdout)["measurement"]  # other inputs: a new measurement


def test_the_same_weights_file_is_imported_once(tmp_path):
    path = save_weights(tmp_path / "m.safetensors", build_model("mlp:16", (1, 8, 8), 10).state_dict())
    args = ["measure", "--weights", str(path), "--arch", "mlp:16", "--dataset", "digits", "--n", "10", "--store", str(tmp_path / "s")]
    assert run(*args).exit_code == 0
    second = run(*args, "--n", "11")
    assert second.exit_code == 0 and "reusing it" in second.stderr
    with Store(tmp_path / "s", readonly=True) as st:
        (r,) = st.runs()
        assert len([m for m in st.measurements() if m.config["attack"] == "fgsm"]) == 2 and r.config["data_source"].startswith("scikit-learn")


def test_every_store_the_cli_opens_is_closed(trained_store, monkeypatch):
    opened = []
    real_init = Store.__init__

    def tracking(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(Store, "__init__", tracking)
    path = save_weights(trained_store.parent / "w.safetensors", build_model("mlp:32", (1, 8, 8), 10).state_dict())
    for args in (
        ["show", "--store", str(trained_store)],
        ["show", "r0001", "--store", str(trained_store)],
        ["measure", "r0001", "--n", "5", "--store", str(trained_store)],
        ["measure", "--weights", str(path), "--arch", "mlp:32", "--dataset", "digits", "--n", "5", "--store", str(trained_store)],
    ):
        before = len(opened)
        assert run(*args).exit_code == 0
        assert len(opened) - before == 1, f"{args[0]} opened {len(opened) - before} stores"
    import sqlite3

    for store in opened:
        with pytest.raises(sqlite3.ProgrammingError):
            store._con.execute("SELECT 1")


def test_show_fits_80_columns_and_never_cuts_a_run_id(trained_store, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = run("show", "--store", str(trained_store))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()[1:]  # after the title, which names the store path
    assert all(len(line) <= 80 for line in lines), lines
    assert any(line.startswith("r0001 ") for line in lines) and "…" not in result.stdout
    assert "\x1b[" not in result.stdout  # plain text
    monkeypatch.setenv("COLUMNS", "40")
    narrow = run("show", "--store", str(trained_store)).stdout
    assert "r0001" in narrow and "regulariser" in narrow  # the most important columns stay
    monkeypatch.delenv("COLUMNS")
    piped = run("show", "--store", str(trained_store)).stdout
    header = next(line for line in piped.splitlines() if line.startswith("run "))
    assert header.split() == ["run", "kind", "dataset", "arch", "regulariser", "seed", "test_acc", "sparsity", "eff_rank", "AUC_eps*", "median_eps*"]


def test_show_one_run_is_for_people_and_json_is_for_programs(trained_store):
    human = run("show", "r0001", "--store", str(trained_store))
    assert human.exit_code == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(human.stdout)
    for part in ("run r0001", "data source", "arch", "history", "structure:", "fc1", "measurements:", "AUC", "median_eps*", "no_dir", "gradient masking"):
        assert part in human.stdout, part
    assert json.loads(run("show", "r0001", "--json", "--store", str(trained_store)).stdout)["id"] == "r0001"


def test_regularisers_shows_open_ranges_where_the_end_is_refused():
    result = run("regularisers")
    line = next(line for line in result.stdout.splitlines() if "factorised" in line)
    assert "(0, 1]" in line
    assert "[0, ∞)" in next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith("l1 "))


def test_threads_and_store_options_have_help():
    for command in ("train", "measure", "linear", "demo"):
        text = run(command, "--help").output
        assert "--threads" in text and "CPU threads" in text and "--store" in text, command
    assert "--store" in run("show", "--help").output


def test_measure_progress_counts_inputs_with_an_eta():
    from sparank.cli import _measure_progress

    progress, on_progress = _measure_progress(10, "test")
    on_progress(4, 10)
    (task,) = progress.tasks
    assert (task.completed, task.total) == (4, 10)
    assert any(type(c).__name__ == "TimeRemainingColumn" for c in progress.columns)


def test_a_dense_counterpart_with_a_methods_fine_tune_budget(tmp_path):
    """`--regulariser none --fine-tune-epochs K` trains the dense model K more epochs, as magnitude does; the budget is stored."""
    store = tmp_path / "s"
    common = ("--dataset", "digits", "--arch", "mlp:16", "--epochs", "2", "--store", str(store), "--threads", "1")
    assert run("train", *common, "--regulariser", "magnitude", "--strength", "0.5", "--fine-tune-epochs", "1").exit_code == 0
    assert run("train", *common, "--regulariser", "none", "--fine-tune-epochs", "1").exit_code == 0
    assert run("train", *common).exit_code == 0
    runs = {(r.config["regulariser"]["name"], r.config["regulariser"].get("fine_tune_epochs")): r for r in Store(store, create=False).runs()}
    pruned, counterpart, plain = runs[("magnitude", 1)], runs[("none", 1)], runs[("none", 0)]
    assert pruned.metrics["budget"] == counterpart.metrics["budget"]
    assert counterpart.metrics["budget"]["epochs"] == 3 and plain.metrics["budget"]["epochs"] == 2
    assert counterpart.metrics["budget"]["steps"] > plain.metrics["budget"]["steps"]
    refused = runner.invoke(app, ["train", *common, "--regulariser", "l1", "--fine-tune-epochs", "1"])
    assert refused.exit_code == 2 and "--fine-tune-epochs" in refused.output and "magnitude" in refused.output


def test_several_attacks_are_stored_side_by_side_with_best_and_masking_flags(tmp_path):
    store = str(tmp_path)
    for seed in ("0", "1"):
        trained = run("train", "--arch", "mlp:32", "--epochs", "3", "--seed", seed, "--store", store, "--threads", "1")
        assert trained.exit_code == 0, trained.output
    args = ["measure", "r0001", "--n", "40", "--store", store, "--threads", "1"]
    result = run(*args, "--attack", "fgsm", "--attack", "pgd", "--attack", "deepfool", "--attack", "fmn", "--steps", "20", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [m["summary"]["attack"] for m in payload["measurements"]] == ["fgsm", "pgd", "deepfool", "fmn"]
    best = payload["best"]
    assert sorted(best["of"]) == sorted(m["measurement"] for m in payload["measurements"])
    with Store(tmp_path, readonly=True) as st:
        tables = {m.config["attack"]: st.brackets(m.id) for m in st.measurements("r0001")}
        configs = {m.config["attack"]: m.config for m in st.measurements("r0001")}
    assert configs["pgd"]["attack_settings"]["steps"] == 20 and configs["fmn"]["attack_settings"]["steps"] == 20
    for name in ("fgsm", "pgd", "deepfool", "fmn"):  # best ε* is at most each attack's verified distance
        finite = tables[name].distance.isfinite()
        assert (tables["best"].eps_hi[finite] <= tables[name].distance[finite]).all()
    assert best["masking"]["unbounded_success"] == 1.0 and best["masking"]["masked"] is False
    transfer = run(*args, "--attack", "transfer", "--source", "r0002", "--json")
    assert transfer.exit_code == 0, transfer.output
    both = json.loads(transfer.stdout)["measurements"]
    assert [(m["run"], m["summary"]["attack"]) for m in both] == [("r0001", "transfer"), ("r0002", "transfer")]
    with Store(tmp_path, readonly=True) as st:
        sources = [m.config["attack_settings"]["source"] for m in st.measurements() if m.config["attack"] == "transfer"]
    assert sources == ["r0002", "r0001"]
    shown = run("show", "r0001", "--store", store)
    assert shown.exit_code == 0
    for word in ("fgsm", "pgd", "deepfool", "fmn", "transfer", "best", "gradient masking"):
        assert word in shown.stdout, word
    again = run(*args, "--attack", "pgd", "--steps", "20")
    assert again.exit_code == 0 and "reusing it" in again.stderr


TINY_STUDY = """
name = "tiny"
datasets = ["digits"]
archs = ["mlp:16"]
seeds = [0, 1]
[train]
epochs = 2
[measure]
n = 60
attacks = ["pgd"]
attack_n = 20
reference_eps = [0.05]
[[regulariser]]
name = "l1"
strengths = [1e-3]
[controls]
l2 = [1e-3]
"""


def test_a_study_from_its_config_to_its_report_and_a_rerun_that_skips_everything(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_STUDY)
    store = tmp_path / "store"
    first = run("study", str(config), "--store", str(store), "--workers", "0")
    assert first.exit_code == 0, first.output
    assert "6 runs (0 already stored, 6 done now)" in first.stdout  # l1 and its counterpart and control, 2 seeds
    report = store / "report" / "report.html"
    assert f"report: {report.resolve()}" in first.stdout and report.stat().st_size > 0
    with Store(store, readonly=True) as st:
        runs = st.runs()
        names = sorted((r.config["regulariser"]["name"], r.config["train"]["seed"]) for r in runs)
        attacks = sorted({m.config["attack"] for m in st.measurements()})
    assert names == [("l1", 0), ("l1", 1), ("l2", 0), ("l2", 1), ("none", 0), ("none", 1)]
    assert attacks == ["best", "fgsm", "pgd"]
    again = run("study", str(config), "--store", str(store), "--workers", "0")
    assert again.exit_code == 0 and "6 runs (6 already stored, 0 done now)" in again.stdout
    with Store(store, readonly=True) as st:
        assert len(st.runs()) == 6
    config.write_text(TINY_STUDY.replace("epochs = 2", "epoch = 2"))
    bad = run("study", str(config), "--store", str(store))
    assert bad.exit_code == 2 and str(config) in bad.output and "epoch" in bad.output and len(bad.output.strip().splitlines()) == 1
