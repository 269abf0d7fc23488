"""Studies: the config (one-line errors naming file and key), the grid (counterparts, controls, no duplicates),
and execution on a real Dask LocalCluster, with a real kill -9 of the driver and of a worker.

The small study trains 10 tiny digits models (2 epochs) and measures each on 40 inputs (PGD on 10);
the reference store is its serial run (``workers=0``), and every other way of running it must give
an equal store: the same train keys, bit-identical weights, the same brackets.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sparank.regularisers import REGISTRY
from sparank.run import RunSpec
from sparank.store import Store
from sparank.study import (
    StudyConfig,
    expand,
    load_config,
    pairs,
    parse_config,
    run_study,
)

ROOT = Path(__file__).resolve().parents[1]

SMALL = """
name = "small"
datasets = ["digits"]
archs = ["mlp:16"]
seeds = [0, 1]

[train]
epochs = 2

[measure]
n = 40
attacks = ["pgd"]
attack_n = 10

[[regulariser]]
name = "l1"
strengths = [1e-3]

[[regulariser]]
name = "svd_truncate"
strengths = [0.5]
fine_tune_epochs = 1

[controls]
l2 = [1e-3]
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


# --------------------------------------------------------------------------- config


def test_unknown_keys_name_the_file_the_key_and_the_fix(tmp_path):
    assert "seed: unknown key; did you mean 'seeds'?" in error_of(tmp_path, 'name = "x"\nseed = [1]\n')
    message = error_of(tmp_path, 'name = "x"\n[train]\nepoch = 3\n')
    assert "train.epoch: unknown key; did you mean 'epochs'? [train] takes epochs, batch_size" in message
    message = error_of(tmp_path, 'name = "x"\n[measure]\nattack = ["pgd"]\n')
    assert "measure.attack: unknown key; did you mean 'attacks'?" in message and "reference_eps" in message
    message = error_of(tmp_path, 'name = "x"\n[[regulariser]]\nname = "l1"\nstrength = [1e-3]\n')
    assert "regulariser[0].strength: unknown key; did you mean 'strengths'?" in message
    assert "controls.l1: unknown key; [controls] takes l2" in error_of(tmp_path, 'name = "x"\n[controls]\nl1 = [1.0]\n')


def test_bad_values_name_the_file_and_the_key(tmp_path):
    two = 'name = "x"\n[[regulariser]]\nname = "l1"\nstrengths = [1e-3]\n[[regulariser]]\nname = "magnitude"\nstrengths = [0.5, 2.0]\n'
    message = error_of(tmp_path, two)
    assert ": regulariser[1].strengths[1]: strength 2.0 is out of range for 'magnitude'" in message
    assert "seeds[0]: Input should be a valid integer" in error_of(tmp_path, 'name = "x"\nseeds = ["a"]\n')
    assert "train.epochs must be an integer >= 1, got 0" in error_of(tmp_path, 'name = "x"\n[train]\nepochs = 0\n')
    assert "measure.attacks[0]: Input should be 'pgd', 'fmn' or 'deepfool', got 'cw'" in error_of(
        tmp_path, 'name = "x"\n[measure]\nattacks = ["cw"]\n'
    )
    assert "measure.reference_eps[1]: 0.6 must be in (0, eps_max = 0.5]" in error_of(
        tmp_path, 'name = "x"\n[measure]\nreference_eps = [0.1, 0.6]\n'
    )
    assert "datasets[1]: unknown dataset 'cifar'" in error_of(tmp_path, 'name = "x"\ndatasets = ["digits", "cifar"]\n')
    assert "archs[0]: spec 'mlp:' has a colon but no widths" in error_of(tmp_path, 'name = "x"\narchs = ["mlp:"]\n')
    assert "regulariser[0].name: unknown regulariser 'l3'" in error_of(
        tmp_path, 'name = "x"\n[[regulariser]]\nname = "l3"\nstrengths = [1.0]\n'
    )
    assert "regulariser[0].fine_tune_epochs: 'l1' does not fine-tune" in error_of(
        tmp_path, 'name = "x"\n[[regulariser]]\nname = "l1"\nstrengths = [1e-3]\nfine_tune_epochs = 2\n'
    )
    assert "regulariser[0].options: unknown option(s) ['group'] for regulariser 'group_lasso'" in error_of(
        tmp_path, 'name = "x"\n[[regulariser]]\nname = "group_lasso"\nstrengths = [0.1]\noptions = {group = "incoming"}\n'
    )
    assert "regulariser[0].strengths: 'l1' needs a list of strengths" in error_of(tmp_path, 'name = "x"\n[[regulariser]]\nname = "l1"\n')
    assert "regulariser[0].strengths: 'none' takes no strength" in error_of(
        tmp_path, 'name = "x"\n[[regulariser]]\nname = "none"\nstrengths = [1.0]\n'
    )
    assert "seeds: [0, 0] lists a value twice" in error_of(tmp_path, 'name = "x"\nseeds = [0, 0]\n')
    assert "controls.l2[0]: strength -1.0 is out of range for 'l2'" in error_of(tmp_path, 'name = "x"\n[controls]\nl2 = [-1]\n')
    assert "name: Field required" in error_of(tmp_path, 'datasets = ["digits"]\n')


