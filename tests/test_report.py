"""Tests of sparank.report: the study report of a real (CLI-trained) store, read back from its HTML, Markdown and CSV, and opened in a browser.

The store is trained and measured through the CLI (digits, a small MLP, two seeds), plus one
planted run: a stored copy of each seed's dense model whose ε* are ×0.7, as a sparse method
(``l0``): the report must call it less robust, by 0.7.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from sparank.compare import LESS_ROBUST, NO_DIFFERENCE, study_comparisons
from sparank.report import paired_ratio, write_report
from sparank.robustness import CENSORED, CLEAN_WRONG, FOOLED, RobustnessResult
from sparank.store import Store

REFERENCE_EPS = (0.02, 0.05)
PLANTED = 0.7
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli(runner, app, args):
    result = runner.invoke(app, [*args, "--threads", "1"])
    assert result.exit_code == 0, result.output
    return result


def _plant(store: Store, dense_id: str, factor: float) -> str:
    """A stored copy of run ``dense_id`` as the sparse method ``l0``, its FGSM and best ε* multiplied by ``factor`` (clean-wrong stays 0)."""
    dense = store.get_run(dense_id)
    config = json.loads(json.dumps(dense.config))
    config["regulariser"] = {"name": "l0", "strength": 0.5, "layers": ["fc1", "out"], "extra_epochs": 0}
    run_id = store.add_run(kind="train", config=config, metrics=dense.metrics, structure={**dense.structure, "sparsity": 0.3})
    for m in store.measurements(dense_id):
        if m.config.get("attack") not in ("fgsm", "best"):
            continue
        table = store.brackets(m.id)
        c = m.config
        result = RobustnessResult(
            eps_lo=table.eps_lo * factor,
            eps_hi=table.eps_hi * factor,
            status=table.status,
            labels=table.label,
            directions=None,
            norm=c["norm"],
            eps_max=c["eps_max"],
            resolution=c["resolution"],
            tol=c["tol"],
            attack=c["attack"],
            settings=c["attack_settings"],
        )
        config = {k: v for k, v in c.items() if k not in ("norm", "eps_max", "resolution", "tol", "attack_settings")}
        extra = {"masking": m.summary["masking"]} if "masking" in m.summary else None
        store.add_measurement(run_id, config=config, result=result, indices=table.input_index, extra_summary=extra)
    return run_id


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(store path, ReportPaths): a CLI-trained grid of 2 seeds, a planted weaker copy, and its report."""
    from typer.testing import CliRunner

    from sparank.cli import app

    root = tmp_path_factory.mktemp("report")
    store = str(root / "store")
    runner = CliRunner()
    grid = [
        ["--regulariser", "none"],
        ["--regulariser", "none", "--fine-tune-epochs", "2"],
        ["--regulariser", "l2", "--strength", "0.001"],
        ["--regulariser", "l1", "--strength", "0.001"],
        ["--regulariser", "magnitude", "--strength", "0.8", "--fine-tune-epochs", "2"],
        ["--regulariser", "svd_truncate", "--strength", "0.25", "--fine-tune-epochs", "2"],
        ["--regulariser", "adversarial", "--strength", "0.1"],
    ]
    for seed in (0, 1):
        for extra in grid:
            _cli(
                runner,
                app,
                [
                    "train",
                    "--dataset",
                    "digits",
                    "--arch",
                    "mlp:16",
                    "--epochs",
                    "8",
                    "--lr",
                    "0.01",
                    "--seed",
                    str(seed),
                    *extra,
                    "--store",
                    store,
                ],
            )
    with Store(store) as s:
        ids = [r.id for r in s.runs()]
    for rid in ids:
        _cli(runner, app, ["measure", rid, "--n", "50", "--attack", "fgsm", "--attack", "pgd", "--steps", "5", "--store", store])
    with Store(store) as s:
        dense = [
            r.id for r in s.runs() if r.config["regulariser"]["name"] == "none" and not r.config["regulariser"].get("fine_tune_epochs")
        ]
        for rid in dense:
            _plant(s, rid, PLANTED)
    paths = write_report(store, root / "out", title="Test study", config={"report": {"reference_eps": list(REFERENCE_EPS)}})
    return store, paths


