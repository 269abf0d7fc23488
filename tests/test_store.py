"""The results store: round trips, persistence, atomic writes, and refusing what is not a store."""

from __future__ import annotations

import math
import os
import pickle
import sqlite3
from pathlib import Path

import pytest
import torch

import sparank.store
from sparank.models import build_model
from sparank.robustness import CENSORED, CLEAN_WRONG, FOOLED, RobustnessResult
from sparank.store import DB_NAME, Store, StoreError, load_weights_file, save_weights
from sparank.structure import model_structure

INF = math.inf


def make_result() -> RobustnessResult:
    """Five inputs by hand: two fooled, one clean-wrong, two censored."""
    status = torch.tensor([FOOLED, CLEAN_WRONG, CENSORED, FOOLED, CENSORED], dtype=torch.int64)
    eps_lo = torch.tensor([0.0123456789, 0.0, 0.5, 0.3, 0.5], dtype=torch.float64)
    eps_hi = torch.tensor([0.0123466789, 0.0, INF, 0.300001, INF], dtype=torch.float64)
    return RobustnessResult(
        eps_lo=eps_lo,
        eps_hi=eps_hi,
        status=status,
        labels=torch.tensor([3, 1, 4, 1, 5]),
        directions=torch.zeros(5, 1, 2, 2),
        norm="linf",
        eps_max=0.5,
        resolution=1e-2,
        tol=1e-6,
    )


def test_run_fields_round_trip(tmp_path: Path) -> None:
    config = {"dataset": "digits", "arch": "mlp:16", "train": {"epochs": 3, "lr": 1e-3}, "seed": 7, "layers": ["fc1", "out"]}
    history = [{"epoch": 1, "loss": 2.5, "test_accuracy": None}, {"epoch": 2, "loss": 1.25, "test_accuracy": 0.5}]
    metrics = {"clean_accuracy": 0.9375}
    structure = model_structure(build_model("mlp:4", (1, 2, 2), 3)).to_dict()
    with Store(tmp_path / "s") as store:
        run_id = store.add_run(kind="train", config=config, history=history, metrics=metrics, structure=structure)
        bare_id = store.add_run(kind="linear", config={"lam": 0.1})
        run = store.get_run(run_id)
        bare = store.get_run(bare_id)
    assert (run.kind, run.config, run.history, run.metrics, run.structure) == ("train", config, history, metrics, structure)
    assert run.weights is None and run.key is None
    assert run_id != bare_id
    assert (bare.history, bare.metrics, bare.structure, bare.weights) == (None, None, None, None)


def test_non_finite_and_numpy_values_become_strict_json(tmp_path: Path) -> None:
    import numpy as np

    with Store(tmp_path) as store:
        run_id = store.add_run(kind="train", config={"eps": (0.1, 0.2), "n": np.int64(3)}, metrics={"loss": math.nan, "top": INF})
        run = store.get_run(run_id)
        raw = store._con.execute("SELECT metrics FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    assert run.config == {"eps": [0.1, 0.2], "n": 3}
    assert run.metrics == {"loss": "nan", "top": "inf"}
    assert "NaN" not in raw and "Infinity" not in raw
    with Store(tmp_path) as store, pytest.raises(ValueError, match="config"):
        store.add_run(kind="train", config={"model": object()})


def test_weights_round_trip_bit_exact_and_same_predictions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("mlp:16", (1, 8, 8), 10)
    x = torch.rand(32, 1, 8, 8)
    with Store(tmp_path / "s") as store:
        run_id = store.add_run(kind="train", config={}, state_dict=model.state_dict())
        loaded = store.load_weights(run_id)
        path = store.get_run(run_id).weights
    assert path is not None and path.is_file() and path.suffix == ".safetensors"
    original = model.state_dict()
    assert set(loaded) == set(original)
    for name, tensor in original.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)
    fresh = build_model("mlp:16", (1, 8, 8), 10)
    fresh.load_state_dict(loaded)
    assert torch.equal(fresh(x), model(x))


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    state = {"w": base, "tied": base, "t": base.t(), "row": base[1]}  # shared storage, a transposed view
    save_weights(tmp_path / "w.safetensors", state)
    back = load_weights_file(tmp_path / "w.safetensors")
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor)