def test_unparsable_toml_gives_line_and_column(tmp_path):
    message = error_of(tmp_path, 'name = "x"\ndatasets = [digits]\n')
    assert "not valid TOML" in message and "line 2, column 13" in message


def test_defaults_resolved_and_frozen(tmp_path):
    config = load_config(write(tmp_path, 'name = "x"\n[train]\nepochs = 3\n'))
    resolved = config.resolved()
    # what the file said, and every default filled in
    assert resolved["train"] == {"epochs": 3, "batch_size": 64, "lr": 1e-3, "optimizer": "adam", "momentum": 0.9}
    assert resolved["seeds"] == [0, 1, 2] and resolved["datasets"] == ["digits"] and resolved["regulariser"] == []
    assert resolved["measure"]["reference_eps"] == [0.05, 0.1] and resolved["controls"] == {"l2": [1e-3, 1e-2, 1e-1]}
    assert parse_config(resolved) == config  # the resolved form reads back as the same config
    with pytest.raises(Exception):
        config.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_expand(path):
    config = load_config(path)
    specs = expand(config)
    assert len({s.train_key() for s in specs}) == len(specs)
    if path.name == "digits.toml":  # the default study: every method of the registry, two or three strengths, three seeds
        assert {e.name for e in config.regulariser} == set(REGISTRY) - {"none"}
        assert all(2 <= len(e.strengths or ()) <= 3 for e in config.regulariser)
        assert len(config.seeds) == 3


# --------------------------------------------------------------------------- grid


