"""The catalogue of bad inputs: every user or environment fault is one line, exit status 2, never a traceback.

To add a case, add one row to ``CLI_FAULTS`` (a ``sparank`` invocation) or
``API_FAULTS`` (a Python call). A CLI row names the arguments, a fragment of
the expected one-line message, and optionally a ``setup`` that prepares the
scene in the test's folder. Placeholders in the arguments:

- ``{tmp}``: the test's empty folder;
- ``{store}``: a copy of a store holding run ``r0001`` (digits, mlp:16) with
  one measurement;
- ``{weights}``: a safetensors file of a digits ``mlp:16``.

Rows marked ``before_work=True`` are pure option mistakes: the test makes
reading any dataset an error, so such a row also checks that the option is
refused before any work starts (the ``linear --eps-max 0`` that used to be
reported after 13 s of fitting).

The faults of the measure itself (non-finite logits, a model that does not
return ``(N, K)`` logits, labels out of range or of the wrong type, inputs of
another dtype or outside the box, a tol finer than float32 resolves) are
``ApiFault`` rows too.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import sparank.data
from sparank.cli import app
from sparank.models import build_model
from sparank.robustness import fgsm_robustness
from sparank.store import DB_NAME, DuplicateKeyError, Store, StoreError, save_weights

runner = CliRunner()


# --------------------------------------------------------------------------- scenes a row can set up


def make_file(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_text("not a directory\n")

    return setup


def make_dir(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).mkdir()

    return setup


def damage_database(tmp: Path) -> None:
    """Overwrite the middle of the store's database, as a crashed disk or a stray `dd` would."""
    with open(tmp / "store" / DB_NAME, "r+b") as f:
        f.seek(2 * 4096)
        f.write(b"\xff" * 3 * 4096)


def overwrite_header(tmp: Path) -> None:
    with open(tmp / "store" / DB_NAME, "r+b") as f:
        f.write(b"garbage" * 20)


def make_immutable(tmp: Path) -> None:
    """Make the database file unwritable even for root: `chattr +i` (undone after the test); chmod 444 when not root."""
    db = tmp / "store" / DB_NAME
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported on this file system; as root nothing else makes a file unwritable")
    else:
        db.chmod(0o444)


def newer_schema(tmp: Path) -> None:
    with sqlite3.connect(tmp / "store" / DB_NAME) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()


def other_sqlite(tmp: Path) -> None:
    (tmp / "other").mkdir()
    with sqlite3.connect(tmp / "other" / DB_NAME) as con:
        con.execute("CREATE TABLE t (x)")
    con.close()


def bad_safetensors(tmp: Path) -> None:
    (tmp / "bad.safetensors").write_bytes(b"not safetensors at all")


# --------------------------------------------------------------------------- user models for `sparank audit --model {__name__}:...`


def _failing_factory() -> nn.Module:
    raise RuntimeError("CUDA is not available")