def test_brackets_round_trip_with_inf_and_statuses(tmp_path: Path) -> None:
    result = make_result()
    indices = torch.tensor([40, 3, 17, 250, 0])
    with Store(tmp_path) as store:
        run_id = store.add_run(kind="train", config={})
        mid = store.add_measurement(run_id, config={"n": 5, "seed": 1}, result=result, indices=indices)
        table = store.brackets(mid)
        (record,) = store.measurements(run_id)
    assert len(table) == 5
    assert torch.equal(table.input_index, indices)
    assert torch.equal(table.label, result.labels)
    assert torch.equal(table.status, result.status)
    assert torch.equal(table.eps_lo, result.eps_lo)  # bit-exact float64
    assert torch.equal(table.eps_hi, result.eps_hi)
    assert table.eps_hi[2] == INF and table.eps_hi.dtype == torch.float64
    assert record.id == mid and record.run_id == run_id
    assert record.config == {
        "n": 5, "seed": 1, "norm": "linf", "eps_max": 0.5, "resolution": 1e-2, "tol": 1e-6,
        "attack": "fgsm", "attack_settings": {"attack": "fgsm"},
    }  # fmt: skip
    assert table.distance.isnan().all()  # a result without distances stores NULL, read back as NaN
    assert record.summary == result.summary().to_dict()
    assert record.summary["censored_fraction"] == pytest.approx(2 / 5)


def test_measurement_checks(tmp_path: Path) -> None:
    result = make_result()
    with Store(tmp_path) as store:
        run_id = store.add_run(kind="train", config={})
        with pytest.raises(StoreError, match="no run 'r0999'"):
            store.add_measurement("r0999", config={}, result=result, indices=torch.arange(5))
        with pytest.raises(ValueError, match="indices"):
            store.add_measurement(run_id, config={}, result=result, indices=torch.arange(4))
        with pytest.raises(ValueError, match="eps_max"):
            store.add_measurement(run_id, config={"eps_max": 0.3}, result=result, indices=torch.arange(5))
        with pytest.raises(StoreError, match="no measurement 12"):
            store.brackets(12)
        assert store.measurements() == []  # nothing half-written
        assert store._con.execute("SELECT COUNT(*) FROM brackets").fetchone()[0] == 0


def test_key_is_unique_and_found(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        assert store.find_run("abc") is None
        run_id = store.add_run(kind="train", config={"a": 1}, key="abc")
        found = store.find_run("abc")
        assert found is not None and found.id == run_id and found.key == "abc"
        with pytest.raises(StoreError, match="key 'abc' already exists"):
            store.add_run(kind="train", config={"a": 2}, key="abc")
        other = store.add_run(kind="train", config={"a": 3}, key="xyz")
        assert [r.id for r in store.runs()] == [run_id, other]
        assert [r.id for r in store.runs(kind="linear")] == []


def test_reopening_sees_everything(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("mlp:4", (1, 2, 2), 3)
    store = Store(tmp_path)
    run_id = store.add_run(kind="import", config={"source": "x"}, state_dict=model.state_dict(), key="k1")
    mid = store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5))
    store.close()
    with Store(tmp_path / DB_NAME) as again:  # the database file's path works too
        assert [r.id for r in again.runs()] == [run_id]
        assert again.find_run("k1") is not None
        assert [m.id for m in again.measurements(run_id)] == [mid]
        assert torch.equal(again.brackets(mid).eps_hi, make_result().eps_hi)
        assert torch.equal(again.load_weights(run_id)["out.weight"], model.out.weight)
        assert again.add_run(kind="train", config={}) != run_id  # ids keep counting