class _Page(HTMLParser):
    """Every tag with its attributes, the cells of each table (by id) and the text of elements with an id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.tables: dict[str, list[list[dict[str, str]]]] = {}
        self.texts: dict[str, str] = {}
        self._table: str | None = None
        self._cell: dict[str, str] | None = None
        self._ids: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag == "td" and self._table is not None:
            self._cell = {**attributes, "text": ""}
            self.tables[self._table][-1].append(self._cell)
        if "id" in attributes:
            self._ids.append((tag, attributes["id"]))
            self.texts[attributes["id"]] = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "td":
            self._cell = None
        if self._ids and self._ids[-1][0] == tag:
            self._ids.pop()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        for _tag, element_id in self._ids:
            self.texts[element_id] += data


def _page(paths) -> _Page:
    page = _Page()
    page.feed(paths.html.read_text(encoding="utf-8"))
    page.close()
    return page


def _rows(page: _Page, table_id: str) -> list[dict[str, dict[str, str]]]:
    """Body rows of a table as {data-key: cell attributes and text}."""
    return [{c["data-key"]: c for c in row} for row in page.tables[table_id] if row]


def _value(cell: dict[str, str]) -> float | None:
    return float(cell["data-value"]) if "data-value" in cell else None


def test_html_parses_embeds_every_figure_and_loads_nothing_external(study):
    """One <img> per figure written, each a base64 PNG equal to the figure's file; no script, link, external URL or CSS url()."""
    _store, paths = study
    page = _page(paths)
    images = [a["src"] for tag, a in page.tags if tag == "img"]
    assert len(paths.figures) >= 6  # verdicts, structure, curves, frontier, FGSM vs best, converse
    assert len(images) == len(paths.figures)
    for src, path in zip(images, paths.figures):
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert data.startswith(PNG_MAGIC) and data == path.read_bytes()
    for tag, attributes in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed")
        for name in ("src", "href", "data", "poster"):
            value = attributes.get(name, "")
            assert not value.startswith(("http:", "https:", "//", "file:")), (tag, name, value)
    text = paths.html.read_text(encoding="utf-8")
    assert "url(" not in text and "@import" not in text
    assert text.count('<img src="data:image/png;base64,') == len(paths.figures)


def test_verdict_table_equals_study_comparisons_and_finds_the_planted_copy(study):
    """Each cell's exact value is the comparison's; the ×0.7 copy is less robust by 0.7 and the report opens by saying so."""
    store, paths = study
    page = _page(paths)
    rows = study_comparisons(Store(store, readonly=True), reference_eps=REFERENCE_EPS)
    table = _rows(page, "verdict-table")
    assert len(table) == len(rows) == 6  # l1, l0, magnitude, svd_truncate, l2, adversarial
    for cells, row in zip(table, rows):
        assert int(cells["index"]["data-value"]) == row.index and cells["method"]["data-value"] == row.method
        for kind in ("fgsm", "best"):
            c = getattr(row, kind)
            assert c is not None
            assert _value(cells[f"{kind}_ratio"]) == c.ratio.estimate
            assert float(cells[f"{kind}_ratio"]["data-low"]) == c.ratio.low and float(cells[f"{kind}_ratio"]["data-high"]) == c.ratio.high
            assert cells[f"{kind}_verdict"]["data-value"] == getattr(row, f"{kind}_verdict")
        assert _value(cells["accuracy_change"]) == row.fgsm.clean_accuracy_change.estimate
        assert _value(cells["effective_rank_ratio"]) == row.effective_rank_ratio
        assert cells["flip"].get("data-value") == (None if row.flip is None else str(row.flip))
        if row.control is not None and row.control.fgsm is not None:
            assert _value(cells["control_fgsm_ratio"]) == row.control.fgsm.ratio.estimate
            assert cells["control_fgsm_verdict"]["data-value"] == row.control.fgsm_verdict
    planted = next(r for r in rows if r.method == "l0")
    assert planted.fgsm_verdict == LESS_ROBUST == planted.best_verdict
    assert planted.fgsm.ratio.estimate == pytest.approx(PLANTED, rel=1e-9) and planted.seeds == (0, 1)
    # the dense counterparts are the plain `none` runs; the fine-tuned methods' are `none` fine-tuned 2 epochs
    with Store(store, readonly=True) as s:
        for row in rows:
            for rid in row.dense_run_ids:
                reg = s.get_run(rid).config["regulariser"]
                assert reg["name"] == "none" and (reg.get("fine_tune_epochs") or 0) == (row.options.get("fine_tune_epochs") or 0)
    answer = page.texts["answer-text"]
    less = answer.split("Less robust: ")[1].split("More robust")[0]
    assert f"#{planted.index} l0 λ=0.5, median FGSM ε* ratio 0.7 [0.7, 0.7]" in less
    assert "seeds 0, 1" in answer and "L2 model of matched accuracy" in answer
    html_text = paths.html.read_text(encoding="utf-8")  # the planted sparse copy is less robust: the seed's first claim is supported
    assert '<h3>Sparsity can damage robustness <span class="status status-supported">supported</span></h3>' in html_text