class _HiddenAsLogits(nn.Module):
    """The weights of a digits ``mlp:16``, but it returns the hidden layer (16 values) as its logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc1(x.flatten(1)))


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Fault:
    """One bad invocation of ``sparank``: its arguments and a fragment of the one-line error it must give."""

    id: str
    args: tuple[str, ...]
    message: str
    setup: Callable[[Path], None] | None = None
    before_work: bool = False  # a pure option mistake: refused before any dataset is read
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for the call (placeholders allowed)

    def __repr__(self) -> str:
        return self.id


CLI_FAULTS = [
    # the model spec and training options (silent wrong results before: `mlp:` trained mlp:300,100, --epochs 0 stored an untrained run)
    Fault("arch-colon-no-widths", ("train", "--arch", "mlp:", "--store", "{tmp}/s"), "has a colon but no widths", before_work=True),
    Fault("arch-empty-width", ("train", "--arch", "mlp:300,,100", "--store", "{tmp}/s"), "bad widths", before_work=True),
    Fault("arch-bad-width", ("train", "--arch", "mlp:x", "--store", "{tmp}/s"), "bad widths", before_work=True),
    Fault("arch-linear-widths", ("train", "--arch", "linear:3", "--store", "{tmp}/s"), "takes no widths", before_work=True),
    Fault("arch-cnn-two-widths", ("train", "--arch", "cnn:1,2", "--store", "{tmp}/s"), "exactly three widths", before_work=True),
    Fault("arch-unknown", ("train", "--arch", "resnet", "--store", "{tmp}/s"), "unknown architecture", before_work=True),
    Fault("arch-absurd-size", ("train", "--arch", "mlp:100000000", "--store", "{tmp}/s"), "parameters, over the limit"),
    Fault("epochs-zero", ("train", "--epochs", "0", "--store", "{tmp}/s"), "--epochs must be an integer >= 1", before_work=True),
    Fault("lr-nan", ("train", "--lr", "nan", "--store", "{tmp}/s"), "--lr must be a finite number > 0", before_work=True),
    Fault("batch-size-zero", ("train", "--batch-size", "0", "--store", "{tmp}/s"), "--batch-size must be", before_work=True),
    Fault("optimizer-unknown", ("train", "--optimizer", "rmsprop", "--store", "{tmp}/s"), "--optimizer must be adam or sgd", before_work=True),
    Fault("seed-negative", ("train", "--seed", "-1", "--store", "{tmp}/s"), "--seed must be", before_work=True),
    Fault("threads-zero", ("train", "--threads", "0", "--store", "{tmp}/s"), "--threads must be", before_work=True),
    Fault("dataset-unknown", ("train", "--dataset", "cifar", "--store", "{tmp}/s"), "unknown dataset", before_work=True),
    Fault("regulariser-unknown", ("train", "--regulariser", "dropout", "--store", "{tmp}/s"), "unknown regulariser", before_work=True),
    Fault("data-dir-with-digits", ("train", "--dataset", "digits", "--data-dir", "{tmp}", "--store", "{tmp}/s"), "not used for digits"),
    Fault("measure-tol-below-float32", ("measure", "r0001", "--tol", "1e-9", "--n", "5", "--store", "{store}"), "below what torch.float32 inputs resolve"),
    Fault("fine-tune-negative", ("train", "--fine-tune-epochs", "-1", "--store", "{tmp}/s"), "--fine-tune-epochs must be an integer >= 0", before_work=True),
    Fault("fine-tune-not-taken", ("train", "--regulariser", "l1", "--fine-tune-epochs", "2", "--store", "{tmp}/s"), "does not fine-tune", before_work=True),
    Fault("strength-nan", ("train", "--regulariser", "l1", "--strength", "nan", "--store", "{tmp}/s"), "out of range", before_work=True),
    Fault(
        "strength-zero-rank-fraction",
        ("train", "--regulariser", "factorised", "--strength", "0", "--store", "{tmp}/s"),
        "must be > 0",
        before_work=True,
    ),
    # data (an empty --data-dir silently fell back to the system copy)
    Fault(
        "data-dir-empty",
        ("train", "--dataset", "fashion-mnist", "--data-dir", "{tmp}/empty", "--store", "{tmp}/s"),
        "only place looked",
        make_dir("empty"),
    ),
    Fault("data-dir-missing", ("train", "--dataset", "fashion-mnist", "--data-dir", "{tmp}/typo", "--store", "{tmp}/s"), "not a directory"),
    Fault("data-env-missing", ("train", "--dataset", "mnist", "--store", "{tmp}/s"), "$SPARANK_DATA", env=(("SPARANK_DATA", "{tmp}/nowhere"),)),
    # store paths and store files
    Fault("store-under-a-file-write", ("train", "--store", "{tmp}/afile/x"), "cannot create a store", make_file("afile")),
    Fault("store-under-a-file-read", ("show", "--store", "{tmp}/afile/x"), "no sparank store", make_file("afile")),
    Fault("store-is-a-file", ("show", "--store", "{tmp}/afile"), "is a file", make_file("afile")),
    Fault("store-missing-show", ("show", "--store", "{tmp}/none"), "no sparank store"),
    Fault("store-missing-measure", ("measure", "r0001", "--store", "{tmp}/none"), "no sparank store"),
    Fault("store-not-sparank", ("show", "--store", "{tmp}/other"), "not a sparank store", other_sqlite),
    Fault("store-newer-schema", ("show", "--store", "{store}"), "schema_version 99", newer_schema),
    Fault("store-damaged-show", ("show", "--store", "{store}"), "damaged", damage_database),
    Fault("store-damaged-show-run", ("show", "r0001", "--store", "{store}"), "damaged", damage_database),
    Fault("store-damaged-measure", ("measure", "r0001", "--n", "5", "--store", "{store}"), "damaged", damage_database),
    Fault("store-damaged-train", ("train", "--epochs", "1", "--arch", "mlp:8", "--store", "{store}"), "damaged", damage_database),
    Fault("store-header-overwritten", ("show", "--store", "{store}"), "not a sparank store", overwrite_header),
    Fault("store-immutable-train", ("train", "--epochs", "1", "--arch", "mlp:8", "--store", "{store}"), "read-only", make_immutable),
    Fault("store-immutable-measure", ("measure", "r0001", "--n", "7", "--store", "{store}"), "read-only", make_immutable),
    Fault("run-unknown", ("show", "r9999", "--store", "{store}"), "no run 'r9999'"),
    # measure options (messages name the option, never a Python parameter)
    Fault("measure-nothing", ("measure", "--store", "{store}"), "give either a RUN_ID or --weights", before_work=True),
    Fault("measure-both", ("measure", "r0001", "--weights", "{weights}", "--store", "{store}"), "give either", before_work=True),
    Fault("n-zero", ("measure", "r0001", "--n", "0", "--store", "{store}"), "--n must be an integer >= 1", before_work=True),
    Fault("n-too-large", ("measure", "r0001", "--n", "100000", "--store", "{store}"), "--n must be at most 450"),
    Fault("eval-seed-negative", ("measure", "r0001", "--eval-seed", "-1", "--store", "{store}"), "--eval-seed must be", before_work=True),
    Fault("eps-max-negative", ("measure", "r0001", "--eps-max", "-1", "--store", "{store}"), "--eps-max must be", before_work=True),
    Fault("resolution-zero", ("measure", "r0001", "--resolution", "0", "--store", "{store}"), "--resolution must be", before_work=True),
    Fault("tol-zero", ("measure", "r0001", "--tol", "0", "--store", "{store}"), "--tol must be", before_work=True),
    Fault("norm-unknown", ("measure", "r0001", "--norm", "l3", "--store", "{store}"), "--norm", before_work=True),
    Fault("measure-batch-size-zero", ("measure", "r0001", "--batch-size", "0", "--store", "{store}"), "--batch-size must be", before_work=True),
    # attacks (PROTOCOL §3)
    Fault("attack-unknown", ("measure", "r0001", "--attack", "cw", "--store", "{store}"), "--attack must be one of fgsm, pgd", before_work=True),
    Fault("attack-twice", ("measure", "r0001", "--attack", "pgd", "--attack", "pgd", "--store", "{store}"), "names an attack twice", before_work=True),
    Fault("transfer-without-source", ("measure", "r0001", "--attack", "transfer", "--store", "{store}"), "needs --source RUN", before_work=True),
    Fault("source-without-transfer", ("measure", "r0001", "--source", "r0001", "--store", "{store}"), "only used with --attack transfer", before_work=True),
    Fault("transfer-from-itself", ("measure", "r0001", "--attack", "transfer", "--source", "r0001", "--store", "{store}"), "is the run measured"),
    Fault("transfer-source-missing", ("measure", "r0001", "--attack", "transfer", "--source", "r0404", "--store", "{store}"), "r0404"),
    Fault("via-unknown", ("measure", "r0001", "--attack", "transfer", "--source", "r0001", "--via", "cw", "--store", "{store}"), "--via must be", before_work=True),
    Fault("steps-zero", ("measure", "r0001", "--attack", "pgd", "--steps", "0", "--store", "{store}"), "--steps must be an integer >= 1", before_work=True),
    Fault("restarts-negative", ("measure", "r0001", "--attack", "pgd", "--restarts", "-1", "--store", "{store}"), "--restarts must be", before_work=True),
    # --weights files
    Fault("weights-missing", ("measure", "--weights", "{tmp}/nope.safetensors", "--arch", "mlp", "--dataset", "digits", "--store", "{tmp}/s"), "does not exist", before_work=True),
    Fault("weights-a-directory", ("measure", "--weights", "{tmp}", "--arch", "mlp", "--dataset", "digits", "--store", "{tmp}/s"), "is a directory", before_work=True),
    Fault("weights-without-arch", ("measure", "--weights", "{weights}", "--store", "{tmp}/s"), "needs --arch", before_work=True),
    Fault("weights-not-safetensors", ("measure", "--weights", "{tmp}/bad.safetensors", "--arch", "mlp:16", "--dataset", "digits", "--store", "{tmp}/s"), "not a valid safetensors", bad_safetensors),
    Fault("weights-do-not-fit", ("measure", "--weights", "{weights}", "--arch", "mlp:32", "--dataset", "digits", "--store", "{tmp}/s"), "do not fit"),
    # audit (issue 11): the model, its weights, the compressions; export
    Fault("audit-model-no-module", ("audit", "--model", "nosuchpkg.nets:make", "--weights", "{weights}", "--dataset", "digits", "--out", "{tmp}/r"), "no module named 'nosuchpkg.nets'", before_work=True),
    Fault("audit-model-no-attribute", ("audit", "--model", f"{__name__}:nothing_here", "--weights", "{weights}", "--dataset", "digits", "--out", "{tmp}/r"), "has no attribute 'nothing_here'", before_work=True),
    Fault("audit-model-bad-spec", ("audit", "--model", "mlp:", "--weights", "{weights}", "--dataset", "digits", "--out", "{tmp}/r"), "has a colon but no widths", before_work=True),
    Fault("audit-factory-fails", ("audit", "--model", f"{__name__}:_failing_factory", "--weights", "{weights}", "--dataset", "digits", "--out", "{tmp}/r"), "failed: RuntimeError: CUDA is not available"),
    Fault("audit-wrong-logits", ("audit", "--model", f"{__name__}:_HiddenAsLogits", "--weights", "{weights}", "--dataset", "digits", "--out", "{tmp}/r"), "returned logits shaped (2, 16)"),
    Fault("audit-weights-missing", ("audit", "--model", "mlp:16", "--weights", "{tmp}/nope.safetensors", "--dataset", "digits", "--out", "{tmp}/r"), "does not exist", before_work=True),
    Fault("audit-weights-do-not-fit", ("audit", "--model", "mlp:32", "--weights", "{weights}", "--dataset", "digits", "--out", "{tmp}/r"), "fc1.weight (16, 64) vs (32, 64)"),
    Fault("audit-weights-not-safetensors", ("audit", "--model", "mlp:16", "--weights", "{tmp}/bad.safetensors", "--dataset", "digits", "--out", "{tmp}/r"), "not a valid safetensors", bad_safetensors),
    Fault("audit-dataset-unknown", ("audit", "--model", "mlp:16", "--weights", "{weights}", "--dataset", "cifar", "--out", "{tmp}/r"), "unknown dataset", before_work=True),
    Fault("audit-family-unknown", ("audit", "--model", "mlp:16", "--weights", "{weights}", "--dataset", "digits", "--families", "magnitude,dropout", "--out", "{tmp}/r"), "--families: unknown family 'dropout'", before_work=True),
    Fault("audit-sparsity-above-1", ("audit", "--model", "mlp:16", "--weights", "{weights}", "--dataset", "digits", "--sparsities", "0.5,1.5", "--out", "{tmp}/r"), "--sparsities: 1.5 must be a finite number in [0, 1]", before_work=True),
    Fault("audit-rank-fraction-zero", ("audit", "--model", "mlp:16", "--weights", "{weights}", "--dataset", "digits", "--rank-fractions", "0", "--out", "{tmp}/r"), "--rank-fractions: 0 must be a finite number in (0, 1]", before_work=True),
    Fault("audit-tolerance-negative", ("audit", "--model", "mlp:16", "--weights", "{weights}", "--dataset", "digits", "--accuracy-tolerance", "-1", "--out", "{tmp}/r"), "--accuracy-tolerance must be", before_work=True),
    Fault("audit-attack-unknown", ("audit", "--model", "mlp:16", "--weights", "{weights}", "--dataset", "digits", "--attack", "fgsm", "--out", "{tmp}/r"), "--attack must be one of pgd, fmn, deepfool", before_work=True),
    Fault("audit-fine-tune-negative", ("audit", "--model", "mlp:16", "--weights", "{weights}", "--dataset", "digits", "--fine-tune-epochs", "-1", "--out", "{tmp}/r"), "--fine-tune-epochs must be", before_work=True),
    Fault("audit-eps-max-zero", ("audit", "--model", "mlp:16", "--weights", "{weights}", "--dataset", "digits", "--eps-max", "0", "--out", "{tmp}/r"), "--eps-max must be", before_work=True),
    Fault("audit-n-too-large", ("audit", "--model", "mlp:16", "--weights", "{weights}", "--dataset", "digits", "--n", "100000", "--out", "{tmp}/r"), "--n must be at most 450"),
    Fault("audit-out-is-a-file", ("audit", "--model", "mlp:16", "--weights", "{weights}", "--dataset", "digits", "--out", "{tmp}/afile"), "is a file", make_file("afile"), before_work=True),
    Fault("export-run-unknown", ("export", "r9999", "{tmp}/m2.safetensors", "--store", "{store}"), "no run 'r9999'"),
    Fault("export-file-exists", ("export", "r0001", "{weights}", "--store", "{store}"), "exists; add --force"),
    Fault("export-folder-missing", ("export", "r0001", "{tmp}/nowhere/m.safetensors", "--store", "{store}"), "does not exist"),
    Fault("export-store-missing", ("export", "r0001", "{tmp}/m2.safetensors", "--store", "{tmp}/none"), "no sparank store"),
    # linear (every option checked before 13 s of fitting)
    Fault("linear-out-is-a-file", ("linear", "--out", "{tmp}/afile"), "is a file", make_file("afile"), before_work=True),
    Fault("linear-eps-max-zero", ("linear", "--eps-max", "0", "--out", "{tmp}/o"), "--eps-max must be", before_work=True),
    Fault("linear-lambdas-nan", ("linear", "--lambdas", "nan", "--out", "{tmp}/o"), "--lambdas: nan must be a finite number > 0", before_work=True),
    Fault("linear-lambdas-word", ("linear", "--lambdas", "1e-3,big", "--out", "{tmp}/o"), "'big' is not a number", before_work=True),
    Fault("linear-lambdas-zero", ("linear", "--lambdas", "1e-3,0", "--out", "{tmp}/o"), "--lambdas: 0 must be a finite number > 0", before_work=True),
    Fault("linear-lambdas-empty", ("linear", "--lambdas", ",", "--out", "{tmp}/o"), "holds no values", before_work=True),
    Fault("linear-methods-unknown", ("linear", "--methods", "l1,svm", "--out", "{tmp}/o"), "--methods must be", before_work=True),
    Fault("linear-n-zero", ("linear", "--n", "0", "--out", "{tmp}/o"), "--n must be", before_work=True),
    Fault("linear-norm-unknown", ("linear", "--norm", "l7", "--out", "{tmp}/o"), "--norm", before_work=True),
    Fault("linear-seeds-bad", ("linear", "--seeds", "0,x", "--out", "{tmp}/o"), "--seeds must be", before_work=True),
    Fault("linear-store-under-a-file", ("linear", "--store", "{tmp}/afile/s", "--out", "{tmp}/o"), "cannot create a store", make_file("afile")),
    Fault("demo-store-under-a-file", ("demo", "--store", "{tmp}/afile/s"), "cannot create a store", make_file("afile")),
]

#: wording of Python, not of a command line, that a CLI message must not use
PYTHON_WORDING = ("=None", "pass n", "data_dir=", "eps_max must", "batch_size must", "Errno")


@pytest.fixture(scope="module")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with run r0001 (digits, mlp:16, 1 epoch) and one measurement; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "store"
    for args in (
        ["train", "--arch", "mlp:16", "--epochs", "1", "--store", str(path), "--threads", "1"],
        ["measure", "r0001", "--n", "10", "--store", str(path), "--threads", "1"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def scene(tmp_path: Path, store_template: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("SPARANK_DATA", raising=False)
    monkeypatch.delenv("SPARANK_DEBUG", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    shutil.copytree(store_template, tmp_path / "store")
    save_weights(tmp_path / "m.safetensors", build_model("mlp:16", (1, 8, 8), 10).state_dict())
    yield {"tmp": str(tmp_path), "store": str(tmp_path / "store"), "weights": str(tmp_path / "m.safetensors")}
    db = tmp_path / "store" / DB_NAME
    if os.geteuid() == 0 and db.exists():
        subprocess.run(["chattr", "-i", str(db)], capture_output=True)  # let pytest remove it


def assert_one_line_error(result: Any, message: str) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}: {result.output}"
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, f"not one line: {result.output!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("fault", CLI_FAULTS, ids=repr)
def test_cli_fault_is_one_line_and_exit_2(fault: Fault, scene: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = Path(scene["tmp"])
    if fault.setup is not None:
        fault.setup(tmp)
    for name, value in fault.env:
        monkeypatch.setenv(name, value.format(**scene))
    if fault.before_work:

        def no_work(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"{fault.id}: a dataset was read before the options were checked")

        monkeypatch.setattr(sparank.data, "load_dataset", no_work)
        monkeypatch.setattr(sparank.data, "load_digits", no_work)
    before = sorted(p.name for p in tmp.rglob("*") if p.is_file())
    result = runner.invoke(app, [a.format(**scene) for a in fault.args])
    assert_one_line_error(result, fault.message)
    for wording in PYTHON_WORDING:
        assert wording not in result.output, f"Python wording {wording!r} in a CLI message: {result.output}"
    if fault.before_work:  # refused before any work: nothing new written anywhere
        assert sorted(p.name for p in tmp.rglob("*") if p.is_file()) == before


def test_debug_shows_the_traceback(scene: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARANK_DEBUG", "1")
    result = runner.invoke(app, ["show", "r9999", "--store", scene["store"]])
    assert isinstance(result.exception, StoreError)


def test_a_bug_keeps_its_traceback(scene: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Only user and environment faults become one line: an unexpected error in sparank is not hidden."""

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(Store, "runs", broken)
    result = runner.invoke(app, ["show", "--store", scene["store"]])
    assert isinstance(result.exception, KeyError)