def test_wal_mode_and_foreign_keys(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        assert store._con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._con.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with sqlite3.connect(tmp_path / DB_NAME) as con:  # WAL mode is persistent in the file
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failure_while_writing_weights_leaves_no_row_and_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("mlp:4", (1, 2, 2), 3)

    def broken_save(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    with Store(tmp_path) as store:
        monkeypatch.setattr(sparank.store, "save_file", broken_save)
        with pytest.raises(OSError, match="disk full"):
            store.add_run(kind="train", config={}, state_dict=model.state_dict(), key="k")
        monkeypatch.undo()
        assert store.runs() == [] and store.find_run("k") is None
        assert list((tmp_path / "weights").iterdir()) == []  # no partial or temporary file
        run_id = store.add_run(kind="train", config={}, state_dict=model.state_dict(), key="k")  # the key is free again
        assert run_id == "r0001"


def test_failure_after_weights_are_in_place_removes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("mlp:4", (1, 2, 2), 3)
    with Store(tmp_path) as store:
        monkeypatch.setattr(sparank.store, "_now", lambda: (_ for _ in ()).throw(RuntimeError("interrupted")))
        with pytest.raises(RuntimeError, match="interrupted"):
            store.add_run(kind="train", config={}, state_dict=model.state_dict())
        assert store.runs() == []
        assert list((tmp_path / "weights").iterdir()) == []


def test_not_a_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / DB_NAME) as con:
        con.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(StoreError, match="not a sparank store"):
        Store(other)
    with sqlite3.connect(other / DB_NAME) as con:  # someone else's database is left as it was
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not (other / "weights").exists()

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / DB_NAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a sparank store"):
        Store(garbage)

    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(StoreError, match="is a file"):
        Store(tmp_path / "file.txt")
    with pytest.raises(StoreError, match="no sparank store"):
        Store(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema_version 99"):
        Store(tmp_path)


def test_missing_run_and_missing_weights(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        with pytest.raises(StoreError, match=r"no run 'r0042' in store .*sparank show --store"):
            store.get_run("r0042")
        bare = store.add_run(kind="linear", config={})
        with pytest.raises(StoreError, match="has no weights"):
            store.load_weights(bare)
        with_weights = store.add_run(kind="train", config={}, state_dict={"w": torch.ones(2)})
        path = store.get_run(with_weights).weights
        assert path is not None
        path.unlink()
        with pytest.raises(StoreError, match="missing"):
            store.load_weights(with_weights)


def test_invalid_safetensors_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 3 + b"not safetensors")
    with pytest.raises(StoreError, match="model.safetensors"):
        load_weights_file(bad)
    with pytest.raises(StoreError, match="does not exist"):
        load_weights_file(tmp_path / "absent.safetensors")


def test_loading_weights_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("mlp:4", (1, 2, 2), 3)
    with Store(tmp_path) as store:
        run_id = store.add_run(kind="train", config={}, state_dict=model.state_dict())

        def forbidden(*args: object, **kwargs: object) -> None:
            raise AssertionError("pickle used to load weights")

        monkeypatch.setattr(pickle, "load", forbidden)
        monkeypatch.setattr(pickle, "loads", forbidden)
        monkeypatch.setattr(pickle, "Unpickler", forbidden)
        monkeypatch.setattr(torch, "load", forbidden)
        loaded = store.load_weights(run_id)
    assert torch.equal(loaded["fc1.weight"], model.fc1.weight)


def test_a_killed_program_loses_only_the_unfinished_run(tmp_path: Path) -> None:
    """A child process stores one run, then dies (os._exit: no cleanup) in the middle of the next."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import os, torch, sparank.store as s
        store = s.Store({str(tmp_path)!r})
        store.add_run(kind="train", config={{"n": 1}}, state_dict={{"w": torch.ones(3)}}, key="done")
        s._now = lambda: os._exit(3)  # dies after the weights file is in place, before the row is committed
        store.add_run(kind="train", config={{"n": 2}}, state_dict={{"w": torch.zeros(3)}}, key="unfinished")
        """
    )
    src = str(Path(sparank.store.__file__).parents[1])
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": src}, capture_output=True, timeout=120)
    assert proc.returncode == 3, proc.stderr.decode()
    with Store(tmp_path) as store:
        assert [r.key for r in store.runs()] == ["done"]
        assert torch.equal(store.load_weights("r0001")["w"], torch.ones(3))
        assert store.find_run("unfinished") is None
        again = store.add_run(kind="train", config={}, state_dict={"w": torch.full((3,), 2.0)})
        assert torch.equal(store.load_weights(again)["w"], torch.full((3,), 2.0))


def test_two_store_objects_on_one_directory_get_distinct_ids(tmp_path: Path) -> None:
    with Store(tmp_path) as a, Store(tmp_path) as b:
        ids = [a.add_run(kind="train", config={}), b.add_run(kind="train", config={}), a.add_run(kind="train", config={})]
        assert len(set(ids)) == 3
        assert [r.id for r in b.runs()] == ids


# --------------------------------------------------------------------------- hardening (issue 8)


def test_opening_for_writing_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    """A real kill -9 in the middle of writing weights leaves a .tmp file; the next writer removes it, committed files stay."""
    import subprocess
    import sys

    with Store(tmp_path / "s") as store:
        kept = store.add_run(kind="train", config={}, state_dict={"w": torch.ones(3)})
    script = (
        "import os, signal, sparank.store as st, torch\n"
        "real = st.save_file\n"
        "def dying(*a, **k):\n"
        "    real(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "st.save_file = dying\n"
        f"st.Store({str(tmp_path / 's')!r}).add_run(kind='train', config={{}}, state_dict={{'w': torch.zeros(3)}})\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert killed.returncode == -9
    weights = tmp_path / "s" / "weights"
    assert [p.name for p in weights.glob(".*.tmp")], "the kill should have left a temporary file"
    (weights / "r0007.safetensors").write_bytes(b"weights of a run never committed")
    with Store(tmp_path / "s") as store:
        assert sorted(p.name for p in weights.iterdir()) == [f"{kept}.safetensors"]
        assert store.load_weights(kept)["w"].tolist() == [1.0, 1.0, 1.0]
    with Store(tmp_path / "s", readonly=True):  # reading never removes anything
        pass


def test_readonly_store_reads_and_refuses_writes(tmp_path: Path) -> None:
    with Store(tmp_path / "s") as store:
        run_id = store.add_run(kind="train", config={"a": 1}, state_dict={"w": torch.ones(2)})
        store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5))
    with Store(tmp_path / "s", readonly=True) as store:
        assert store.readonly and [r.id for r in store.runs()] == [run_id]
        assert len(store.brackets(store.measurements(run_id)[0].id)) == 5
        with pytest.raises(StoreError, match="read-only"):
            store.add_run(kind="train", config={})
        with pytest.raises(StoreError, match="read-only"):
            store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5))