def test_runs_table_aucs_equal_the_stored_summaries_and_brackets(study):
    """Every run's FGSM and best AUC in the HTML is the stored summary's, and mean(min(ε*, ε_max)) of its brackets."""
    store, paths = study
    table = _rows(_page(paths), "runs-table")
    with Store(store, readonly=True) as s:
        assert len(table) == len(s.runs())
        for cells in table:
            rid = cells["run_id"]["data-value"]
            for kind in ("fgsm", "best"):
                newest = [m for m in s.measurements(rid) if m.config.get("attack") == kind][-1]
                assert _value(cells[f"{kind}_auc"]) == newest.summary["auc"]
                eps = s.brackets(newest.id).eps_hi.numpy()
                assert _value(cells[f"{kind}_auc"]) == pytest.approx(float(np.minimum(eps, newest.config["eps_max"]).mean()), abs=1e-12)
            assert _value(cells["test_accuracy"]) == s.get_run(rid).metrics["test_accuracy"]


def test_markdown_and_csv_agree_with_the_html(study):
    """The Markdown verdict and run tables show the HTML's cell texts; the CSVs hold the HTML's exact values."""
    _store, paths = study
    page = _page(paths)
    md = paths.markdown.read_text(encoding="utf-8").replace("\\*", "*").replace("\\|", "|")
    md_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| #") and not line.startswith("| run |")]
    html_rows = [[c["text"] for c in row] for row in page.tables["verdict-table"] + page.tables["runs-table"] if row]
    assert md_rows == ["| " + " | ".join(cells) + " |" for cells in html_rows]
    assert page.texts["answer-text"] in md
    for path in paths.figures:
        assert f"(figures/{path.name})" in md
    with paths.comparisons_csv.open() as handle:
        records = list(csv.DictReader(handle))
    for record, cells in zip(records, _rows(page, "verdict-table"), strict=True):
        assert int(record["index"]) == int(cells["index"]["data-value"])
        for key in ("fgsm_ratio", "best_ratio", "accuracy_change"):
            assert float(record[key]) == _value(cells[key])
        assert record["fgsm_verdict"] == cells["fgsm_verdict"]["data-value"]
        assert float(record["fgsm_ratio_low"]) == float(cells["fgsm_ratio"]["data-low"])
    with paths.runs_csv.open() as handle:
        runs = {r["id"]: r for r in csv.DictReader(handle)}
    for cells in _rows(page, "runs-table"):
        record = runs[cells["run_id"]["data-value"]]
        assert float(record["fgsm_auc"]) == _value(cells["fgsm_auc"]) and int(record["seed"]) == int(cells["seed"]["data-value"])


def test_report_says_how_fgsm_eps_was_measured_scanned_or_certified(study, tmp_path):
    """The report states each run's FGSM ε* mode: the scan at its resolution, or certified with the count of inputs
    proved (read back from the stored per-input flags), in the HTML and in runs.csv."""
    from typer.testing import CliRunner

    from sparank.cli import app

    store, paths = study
    text = paths.html.read_text(encoding="utf-8")
    assert "scan of the ray at resolution h = 0.01, refined to a verified bracket 1e-06 wide" in text and "certified: for" not in text
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    with Store(copy, readonly=True) as s:
        proved = [r.id for r in s.runs()][:2]  # their newest FGSM measurement becomes the certified one
    for rid in proved:
        _cli(CliRunner(), app, ["measure", rid, "--n", "50", "--certify", "--store", str(copy)])
    with Store(copy, readonly=True) as s:
        flags = {rid: s.brackets([m for m in s.measurements(rid) if m.config.get("attack") == "fgsm"][-1].id).certified for rid in proved}
    assert all(f is not None for f in flags.values())
    count, total = sum(int(f.sum()) for f in flags.values()), sum(len(f) for f in flags.values())  # type: ignore[union-attr]
    again = write_report(copy, tmp_path / "out", reference_eps=REFERENCE_EPS)
    text = again.html.read_text(encoding="utf-8")
    assert f"in 2 runs, certified: for {count} of {total} inputs" in text
    assert "scan of the ray at resolution h = 0.01" in text  # the other runs: still scanned, and said so
    with again.runs_csv.open() as handle:
        runs = {r["id"]: r for r in csv.DictReader(handle)}
    for rid, f in flags.items():
        assert float(runs[rid]["fgsm_certified_fraction"]) == pytest.approx(float(f.double().mean()))  # type: ignore[union-attr]
    assert all(r["fgsm_certified_fraction"] == "" for rid, r in runs.items() if rid not in flags)