# --------------------------------------------------------------------------- the Python API


@dataclass(frozen=True)
class ApiFault:
    """One bad call of the Python API: the exception type and a fragment of its one-line message."""

    id: str
    call: Callable[[Path], object]
    error: type[Exception]
    message: str

    def __repr__(self) -> str:
        return self.id


def _store_with_run(tmp: Path) -> Store:
    store = Store(tmp / "s")
    store.add_run(kind="train", config={}, key="k")
    return store


def _readonly_add(tmp: Path) -> object:
    _store_with_run(tmp).close()
    with Store(tmp / "s", readonly=True) as store:
        return store.add_run(kind="train", config={})


def _damaged_runs(tmp: Path) -> object:
    with _store_with_run(tmp) as store:
        for i in range(200):
            store.add_run(kind="train", config={"i": i, "pad": "x" * 200})
    with open(tmp / "s" / DB_NAME, "r+b") as f:
        f.seek(3 * 4096)
        f.write(b"\xff" * 8 * 4096)
    with Store(tmp / "s", readonly=True) as store:
        return store.runs()


def _store_under_a_file(tmp: Path) -> object:
    (tmp / "f").write_text("a file\n")
    return Store(tmp / "f" / "s")


def _duplicate_key(tmp: Path) -> object:
    with _store_with_run(tmp) as store:
        return store.add_run(kind="train", config={}, key="k")