def _unshare_works() -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount --bind -o ro / /mnt 2>/dev/null || mount -t tmpfs none /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_a_store_on_a_read_only_mount(tmp_path: Path) -> None:
    """A real read-only bind mount (root can write through chmod, not through a read-only mount).

    Where mount namespaces are not available the same path is forced by
    making SQLite's writable open fail, and the test says so in its skip note.
    """
    import subprocess
    import sys

    with Store(tmp_path / "s") as store:
        store.add_run(kind="train", config={"a": 1}, state_dict={"w": torch.ones(2)})
    if not _unshare_works():
        pytest.skip("no mount namespace here (unshare -m); the read-only path is covered by test_readonly_store_reads_and_refuses_writes")
    script = (
        "from sparank.store import Store, StoreError\n"
        "import sys\n"
        "s = Store(sys.argv[1], readonly=True); print('read', [r.id for r in s.runs()]); s.close()\n"
        "try:\n    Store(sys.argv[1])\nexcept StoreError as e:\n    print('write refused:', e)\n"
        "try:\n    Store(sys.argv[1] + '/new')\nexcept StoreError as e:\n    print('create refused:', e)\n"
    )
    d = tmp_path / "s"
    sparank_cli = Path(sys.executable).parent / "sparank"
    shell = (
        f'mount --bind -o ro {d} {d} && {sys.executable} -c "$SCRIPT" {d} && '
        f"{sparank_cli} show --store {d}; echo show=$?; {sparank_cli} train --epochs 1 --store {d}; echo train=$?"
    )
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell],
        capture_output=True,
        text=True,
        env={**os.environ, "SCRIPT": script},
    )
    output = done.stdout + done.stderr
    assert "read ['r0001']" in output
    assert "write refused:" in output and "read-only" in output.split("write refused:")[1].splitlines()[0]
    assert "create refused:" in output and "Read-only file system" in output
    assert "show=0" in output and "r0001" in output
    assert "train=2" in output and "Traceback" not in output