def test_expand_adds_counterparts_and_controls_without_duplicates(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
            name = "grid"
            seeds = [0, 1]
            [[regulariser]]
            name = "l1"
            strengths = [1e-4, 1e-3]
            [[regulariser]]
            name = "magnitude"          # fine-tunes 3 epochs by default
            strengths = [0.5]
            [[regulariser]]
            name = "svd_truncate"
            strengths = [0.5]
            fine_tune_epochs = 1
            [[regulariser]]
            name = "l2"                 # 1e-2 is also a control: one run, not two
            strengths = [1e-2]
            [controls]
            l2 = [1e-3, 1e-2]
            """,
        )
    )
    specs = expand(config)
    assert specs == expand(config)  # deterministic
    got = [(s.seed, s.regulariser, s.strength, s.fine_tune_epochs) for s in specs]
    want = list(
        (seed, *run)
        for seed in (0, 1)
        for run in [
            ("none", None, None), ("none", None, 3), ("none", None, 1),  # dense, and the budget-matched counterparts
            ("l2", 1e-3, None), ("l2", 1e-2, None),  # controls (1e-2 also listed as a method)
            ("l1", 1e-4, None), ("l1", 1e-3, None), ("magnitude", 0.5, None), ("svd_truncate", 0.5, 1),
        ]
    )  # fmt: skip
    assert sorted(got, key=repr) == sorted(want, key=repr)
    assert len({s.train_key() for s in specs}) == len(specs) == 18
    assert all(s.train == config.train and s.measure is not None and s.measure.n == config.measure.n for s in specs)

    found = {(p.spec.regulariser, p.spec.strength, p.spec.seed): p for p in pairs(config, specs)}
    assert len(found) == 10  # l1 x2, magnitude, svd_truncate, l2 (listed as a method), per seed
    magnitude = found[("magnitude", 0.5, 1)]
    assert (magnitude.counterpart.regulariser, magnitude.counterpart.fine_tune_epochs, magnitude.counterpart.seed) == ("none", 3, 1)
    assert found[("svd_truncate", 0.5, 0)].counterpart.fine_tune_epochs == 1
    assert found[("l1", 1e-3, 0)].counterpart.fine_tune_epochs is None
    assert [(c.regulariser, c.strength, c.seed) for c in found[("l1", 1e-3, 0)].controls] == [("l2", 1e-3, 0), ("l2", 1e-2, 0)]
    assert found[("l2", 1e-2, 0)].controls == ()  # l2 is no sparse or low-rank method: no control
    keys = {s.train_key() for s in specs}
    assert all(p.counterpart.train_key() in keys and {c.train_key() for c in p.controls} <= keys for p in found.values())


def test_pairs_refuse_a_grid_without_the_counterpart():
    config = StudyConfig(name="x", seeds=(0,), regulariser=({"name": "l1", "strengths": (1e-3,)},))  # type: ignore[arg-type]
    specs = [s for s in expand(config) if s.regulariser != "none"]
    with pytest.raises(ValueError, match="the grid lacks none"):
        pairs(config, specs)


def test_adversarial_has_no_control():
    config = StudyConfig(name="x", seeds=(0,), regulariser=({"name": "adversarial", "strengths": (0.1,)},))  # type: ignore[arg-type]
    (pair,) = pairs(config)
    assert pair.controls == () and pair.counterpart.regulariser == "none"


# --------------------------------------------------------------------------- execution


def snapshot(path: Path) -> dict[str, dict]:
    """Everything that must agree between two runs of a study, by train key: weights, accuracy, every measurement's brackets."""
    out = {}
    with Store(path, readonly=True) as store:
        for run in store.runs():
            measurements = {}
            for m in store.measurements(run.id):
                table = store.brackets(m.id)
                measurements[(m.config["attack"], len(table))] = (
                    table.input_index,
                    table.eps_lo,
                    table.eps_hi,
                    table.status,
                    table.distance,
                )
            out[run.key] = {
                "id": run.id,
                "weights": store.load_weights(run.id),
                "accuracy": run.metrics["test_accuracy"],
                "measurements": measurements,
                "study": run.config["study"],
            }
    return out


def assert_same_store(ours: dict, reference: dict) -> None:
    assert set(ours) == set(reference)
    for key, want in reference.items():
        got = ours[key]
        assert got["accuracy"] == want["accuracy"]
        assert got["weights"].keys() == want["weights"].keys()
        assert all(torch.equal(got["weights"][k], want["weights"][k]) for k in want["weights"]), key  # bit for bit
        assert got["measurements"].keys() == want["measurements"].keys()
        for what, columns in want["measurements"].items():
            for a, b in zip(got["measurements"][what], columns, strict=True):
                assert torch.equal(a.nan_to_num(-1), b.nan_to_num(-1)), (key, what)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return parse_config(__import__("tomllib").loads(SMALL), source="small")


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory):
    """The small study run serially: the store every other way of running it must equal."""
    path = tmp_path_factory.mktemp("reference") / "store"
    with Store(path) as store:
        outcome = run_study(small, store, workers=0, progress=False)
    assert outcome.ok and len(outcome.recorded) == 10 and not outcome.skipped
    return path, snapshot(path)


def test_serial_run_is_complete_and_a_rerun_skips_everything(small, reference):
    path, ref = reference
    assert len(ref) == 10
    for entry in ref.values():  # FGSM on 40, PGD on 10, best on 10
        assert set(entry["measurements"]) == {("fgsm", 40), ("pgd", 10), ("best", 10)}
        assert entry["study"] == small.resolved()
    calls = []
    with Store(path) as store:
        outcome = run_study(small, store, workers=0, progress=False, on_record=lambda s, r: calls.append(r))
    assert outcome.ok and outcome.recorded == () and len(outcome.skipped) == 10 and calls == []
    assert outcome.run_ids == {k: v["id"] for k, v in ref.items()}


def test_a_missing_measurement_is_measured_from_the_stored_weights(small, reference, tmp_path):
    import shutil

    path = tmp_path / "store"
    shutil.copytree(reference[0], path)
    with Store(path) as store:  # drop one run's PGD measurement (its best record stays, and is redone)
        run = store.runs()[3]
        (pgd,) = [m for m in store.measurements(run.id) if m.config["attack"] == "pgd"]
    with sqlite3.connect(path / "sparank.sqlite") as con:
        con.execute("PRAGMA foreign_keys = ON")
        con.execute("DELETE FROM measurements WHERE id = ?", (pgd.id,))
    with Store(path) as store:
        outcome = run_study(small, store, workers=0, progress=False)
    assert outcome.ok and outcome.recorded == (run.key,) and len(outcome.skipped) == 9
    assert_same_store(snapshot(path), reference[1])  # the same weights (not retrained), the same PGD brackets


def test_local_cluster_with_two_workers_gives_the_serial_store(small, reference, tmp_path):
    path = tmp_path / "store"
    with Store(path) as store:
        outcome = run_study(small, store, workers=2, progress=False)
    assert outcome.ok and len(outcome.recorded) == 10
    assert_same_store(snapshot(path), reference[1])


