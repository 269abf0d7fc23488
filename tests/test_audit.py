"""The audit of a user's own model (sparank.audit, sparank.audit_report, ``sparank audit``, ``sparank export``).

What must hold: a compression that changes nothing gives the original's measurements exactly and
"no significant difference"; a compression known to hurt is "less robust"; the user's model and
tensors are bit for bit unchanged; the import-path loader works on a model defined here, and its
faults are one-line errors; the report opens with the answer and holds the numbers of the result.
"""

from __future__ import annotations

import csv
import html.parser

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from sparank.audit import audit, check_logits, import_factory, load_model
from sparank.audit_report import write_audit_report
from sparank.cli import app
from sparank.compare import LESS_ROBUST, NO_DIFFERENCE
from sparank.compress import Compression
from sparank.robustness import CLEAN_WRONG, FOOLED

runner = CliRunner()
IDENTITY = (Compression("magnitude", 0.0), Compression("global", 0.0), Compression("structured", 0.0), Compression("svd", 1.0))


# --------------------------------------------------------------------------- models defined here (the import-path loader's target)


class SkipNet(nn.Module):
    """A residual digits classifier: logits = fc2(relu(fc1(x))) + skip(x); zeroing ``skip`` removes a whole layer and leaves a model."""

    def __init__(self, input_shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10) -> None:
        super().__init__()
        d = 1
        for n in input_shape:
            d *= n
        self.fc1 = nn.Linear(d, 32)
        self.fc2 = nn.Linear(32, num_classes)
        self.skip = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc2(torch.relu(self.fc1(x))) + self.skip(x)


def skip_net(input_shape: tuple[int, ...], num_classes: int) -> SkipNet:
    return SkipNet(input_shape, num_classes)


def no_arguments() -> SkipNet:
    return SkipNet()


def failing_factory() -> nn.Module:
    raise RuntimeError("CUDA is not available")


def not_a_module() -> str:
    return "a model"


def three_logits() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


@pytest.fixture(scope="module")
def trained_skip(digits):
    torch.manual_seed(0)
    model = SkipNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):  # full batch
        loss = F.cross_entropy(model(digits.train_x), digits.train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- the audit


def test_no_change_gives_the_original_measurements_exactly(digits, digits_mlp):
    result = audit(digits_mlp, digits.test_x[:150], digits.test_y[:150], bounds=(0, 1), families=(), extra=IDENTITY, attacks=("pgd",),
                   attack_n=30, n_boot=500)  # fmt: skip
    o = result.original
    assert len(result.compressed) == 4
    for m, c in zip(result.compressed, result.comparisons):
        for name in ("eps_lo", "eps_hi", "status"):
            assert torch.equal(getattr(m.fgsm, name), getattr(o.fgsm, name)), (m.label, name)
        assert torch.equal(m.best.eps_hi, o.best.eps_hi) and torch.equal(m.cross_checks[0].eps_hi, o.cross_checks[0].eps_hi)
        assert m.structure.sparsity == o.structure.sparsity
        assert c.fgsm_verdict == NO_DIFFERENCE and c.best_verdict == NO_DIFFERENCE
        ratio = c.fgsm.ratio
        assert ratio.estimate == ratio.low == ratio.high == 1.0 and c.fgsm.p_value == 1.0
        assert c.accuracy_change == 0.0 and c.acceptable
    assert {fa.family: fa.chosen.compression.level for fa in result.per_family} == {
        "magnitude": 0.0,
        "global": 0.0,
        "structured": 0.0,
        "svd": 1.0,
    }


def test_zeroing_a_whole_layer_is_less_robust(digits, trained_skip):
    result = audit(trained_skip, digits.test_x, digits.test_y, bounds=(0, 1), families=(), n_boot=500,
                   extra=[Compression("magnitude", 1.0, layers=("skip",))])  # fmt: skip
    (c,) = result.comparisons
    assert result.compressed[0].structure.layers["skip"].n_zero == 640  # the whole 10x64 layer
    assert c.fgsm_verdict == LESS_ROBUST
    assert c.fgsm.ratio.high < 1.0 and c.fgsm.auc_difference.high < 0
    assert not c.acceptable
    assert result.per_family[0].chosen is None and result.per_family[0].layers == ("skip",)
    assert "magnitude pruning per layer of skip: no setting qualifies" in result.answer()


def test_a_dead_feed_forward_model_is_not_acceptable_though_it_cannot_be_fooled(digits, digits_mlp):
    """Zeroing a layer of a plain MLP makes it constant: no gradient, censored ε*, accuracy of one class: flagged and refused."""
    result = audit(digits_mlp, digits.test_x[:200], digits.test_y[:200], bounds=(0, 1), families=(), attacks=("pgd",), attack_n=50,
                   n_boot=500, extra=[Compression("magnitude", 1.0, layers=("fc1",))])  # fmt: skip
    (m,), (c,) = result.compressed, result.comparisons
    assert m.clean_accuracy < 0.2 and m.masking["flags"]["gradient"]
    assert m.fgsm.summary().no_direction_fraction == m.clean_accuracy
    assert not c.acceptable and "no setting qualifies" in result.answer()


def test_the_users_model_and_tensors_are_unchanged(digits, digits_mlp):
    model = digits_mlp
    model.train()  # a mode the audit must not change
    before = _state(model)
    flags = [p.requires_grad for p in model.parameters()]
    x, y = digits.test_x[:60].clone(), digits.test_y[:60].clone()
    tx, ty = digits.train_x[:200].clone(), digits.train_y[:200].clone()
    copies = [t.clone() for t in (x, y, tx, ty)]
    audit(model, x, y, bounds=(0, 1), train_data=(tx, ty), families=("magnitude", "svd"), sparsities=(0.9,), rank_fractions=(0.25,),
          fine_tune_epochs=1, attacks=("pgd",), attack_n=20, n_boot=200)  # fmt: skip
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip((x, y, tx, ty), copies))
    model.eval()