def test_report_of_a_null_store_says_no_significant_difference(tmp_path):
    """Identical copies of the dense model as sparse and low-rank methods: the answer is "no significant difference", stated as the finding."""
    rng = np.random.default_rng(0)
    with Store(tmp_path / "s") as store:
        for seed in range(2):
            eps = np.exp(np.log(0.08) + 0.4 * rng.standard_normal(80))
            eps[:5] = 0.0
            for method, strength in (("none", None), ("prox_l1", 0.3), ("nuclear", 1e-3)):
                run_id = store.add_run(
                    kind="train",
                    config={
                        "dataset": "digits",
                        "arch": "mlp:16",
                        "train": {"epochs": 5, "seed": seed},
                        "regulariser": {"name": method, "strength": strength},
                    },
                    metrics={"test_accuracy": 0.9},
                    structure={"sparsity": 0.0, "effective_sparsity": 0.1, "mean_effective_rank_ratio": 0.7},
                )
                status = torch.where(torch.as_tensor(eps) == 0, int(CLEAN_WRONG), int(FOOLED))
                result = RobustnessResult(
                    eps_lo=torch.as_tensor(eps) * 0.99, eps_hi=torch.as_tensor(eps), status=status, labels=torch.zeros(80, dtype=torch.int64),
                    directions=None, norm="linf", eps_max=0.5, resolution=0.01, tol=1e-6,
                )  # fmt: skip
                store.add_measurement(run_id, config={"n": 80}, result=result, indices=torch.arange(80))
    paths = write_report(tmp_path / "s", tmp_path / "out")
    page = _page(paths)
    answer = page.texts["answer-text"]
    assert (
        "no sparse or low-rank model is significantly more or less robust" in answer
        and "no significant difference is the finding" in answer
    )
    assert all(c["fgsm_verdict"]["data-value"] == NO_DIFFERENCE for c in _rows(page, "verdict-table"))
    text = paths.html.read_text(encoding="utf-8")
    assert 'status-not-supported-here">not supported here' in text  # sparsity damaging robustness: not seen here
    assert 'status-not-tested-here">not tested here</span></h3><blockquote>“Limited numerical' in text  # no adversarial runs
    assert len(paths.figures) == text.count("data:image/png;base64,") >= 4


def test_write_report_leaves_pyplot_and_the_backend_alone(study, tmp_path):
    """Drawing on bare Figures: no pyplot figure is opened and the caller's backend stays."""
    import matplotlib
    import matplotlib.pyplot as plt

    store, _paths = study
    backend = matplotlib.get_backend()
    before = plt.get_fignums()
    write_report(store, tmp_path / "again", reference_eps=REFERENCE_EPS, n_boot=999)
    assert matplotlib.get_backend() == backend and plt.get_fignums() == before


def test_paired_ratio_by_hand():
    """The linear path's paired ratio (now in report): median of the ratios over inputs correct in both, and the fraction below."""
    eps_a = torch.tensor([0.1, 0.2, 0.0, math.inf, 0.3], dtype=torch.float64)
    eps_b = torch.tensor([0.2, 0.1, 0.1, 0.4, 0.0], dtype=torch.float64)

    def result(eps):
        status = torch.where(eps == 0, int(CLEAN_WRONG), torch.where(eps.isinf(), int(CENSORED), int(FOOLED)))
        return RobustnessResult(eps_lo=eps, eps_hi=eps, status=status, labels=torch.zeros(5, dtype=torch.int64), directions=None,
                                norm="linf", eps_max=0.5, resolution=0.01, tol=1e-6)  # fmt: skip

    ratio, lower = paired_ratio(result(eps_a), result(eps_b))
    # both correct: inputs 0, 1, 3; ratios 0.5, 2, 0.5/0.4 = 1.25 (inf capped at 0.5): median 1.25; a below b on input 0 only
    assert ratio == pytest.approx(1.25) and lower == pytest.approx(1 / 3)


def test_browser_renders_every_figure_without_console_errors(study, tmp_path):
    """Chromium (Debian's, driven by Playwright) opens the file: every <img> decodes (naturalWidth > 0) and the console stays clean."""
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        pytest.skip("no chromium browser here (`apt-get install chromium`; `make test` installs it where it can)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed in this environment")
    _store, paths = study
    messages, failures = [], []
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        except Exception as e:  # a browser that cannot start here (no display libraries, sandbox refused)
            pytest.skip(f"chromium at {chromium} does not start: {str(e).splitlines()[0]}")
        try:
            page = browser.new_page()
            page.on("console", lambda m: messages.append((m.type, m.text)))
            page.on("pageerror", lambda e: failures.append(str(e)))
            page.on("requestfailed", lambda r: failures.append(r.url[:80]))
            page.goto(paths.html.resolve().as_uri(), wait_until="load")
            widths = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            title = page.title()
        finally:
            browser.close()
    assert len(widths) == len(paths.figures)
    assert all(complete and w > 0 and h > 0 for complete, w, h in widths), widths
    assert [m for m in messages if m[0] in ("error", "warning")] == [] and failures == []
    assert title == "Test study"