DRIVER = """
import sys, tomllib, torch
from sparank.store import Store
from sparank.study import parse_config, run_study
config = parse_config(tomllib.loads(sys.argv[1]), source="small")
with Store(sys.argv[2]) as store:
    run_study(config, store, workers=2, progress=False)
"""


def wait_for_runs(path: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the study finished before it could be killed"
        if (path / "sparank.sqlite").exists():
            try:
                with Store(path, readonly=True) as store:
                    n = len(store.runs())
            except Exception:  # the driver is creating the store
                n = 0
            if n >= count:
                return n
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} runs recorded after {timeout} s")


def test_kill_9_of_the_driver_loses_nothing_and_duplicates_nothing(small, reference, tmp_path):
    path = tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, SMALL, str(path)], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_runs(path, 2, process)
        os.kill(process.pid, signal.SIGKILL)  # the driver only: its Dask workers are its children
        process.wait(timeout=30)
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything of that session still alive
    before = snapshot(path)
    assert 2 <= len(before) < 10, "killed too late to test anything"
    with Store(path) as store:
        outcome = run_study(small, store, workers=0, progress=False)
    assert outcome.ok
    after = snapshot(path)
    assert_same_store(after, reference[1])  # equal to an uninterrupted run, with every run once
    assert all(after[key]["id"] == entry["id"] for key, entry in before.items())  # what was recorded is kept, not redone
    assert not set(outcome.recorded) & {k for k, e in before.items() if len(e["measurements"]) == 3}


def test_existing_cluster_and_a_killed_worker(small, reference, tmp_path):
    from distributed import Client, LocalCluster

    path = tmp_path / "store"
    killed = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)

        def kill_a_busy_worker(spec: RunSpec, run_id: str) -> None:
            if killed:
                return
            busy = [address for address, keys in client.processing().items() if keys]
            assert busy, "no worker is running anything"
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])

        with Store(path) as store:
            outcome = run_study(small, store, scheduler=cluster.scheduler_address, progress=False, on_record=kill_a_busy_worker)
        assert killed and pids[killed[0]] not in client.run(os.getpid).values()  # the nanny started a new process
    assert outcome.ok and len(outcome.recorded) == 10
    assert_same_store(snapshot(path), reference[1])


def test_bad_arguments_are_one_line_errors(small, tmp_path):
    with Store(tmp_path / "store") as store:
        with pytest.raises(ValueError, match="threads_per_worker must be an integer >= 1"):
            run_study(small, store, threads_per_worker=0)
        with pytest.raises(ValueError, match="workers must be an integer >= 0"):
            run_study(small, store, workers=-1)
        with pytest.raises(ValueError, match="leave workers out"):
            run_study(small, store, workers=2, scheduler="tcp://127.0.0.1:1")
        with pytest.raises(ValueError, match=r"measure.n must be at most 450 \(the digits test set size\), got 451"):
            run_study(small.model_copy(update={"measure": small.measure.model_copy(update={"n": 451})}), store, workers=0)
        assert store.runs() == []


def test_a_failing_run_is_reported_and_the_others_still_run(tmp_path):
    config = parse_config(
        {
            "name": "failing",
            "archs": ["mlp:50000,50000", "mlp:8"],
            "seeds": [0],
            "train": {"epochs": 1},
            "measure": {"n": 20},
            "controls": {"l2": []},
        }
    )
    with Store(tmp_path / "store") as store:
        outcome = run_study(config, store, workers=1, progress=False)
        assert not outcome.ok and len(outcome.specs) == 2
        (key, error) = outcome.failed.popitem()
        assert key == outcome.specs[0].train_key() and error.startswith("ValueError: model mlp:50000,50000") and "over the limit" in error
        assert list(outcome.run_ids) == [outcome.specs[1].train_key()] and [r.key for r in store.runs()] == list(outcome.run_ids)


def test_local_workers_get_one_run_at_a_time_and_plain_malloc_settings():
    from sparank.study import WORKER_MALLOC, _client

    with _client(None, 2, 2) as (client, resources):
        assert resources == {"run": 1}
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        assert [(w["nthreads"], w["resources"]) for w in workers] == [(2, {"run": 1})] * 2  # 2 threads, one run at a time
        environ = client.run(lambda: {name: os.environ.get(name) for name in WORKER_MALLOC})
        assert list(environ.values()) == [{name: str(value) for name, value in WORKER_MALLOC.items()}] * 2