def test_fine_tuning_recovers_accuracy_at_the_same_sparsity(digits, digits_mlp):
    kwargs = {"bounds": (0, 1), "families": ("magnitude",), "sparsities": (0.9,), "n_boot": 200}
    one_shot = audit(digits_mlp, digits.test_x, digits.test_y, **kwargs)
    tuned = audit(digits_mlp, digits.test_x, digits.test_y, train_data=(digits.train_x, digits.train_y), fine_tune_epochs=3, **kwargs)
    assert tuned.compressed[0].structure.sparsity == one_shot.compressed[0].structure.sparsity
    assert tuned.compressed[0].clean_accuracy > one_shot.compressed[0].clean_accuracy + 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bounds": (0.0, 0.5)}, "outside bounds"),
        ({"bounds": (0, 1), "fine_tune_epochs": 1}, "needs train_data"),
        ({"bounds": (0, 1), "attacks": ("cw",)}, "attacks must be among"),
        ({"bounds": (0, 1), "accuracy_tolerance": 1.0}, "accuracy_tolerance must be a fraction"),
        ({"bounds": (0, 1), "families": ()}, "nothing to audit"),
        ({"bounds": (0, 1), "eps_max": -1.0}, "eps_max"),
    ],
)
def test_bad_arguments_are_one_line_errors(digits, digits_mlp, kwargs, message):
    with pytest.raises(ValueError, match=message):
        audit(digits_mlp, digits.test_x[:10], digits.test_y[:10], **kwargs)


# --------------------------------------------------------------------------- the import-path loader


def test_the_import_path_loader_builds_a_model_defined_here(trained_skip):
    state = _state(trained_skip)
    model = load_model(f"{__name__}:skip_net", (1, 8, 8), 10, weights=state)
    assert isinstance(model, SkipNet) and not model.training
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model(x), trained_skip(x))  # the weights were loaded
    assert isinstance(load_model(f"{__name__}:no_arguments", (1, 8, 8), 10), SkipNet)
    assert isinstance(load_model(f"{__name__}:SkipNet", (1, 8, 8), 10), SkipNet)  # a class is a factory too