def test_immutable_database_is_refused_at_open_not_after_work(tmp_path: Path) -> None:
    import subprocess

    with Store(tmp_path / "s") as store:
        store.add_run(kind="train", config={})
    db = tmp_path / "s" / DB_NAME
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i not supported on this file system")
    else:
        db.chmod(0o444)
    try:
        with pytest.raises(StoreError, match="read-only"):
            Store(tmp_path / "s")
        with Store(tmp_path / "s", readonly=True) as store:
            assert len(store.runs()) == 1
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(db)], capture_output=True)


def test_measurement_keys_reuse_and_replace(tmp_path: Path) -> None:
    from sparank.store import DuplicateKeyError, measurement_key

    with Store(tmp_path) as store:
        run_id = store.add_run(kind="train", config={})
        key = measurement_key(run_id, {"attack": "fgsm", "eps_max": 0.5}, torch.arange(5))
        assert key == measurement_key(run_id, {"eps_max": 0.5, "attack": "fgsm"}, [0, 1, 2, 3, 4])
        assert key != measurement_key(run_id, {"attack": "fgsm", "eps_max": 0.5}, torch.arange(1, 6))
        first = store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5), key=key)
        with pytest.raises(DuplicateKeyError) as info:
            store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5), key=key)
        assert info.value.existing == first
        assert store.find_measurement(key).id == first  # type: ignore[union-attr]
        second = store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5), key=key, replace=True)
        assert [m.id for m in store.measurements()] == [second]  # one measurement per key
        assert store._con.execute("SELECT COUNT(*) FROM brackets").fetchone()[0] == 5  # the old brackets went with it
        store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5))  # no key: always added
        assert len(store.measurements()) == 2


def test_a_version_1_store_is_read_and_upgraded(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        run_id = store.add_run(kind="train", config={})
        store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5))
    with sqlite3.connect(tmp_path / DB_NAME) as con:  # what sparank 1 wrote: no key column
        con.execute("DROP INDEX measurements_by_key")
        con.execute("ALTER TABLE measurements DROP COLUMN key")
        con.execute("ALTER TABLE brackets DROP COLUMN distance")
        con.execute("ALTER TABLE brackets DROP COLUMN certified")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    with Store(tmp_path, readonly=True) as store:
        (m,) = store.measurements()
        assert m.key is None and store.find_measurement("x") is None
    with Store(tmp_path) as store:
        assert store._con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(sparank.store.SCHEMA_VERSION)
        store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5), key="k")
        assert store.find_measurement("k") is not None


def test_damaged_database_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        for i in range(300):
            store.add_run(kind="train", config={"i": i, "pad": "x" * 300})
    with open(tmp_path / DB_NAME, "r+b") as f:
        f.seek(4 * 4096)
        f.write(b"\xff" * 16 * 4096)
    with pytest.raises(StoreError, match=f"{DB_NAME} is damaged"):
        with Store(tmp_path, readonly=True) as store:
            store.runs()