class _Returns(nn.Module):
    """Digits-shaped linear logits, passed through ``post`` (to make a model that breaks the contract)."""

    def __init__(self, post: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.post = post

    def forward(self, x: torch.Tensor) -> Any:
        return self.post(self.lin(x.flatten(1)))


class _NanLogits(nn.Module):
    """NaN logits for inputs whose first pixel is above 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.lin(x.flatten(1))
        return torch.where(x.flatten(1)[:, :1] > 0.5, z * float("nan"), z)


def _measure(model: nn.Module, *, inputs: Any = None, labels: Any = None, **kwargs: Any) -> object:
    x = torch.full((4, 1, 8, 8), 0.25) if inputs is None else inputs
    if inputs is None:
        x[1] = x[3] = 0.75
    y = torch.tensor([0, 1, 2, 3]) if labels is None else labels
    return fgsm_robustness(model, x, y, **kwargs)


def _audit(*, model: nn.Module | None = None, inputs: Any = None, **kwargs: Any) -> object:
    from sparank.audit import audit

    x = torch.full((4, 1, 8, 8), 0.25) if inputs is None else inputs
    return audit(_Returns(lambda z: z) if model is None else model, x, torch.tensor([0, 1, 2, 3]), bounds=(0, 1), **kwargs)


API_FAULTS = [
    ApiFault("spec-colon", lambda tmp: build_model("mlp:", (1, 8, 8), 10), ValueError, "has a colon but no widths"),
    ApiFault("spec-absurd", lambda tmp: build_model("mlp:100000000", (1, 28, 28), 10), ValueError, "parameters"),
    ApiFault("store-under-file", _store_under_a_file, StoreError, "cannot create a store"),
    ApiFault("store-readonly-missing", lambda tmp: Store(tmp / "none", readonly=True), StoreError, "no sparank store"),
    ApiFault("store-readonly-write", _readonly_add, StoreError, "opened read-only"),
    ApiFault("store-damaged", _damaged_runs, StoreError, "damaged"),
    ApiFault("store-duplicate-key", _duplicate_key, DuplicateKeyError, "use find_run(key)"),
    ApiFault("data-dir-empty", lambda tmp: (tmp / "e").mkdir() or sparank.data.load_dataset("mnist", data_dir=tmp / "e"), ValueError, "only place looked"),
    ApiFault("eval-seed-negative", lambda tmp: sparank.data.eval_subset(sparank.data.load_digits(), 5, seed=-1), ValueError, "seed must be a non-negative"),
    # the measure: a fault in the model or the data is named, never a raw torch error or a silent "censored"
    ApiFault("measure-nan-logits", lambda tmp: _measure(_NanLogits()), ValueError, "non-finite logits (NaN or inf) for 2 input(s), at indices 1, 3"),
    ApiFault("measure-tuple-output", lambda tmp: _measure(_Returns(lambda z: (z, z))), ValueError, "returned a tuple"),
    ApiFault("measure-wrong-shape", lambda tmp: _measure(_Returns(lambda z: z.sum(1))), ValueError, "returned shape (4,)"),
    ApiFault("measure-one-class", lambda tmp: _measure(_Returns(lambda z: z[:, :1])), ValueError, "K >= 2"),
    ApiFault("measure-label-range", lambda tmp: _measure(_Returns(lambda z: z), labels=torch.tensor([0, 1, 2, 12])), ValueError, "got label 12"),
    ApiFault("measure-label-negative", lambda tmp: _measure(_Returns(lambda z: z), labels=torch.tensor([0, -1, 2, 3])), ValueError, "got -1 at input 1"),
    ApiFault("measure-float-labels", lambda tmp: _measure(_Returns(lambda z: z), labels=torch.zeros(4)), ValueError, "integer class indices"),
    ApiFault("measure-list-labels", lambda tmp: _measure(_Returns(lambda z: z), labels=[0, 1, 2, 3]), ValueError, "torch tensor or numpy array"),
    ApiFault("measure-float64-inputs", lambda tmp: _measure(_Returns(lambda z: z), inputs=torch.rand(4, 1, 8, 8, dtype=torch.float64)), ValueError, "inputs.to(torch.float32)"),
    ApiFault("measure-outside-box", lambda tmp: _measure(_Returns(lambda z: z), inputs=torch.rand(4, 1, 8, 8) * 255), ValueError, "outside bounds"),
    ApiFault("measure-tol-float32", lambda tmp: _measure(_Returns(lambda z: z), tol=1e-9), ValueError, "use tol >= 2.38e-07"),
    # the audit of a user's model (issue 11)
    ApiFault("audit-outside-box", lambda tmp: _audit(inputs=torch.rand(4, 1, 8, 8) * 255), ValueError, "outside bounds"),
    ApiFault("audit-fine-tune-without-data", lambda tmp: _audit(fine_tune_epochs=1), ValueError, "needs train_data"),
    ApiFault("audit-no-weight-layer", lambda tmp: _audit(model=nn.Sequential(nn.Flatten(), nn.Softmax(dim=1))), ValueError, "no Linear or Conv layer"),
]


@pytest.mark.parametrize("fault", API_FAULTS, ids=repr)
def test_api_fault_is_a_one_line_error(fault: ApiFault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPARANK_DATA", raising=False)
    with pytest.raises(fault.error) as info:
        fault.call(tmp_path)
    text = str(info.value)
    assert fault.message in text and "\n" not in text, text