@pytest.mark.parametrize(
    ("spec", "weights", "message"),
    [
        ("nosuchpackage.models:net", None, "no module named 'nosuchpackage.models'"),
        (f"{__name__}:nothing_here", None, "has no attribute 'nothing_here'"),
        (f"{__name__}:failing_factory", None, "failed: RuntimeError: CUDA is not available"),
        (f"{__name__}:not_a_module", None, "returned a str, not a torch.nn.Module"),
        (f"{__name__}:three_logits", None, "returned logits shaped (2, 3)"),
        (f"{__name__}:skip_net", {"fc1.weight": torch.zeros(3, 3)}, "fc1.weight (3, 3) vs (32, 64)"),
        (f"{__name__}:skip_net", {"extra": torch.zeros(1)}, "missing fc1.weight"),
        (f"{__name__}:RUNNER_NAME", None, "not a callable"),
        ("mlp:", None, "has a colon but no widths"),
    ],
)
def test_loader_faults_are_one_line_and_name_the_fix(spec, weights, message):
    with pytest.raises(ValueError) as info:
        load_model(spec, (1, 8, 8), 10, weights=weights)
    text = str(info.value)
    assert "\n" not in text and message in text


RUNNER_NAME = "not callable"


def test_check_logits_names_a_model_that_fails_on_the_images():
    with pytest.raises(ValueError, match="fails on inputs shaped"):
        check_logits(nn.Linear(3, 10), (1, 8, 8), 10)


def test_a_module_that_fails_to_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_model.py").write_text("import torch\nraise ImportError('needs torchvision')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="importing 'broken_model' failed: ImportError: needs torchvision"):
        import_factory("broken_model:net")


# --------------------------------------------------------------------------- the report


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, list[str]] = {}
        self.answer = ""
        self._in = None
        self.images = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "data-key" in a:
            self._in = a["data-key"]
            self.cells.setdefault(a["data-key"], []).append(a.get("data-value"))
        if tag == "p" and a.get("id") == "answer-text":
            self._in = "answer"
        if tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.images += 1

    def handle_data(self, data):
        if self._in == "answer":
            self.answer += data

    def handle_endtag(self, tag):
        self._in = None


def test_report_opens_with_the_answer_and_holds_the_results_numbers(digits, digits_mlp, tmp_path):
    result = audit(digits_mlp, digits.test_x[:120], digits.test_y[:120], bounds=(0, 1), sparsities=(0.5, 0.9), rank_fractions=(0.5, 0.1),
                   n_boot=300)  # fmt: skip
    paths = write_audit_report(result, tmp_path / "rep")
    page = _Text()
    page.feed(paths.html.read_text())
    assert page.answer.strip() == result.answer()
    assert page.images == 2 and all(p.exists() and p.with_suffix(".svg").exists() for p in paths.figures)
    ratios = [float(v) for v in page.cells["ratio"] if v is not None]
    assert ratios == [c.fgsm.ratio.estimate for c in result.comparisons]
    with paths.compressions_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["original"] + [m.label for m in result.compressed]
    assert [r["verdict"] for r in rows[1:]] == [c.fgsm_verdict for c in result.comparisons]
    assert float(rows[0]["auc"]) == result.original.fgsm.summary().auc
    with paths.per_input_csv.open() as f:
        per_input = list(csv.DictReader(f))
    assert len(per_input) == 120 and float(per_input[7]["eps original"]) == float(result.original.fgsm.eps_hi[7])
    assert "## The answer" in paths.markdown.read_text()


# --------------------------------------------------------------------------- the command line