def test_distances_and_attack_settings_round_trip(tmp_path: Path) -> None:
    from dataclasses import replace

    distance = torch.tensor([0.0123, 0.0, INF, 0.29, INF], dtype=torch.float64)
    settings = {"attack": "pgd", "steps": 20, "rel_stepsize": 0.125}
    result = replace(make_result(), attack="pgd", settings=settings, distance=distance, rejected=2)
    with Store(tmp_path) as store:
        run_id = store.add_run(kind="train", config={})
        mid = store.add_measurement(run_id, config={"n": 5}, result=result, indices=torch.arange(5))
        table = store.brackets(mid)
        (record,) = store.measurements(run_id)
    assert torch.equal(table.distance, distance)
    assert record.config["attack"] == "pgd" and record.config["attack_settings"] == settings
    assert record.summary["attack"] == "pgd" and record.summary["rejected"] == 2


def test_a_version_2_store_is_read_and_upgraded_with_distances(tmp_path: Path) -> None:
    from dataclasses import replace

    with Store(tmp_path) as store:
        run_id = store.add_run(kind="train", config={})
        old = store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5))
    with sqlite3.connect(tmp_path / DB_NAME) as con:  # what sparank wrote before distances: no distance column
        con.execute("ALTER TABLE brackets DROP COLUMN distance")
        con.execute("ALTER TABLE brackets DROP COLUMN certified")
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    with Store(tmp_path, readonly=True) as store:
        table = store.brackets(old)
        assert torch.equal(table.eps_hi, make_result().eps_hi) and table.distance.isnan().all()
    distance = torch.tensor([0.01, 0.0, INF, 0.3, INF], dtype=torch.float64)
    with Store(tmp_path) as store:
        new = store.add_measurement(run_id, config={}, result=replace(make_result(), distance=distance), indices=torch.arange(5))
        assert torch.equal(store.brackets(new).distance, distance) and store.brackets(old).distance.isnan().all()


def test_certified_flags_round_trip_and_absent_when_not_asked(tmp_path: Path) -> None:
    from dataclasses import replace

    flags = torch.tensor([True, True, False, True, False])
    with Store(tmp_path) as store:
        run_id = store.add_run(kind="train", config={})
        asked = store.add_measurement(run_id, config={}, result=replace(make_result(), certified=flags), indices=torch.arange(5))
        not_asked = store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5))
        assert torch.equal(store.brackets(asked).certified, flags)  # type: ignore[arg-type]
        assert store.brackets(not_asked).certified is None
        assert store._con.execute("SELECT COUNT(*) FROM brackets WHERE certified IS NULL").fetchone()[0] == 5


def test_a_version_3_store_is_read_and_upgraded_with_certified_flags(tmp_path: Path) -> None:
    from dataclasses import replace

    with Store(tmp_path) as store:
        run_id = store.add_run(kind="train", config={})
        old = store.add_measurement(run_id, config={}, result=make_result(), indices=torch.arange(5))
    with sqlite3.connect(tmp_path / DB_NAME) as con:  # what sparank wrote before certification: no certified column
        con.execute("ALTER TABLE brackets DROP COLUMN certified")
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    with Store(tmp_path, readonly=True) as store:  # read as it is, not upgraded
        table = store.brackets(old)
        assert torch.equal(table.eps_hi, make_result().eps_hi) and table.certified is None
        assert store._con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    flags = torch.tensor([True, True, True, False, True])
    with Store(tmp_path) as store:
        assert store._con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "4"
        new = store.add_measurement(run_id, config={}, result=replace(make_result(), certified=flags), indices=torch.arange(5))
        assert torch.equal(store.brackets(new).certified, flags) and store.brackets(old).certified is None  # type: ignore[arg-type]