def test_train_export_audit_end_to_end(tmp_path, monkeypatch):
    store, weights, out = tmp_path / "st", tmp_path / "m.safetensors", tmp_path / "rep"
    r = runner.invoke(app, ["train", "--arch", "mlp:16", "--epochs", "3", "--store", str(store), "--threads", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "r0001", str(weights), "--store", str(store)])
    assert r.exit_code == 0, r.output
    assert "sparank audit --model mlp:16" in r.output
    again = runner.invoke(app, ["export", "r0001", str(weights), "--store", str(store)])
    assert again.exit_code == 2 and "--force" in again.output
    r = runner.invoke(app, ["audit", "--model", "mlp:16", "--weights", str(weights), "--dataset", "digits", "--n", "80",
                            "--sparsities", "0,0.9", "--rank-fractions", "1,0.1", "--out", str(out), "--threads", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (out / "report.html").exists()
    with (out / "compressions.csv").open() as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    for identity in ("magnitude 0 %", "global 0 %", "structured 0 %", "svd rank 1"):
        assert rows[identity]["verdict"] == NO_DIFFERENCE and float(rows[identity]["ratio"]) == 1.0
    assert "Per family, the strongest setting" in r.output


def test_cli_audits_a_model_from_an_import_path(tmp_path, trained_skip):
    weights = tmp_path / "skip.safetensors"
    save_file({k: v.contiguous() for k, v in trained_skip.state_dict().items()}, str(weights))
    r = runner.invoke(app, ["audit", "--model", f"{__name__}:skip_net", "--weights", str(weights), "--dataset", "digits", "--n", "60",
                            "--families", "svd", "--rank-fractions", "0.5", "--out", str(tmp_path / "rep"), "--threads", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "svd" in r.output and (tmp_path / "rep" / "report.md").exists()
    # --certify on a model the bounds cannot read: one warning line naming it, the scan kept
    r = runner.invoke(app, ["audit", "--model", f"{__name__}:skip_net", "--weights", str(weights), "--dataset", "digits", "--n", "60",
                            "--families", "svd", "--rank-fractions", "0.5", "--out", str(tmp_path / "cert"), "--threads", "1", "--certify"])  # fmt: skip
    assert r.exit_code == 0, r.output
    warned = [line for line in r.output.splitlines() if "SkipNet has its own forward" in line]
    assert warned and all(line.startswith("warning: certify: module SkipNet") for line in warned), r.output
    assert "UserWarning" not in r.output and "warnings.warn" not in r.output and "certified: FGSM ε* of 0 of" in r.output


# --------------------------------------------------------------------------- the results store: record, resume, never reuse a stale record


def _store_state(path):
    """Every audit run of a store by content key (id, weights) and every measurement by key (id, run, brackets)."""
    from sparank.store import Store

    runs, measurements = {}, {}
    with Store(path, readonly=True) as store:
        for run in store.runs(kind="audit"):
            runs[run.key] = (run.id, store.load_weights(run.id), run.structure, run.metrics["clean_accuracy"])
        for m in store.measurements():
            t = store.brackets(m.id)
            measurements[m.key] = (m.id, m.run_id, m.config["attack"], t.input_index, t.eps_lo, t.eps_hi, t.status, t.distance)
    return runs, measurements


def _runs_stored(path) -> int:
    import sqlite3

    from sparank.store import Store, StoreError

    try:
        with Store(path, readonly=True) as store:
            return len(store.runs())
    except (StoreError, sqlite3.Error):  # not there yet, or being created
        return 0


def _csv_rows(path, drop=("seconds",)):
    with path.open() as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


KILLED_AUDIT = ["audit", "--model", "mlp:64", "--dataset", "digits", "--n", "300", "--families", "magnitude,svd", "--sparsities",
                "0.5,0.8,0.9", "--rank-fractions", "0.5,0.25,0.1", "--attack", "pgd", "--attack-n", "40", "--threads", "1"]  # fmt: skip


def test_an_audit_killed_with_sigkill_resumes_to_the_uninterrupted_result(digits_mlp, tmp_path):
    """kill -9 of `sparank audit --store` after its first copies are stored; the rerun measures only what is missing and
    gives the store, the report's numbers and the per-input ε* of an audit run in one go."""
    import os
    import signal
    import subprocess
    import sys
    import time

    weights = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in digits_mlp.state_dict().items()}, str(weights))
    args = [*KILLED_AUDIT, "--weights", str(weights)]
    r = runner.invoke(app, [*args, "--store", str(tmp_path / "whole"), "--out", str(tmp_path / "whole-rep")])
    assert r.exit_code == 0, r.output
    whole_runs, whole_measurements = _store_state(tmp_path / "whole")
    assert len(whole_runs) == 7 and len(whole_measurements) == 7 * 3  # FGSM, PGD, best per model
    # `sparank show` names each audit run by what compressed it, with its clean accuracy
    shown = runner.invoke(app, ["show", "--store", str(tmp_path / "whole")]).output
    for _, (_, _, _, accuracy) in whole_runs.items():
        assert f"{accuracy:.3f}" in shown, shown
    assert "original" in shown and shown.count(" audit ") == 7, shown

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", "from sparank.cli import main; main()", *args, "--store", str(killed),
                                "--out", str(tmp_path / "killed-rep")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "the audit finished before it could be killed"
            assert time.monotonic() < deadline, "no copy stored after 120 s"
            if _runs_stored(killed) >= 2:  # the original and a first copy
                break
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    before_runs, before_measurements = _store_state(killed)
    print(f"killed with {len(before_runs)} runs and {len(before_measurements)} measurements stored")
    assert 2 <= len(before_runs) < 7, "killed too late to test anything"

    r = runner.invoke(app, [*args, "--store", str(killed), "--out", str(tmp_path / "resumed-rep")])
    assert r.exit_code == 0, r.output
    after_runs, after_measurements = _store_state(killed)
    # what was stored before the kill is kept, under the same ids; only the rest was measured, each model and measurement once
    assert all(after_runs[key][0] == entry[0] for key, entry in before_runs.items())
    assert all(after_measurements[key][0] == entry[0] for key, entry in before_measurements.items())
    assert f"{21 - len(before_measurements)} measurements made now" in r.output
    # the same as the audit run in one go: the same keys, weights bit for bit, structure, brackets
    assert after_runs.keys() == whole_runs.keys() and after_measurements.keys() == whole_measurements.keys()
    for key, (_, state, structure, accuracy) in whole_runs.items():
        got = after_runs[key]
        assert all(torch.equal(got[1][name], state[name]) for name in state) and got[2] == structure and got[3] == accuracy
    for key, entry in whole_measurements.items():
        got = after_measurements[key]
        assert got[2] == entry[2] and all(torch.equal(a, b) for a, b in zip(got[3:], entry[3:])), (key, entry[2])
    # and the same report: every number of every model and comparison, every input's ε*
    assert _csv_rows(tmp_path / "resumed-rep" / "compressions.csv") == _csv_rows(tmp_path / "whole-rep" / "compressions.csv")
    assert _csv_rows(tmp_path / "resumed-rep" / "per_input.csv") == _csv_rows(tmp_path / "whole-rep" / "per_input.csv")


def test_audit_store_faults_are_one_line(tmp_path, digits_mlp):
    weights = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in digits_mlp.state_dict().items()}, str(weights))
    (tmp_path / "file").write_text("not a store")
    args = ["audit", "--model", "mlp:64", "--weights", str(weights), "--dataset", "digits", "--store", str(tmp_path / "file")]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "is a file, not a sparank store" in r.output and len(r.output.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="store must be a sparank.store.Store"):
        audit(digits_mlp, torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), bounds=(0, 1), store=str(tmp_path / "st"))


def test_the_store_reuses_only_records_of_the_same_model_compression_and_settings(digits, digits_mlp, tmp_path):
    from sparank.compare import StudyRecords
    from sparank.store import Store

    x, y = digits.test_x[:120], digits.test_y[:120]
    kwargs = {"bounds": (0, 1), "families": ("magnitude",), "sparsities": (0.8,), "attacks": ("pgd",), "attack_n": 20, "n_boot": 200}
    plain = audit(digits_mlp, x, y, **kwargs)
    with Store(tmp_path / "st") as store:
        first = audit(digits_mlp, x, y, store=store, **kwargs)
        assert len(first.run_ids) == 2 and len(first.recorded) == 2 * 3  # FGSM, PGD and best of the original and of the copy
        again = audit(digits_mlp, x, y, store=store, **kwargs)
        assert again.run_ids == first.run_ids and again.recorded == ()  # everything read back
        for a, b, c in zip((first.original, *first.compressed), (again.original, *again.compressed), (plain.original, *plain.compressed)):
            for name in ("eps_lo", "eps_hi", "status"):
                assert torch.equal(getattr(a.fgsm, name), getattr(c.fgsm, name)), name
                assert torch.equal(getattr(b.fgsm, name), getattr(c.fgsm, name)), name
            assert torch.equal(a.best.eps_hi, c.best.eps_hi) and torch.equal(b.cross_checks[0].eps_hi, c.cross_checks[0].eps_hi)
            assert a.structure == b.structure == c.structure and a.masking == b.masking == c.masking
        assert again.answer() == first.answer() == plain.answer()

        # a changed measure setting: the same runs, new measurements of each
        finer = audit(digits_mlp, x, y, store=store, resolution=5e-3, **kwargs)
        assert finer.run_ids == first.run_ids and len(finer.recorded) == 6
        # other inputs: the same runs, new measurements
        other = audit(digits_mlp, digits.test_x[120:240], digits.test_y[120:240], store=store, **kwargs)
        assert other.run_ids == first.run_ids and len(other.recorded) == 6
        # fine-tuning: the original and its measurements are reused, the copy is a new run; the original's best-ε* record
        # is stored again, as the best of these measurements (one per run and inputs, of the latest: as `sparank measure`)
        tuned = audit(digits_mlp, x, y, store=store, train_data=(digits.train_x[:300], digits.train_y[:300]), fine_tune_epochs=1, **kwargs)
        assert tuned.run_ids[0] == first.run_ids[0] and tuned.run_ids[1] not in first.run_ids and len(tuned.recorded) == 3 + 1
        # other weights (one weight nudged): new runs, nothing reused
        nudged = _state(digits_mlp)
        nudged["fc1.weight"][0, 0] += 1e-3
        changed = load_model("mlp:64", (1, 8, 8), 10, weights=nudged)
        moved = audit(changed, x, y, store=store, **kwargs)
        assert not set(moved.run_ids) & set(first.run_ids + tuned.run_ids) and len(moved.recorded) == 6
        assert len(store.runs(kind="audit")) == 5
        records = StudyRecords.from_store(store)  # an audit's runs are never taken as a study's grid runs
        assert not records.runs and {why for _, why in records.skipped} == {"kind 'audit': not a trained run of a study grid"}
    with Store(tmp_path / "st") as store, pytest.raises(ValueError, match="input_indices must be 120 integers"):
        audit(digits_mlp, x, y, store=store, input_indices=torch.arange(5), **kwargs)


# --------------------------------------------------------------------------- certified FGSM ε*


def test_a_certified_audit_proves_every_input_and_never_passes_the_scan(digits, digits_mlp, tmp_path):
    """``certify=True``: FGSM ε* of the original and every copy is the proved first crossing, so its proved end never
    passes a point the scan verified misclassified (the scan can only step over a crossing), the report says which
    measure was used, and the store keeps the certified and the scanned measurements apart."""
    from sparank.audit_report import certified_counts
    from sparank.store import Store

    x, y = digits.test_x[:150], digits.test_y[:150]
    tol = 1e-6
    kwargs = {
        "bounds": (0, 1),
        "families": ("magnitude", "svd"),
        "sparsities": (0.7,),
        "rank_fractions": (0.25,),
        "n_boot": 200,
        "tol": tol,
    }
    scan = audit(digits_mlp, x, y, **kwargs)
    cert = audit(digits_mlp, x, y, certify=True, **kwargs)
    assert cert.settings["certify"] is True and scan.settings["certify"] is False
    for c, s in zip((cert.original, *cert.compressed), (scan.original, *scan.compressed), strict=True):
        assert c.fgsm.certified is not None and bool(c.fgsm.certified.all()), c.label  # the digits MLP's rays are all proved
        assert s.fgsm.certified is None
        # the proved end never passes a point the scan verified misclassified (a bracket in the model's float32 noise band
        # may be wider than tol at its misclassified end, README "Certified ε*"); almost every bracket is tol wide
        assert bool((c.fgsm.eps_lo <= s.fgsm.eps_hi).all()), c.label
        assert float((c.fgsm.eps_hi - c.fgsm.eps_lo <= tol).double().mean()) >= 0.99
        # a ray the scan crossed is one the certified measure crossed (first); the same clean-wrong inputs
        assert bool(((s.fgsm.status == FOOLED) <= (c.fgsm.status == FOOLED)).all())
        assert torch.equal(c.fgsm.status == CLEAN_WRONG, s.fgsm.status == CLEAN_WRONG)
    correct = sum(int((m.fgsm.status != CLEAN_WRONG).sum()) for m in (scan.original, *scan.compressed))
    assert len(cert.compressed) == 2 and certified_counts(cert) == (correct, correct) and correct < 3 * 150

    cert_paths = write_audit_report(cert, tmp_path / "cert")
    cert_text = cert_paths.markdown.read_text()
    with cert_paths.compressions_csv.open() as f:
        assert [float(r["certified_fraction"]) for r in csv.DictReader(f)] == [1.0, 1.0, 1.0]
    scan_text = write_audit_report(scan, tmp_path / "scan").markdown.read_text()
    assert (
        f"is certified: for {correct} of the {correct} (model, input) pairs that the model classifies correctly (100 %" in cert_text
        and "resolution h = 0.01" not in cert_text
    )
    assert "a scan of the ray clip(x + ε·d) at resolution h = 0.01" in scan_text and "--certify proves" in scan_text

    with Store(tmp_path / "st") as store:
        first = audit(digits_mlp, x, y, certify=True, store=store, **kwargs)
        plain = audit(digits_mlp, x, y, store=store, **kwargs)
        assert plain.run_ids == first.run_ids  # the same models, measured again by the scan
        fgsm_ids = {m.id for run in first.run_ids for m in store.measurements(run) if m.config["attack"] == "fgsm"}
        assert len(fgsm_ids) == 2 * 3  # one certified and one scanned FGSM measurement per model
        again = audit(digits_mlp, x, y, certify=True, store=store, **kwargs)
        assert fgsm_ids == {m.id for run in first.run_ids for m in store.measurements(run) if m.config["attack"] == "fgsm"}  # read back
        for a, b in zip((again.original, *again.compressed), (cert.original, *cert.compressed), strict=True):
            assert torch.equal(a.fgsm.eps_hi, b.fgsm.eps_hi) and torch.equal(a.fgsm.certified, b.fgsm.certified)

    with pytest.raises(ValueError, match="certify must be True or False"):
        audit(digits_mlp, x[:10], y[:10], bounds=(0, 1), certify="yes")  # type: ignore[arg-type]


def test_cli_audit_certify_says_how_many_pairs_were_proved(tmp_path, digits, digits_mlp):
    weights = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in digits_mlp.state_dict().items()}, str(weights))
    out = tmp_path / "rep"
    r = runner.invoke(app, ["audit", "--model", "mlp:64", "--weights", str(weights), "--dataset", "digits", "--n", "60", "--certify",
                            "--families", "svd", "--rank-fractions", "0.5", "--out", str(out), "--threads", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    correct = int((digits_mlp(digits.test_x[:60]).argmax(1) == digits.test_y[:60]).sum())
    with (out / "compressions.csv").open() as f:
        rows = list(csv.DictReader(f))
    correct += round(float(rows[1]["clean_accuracy"]) * 60)  # the copy's
    assert f"certified: FGSM ε* of {correct} of {correct} correctly classified (model, input) pairs" in r.output
    assert "the others" not in r.output and "warning" not in r.output
    assert f"is certified: for {correct} of the {correct}" in (out / "report.md").read_text()


def test_a_model_with_its_own_forward_is_scanned_and_the_audit_says_why(digits, trained_skip, tmp_path):
    """The certified bounds read an nn.Sequential of known layers: SkipNet (a residual forward) keeps the scan, marked not
    certified; the warning names the module and the report counts no proved pair."""
    from sparank.audit_report import certified_counts

    x, y = digits.test_x[:60], digits.test_y[:60]
    with pytest.warns(UserWarning, match="module SkipNet has its own forward"):
        result = audit(trained_skip, x, y, bounds=(0, 1), families=("svd",), rank_fractions=(0.5,), n_boot=100, certify=True)
    scan = audit(trained_skip, x, y, bounds=(0, 1), families=("svd",), rank_fractions=(0.5,), n_boot=100)
    correct = sum(int((m.fgsm.status != CLEAN_WRONG).sum()) for m in (result.original, *result.compressed))
    assert certified_counts(result) == (0, correct) and correct > 0
    for m, s in zip((result.original, *result.compressed), (scan.original, *scan.compressed), strict=True):
        assert torch.equal(m.fgsm.eps_hi, s.fgsm.eps_hi)  # the scan's result, unchanged
    paths = write_audit_report(result, tmp_path / "rep")
    text = paths.markdown.read_text()
    with paths.compressions_csv.open() as f:
        assert [float(r["certified_fraction"]) for r in csv.DictReader(f)] == [0.0, 0.0]
    assert f"for 0 of the {correct} (model, input) pairs" in text and f"the other {correct} keep the scan at resolution h = 0.01" in text
