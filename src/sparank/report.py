"""Reports: what a store's runs say about the research question, as one self-contained HTML file (issue 10).

:func:`write_report` reads a store once (:class:`~sparank.compare.StudyRecords`), compares every
regularised method with its dense counterpart and its L2 control
(:func:`~sparank.compare.study_comparisons`, PROTOCOL §6) and writes into ``out_dir``:

- ``report.html``: one file with no external resource (figures as base64 PNG, CSS inline, no
  script). It opens with the answer, in one paragraph, to "is any sparse or low-rank model more
  (or less) robust than its dense counterpart, and by how much?"; then the verdict table (FGSM
  and best-ε* verdicts side by side, flips, accuracy change, structure, masking flags, control),
  the figures, the research summary's claims point by point (``../shared/seed/``), the converse
  (Langenberg et al. 2019: adversarially trained models are sparse and low-rank), every run, and
  the settings. Every number in a table also sits, at full precision, in the cell's ``data-value``;
- ``report.md``: the same answer, claims and tables in Markdown, the figures linked;
- ``runs.csv`` and ``comparisons.csv``: every run and every comparison at full precision;
- ``figures/*.png``: every figure of the HTML, also as a file.

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects, never through pyplot, so a
caller's backend and open figures are left alone. The linear path's paired ratio, table and
figure live here too (:func:`paired_ratio`, :func:`write_path_table`, :func:`plot_path`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparank.compare import (
    LESS_ROBUST,
    MORE_ROBUST,
    NO_DIFFERENCE,
    ComparisonRow,
    Interval,
    StudyMeasurement,
    StudyRecords,
    StudyRun,
    Verdict,
    paired_log_ratios,
    stored_number,
    study_comparisons,
)
from sparank.robustness import CLEAN_WRONG, RobustnessResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sparank.linear_path import Comparison, PathPoint, PathResult
    from sparank.store import Store

#: ε values of the robust-accuracy differences, as fractions of each comparison's ε_max, unless a config gives them
DEFAULT_REFERENCE_FRACTIONS = (0.05, 0.1, 0.2)
#: a median ε* ratio in [MARGINAL, 1) counts as a marginal reduction (a median loss of at most 20 %)
MARGINAL = 0.8

_VERDICT_COLOURS = {MORE_ROBUST: "#1a9850", LESS_ROBUST: "#d73027", NO_DIFFERENCE: "#7f7f7f"}
_VERDICT_CSS = {MORE_ROBUST: "more", LESS_ROBUST: "less", NO_DIFFERENCE: "nodiff"}
_METHOD_COLOURS = {
    "none": "#000000",
    "l2": "#8c8c8c",
    "adversarial": "#b8860b",
    "l1": "#1f77b4",
    "prox_l1": "#17becf",
    "magnitude": "#2ca02c",
    "magnitude_gradual": "#7fbf3f",
    "group_lasso": "#9467bd",
    "l0": "#3b4cc0",
    "nuclear": "#d62728",
    "svt": "#ff7f0e",
    "factorised": "#e377c2",
    "svd_truncate": "#8c564b",
}
_OTHER_COLOURS = ("#bcbd22", "#17a589", "#a93226", "#5d6d7e", "#f1948a")
_FAMILY_MARKERS = {"dense": "X", "baseline": "D", "sparse": "o", "low-rank": "s", "reference": "*", "other": "^"}
_FAMILY_NAMES = {"sparse": "sparsity", "low-rank": "low rank"}


@dataclass(frozen=True)
class ReportPaths:
    """The files :func:`write_report` wrote."""

    html: Path  # report.html: self-contained
    markdown: Path  # report.md
    runs_csv: Path  # runs.csv: one row per run of the study
    comparisons_csv: Path  # comparisons.csv: one row per comparison (ComparisonRow)
    figures: tuple[Path, ...]  # figures/*.png, in the order the HTML embeds them


@dataclass(frozen=True)
class Cell:
    """One table cell: the text shown and, for machines, its column key and exact value (an interval's ends where it has one)."""

    key: str
    text: str
    value: Any = None
    low: float | None = None
    high: float | None = None
    css: str = ""


@dataclass(frozen=True)
class Claim:
    """One claim of the research summary and this store's evidence on it."""

    title: str
    quote: str  # the seed document's words
    status: str  # "supported", "partly supported", "not supported here", "not tested here"
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class _Figure:
    name: str  # file stem
    caption: str
    png: bytes


# --------------------------------------------------------------------------- small formatting helpers


def _g(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "> ε_max"
    return f"{value:.{digits}g}"


def _ratio_text(interval: Interval | None) -> str:
    """``0.934 [0.880, 0.983]``: a ratio and its interval."""
    if interval is None:
        return "–"
    return f"{interval.estimate:.3g} [{interval.low:.3g}, {interval.high:.3g}]"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _points(interval: Interval | None) -> str:
    """A difference of fractions in percentage points, with its interval."""
    if interval is None:
        return "–"
    return f"{100 * interval.estimate:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _seeds_text(seeds: Sequence[int]) -> str:
    seeds = sorted(set(seeds))
    return f"seed{'s' if len(seeds) != 1 else ''} {', '.join(str(s) for s in seeds)}"


def _group_of(row: ComparisonRow) -> tuple[str, str, str]:
    return (row.dataset, row.arch, json.dumps(row.train, sort_keys=True, default=str))


def _group_label(group: tuple[str, str, str]) -> str:
    dataset, arch, train_json = group
    train = json.loads(train_json)
    bits = []
    if "epochs" in train:
        bits.append(f"{train['epochs']} epochs")
    if "optimizer" in train:
        bits.append(f"{train['optimizer']} lr {train.get('lr', '?')}")
    if "batch_size" in train:
        bits.append(f"batch {train['batch_size']}")
    return f"{arch} on {dataset}" + (f" ({', '.join(bits)})" if bits else "")


def _method_colour(method: str) -> str:
    if method in _METHOD_COLOURS:
        return _METHOD_COLOURS[method]
    return _OTHER_COLOURS[sum(map(ord, method)) % len(_OTHER_COLOURS)]


def _newest(records: StudyRecords, run_id: str, kind: str) -> StudyMeasurement | None:
    found = records.of(run_id, kind)
    return found[0] if found else None


def percent_down(part: int, total: int) -> str:
    """``part`` of ``total`` as a percentage to 0.01, rounded down: 100 only when all are (100 for none of none)."""
    return f"{math.floor(10000 * part / total) / 100:g}" if total else "100"


def measure_text(records: StudyRecords) -> str | None:
    """How each run's FGSM ε* (the newest measurement, as the comparisons use) was measured: scanned at a
    resolution, certified (with the fraction of inputs proved) or scanned on the fast copy; None without any."""
    groups: dict[tuple[Any, ...], list[StudyMeasurement]] = {}
    for run in records.runs:
        m = _newest(records, run.id, "fgsm")
        if m is not None:
            s = json.loads(m.settings).get("attack_settings") or {}
            groups.setdefault((s.get("resolution"), s.get("tol"), bool(s.get("certify")), bool(s.get("fast"))), []).append(m)
    parts = []
    for (h, tol, certify, fast), ms in groups.items():
        runs = f"in {len(ms)} run{'s' if len(ms) != 1 else ''}"
        copy = "; scanned on a TorchScript copy of each model, every bracket checked on the model itself" if fast else ""
        if certify:
            proved = sum(int(m.certified.sum()) for m in ms if m.certified is not None)
            total = sum(len(m.eps) for m in ms)
            left = total - proved
            rest = "" if not left else f"; the other {left} input{' keeps' if left == 1 else 's keep'} the scan at resolution h = {_g(h)}"
            share = percent_down(proved, total)
            parts.append(
                f"{runs}, certified: for {proved} of {total} inputs ({share} %) every ε below ε* is proved "
                f"classified correctly by bounds over the ray, and ε* is the verified first crossing to {_g(tol)}{rest}{copy}"
            )
        else:
            parts.append(
                f"{runs}, the first misclassified point of a scan of the ray at resolution h = {_g(h)}, refined to a verified bracket "
                f"{_g(tol)} wide; a misclassified stretch shorter than h can be stepped over{copy}"
            )
    if not parts:
        return None
    hint = "" if all(certify for _, _, certify, _ in groups) else " (`certify = true` under [measure] proves the first crossing instead)"
    return "How FGSM ε* was measured (along the ray clip(x + ε·d), d the FGSM direction): " + "; ".join(parts) + hint + "."


def _auc(m: StudyMeasurement | None) -> float | None:
    return None if m is None else stored_number(m.summary.get("auc"))


def _verdicts_of(row: ComparisonRow) -> list[Verdict]:
    return [v for v in (row.fgsm_verdict, row.best_verdict) if v is not None]


def _significant(row: ComparisonRow) -> Verdict | None:
    """The row's significant verdict (FGSM's, else best's), or None when neither is significant."""
    for v in (row.fgsm_verdict, row.best_verdict):
        if v in (MORE_ROBUST, LESS_ROBUST):
            return v
    return None


def _by_kind(row: ComparisonRow) -> str:
    """``FGSM 0.93 [0.88, 0.98], best ε* 0.93 [0.90, 0.96]``."""
    parts = []
    if row.fgsm is not None:
        parts.append(f"FGSM {_ratio_text(row.fgsm.ratio)}")
    if row.best is not None:
        parts.append(f"best ε* {_ratio_text(row.best.ratio)}")
    return ", ".join(parts)


def _where(row: ComparisonRow, several_groups: bool) -> str:
    return f"#{row.index} {row.label}" + (f" ({row.arch} on {row.dataset})" if several_groups else "")


# --------------------------------------------------------------------------- the answer, the claims, the converse


def _control_sentence(row: ComparisonRow) -> str:
    """What the L2 control of matched accuracy says about the row's effect."""
    what = _FAMILY_NAMES.get(row.family, "the method")
    c = row.control
    if c is None or c.fgsm is None or c.fgsm_verdict is None:
        return "no L2 control of matched accuracy was available, so the effect cannot be told apart from regularisation as such"
    ratio = _ratio_text(c.fgsm.ratio)
    v = row.fgsm_verdict if row.fgsm_verdict in (MORE_ROBUST, LESS_ROBUST) else _significant(row)
    if c.fgsm_verdict == v:
        return f"against the L2 model closest in accuracy it is also {v} ({ratio}): the effect belongs to {what}, not to regularisation as such"
    if c.fgsm_verdict == NO_DIFFERENCE:
        return (
            f"against the L2 model closest in accuracy it shows no significant difference ({ratio}): "
            f"the effect is one of regularisation as such, not of {what}"
        )
    better = "more" if c.fgsm_verdict == LESS_ROBUST else "less"
    return f"yet against the L2 model closest in accuracy it is {c.fgsm_verdict} ({ratio}): L2 regularisation of the same accuracy does {better} for robustness"


def _brief(row: ComparisonRow, several: bool) -> str:
    """``#7 svd_truncate r=0.25, median ε* ratio 0.934 [0.88, 0.983] (best ε* ...), accuracy -2.0 points; <control>``."""
    main = row.fgsm if row.fgsm_verdict in (MORE_ROBUST, LESS_ROBUST) or row.best is None else row.best
    kind = "FGSM" if main is row.fgsm else "best-ε*"
    text = f"{_where(row, several)}, median {kind} ε* ratio {_ratio_text(main.ratio)}"  # type: ignore[union-attr]
    if main is row.fgsm and row.best is not None:
        text += f" (best ε* {_ratio_text(row.best.ratio)}, {row.best_verdict})"
    elif main is row.best and row.fgsm is not None:
        text += f" (FGSM {_ratio_text(row.fgsm.ratio)}, {row.fgsm_verdict})"
    if row.fgsm is not None:
        text += f", clean accuracy {100 * row.fgsm.clean_accuracy_change.estimate:+.1f} points"
    return text + f", {_control_brief(row)}"


def _control_brief(row: ComparisonRow) -> str:
    """The L2 control's word on the row's effect, in a clause."""
    what = _FAMILY_NAMES.get(row.family, "the method")
    c = row.control
    if c is None or c.fgsm is None or c.fgsm_verdict is None:
        return "with no L2 control to tell it from regularisation as such"
    ratio = _ratio_text(c.fgsm.ratio)
    v = _significant(row)
    if c.fgsm_verdict == v:
        return f"also {v} than the L2 model of matched accuracy ({ratio}): an effect of {what}"
    if c.fgsm_verdict == NO_DIFFERENCE:
        return f"no different from the L2 model of matched accuracy ({ratio}): an effect of regularisation as such, not of {what}"
    return f"but {c.fgsm_verdict} than the L2 model of matched accuracy ({ratio})"


def answer(rows: Sequence[ComparisonRow], *, alpha: float = 0.05, limit: int = 6) -> str:
    """The one-paragraph answer, for this store, to "is any sparse or low-rank model more (or less) robust than its dense counterpart?".

    Generated from the verdicts (FGSM ε* and best ε*, Holm-corrected), naming the ratios with their
    intervals, the seeds, the accuracy change and what the L2 control says; "no significant
    difference" is stated as the finding it is. At most ``limit`` significant comparisons are
    spelled out (the largest effects first); the verdict table has them all.
    """
    target = [r for r in rows if r.family in ("sparse", "low-rank")]
    compared = [r for r in target if r.fgsm is not None]
    several = len({_group_of(r) for r in rows}) > 1
    reference = [r for r in rows if r.family == "reference" and r.fgsm is not None]
    ref_text = ""
    if reference:
        ref_text = " For reference, " + "; ".join(
            f"{r.label} ({r.arch} on {r.dataset}) is {r.fgsm_verdict} under FGSM ({_by_kind(r)})" for r in reference[:2]
        )
        ref_text += "."
    if not target:
        held = sorted({r.method for r in rows})
        return (
            "This store holds no sparse or low-rank run, so it cannot say whether one is more or less robust than its dense "
            f"counterpart{' (it holds ' + _join(held) + ')' if held else ''}; add sparse or low-rank regularisers to the study." + ref_text
        )
    if not compared:
        return (
            f"None of the {len(target)} sparse or low-rank methods in this store could be compared with a dense counterpart "
            "(a `none` run of the same dataset, architecture, training, seed and budget, measured on the same inputs): "
            "see the notes under the verdict table." + ref_text
        )
    seeds = sorted({s for r in compared for s in r.seeds})
    grids = _join(sorted({f"{r.arch} on {r.dataset}" for r in compared}))
    n_inputs = sorted({r.fgsm.n_inputs // max(r.fgsm.n_seeds, 1) for r in compared if r.fgsm})
    with_best = [r for r in compared if r.best is not None]
    attacks = sorted({a for r in with_best for a in r.best_attacks})
    intro = (
        f"Across {len(compared)} comparison{'s' if len(compared) != 1 else ''} of sparse or low-rank models with their dense "
        f"counterparts ({grids}; {_seeds_text(seeds)}, each model paired with the dense model of its own seed; FGSM ε* on "
        f"{_join([str(n) for n in n_inputs])} test inputs per model"
        + (f", best ε* over {_join(attacks)} where those ran ({len(with_best)} comparisons)" if with_best else ", no cross-check attacks")
        + f"; Holm-corrected at α = {alpha:g})"
    )
    significant = [r for r in compared if _significant(r) is not None]
    if not significant:
        extreme = sorted(compared, key=lambda r: r.fgsm.log_ratio.estimate)  # type: ignore[union-attr]
        low, high = extreme[0], extreme[-1]
        text = (
            f"{intro}, no sparse or low-rank model is significantly more or less robust than its dense counterpart. "
            f"The median per-input ε* ratios (regularised / dense) run from {_ratio_text(low.fgsm.ratio)} ({low.label}) "  # type: ignore[union-attr]
            f"to {_ratio_text(high.fgsm.ratio)} ({high.label}), 95 % intervals in brackets: "  # type: ignore[union-attr]
            "no significant difference is the finding."
        )
    else:
        less = [r for r in compared if _significant(r) == LESS_ROBUST]
        more = [r for r in compared if _significant(r) == MORE_ROBUST]
        rest = len(compared) - len(less) - len(more)
        text = f"{intro}: {len(less)} less robust, {len(more)} more robust, {rest} with no significant difference."
        for name, group in (("Less robust", less), ("More robust", more)):
            if not group:
                continue
            group = sorted(group, key=lambda r: -abs((r.fgsm or r.best).log_ratio.estimate))  # type: ignore[union-attr]
            text += f" {name}: " + "; ".join(_brief(r, several) for r in group[:limit])
            text += f"; and {len(group) - limit} more in the verdict table." if len(group) > limit else "."
    quiet = [
        r for r in compared if _significant(r) is None and r.control is not None and r.control.fgsm_verdict in (MORE_ROBUST, LESS_ROBUST)
    ]
    if quiet:
        text += (
            " Against the L2 model closest in accuracy, "
            + "; ".join(
                f"{_where(r, several)} is {r.control.fgsm_verdict} ({_ratio_text(r.control.fgsm.ratio)})"  # type: ignore[union-attr]
                for r in quiet[:limit]
            )
        )
        text += (
            " although "
            + ("it does not" if len(quiet) == 1 else "none of these does")
            + " differ significantly from its dense counterpart."
        )
    flips = [r for r in compared if r.flip]
    if flips:
        text += (
            f" {len(flips)} verdict{'s' if len(flips) != 1 else ''} change{'s' if len(flips) == 1 else ''} between FGSM and the best attack "
            f"({', '.join('#' + str(r.index) for r in flips)}): a conclusion that holds under FGSM only may be gradient masking."
        )
    masked = [r for r in compared if r.masked_runs]
    if masked:
        text += f" Gradient-masking flags are raised for {', '.join('#' + str(r.index) for r in masked)}."
    return text + ref_text


def _accuracy_lost(row: ComparisonRow) -> bool:
    """The clean-accuracy change's 95 % interval lies wholly below 0."""
    return row.fgsm is not None and row.fgsm.clean_accuracy_change.high < 0


def claims(rows: Sequence[ComparisonRow]) -> list[Claim]:
    """The research summary's claims about sparsity and low rank (``../shared/seed/``), each with this store's evidence."""
    several = len({_group_of(r) for r in rows}) > 1
    sparse = [r for r in rows if r.family == "sparse" and r.fgsm is not None]
    low_rank = [r for r in rows if r.family == "low-rank" and r.fgsm is not None]

    def listing(rs: Sequence[ComparisonRow]) -> str:
        return "; ".join(f"{_where(r, several)}: {_by_kind(r)}" for r in rs)

    out: list[Claim] = []
    # 1. sparsity can damage robustness
    quote = "Our comprehensive numerical results show that sparsity can damage the robustness of DNNs."
    if not sparse:
        out.append(
            Claim("Sparsity can damage robustness", quote, "not tested here", ("no sparse method was compared with a dense counterpart",))
        )
    else:
        less = [r for r in sparse if LESS_ROBUST in _verdicts_of(r)]
        more = [r for r in sparse if MORE_ROBUST in _verdicts_of(r)]
        evidence = [
            f"{len(sparse)} sparse comparisons: {len(less)} less robust, {len(more)} more robust, {len(sparse) - len(less) - len(more)} no significant difference (FGSM or best ε*)."
        ]
        if less:
            evidence.append("Less robust than the dense counterpart: " + listing(less) + ".")
            for r in less:
                evidence.append(f"{_where(r, several)}: {_control_sentence(r)}.")
        if more:
            evidence.append("More robust: " + listing(more) + ".")
        vs_l2 = [r for r in sparse if r.control is not None and r.control.fgsm_verdict == LESS_ROBUST and r not in less]
        if vs_l2:
            evidence.append(
                "Not less robust than the dense model, but less robust than the L2 model closest in accuracy: "
                + "; ".join(f"{_where(r, several)}: {_ratio_text(r.control.fgsm.ratio)}" for r in vs_l2)  # type: ignore[union-attr]
                + "."
            )
        status = "supported" if less else ("partly supported" if vs_l2 else "not supported here")
        out.append(Claim("Sparsity can damage robustness", quote, status, tuple(evidence)))
    # 2. some sparsification techniques do not enhance robustness; some do more harm than good
    quote = "There exist sparsification techniques which do not enhance robustness in DNNs, and some can cause more damage than good."
    if not sparse:
        out.append(
            Claim(
                "Some sparsification techniques do not enhance robustness; some do more harm than good",
                quote,
                "not tested here",
                ("no sparse method was compared",),
            )
        )
    else:
        evidence = []
        not_enhancing, harming = [], []
        for method in dict.fromkeys(r.method for r in sparse):
            rs = [r for r in sparse if r.method == method]
            better = [r.label for r in rs if MORE_ROBUST in _verdicts_of(r)]
            flat = [r.label for r in rs if MORE_ROBUST not in _verdicts_of(r)]
            worse = [r.label for r in rs if LESS_ROBUST in _verdicts_of(r)]
            costly = [r.label for r in rs if r.label not in better and r.label not in worse and _accuracy_lost(r)]
            not_enhancing += flat
            harming += worse + costly
            better, flat, worse, costly = ([x.removeprefix(method + " ") for x in xs] for xs in (better, flat, worse, costly))
            parts = []
            if better:
                parts.append(f"more robust at {_join(better)}")
            if worse:
                parts.append(f"less robust at {_join(worse)}")
            if costly:
                parts.append(f"no more robust but significantly less accurate at {_join(costly)}")
            rest = [x for x in flat if x not in worse and x not in costly]
            if rest:
                parts.append(f"no significant change at {_join(rest)}")
            evidence.append(f"{method}: " + "; ".join(parts) + ".")
        if not_enhancing and harming:
            status = "supported"
        elif not_enhancing or harming:
            status = "partly supported"
        else:
            status = "not supported here"
        evidence.insert(
            0,
            f"Sparse settings that do not enhance robustness (no 'more robust' verdict): {_join(not_enhancing) or 'none'}. "
            f"Settings that do more harm than good (less robust, or less accurate with no robustness gained): {_join(harming) or 'none'}.",
        )
        out.append(
            Claim("Some sparsification techniques do not enhance robustness; some do more harm than good", quote, status, tuple(evidence))
        )
    # 3. low-rank methods can marginally reduce robustness
    quote = "In the case of low-rank, we show numerically that it is possible to have low-rank inducing methods which marginally reduce robustness."
    title = "Low-rank methods can marginally reduce robustness"
    if not low_rank:
        out.append(Claim(title, quote, "not tested here", ("no low-rank method was compared with a dense counterpart",)))
    else:
        less = [r for r in low_rank if LESS_ROBUST in _verdicts_of(r)]
        evidence = [
            f"{len(low_rank)} low-rank comparisons: {len(less)} less robust. A reduction counts as marginal when the median ε* ratio is "
            f"at least {MARGINAL:g} (a median loss of at most {100 * (1 - MARGINAL):.0f} %)."
        ]
        marginal = [r for r in less if (r.fgsm or r.best).ratio.estimate >= MARGINAL]  # type: ignore[union-attr]
        large = [r for r in less if r not in marginal]
        if marginal:
            evidence.append("Marginally less robust: " + listing(marginal) + ".")
        if large:
            evidence.append("Less robust by more than a margin: " + listing(large) + ".")
        for r in less:
            evidence.append(f"{_where(r, several)}: {_control_sentence(r)}.")
        others = [r for r in low_rank if r not in less]
        if others:
            evidence.append("Not less robust: " + listing(others) + ".")
        status = "supported" if marginal else ("partly supported" if large else "not supported here")
        out.append(Claim(title, quote, status, tuple(evidence)))
    # 4. the linear theory: not something a study of networks tests
    out.append(
        Claim(
            "For linear classifiers, L1 regularisation can degrade FGSM robustness",
            "We show theoretically that for Linear Classifiers, the most widely used technique which induces sparsity "
            "can lead to a degradation in robustness to FGSM attacks.",
            "not tested here",
            (
                "A study of networks does not test the linear theory; `sparank linear` computes the exact ε* along an L1 path (docs/linear.md).",
            ),
        )
    )
    return out


def converse(rows: Sequence[ComparisonRow], records: StudyRecords) -> Claim:
    """Langenberg et al. 2019: adversarially trained models are simultaneously sparse and low-rank; checked on this store's structure metrics.

    Per seed, an ``adversarial`` run against its dense counterpart (the runs of its comparison):
    effective sparsity (|w| ≤ 10⁻³·max|w|) and the mean effective-rank ratio. "Supported" when the
    adversarial model is sparser and of lower effective rank in every seed of every comparison.
    """
    quote = (
        "Limited numerical experiments in the literature (with no theoretical proof) may suggest that relatively robust models are "
        "simultaneously sparse and low-rank (Langenberg, Balda, Behboodi & Mathar 2019)."
    )
    title = "The converse: adversarially trained models are sparse and low-rank"
    adversarial = [r for r in rows if r.family == "reference" and r.dense_run_ids]
    if not adversarial:
        return Claim(title, quote, "not tested here", ("no adversarial run with a dense counterpart in this store",))
    evidence = []
    sparser_all, lower_all = True, True
    for r in adversarial:
        pairs = [(records.run(a), records.run(d)) for a, d in zip(r.run_ids, r.dense_run_ids)]
        d_sparse = [(a.effective_sparsity or 0.0) - (d.effective_sparsity or 0.0) for a, d in pairs]
        d_rank = [(a.effective_rank_ratio or 0.0) - (d.effective_rank_ratio or 0.0) for a, d in pairs]
        n_sparser = sum(x > 0 for x in d_sparse)
        n_lower = sum(x < 0 for x in d_rank)
        sparser_all &= n_sparser == len(pairs)
        lower_all &= n_lower == len(pairs)
        robust = f"it is {r.fgsm_verdict} than the dense model under FGSM ({_by_kind(r)})" if r.fgsm else "its robustness was not compared"
        evidence.append(
            f"{r.label} ({r.arch} on {r.dataset}, {len(pairs)} seeds): {robust}. Effective sparsity {_pct(r.effective_sparsity)} against "
            f"{_pct(r.effective_sparsity_dense)} dense (sparser in {n_sparser} of {len(pairs)} seeds; exact zeros {_pct(r.sparsity)} against "
            f"{_pct(r.sparsity_dense)}); mean effective-rank ratio {_g(r.effective_rank_ratio)} against {_g(r.effective_rank_ratio_dense)} "
            f"(lower in {n_lower} of {len(pairs)} seeds)."
        )
    if sparser_all and lower_all:
        status, verdict = (
            "supported",
            "adversarially trained models here are both sparser and of lower effective rank than their dense counterparts",
        )
    elif sparser_all or lower_all:
        which = "sparser" if sparser_all else "of lower effective rank"
        status, verdict = "partly supported", f"adversarially trained models here are {which} in every seed, but not both"
    else:
        status, verdict = "not supported here", "adversarially trained models here are not consistently sparser or of lower rank"
    evidence.insert(0, verdict[0].upper() + verdict[1:] + ".")
    return Claim(title, quote, status, tuple(evidence))


# --------------------------------------------------------------------------- tables


def verdict_table(rows: Sequence[ComparisonRow]) -> tuple[list[str], list[list[Cell]]]:
    """The verdict table: headers and one list of :class:`Cell` per comparison (the same cells feed HTML and Markdown)."""
    several = len({_group_of(r) for r in rows}) > 1
    headers = (
        ["#"]
        + (["grid"] if several else [])
        + [
            "method",
            "seeds · inputs",
            "FGSM ε* ratio [95 % CI]",
            "FGSM verdict",
            "best ε* ratio [95 % CI]",
            "best ε* verdict",
            "flip",
            "Δ clean accuracy, points [95 % CI]",
            "exact zeros (dense)",
            "eff. sparsity (dense)",
            "eff. rank ratio (dense)",
            "masking",
            "vs L2 control: FGSM ratio [95 % CI]",
            "control verdict: FGSM / best",
        ]
    )
    table = []
    for r in rows:
        cells = [Cell("index", str(r.index), r.index)]
        if several:
            cells.append(Cell("grid", f"{r.arch} on {r.dataset}", f"{r.arch} on {r.dataset}"))
        cells.append(Cell("method", f"{r.label} ({r.family})", r.method))
        n = r.fgsm.n_inputs if r.fgsm else 0
        cells.append(Cell("n_seeds", f"{len(r.seeds)} · {n}", len(r.seeds)))
        for kind in ("fgsm", "best"):
            c = getattr(r, kind)
            v = getattr(r, f"{kind}_verdict")
            if c is None:
                cells.append(Cell(f"{kind}_ratio", "not compared" if kind == "fgsm" else "no cross-check", None))
                cells.append(Cell(f"{kind}_verdict", "–", None))
            else:
                cells.append(Cell(f"{kind}_ratio", _ratio_text(c.ratio), c.ratio.estimate, c.ratio.low, c.ratio.high))
                cells.append(Cell(f"{kind}_verdict", f"{v} (p {c.p_value:.2g})", v, css=_VERDICT_CSS.get(v or "", "")))
        cells.append(Cell("flip", "–" if r.flip is None else ("flips" if r.flip else "same"), r.flip, css="flip" if r.flip else ""))
        acc = r.fgsm.clean_accuracy_change if r.fgsm else None
        cells.append(Cell("accuracy_change", _points(acc), None if acc is None else acc.estimate, acc and acc.low, acc and acc.high))
        for key in ("sparsity", "effective_sparsity"):
            mine, dense = getattr(r, key), getattr(r, f"{key}_dense")
            cells.append(Cell(key, f"{_pct(mine)} ({_pct(dense)})", mine))
        cells.append(
            Cell("effective_rank_ratio", f"{_g(r.effective_rank_ratio)} ({_g(r.effective_rank_ratio_dense)})", r.effective_rank_ratio)
        )
        if not r.masking_checked:
            masking = "not checked"
        elif r.masked_runs:
            masking = f"{', '.join(r.masking_flags)} ({', '.join(r.masked_runs)})"
        else:
            masking = "none raised"
        cells.append(Cell("masking", masking, ",".join(r.masking_flags), css="flip" if r.masked_runs else ""))
        control = r.control
        if control is None:
            cells += [Cell("control_fgsm_ratio", "– (not sparse / low-rank)", None), Cell("control_fgsm_verdict", "–", None)]
        elif control.fgsm is None:
            cells += [Cell("control_fgsm_ratio", "no l2 run to compare", None), Cell("control_fgsm_verdict", "–", None)]
        else:
            lams = ", ".join(_g(s) for s in dict.fromkeys(control.l2_strengths))
            ratio = control.fgsm.ratio
            cells.append(Cell("control_fgsm_ratio", f"{_ratio_text(ratio)} (l2 λ={lams})", ratio.estimate, ratio.low, ratio.high))
            text = f"{control.fgsm_verdict} / {control.best_verdict or '–'}"
            cells.append(Cell("control_fgsm_verdict", text, control.fgsm_verdict, css=_VERDICT_CSS.get(control.fgsm_verdict or "", "")))
        table.append(cells)
    return headers, table


def runs_table(records: StudyRecords) -> tuple[list[str], list[list[Cell]]]:
    """Every run of the study: its method, seed, accuracy, structure, FGSM and best ε* (newest measurement of each) and masking."""
    headers = [
        "run",
        "grid",
        "method",
        "seed",
        "test accuracy",
        "exact zeros",
        "eff. sparsity",
        "eff. rank ratio",
        "FGSM ε* AUC",
        "FGSM median ε*",
        "best ε* AUC",
        "masking",
    ]
    table = []
    for run in sorted(records.runs, key=lambda r: (r.dataset, r.arch, r.method != "none", r.method, r.strength or 0.0, r.seed, r.id)):
        fgsm, best = _newest(records, run.id, "fgsm"), _newest(records, run.id, "best")
        median = None if fgsm is None else stored_number((fgsm.summary.get("quantiles") or {}).get("50"))
        masking = None if best is None else best.masking
        label = run.method + ("" if run.strength is None else f" {run.strength:g}")
        if run.options.get("fine_tune_epochs"):
            label += f" (+{run.options['fine_tune_epochs']} fine-tune epochs)"
        table.append(
            [
                Cell("run_id", run.id, run.id),
                Cell("grid", f"{run.arch} on {run.dataset}", f"{run.arch} on {run.dataset}"),
                Cell("method", label, run.method),
                Cell("seed", str(run.seed), run.seed),
                Cell("test_accuracy", _pct(run.test_accuracy), run.test_accuracy),
                Cell("sparsity", _pct(run.sparsity), run.sparsity),
                Cell("effective_sparsity", _pct(run.effective_sparsity), run.effective_sparsity),
                Cell("effective_rank_ratio", _g(run.effective_rank_ratio), run.effective_rank_ratio),
                Cell("fgsm_auc", _g(_auc(fgsm), 4), _auc(fgsm)),
                Cell("fgsm_median", _g(median, 4), median),
                Cell("best_auc", _g(_auc(best), 4), _auc(best)),
                Cell(
                    "masked",
                    "not checked"
                    if masking is None
                    else (
                        "raised: " + ", ".join(k for k, v in (masking.get("flags") or {}).items() if v)
                        if masking.get("masked")
                        else "none raised"
                    ),
                    None if masking is None else bool(masking.get("masked")),
                ),
            ]
        )
    return headers, table


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return value


def comparison_record(row: ComparisonRow) -> dict[str, Any]:
    """One comparison as a flat dict (the CSV row): every number at full precision."""
    out: dict[str, Any] = {
        "index": row.index,
        "dataset": row.dataset,
        "arch": row.arch,
        "train": row.train,
        "norm": row.norm,
        "eps_max": row.eps_max,
        "method": row.method,
        "label": row.label,
        "family": row.family,
        "strength": row.strength,
        "options": row.options,
        "seeds": list(row.seeds),
        "run_ids": list(row.run_ids),
        "dense_run_ids": list(row.dense_run_ids),
    }
    for kind in ("fgsm", "best"):
        c = getattr(row, kind)
        out[f"{kind}_ratio"] = c and c.ratio.estimate
        out[f"{kind}_ratio_low"] = c and c.ratio.low
        out[f"{kind}_ratio_high"] = c and c.ratio.high
        out[f"{kind}_p_value"] = c and c.p_value
        out[f"{kind}_verdict"] = getattr(row, f"{kind}_verdict")
        out[f"{kind}_n_inputs"] = c and c.n_inputs
        out[f"{kind}_n_paired"] = c and c.n_paired
        out[f"{kind}_auc"] = c and c.auc_reg
        out[f"{kind}_auc_dense"] = c and c.auc_dense
        out[f"{kind}_auc_difference"] = c and c.auc_difference.estimate
        out[f"{kind}_auc_difference_low"] = c and c.auc_difference.low
        out[f"{kind}_auc_difference_high"] = c and c.auc_difference.high
        out[f"{kind}_robust_accuracy_difference"] = c and {
            f"{e:g}": [i.estimate, i.low, i.high] for e, i in zip(c.reference_eps, c.robust_accuracy_difference)
        }
    out["best_attacks"] = list(row.best_attacks)
    out["flip"] = row.flip
    acc = row.fgsm.clean_accuracy_change if row.fgsm else None
    out.update(accuracy_change=acc and acc.estimate, accuracy_change_low=acc and acc.low, accuracy_change_high=acc and acc.high)
    for key in ("test_accuracy", "sparsity", "effective_sparsity", "effective_rank_ratio"):
        out[key] = getattr(row, key)
        out[f"{key}_dense"] = getattr(row, f"{key}_dense")
    out.update(masking_checked=row.masking_checked, masked_runs=list(row.masked_runs), masking_flags=list(row.masking_flags))
    c = row.control
    out["control_l2_run_ids"] = None if c is None else list(c.l2_run_ids)
    out["control_l2_strengths"] = None if c is None else list(c.l2_strengths)
    for kind in ("fgsm", "best"):
        cc = None if c is None else getattr(c, kind)
        out[f"control_{kind}_ratio"] = cc and cc.ratio.estimate
        out[f"control_{kind}_ratio_low"] = cc and cc.ratio.low
        out[f"control_{kind}_ratio_high"] = cc and cc.ratio.high
        out[f"control_{kind}_verdict"] = None if c is None else getattr(c, f"{kind}_verdict")
    out["notes"] = list(row.notes) + ([] if c is None else [f"control: {n}" for n in c.notes])
    return out


def run_record(run: StudyRun, records: StudyRecords) -> dict[str, Any]:
    """One run as a flat dict (the CSV row)."""
    fgsm, best = _newest(records, run.id, "fgsm"), _newest(records, run.id, "best")
    out = {k: v for k, v in asdict(run).items()}
    out["family"] = run.family
    for kind, m in (("fgsm", fgsm), ("best", best)):
        out[f"{kind}_measurement"] = None if m is None else m.id
        out[f"{kind}_auc"] = _auc(m)
        out[f"{kind}_median"] = None if m is None else stored_number((m.summary.get("quantiles") or {}).get("50"))
        out[f"{kind}_clean_accuracy"] = None if m is None else stored_number(m.summary.get("clean_accuracy"))
        out[f"{kind}_censored_fraction"] = None if m is None else stored_number(m.summary.get("censored_fraction"))
        out[f"{kind}_n"] = None if m is None else len(m.indices)
    out["fgsm_certified_fraction"] = (
        None if fgsm is None or fgsm.certified is None else float(fgsm.certified.mean()) if len(fgsm.eps) else 1.0
    )
    masking = None if best is None else best.masking
    out["masked"] = None if masking is None else bool(masking.get("masked"))
    out["masking_flags"] = None if masking is None else [k for k, v in (masking.get("flags") or {}).items() if v]
    return out


def _write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in records for k in r)) or ["empty"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for r in records:
            writer.writerow({k: _csv_value(v) for k, v in r.items()})


# --------------------------------------------------------------------------- figures


def _png(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _eps_unit(norm: str | None) -> str:
    return "L∞" if norm in (None, "linf") else "L2"


def figure_verdicts(rows: Sequence[ComparisonRow]) -> Figure | None:
    """Forest plot: per comparison, the median ε* ratio (regularised / dense) with its 95 % interval, FGSM, best ε* and the L2 control."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    shown = [r for r in rows if r.fgsm is not None or r.best is not None]
    if not shown:
        return None
    several = len({_group_of(r) for r in rows}) > 1
    fig = Figure(figsize=(11, 1.8 + 0.55 * len(shown)), layout="constrained")
    ax = fig.add_subplot()
    kinds = (
        ("fgsm", "o", -0.22, "FGSM ε* vs dense"),
        ("best", "s", 0.0, "best ε* vs dense"),
        ("control", "^", 0.22, "FGSM ε* vs L2 control"),
    )
    for y, r in enumerate(shown):
        for kind, marker, dy, _ in kinds:
            if kind == "control":
                c, v = (r.control.fgsm, r.control.fgsm_verdict) if r.control is not None else (None, None)
            else:
                c, v = getattr(r, kind), getattr(r, f"{kind}_verdict")
            if c is None:
                continue
            ratio = c.ratio
            colour = _VERDICT_COLOURS.get(v or NO_DIFFERENCE)
            ax.errorbar(
                [ratio.estimate],
                [y + dy],
                xerr=[[ratio.estimate - ratio.low], [ratio.high - ratio.estimate]],
                fmt=marker,
                color=colour,
                markerfacecolor="white" if kind == "control" else colour,
                markersize=7,
                capsize=3,
                linewidth=1.4,
            )
        if y % 2 == 0:
            ax.axhspan(y - 0.5, y + 0.5, color="#f2f2f2", zorder=0)
    ax.axvline(1.0, color="#333333", linewidth=1.0, linestyle="--")
    ax.set_xscale("log")
    ax.set_yticks(range(len(shown)), [_where(r, several) + f"  [{r.family}]" for r in shown])
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlabel("median per-input ratio ε*(regularised) / ε*(reference model)  (log scale; 1 = no change)")
    ax.set_title("Verdicts: how much each method changes ε*, with 95 % intervals (colour: Holm-corrected verdict)")
    lo, hi = ax.get_xlim()
    lo, hi = min(lo, 0.95), max(hi, 1.05)
    ax.set_xlim(lo, hi)
    _ratio_axis(ax.xaxis, lo, hi)
    ax.grid(True, axis="x", which="major", alpha=0.4)
    handles = [
        Line2D([], [], marker=m, linestyle="", color="#333333", markerfacecolor="white" if k == "control" else "#333333", label=label)
        for k, m, _, label in kinds
    ]
    handles += [Line2D([], [], marker="o", linestyle="", color=c, label=v) for v, c in _VERDICT_COLOURS.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="marker / colour", title_fontsize=9)
    return fig


def _runs_of_group(records: StudyRecords, group: tuple[str, str, str]) -> list[StudyRun]:
    return [r for r in records.runs if r.group == group]


def _method_order(runs: Sequence[StudyRun]) -> list[str]:
    """The methods of ``runs``: dense first, then sparse, low-rank, l2, adversarial, others; by name within a family."""
    order = {"dense": 0, "sparse": 1, "low-rank": 2, "baseline": 3, "reference": 4, "other": 5}
    return sorted(dict.fromkeys(r.method for r in runs), key=lambda m: (order.get(_family(m), 9), m))


def _family(method: str) -> str:
    from sparank.compare import method_family

    return method_family(method)


def figure_structure(records: StudyRecords, group: tuple[str, str, str]) -> Figure | None:
    """ε* AUC (FGSM) against effective sparsity and against the effective-rank ratio: one point per run, coloured by method."""
    from matplotlib.figure import Figure

    runs = [r for r in _runs_of_group(records, group) if _newest(records, r.id, "fgsm") is not None]
    if not runs:
        return None
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    ax_sp, ax_rank = fig.subplots(1, 2, sharey=True)
    norms = {_newest(records, r.id, "fgsm").norm for r in runs}  # type: ignore[union-attr]
    eps_max = {_newest(records, r.id, "fgsm").eps_max for r in runs}  # type: ignore[union-attr]
    dense = [r for r in runs if r.method == "none"]
    dense_auc = [_auc(_newest(records, r.id, "fgsm")) for r in dense]
    for method in _method_order(runs):
        rs = [r for r in runs if r.method == method]
        family = _family(method)
        kw = {
            "color": _method_colour(method),
            "marker": _FAMILY_MARKERS.get(family, "^"),
            "s": 110 if family in ("dense", "reference") else 45,
            "alpha": 0.85,
            "edgecolors": "white" if family not in ("dense",) else "black",
            "linewidths": 0.5,
            "label": {"none": "none (dense reference)", "l2": "l2 (weight decay, control)"}.get(method, f"{method} ({family})"),
            "zorder": 3,
        }
        y = [_auc(_newest(records, r.id, "fgsm")) for r in rs]
        ax_sp.scatter([100 * (r.effective_sparsity or 0.0) for r in rs], y, **kw)
        kw.pop("label")
        ax_rank.scatter([r.effective_rank_ratio or np.nan for r in rs], y, **kw)
    if dense_auc and all(a is not None for a in dense_auc):
        mean = float(np.mean(dense_auc))  # type: ignore[arg-type]
        for ax in (ax_sp, ax_rank):
            ax.axhline(mean, color="black", linestyle="--", linewidth=1.0, zorder=1)
        ax_rank.annotate(
            "dense mean",
            (1.0, mean),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 4),
            textcoords="offset points",
            fontsize=8,
            ha="right",
        )
    unit = _eps_unit(next(iter(norms)))
    eps_text = ", ".join(f"{e:g}" for e in sorted(eps_max))
    ax_sp.set_xlabel("effective sparsity: weights with |w| ≤ 10⁻³·max|w| (% of all weights)")
    ax_sp.set_ylabel(f"FGSM ε* AUC = ∫ A(ε) dε over [0, {eps_text}]  ({unit}, pixel units)")
    ax_sp.set_title("ε* AUC against sparsity")
    ax_rank.set_xlabel("mean effective-rank ratio: effective rank / full rank, mean over layers")
    ax_rank.set_title("ε* AUC against effective rank")
    for ax in (ax_sp, ax_rank):
        ax.grid(True, alpha=0.3)
    handles, labels = ax_sp.get_legend_handles_labels()
    ax_rank.legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="method (one point per run)", title_fontsize=8
    )
    fig.suptitle(f"Robustness against structure — {_group_label(group)}: higher is more robust", fontsize=12)
    return fig


def _mean_curve(ms: Sequence[StudyMeasurement]) -> tuple[np.ndarray, np.ndarray] | None:
    """The mean robust-accuracy curve of several measurements (their stored ``curve_eps`` / ``curve_accuracy``), on the first's grid."""
    curves = [(np.asarray(m.summary.get("curve_eps") or [], float), np.asarray(m.summary.get("curve_accuracy") or [], float)) for m in ms]
    curves = [(e, a) for e, a in curves if len(e) and len(e) == len(a)]
    if not curves:
        return None
    grid = curves[0][0]
    return grid, np.mean([np.interp(grid, e, a) for e, a in curves], axis=0)


def figure_curves(records: StudyRecords, rows: Sequence[ComparisonRow], group: tuple[str, str, str]) -> Figure | None:
    """Robust accuracy A(ε) under FGSM, each method (one line per strength, mean over seeds) against its dense counterparts."""
    from matplotlib.figure import Figure

    rows = [r for r in rows if _group_of(r) == group and r.fgsm is not None]
    methods = list(dict.fromkeys(r.method for r in rows))
    if not methods:
        return None
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 3.9 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).reshape(-1)
    reach = 0.0
    norm = rows[0].norm
    for ax, method in zip(axes, methods):
        mine = sorted([r for r in rows if r.method == method], key=lambda r: r.strength or 0.0)
        dense_ids = list(dict.fromkeys(d for r in mine for d in r.dense_run_ids))
        dense = _mean_curve([m for d in dense_ids if (m := _newest(records, d, "fgsm")) is not None])
        if dense is not None:
            ax.plot(
                dense[0],
                100 * dense[1],
                color="black",
                linestyle="--",
                linewidth=2.0,
                label=f"dense counterpart (mean of {len(dense_ids)})",
            )
            reach = max(reach, _reach(*dense))
        shades = np.linspace(0.45, 1.0, len(mine)) if len(mine) > 1 else np.ones(1)
        for r, shade in zip(mine, shades):
            curve = _mean_curve([m for rid in r.run_ids if (m := _newest(records, rid, "fgsm")) is not None])
            if curve is None:
                continue
            reach = max(reach, _reach(*curve))
            colour = _shade(_method_colour(method), float(shade))
            verdict = r.fgsm_verdict or "not compared"
            ax.plot(curve[0], 100 * curve[1], color=colour, linewidth=1.8, label=f"{r.label}: {verdict}")
        ax.set_title(f"{method} ({_family(method)}) vs dense", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper right")
    for ax in axes[len(methods) :]:
        ax.set_visible(False)
    for ax in axes:
        ax.set_xlim(0, reach * 1.05 if reach > 0 else None)
        ax.set_ylim(0, 100)
    for i, ax in enumerate(axes[: len(methods)]):
        if i + ncols >= len(methods):  # nothing below it: it carries the ε axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(f"ε ({_eps_unit(norm)} perturbation, pixel units)")
    for ax in axes[::ncols]:
        ax.set_ylabel("robust accuracy A(ε) (%)")
    fig.suptitle(f"Robust-accuracy curves under FGSM, mean over seeds — {_group_label(group)}", fontsize=12)
    return fig


def _reach(eps: np.ndarray, acc: np.ndarray) -> float:
    """The smallest ε beyond which the curve stays below 1 % (where the interesting part of the plot ends)."""
    above = np.nonzero(acc > 0.01)[0]
    return float(eps[min(above[-1] + 1, len(eps) - 1)]) if len(above) else float(eps[-1])


def _shade(colour: str, amount: float) -> tuple[float, float, float]:
    """``colour`` mixed with white: ``amount`` 1 is the colour itself, smaller is lighter."""
    from matplotlib.colors import to_rgb

    rgb = np.array(to_rgb(colour))
    return tuple(1 - amount * (1 - rgb))  # type: ignore[return-value]


def _ratio_axis(axis: Any, lo: float, hi: float) -> None:
    """Plain-number ticks (0.8, 0.9, 1, 1.25...) on a log-scaled ratio axis spanning [lo, hi]."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    candidates = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0)
    ticks = [t for t in candidates if lo <= t <= hi] or [1.0]
    if len(ticks) > 9:
        ticks = [t for t in ticks if t in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def _pareto(points: np.ndarray) -> np.ndarray:
    """The runs no other run beats in both columns (accuracy, AUC), by increasing accuracy: ``(k, 2)``."""
    front = []
    best = -np.inf
    for i in np.argsort(-points[:, 0], kind="stable"):
        if points[i, 1] > best:
            best = points[i, 1]
            front.append(points[i])
    return np.array(front[::-1])


def figure_frontier(records: StudyRecords, group: tuple[str, str, str]) -> Figure | None:
    """Clean accuracy against FGSM ε* AUC: one faint point per run, each method's strengths joined (mean over seeds), the frontier.

    Two panels: every run, and a zoom on the runs within 3 points of the most accurate one
    (where most methods sit), so that a method that loses much accuracy does not squash the rest.
    """
    from matplotlib.figure import Figure

    runs = [r for r in _runs_of_group(records, group) if r.test_accuracy is not None and _newest(records, r.id, "fgsm") is not None]
    if not runs:
        return None

    def xy_of(rs: Sequence[StudyRun]) -> np.ndarray:
        return np.array([(100 * (r.test_accuracy or 0.0), _auc(_newest(records, r.id, "fgsm")) or 0.0) for r in rs])

    points = xy_of(runs)
    top = float(points[:, 0].max())
    zoom_from = top - 3.0
    zoomed = bool((points[:, 0] < zoom_from).any())
    fig = Figure(figsize=(15 if zoomed else 10.5, 6.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True) if zoomed else [fig.add_subplot()]
    front = _pareto(points)
    for k, ax in enumerate(axes):
        ax.step(front[:, 0], front[:, 1], where="pre", color="#bbbbbb", linewidth=7, alpha=0.55, zorder=1, label="frontier over all runs")
        for method in _method_order(runs):
            rs = [r for r in runs if r.method == method]
            family = _family(method)
            colour = _method_colour(method)
            marker = _FAMILY_MARKERS.get(family, "^")
            xy = xy_of(rs)
            ax.scatter(xy[:, 0], xy[:, 1], color=colour, marker=marker, s=18, alpha=0.35, zorder=2)
            strengths = sorted(dict.fromkeys(r.strength for r in rs), key=lambda v: -math.inf if v is None else v)
            means = [(xy[sel, 0].mean(), xy[sel, 1].mean(), v) for v in strengths if (sel := np.array([r.strength == v for r in rs])).any()]
            label = {"none": "none (dense reference)", "l2": "l2 (weight decay, control)"}.get(method, f"{method} ({family})")
            ax.plot(
                [m[0] for m in means],
                [m[1] for m in means],
                color=colour,
                marker=marker,
                markersize=12 if family in ("dense", "reference") else 7.5,
                linewidth=1.6,
                zorder=3,
                label=label,
                markeredgecolor="black" if family == "dense" else colour,
            )
            for x, y, v in means:
                if v is not None and (k == len(axes) - 1 or x < zoom_from):
                    ax.annotate(
                        f"{_strength_label(method)}={v:g}", (x, y), xytext=(5, 3), textcoords="offset points", fontsize=7, color=colour
                    )
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("clean test accuracy (%), whole test split")
    if zoomed:
        axes[0].axvspan(zoom_from, top + 0.5, color="#fff3cd", alpha=0.6, zorder=0, label="zoomed on the right")
        axes[0].set_title("every run")
        axes[1].set_xlim(zoom_from, top + 0.3)
        in_zoom = points[points[:, 0] >= zoom_from]
        pad = 0.05 * (in_zoom[:, 1].max() - in_zoom[:, 1].min() + 1e-9)
        axes[1].set_ylim(min(points[:, 1].min(), in_zoom[:, 1].min()) - pad, points[:, 1].max() + pad)
        axes[1].set_title(f"zoom: runs within 3 points of the most accurate ({zoom_from:.1f}–{top:.1f} %)")
    norm = _newest(records, runs[0].id, "fgsm").norm  # type: ignore[union-attr]
    axes[0].set_ylabel(f"FGSM ε* AUC = ∫ A(ε) dε  ({_eps_unit(norm)}, pixel units)")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5)
    fig.suptitle(
        f"Accuracy–robustness frontier per method — {_group_label(group)}: up and right is better\n"
        "large markers: mean over seeds at each strength, joined in order of strength; faint: single runs",
        fontsize=11,
    )
    return fig


def _strength_label(method: str) -> str:
    return {"magnitude": "s", "magnitude_gradual": "s", "factorised": "r", "svd_truncate": "r", "adversarial": "ε"}.get(method, "λ")


def figure_fgsm_vs_best(rows: Sequence[ComparisonRow]) -> Figure | None:
    """Per comparison, the median ε* ratio under FGSM against under the best attack, with intervals; flipped verdicts marked."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    both = [r for r in rows if r.fgsm is not None and r.best is not None]
    if not both:
        return None
    attacks = _join(sorted({a for r in both for a in r.best_attacks}))
    fig = Figure(figsize=(12, 7.8), layout="constrained")
    ax = fig.add_subplot()
    values = []
    for r in both:
        f, b = r.fgsm.ratio, r.best.ratio  # type: ignore[union-attr]
        values += [f.low, f.high, b.low, b.high]
        colour = "#d73027" if r.flip else "#2166ac"
        ax.errorbar(
            [f.estimate],
            [b.estimate],
            xerr=[[f.estimate - f.low], [f.high - f.estimate]],
            yerr=[[b.estimate - b.low], [b.high - b.estimate]],
            fmt=_FAMILY_MARKERS.get(r.family, "^"),
            color=colour,
            markersize=8,
            capsize=2,
            linewidth=1.0,
            alpha=0.9,
        )
        ax.annotate(f"#{r.index}", (f.estimate, b.estimate), xytext=(5, 4), textcoords="offset points", fontsize=8.5, color=colour)
    lo, hi = min(values + [1.0]) / 1.05, max(values + [1.0]) * 1.05
    ax.plot([lo, hi], [lo, hi], color="#888888", linestyle=":", linewidth=1.0)
    ax.axvline(1.0, color="#333333", linewidth=0.8, linestyle="--")
    ax.axhline(1.0, color="#333333", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _ratio_axis(ax.xaxis, lo, hi)
    _ratio_axis(ax.yaxis, lo, hi)
    ax.set_xlabel("median ε* ratio, regularised / dense, under FGSM (log scale)")
    ax.set_ylabel(f"median ε* ratio under the best of {attacks} (log scale)")
    ax.set_title("FGSM against best-attack verdicts (95 % intervals): points near the dotted diagonal agree; red: the verdict flips")
    ax.grid(True, alpha=0.25)
    kinds = [
        Line2D([], [], marker="o", linestyle="", color="#2166ac", label="same verdict"),
        Line2D([], [], marker="o", linestyle="", color="#d73027", label="verdict flips"),
    ] + [
        Line2D([], [], marker=m, linestyle="", color="#555555", label=f)
        for f, m in _FAMILY_MARKERS.items()
        if any(r.family == f for r in both)
    ]
    first = ax.legend(handles=kinds, loc="upper left", fontsize=8.5)
    ax.add_artist(first)
    names = [Line2D([], [], linestyle="", label=f"#{r.index} {r.label}") for r in both]
    ax.legend(handles=names, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="comparison", title_fontsize=8, handlelength=0)
    return fig


def figure_converse(records: StudyRecords, rows: Sequence[ComparisonRow]) -> Figure | None:
    """Langenberg et al. 2019 checked: effective sparsity and effective-rank ratio of adversarially trained runs against their dense counterparts, per seed."""
    from matplotlib.figure import Figure

    adversarial = [r for r in rows if r.family == "reference" and r.dense_run_ids]
    if not adversarial:
        return None
    fig = Figure(figsize=(12, 5.0), layout="constrained")
    ax_sp, ax_rank = fig.subplots(1, 2)
    labels = []
    for k, r in enumerate(adversarial):
        x0, x1 = 2 * k, 2 * k + 1
        labels += [f"dense\n(#{r.index})", f"{r.label}\n({r.arch} on {r.dataset})" if len(adversarial) > 1 else r.label]
        for a_id, d_id in zip(r.run_ids, r.dense_run_ids):
            a, d = records.run(a_id), records.run(d_id)
            for ax, get, scale in ((ax_sp, lambda z: z.effective_sparsity, 100), (ax_rank, lambda z: z.effective_rank_ratio, 1)):
                if get(a) is None or get(d) is None:
                    continue
                ax.plot([x0, x1], [scale * get(d), scale * get(a)], color="#999999", linewidth=1.0, zorder=1)
                ax.scatter([x0], [scale * get(d)], color="black", marker="X", s=60, zorder=2)
                ax.scatter([x1], [scale * get(a)], color=_METHOD_COLOURS["adversarial"], marker="*", s=150, zorder=2)
                ax.annotate(f"seed {a.seed}", (x1, scale * get(a)), xytext=(8, -3), textcoords="offset points", fontsize=7.5)
    for ax in (ax_sp, ax_rank):
        ax.set_xticks(range(len(labels)), labels, fontsize=9)
        ax.set_xlim(-0.5, len(labels) - 0.3)
        ax.grid(True, axis="y", alpha=0.3)
    ax_sp.set_ylabel("effective sparsity: |w| ≤ 10⁻³·max|w| (% of weights)")
    ax_sp.set_title("Sparser? (up = sparser)")
    ax_rank.set_ylabel("mean effective-rank ratio (effective rank / full rank)")
    ax_rank.set_title("Lower rank? (down = lower rank)")
    fig.suptitle(
        "The converse (Langenberg et al. 2019): adversarially trained runs against their dense counterparts; lines join one seed",
        fontsize=11.5,
    )
    return fig


def _figures(records: StudyRecords, rows: Sequence[ComparisonRow]) -> list[_Figure]:
    """Every figure of the report, drawn and encoded, in the order the report shows them."""
    figures: list[_Figure] = []
    groups = list(dict.fromkeys(r.group for r in records.runs))
    several = len(groups) > 1

    def add(name: str, fig: Figure | None, caption: str) -> None:
        if fig is not None:
            figures.append(_Figure(name, caption, _png(fig)))

    add(
        "verdicts",
        figure_verdicts(rows),
        "Every comparison's median per-input ε* ratio (regularised / reference) with its 95 % hierarchical-bootstrap interval: "
        "circles FGSM ε* against the dense counterpart, squares best ε* against it, hollow triangles FGSM ε* against the L2 control "
        "closest in accuracy. Colour is the Holm-corrected verdict. Left of the dashed line: the regularised model is easier to fool.",
    )
    for k, group in enumerate(groups):
        suffix = f"_{k + 1}" if several else ""
        label = _group_label(group)
        add(
            f"auc_vs_structure{suffix}",
            figure_structure(records, group),
            f"{label}: FGSM ε* AUC of every run against its effective sparsity and its effective-rank ratio; "
            "black crosses are the dense (none) runs, grey diamonds the L2 runs, gold stars adversarial training.",
        )
        add(
            f"robust_accuracy{suffix}",
            figure_curves(records, rows, group),
            f"{label}: robust accuracy A(ε) under FGSM (fraction of inputs still classified correctly at ε), each method's strengths "
            "(darker: stronger) against its dense counterparts (dashed), means over seeds; the legend gives each strength's FGSM verdict.",
        )
        add(
            f"frontier{suffix}",
            figure_frontier(records, group),
            f"{label}: the accuracy–robustness frontier: each method's runs by clean accuracy and FGSM ε* AUC; the grey band is the "
            "frontier of all runs (no run is both more accurate and more robust than a point on it).",
        )
    add(
        "fgsm_vs_best",
        figure_fgsm_vs_best(rows),
        "FGSM against best-attack verdicts: each comparison's median ε* ratio under FGSM (x) and under the best of the cross-check "
        "attacks (y), with 95 % intervals; red where the verdict changes between the two.",
    )
    add(
        "converse",
        figure_converse(records, rows),
        "The converse of the research question (Langenberg et al. 2019): effective sparsity and effective-rank ratio of each "
        "adversarially trained run (gold star) against its dense counterpart of the same seed (black cross).",
    )
    return figures


# --------------------------------------------------------------------------- the report


_CSS = """
body { font-family: "DejaVu Sans", system-ui, sans-serif; color: #222; max-width: 1500px; margin: 0 auto; padding: 1em 2em 4em; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.meta { color: #666; font-size: 0.9em; margin-top: 0; }
p.answer { font-size: 1.08em; background: #f3f6fb; border-left: 5px solid #1f5fa8; padding: 0.9em 1.2em; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.8em 0; }
th, td { border: 1px solid #d0d0d0; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.more { color: #137333; font-weight: bold; } td.less { color: #b3261e; font-weight: bold; } td.nodiff { color: #555; }
td.flip { background: #fff3cd; }
td[data-key$="_ratio"], td[data-key="accuracy_change"] { white-space: nowrap; }
figure { margin: 1.8em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 1100px; }
.claim { border: 1px solid #ddd; border-radius: 4px; padding: 0.6em 1em; margin: 1em 0; }
.claim blockquote { margin: 0.3em 0 0.6em 0; color: #555; font-style: italic; }
.status { font-weight: bold; padding: 1px 8px; border-radius: 3px; }
.status-supported { background: #d9f2e3; } .status-partly-supported { background: #fff3cd; }
.status-not-supported-here { background: #f8d7da; } .status-not-tested-here { background: #e9ecef; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
ul.notes { font-size: 0.88em; color: #444; }
"""


def _html_opening(title: str, meta: str, the_answer: str, how: Sequence[str]) -> list[str]:
    """The start of a self-contained report page: head with the CSS, title, meta line, the answer, how to read it."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(meta)}</p>',
        '<h2 id="answer">The answer</h2>',
        f'<p class="answer" id="answer-text">{html.escape(the_answer)}</p>',
        '<h2 id="how">How to read this report</h2><ul>' + "".join(f"<li>{html.escape(t)}</li>" for t in how) + "</ul>",
    ]


def _html_table(headers: Sequence[str], table: Sequence[Sequence[Cell]], *, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for cells in table:
        tds = []
        for c in cells:
            attrs = f' data-key="{html.escape(c.key)}"'
            if c.value is not None:
                value = repr(c.value) if isinstance(c.value, float) else str(c.value)
                attrs += f' data-value="{html.escape(value)}"'
            if c.low is not None:
                attrs += f' data-low="{c.low!r}" data-high="{c.high!r}"'
            if c.css:
                attrs += f' class="{c.css}"'
            tds.append(f"<td{attrs}>{html.escape(c.text)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>' + "\n".join(body) + "</tbody></table>"


def _md(text: str) -> str:
    """``text`` for Markdown: ``*`` escaped (ε* would otherwise start emphasis)."""
    return text.replace("*", "\\*")


def _md_table(headers: Sequence[str], table: Sequence[Sequence[Cell]]) -> list[str]:
    def esc(text: str) -> str:
        return _md(text).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c.text) for c in cells) + " |" for cells in table]
    return lines


def _row_notes(rows: Sequence[ComparisonRow]) -> list[str]:
    out = []
    for r in rows:
        notes = list(r.notes) + ([] if r.control is None else [f"L2 control: {n}" for n in r.control.notes])
        if notes:
            out.append(f"#{r.index} {r.label}: " + "; ".join(notes))
    return out


def _settings(config: Any) -> dict[str, Any]:
    """A study config (pydantic model or mapping) as a plain dict."""
    if config is None:
        return {}
    if hasattr(config, "model_dump"):
        return dict(config.model_dump(mode="json"))
    if isinstance(config, Mapping):
        return dict(config)
    raise ValueError(f"config must be a mapping or a pydantic model (the study config), got {type(config).__name__}")


def _setting(settings: Mapping[str, Any], name: str) -> Any:
    for section in (settings, settings.get("report") or {}, settings.get("compare") or {}, settings.get("measure") or {}):
        if isinstance(section, Mapping) and section.get(name) is not None:
            return section[name]
    return None


def write_report(
    store: Store | str | Path,
    out_dir: str | Path,
    *,
    title: str | None = None,
    config: Any = None,
    reference_eps: Sequence[float] | None = None,
    alpha: float | None = None,
    n_boot: int | None = None,
) -> ReportPaths:
    """Write the study report of a store: ``report.html`` (self-contained), ``report.md``, ``runs.csv``, ``comparisons.csv``, ``figures/``.

    Args:
        store: a :class:`~sparank.store.Store` or the path of one (opened read-only).
        out_dir: the folder to write into (created; files of an earlier report are replaced).
        title: the report's title; default "sparank study report: <store folder>".
        config: the study config (:class:`~sparank.study.StudyConfig` or any pydantic model or
            mapping), shown in the report; its ``name`` gives the default title, and its
            ``reference_eps``, ``alpha`` and ``n_boot`` (top level, or under ``report``, ``compare``
            or ``measure``) are used where the arguments below are not given.
        reference_eps: ε values of the robust-accuracy differences; default 5, 10 and 20 % of each ε_max in the store.
        alpha: Holm's family-wise error rate (default 0.05); intervals are ``1 − alpha``.
        n_boot: bootstrap replicates per comparison (default: :func:`~sparank.compare.study_comparisons`'s).

    Returns:
        :class:`ReportPaths`.

    Raises:
        ValueError: a config that is neither a mapping nor a pydantic model, a bad ``alpha`` or ``reference_eps``.
        StoreError: no store at ``store``.
    """
    from sparank import __version__
    from sparank.store import Store

    settings = _settings(config)
    own = not isinstance(store, Store)
    opened = Store(store, readonly=True) if own else store  # type: ignore[arg-type]
    try:
        records = StudyRecords.from_store(opened)
        store_path = opened.path
    finally:
        if own:
            opened.close()
    alpha = float(alpha if alpha is not None else (_setting(settings, "alpha") or 0.05))
    if reference_eps is None:
        reference_eps = _setting(settings, "reference_eps")
    if reference_eps is None:
        eps_maxes = sorted({m.eps_max for m in records.measurements})
        reference_eps = sorted({round(f * e, 10) for e in eps_maxes for f in DEFAULT_REFERENCE_FRACTIONS})
    n_boot = n_boot if n_boot is not None else _setting(settings, "n_boot")
    rows = study_comparisons(records, reference_eps=reference_eps, alpha=alpha, n_boot=n_boot)

    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    name = settings.get("name")
    title = title or (f"{name}: sparank study report" if isinstance(name, str) and name else f"sparank study report: {store_path.name}")
    figures = _figures(records, rows)
    figure_paths = []
    for f in figures:
        path = fig_dir / f"{f.name}.png"
        path.write_bytes(f.png)
        figure_paths.append(path)

    the_answer = answer(rows, alpha=alpha)
    the_claims = claims(rows)
    the_converse = converse(rows, records)
    v_headers, v_table = verdict_table(rows)
    r_headers, r_table = runs_table(records)
    notes = _row_notes(rows)
    n_boot_used = max((r.fgsm.n_boot for r in rows if r.fgsm), default=None)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    how_measured = measure_text(records)
    meta = f"store {store_path} · {len(records.runs)} runs in the study · {len(rows)} comparisons · sparank {__version__} · generated {generated}"
    how = [
        "ε* of an input: the smallest perturbation (along the FGSM direction, or found by any cross-check attack for best ε*) "
        "that makes the model misclassify it; censored inputs count at ε_max.",
        *([how_measured] if how_measured else []),
        "Ratio: the median over inputs (correct in both models) and seeds of ε*(regularised) / ε*(dense counterpart of the same seed); "
        "below 1 the regularised model is easier to fool. Brackets: 95 % hierarchical bootstrap interval (seeds, then inputs).",
        f"Verdict: more / less robust when the bootstrap test of the median log-ratio is rejected by Holm's procedure at α = {alpha:g} "
        "across the store's comparisons of the same kind (FGSM ε*, best ε*, and the same two against the L2 control); "
        "otherwise no significant difference, which is a finding, not a gap.",
        "Counterpart: the `none` run of the same dataset, architecture, training settings, seed and training budget (a method that "
        "fine-tunes is paired with `none` fine-tuned as long). Control: the `l2` run of the same grid and seed closest in clean accuracy.",
        "Structure: exact zeros; effective sparsity (|w| ≤ 10⁻³·max|w|); effective-rank ratio (exp of the entropy of the normalised "
        "singular values over the full rank, mean over layers). Dense values in parentheses.",
    ]
    settings_shown = {
        "reference_eps": list(reference_eps),
        "alpha": alpha,
        "n_boot": n_boot_used,
        **({"study config": settings} if settings else {}),
    }

    # ----- HTML
    parts = [
        *_html_opening(title, meta, the_answer, how),
        '<h2 id="verdicts">Verdicts: each method against its dense counterpart</h2>',
        _html_table(v_headers, v_table, table_id="verdict-table"),
    ]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append('<h2 id="figures">Figures</h2>')
    for f in figures:
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(
            f'<figure id="fig-{f.name}"><img src="data:image/png;base64,{data}" alt="{html.escape(f.caption)}">'
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
        )
    parts.append('<h2 id="claims">The research summary, point by point</h2>')
    parts.append(
        "<p>The project began from a research summary (Puiu, NPL / EPSRC: “Sparse and Low-Rank Regularisation for Robust Deep Nets”). "
        "Each of its claims, with this store's evidence for or against it:</p>"
    )
    for claim in [*the_claims]:
        parts.append(_claim_html(claim))
    parts.append('<h2 id="converse">The converse: are robust models sparse and low-rank?</h2>')
    parts.append(_claim_html(the_converse))
    parts.append('<h2 id="runs">Every run</h2>')
    parts.append(_html_table(r_headers, r_table, table_id="runs-table"))
    if records.skipped:
        parts.append("<h3>Runs of the store left out of the study</h3><ul class='notes'>")
        parts += [f"<li>{html.escape(rid)}: {html.escape(why)}</li>" for rid, why in records.skipped]
        parts.append("</ul>")
    parts.append('<h2 id="settings">Settings</h2>')
    parts.append(f"<pre>{html.escape(json.dumps(settings_shown, indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    html_path = out / "report.html"
    html_path.write_text("\n".join(parts), encoding="utf-8")

    # ----- Markdown
    md = [f"# {_md(title)}", "", _md(meta), "", "## The answer", "", _md(the_answer), "", "## How to read this report", ""]
    md += [f"- {_md(t)}" for t in how]
    md += ["", "## Verdicts: each method against its dense counterpart", ""] + _md_table(v_headers, v_table)
    if notes:
        md += [""] + [f"- {_md(n)}" for n in notes]
    md += ["", "## Figures", ""]
    for f, path in zip(figures, figure_paths):
        md += [f"![{f.name}](figures/{path.name})", "", _md(f.caption), ""]
    md += ["## The research summary, point by point", ""]
    for claim in [*the_claims]:
        md += _claim_md(claim)
    md += ["## The converse: are robust models sparse and low-rank?", ""] + _claim_md(the_converse)
    md += ["## Every run", ""] + _md_table(r_headers, r_table)
    if records.skipped:
        md += ["", "Runs of the store left out of the study:", ""] + [f"- {rid}: {_md(why)}" for rid, why in records.skipped]
    md += ["", "## Settings", "", "```json", json.dumps(settings_shown, indent=2, default=str), "```", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md), encoding="utf-8")

    runs_csv, comparisons_csv = out / "runs.csv", out / "comparisons.csv"
    _write_csv(runs_csv, [run_record(r, records) for r in records.runs])
    _write_csv(comparisons_csv, [comparison_record(r) for r in rows])
    return ReportPaths(html=html_path, markdown=md_path, runs_csv=runs_csv, comparisons_csv=comparisons_csv, figures=tuple(figure_paths))


def _claim_html(claim: Claim) -> str:
    css = "status-" + claim.status.replace(" ", "-")
    items = "".join(f"<li>{html.escape(e)}</li>" for e in claim.evidence)
    return (
        f'<div class="claim"><h3>{html.escape(claim.title)} <span class="status {css}">{html.escape(claim.status)}</span></h3>'
        f"<blockquote>“{html.escape(claim.quote)}”</blockquote><ul>{items}</ul></div>"
    )


def _claim_md(claim: Claim) -> list[str]:
    return (
        [f"### {_md(claim.title)} — **{claim.status}**", "", f"> {_md(claim.quote)}", ""] + [f"- {_md(e)}" for e in claim.evidence] + [""]
    )


def paired_ratio(result: RobustnessResult, reference: RobustnessResult) -> tuple[float | None, float | None]:
    """Paired comparison over the inputs both classify correctly, ε* capped at eps_max (PROTOCOL §6, no bootstrap).

    Both results must be over the same inputs, in the same order.

    Returns:
        ``exp(median log(ε*/ε*_ref))`` (above 1: ``result`` needs a larger ε on the
        typical input) and the fraction of those inputs whose ε* is strictly smaller
        than the reference's; ``(None, None)`` if no input is correct under both.
    """
    both = (result.status != CLEAN_WRONG) & (reference.status != CLEAN_WRONG)
    if not bool(both.any()):
        return None, None
    ours = result.eps_star[both].clamp(max=result.eps_max)
    theirs = reference.eps_star[both].clamp(max=reference.eps_max)
    log_ratio = (ours.log() - theirs.log()).numpy()
    return float(np.exp(np.quantile(log_ratio, 0.5, method="inverted_cdf"))), float((ours < theirs).double().mean())


# --------------------------------------------------------------------------- the linear path's paired ratio, table and figure (PROTOCOL §7)

_PATH_COLUMNS = (
    "method",
    "lam",
    "seed",
    "sklearn_c",
    "converged",
    "n_iter",
    "kkt_violation",
    "objective",
    "clean_accuracy",
    "sparsity",
    "effective_sparsity",
    "l1_norm",
    "auc",
    "auc_normalised",
    "q10",
    "q25",
    "median",
    "q75",
    "q90",
    "censored_fraction",
    "unboxed_minimum_median",
    "boxed_minimum_median",
    "seconds",
    "run_id",
)


def _path_row(point: PathPoint) -> dict[str, Any]:
    row = asdict(point)
    quantiles = row.pop("quantiles")
    row.update({"q10": quantiles["10"], "q25": quantiles["25"], "median": quantiles["50"], "q75": quantiles["75"], "q90": quantiles["90"]})
    return {k: row[k] for k in _PATH_COLUMNS}


def _path_fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "> ε_max"
        return f"{value:.{digits}g}"
    return str(value)


def _path_mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if len(kept) == len(values) and kept else None


def _path_ratio_cell(c: Comparison) -> str:
    if c.ratio is None:
        return "refused" if c.note.startswith("refused") else "–"
    return f"{c.ratio:.3g} [{c.low:.3g}, {c.high:.3g}]"


def write_path_table(path: PathResult, stem: Path) -> dict[str, Path]:
    """``<stem>.csv`` (every point, every seed), ``<stem>_comparisons.csv`` and ``<stem>.md`` (seed means and ratios)."""
    from sparank.linear_path import CONTROL_TITLES, CONTROLS, Comparison

    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    comparisons_path = stem.with_name(stem.name + "_comparisons.csv")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_PATH_COLUMNS)
        writer.writeheader()
        for point in path.points:
            writer.writerow({k: ("" if v is None else v) for k, v in _path_row(point).items()})
    fields = [f.name for f in Comparison.__dataclass_fields__.values()]
    with comparisons_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for c in path.comparisons:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(c).items()})

    seeds = ", ".join(str(s) for s in path.seeds)
    lines = [
        f"L1 path on {path.dataset}: exact FGSM ε* ({path.norm}, ε_max = {path.eps_max}, box [0, 1]) over {path.n_eval} test inputs; "
        f"λ_max = {path.lambda_max:.4g}; seeds {seeds} (point columns: mean over seeds). ε* median over correctly classified inputs; "
        "'boxed min' / 'unboxed min': median minimal perturbation of the same norm inside / ignoring the box. "
        "Ratio columns: exp(median over inputs and seeds of log(ε*_L1 / ε*_control)), paired per seed over inputs both classify "
        "correctly (ε* capped at ε_max), with a 95 % hierarchical bootstrap interval (seeds, then inputs). Controls: "
        + "; ".join(f"'{name}': {title}" for name, title in CONTROL_TITLES.items())
        + " (closest per seed). 'converged': seeds whose solver stopped before its cap (sklearn); 'KKT': largest optimality violation / λ over seeds.",
        "",
    ]
    shown = ["method", "λ", "accuracy", "zeros", "‖W‖₁", "ε* AUC", "ε* median", "boxed min", "unboxed min"]
    shown += [f"vs {name}" for name in CONTROLS if any(c.control == name for c in path.comparisons)]
    shown += ["converged", "KKT"]
    lines += ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    l1_methods = list(dict.fromkeys(p.method for p in path.points if p.method != "l2"))
    for method in l1_methods:
        for lam in path.lambdas:
            pts = [p for p in path.points if p.method == method and p.lam == lam]
            conv = [p.converged for p in pts]
            cells = [
                method,
                f"{lam:.3g}",
                _path_fmt(_path_mean([p.clean_accuracy for p in pts])),
                _path_fmt(_path_mean([p.sparsity for p in pts]), 3),
                _path_fmt(_path_mean([p.l1_norm for p in pts])),
                _path_fmt(_path_mean([p.auc for p in pts])),
                _path_fmt(_path_mean([p.median for p in pts])),
                _path_fmt(_path_mean([p.boxed_minimum_median for p in pts])),
                _path_fmt(_path_mean([p.unboxed_minimum_median for p in pts])),
            ]
            cells += [
                _path_ratio_cell(path.comparison(method, lam, name))
                for name in CONTROLS
                if any(c.control == name for c in path.comparisons)
            ]
            cells += [
                "–" if conv[0] is None else f"{sum(bool(c) for c in conv)}/{len(conv)}",
                _path_fmt(max(p.kkt_violation or 0.0 for p in pts), 3),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if path.l2_lambdas:
        lines += [
            "",
            f"The L2 control path on {path.dataset} (mean CE + (λ/2)·‖W‖_F², the same SGD loop; mean over seeds {seeds}):",
            "",
            "| λ (L2) | accuracy | ‖W‖₁ | ε* AUC | ε* median | boxed min | unboxed min |",
            "|---|---|---|---|---|---|---|",
        ]
        for lam in path.l2_lambdas:
            pts = [p for p in path.points if p.method == "l2" and p.lam == lam]
            cells = [f"{lam:.3g}"] + [
                _path_fmt(_path_mean([getattr(p, a) if a != "median" else p.median for p in pts]))
                for a in ("clean_accuracy", "l1_norm", "auc", "median", "boxed_minimum_median", "unboxed_minimum_median")
            ]
            lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return {"csv": csv_path, "md": md_path, "comparisons_csv": comparisons_path}


_PATH_STYLE = {
    "l1": {"color": "#1b6ca8", "marker": "o", "label": "l1 (penalty, SGD)"},
    "prox_l1": {"color": "#d1495b", "marker": "s", "label": "prox_l1 (proximal SGD)"},
    "sklearn": {"color": "#2e933c", "marker": "^", "label": "scikit-learn SAGA"},
    "l2": {"color": "#7a5195", "marker": "D", "label": "l2 control path (SGD)"},
}
_PATH_CONTROL_STYLE = {"reference": "#444444", "rescaled": "#ef8a17", "l2_accuracy": "#7a5195", "l2_norm": "#00a6a6"}


def _pooled_ratio(path: PathResult, ours: str, lam: float, theirs: tuple[str, float]) -> float | None:
    groups = [
        paired_log_ratios(path.eps_star[(ours, lam, s)].numpy(), path.eps_star[(theirs[0], theirs[1], s)].numpy(), cap=path.eps_max)
        for s in path.seeds
    ]
    pooled = np.concatenate(groups)
    return float(np.exp(np.median(pooled))) if len(pooled) else None


def plot_path(path: PathResult, stem: Path) -> dict[str, Path]:
    """Six panels: ε* AUC, median ε*, accuracy, sparsity against λ; ratio to the reference against ‖W‖₁; ratios to the controls."""
    import matplotlib.ticker
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures are left alone

    from sparank.linear_path import CONTROL_TITLES, CONTROLS

    fig = Figure(figsize=(16, 8.5), layout="constrained")
    axes = fig.subplots(2, 3)
    (ax_auc, ax_med, ax_norm), (ax_acc, ax_sp, ax_ctl) = axes
    methods = [m for m in dict.fromkeys(p.method for p in path.points) if m != "l2"]
    unit = "L∞" if path.norm == "linf" else "L2"
    n_seeds = len(path.seeds)

    def seed_mean(method: str, lam: float, get: Callable[[PathPoint], float | None]) -> float:
        value = _path_mean([get(p) for p in path.points if p.method == method and p.lam == lam])
        return np.nan if value is None else value

    for method in methods:
        style = _PATH_STYLE[method]
        kw = {"color": style["color"], "marker": style["marker"], "markersize": 4, "linewidth": 1.6}
        lam = path.lambdas
        ax_auc.plot(lam, [seed_mean(method, v, lambda p: p.auc) for v in lam], label=style["label"], **kw)
        ax_med.plot(lam, [seed_mean(method, v, lambda p: p.median) for v in lam], label=f"{style['label']}: FGSM ε*", **kw)
        if path.norm == "linf":
            ax_med.plot(
                lam,
                [seed_mean(method, v, lambda p: p.boxed_minimum_median) for v in lam],
                color=style["color"],
                linestyle=":",
                linewidth=1.2,
                label=f"{method}: minimal {unit} in the box",
            )
        ax_acc.plot(lam, [100 * seed_mean(method, v, lambda p: p.clean_accuracy) for v in lam], label=style["label"], **kw)
        ax_sp.plot(lam, [100 * seed_mean(method, v, lambda p: p.sparsity) for v in lam], label=f"{style['label']}: exactly 0", **kw)
        ax_sp.plot(
            lam,
            [100 * seed_mean(method, v, lambda p: p.effective_sparsity) for v in lam],
            color=style["color"],
            linestyle="--",
            linewidth=1.2,
            label=f"{method}: |w| ≤ 10⁻³·max|w|",
        )

    # ratio to the dense reference against ||W||_1: the L1 path, the L2 path and the rescaled reference
    anchor = "prox_l1" if "prox_l1" in methods else methods[0]
    ref = (anchor, path.lambdas[0])
    norms = [seed_mean(anchor, v, lambda p: p.l1_norm) for v in path.lambdas]
    ax_norm.plot(
        norms,
        [_pooled_ratio(path, anchor, v, ref) for v in path.lambdas],
        color=_PATH_STYLE[anchor]["color"],
        marker=_PATH_STYLE[anchor]["marker"],
        markersize=4,
        label=f"{anchor} path (L1)",
    )
    ax_norm.plot(
        norms,
        [_pooled_ratio(path, f"rescaled:{anchor}", v, ref) for v in path.lambdas],
        color=_PATH_CONTROL_STYLE["rescaled"],
        marker="x",
        markersize=5,
        label="reference rescaled to that ‖W‖₁",
    )
    if path.l2_lambdas:
        l2_norms = [seed_mean("l2", v, lambda p: p.l1_norm) for v in path.l2_lambdas]
        ax_norm.plot(
            l2_norms,
            [_pooled_ratio(path, "l2", v, ref) for v in path.l2_lambdas],
            color=_PATH_STYLE["l2"]["color"],
            marker="D",
            markersize=4,
            label="L2 path",
        )
    ax_norm.axhline(1.0, color="0.5", linewidth=0.8)
    ax_norm.set_xscale("log")
    ax_norm.set_xlabel("‖W‖₁ (mean over seeds; log scale)")
    ax_norm.set_ylabel(f"paired median ε* / ε*({anchor}, smallest λ)")
    ax_norm.set_title(f"Same norm, three ways: ratio to the {anchor} reference")
    ax_norm.legend(fontsize=8, loc="best")

    # each L1 model against its matched controls, with 95 % intervals
    shown = [m for m in methods if m != "l1"] or methods  # l1 tracks prox_l1; its ratios are in the table
    for method, linestyle in zip(shown, ("-", ":", "--")):
        for control in CONTROLS[1:]:
            cs = [path.comparison(method, v, control) for v in path.lambdas if any(c.control == control for c in path.comparisons)]
            if not cs:
                continue
            lam = np.array([c.lam for c in cs])
            mid = np.array([np.nan if c.ratio is None else c.ratio for c in cs])
            lo = np.array([np.nan if c.low is None else c.low for c in cs])
            hi = np.array([np.nan if c.high is None else c.high for c in cs])
            if not np.isfinite(mid).any():  # refused (unconverged reference) or nothing to compare
                continue
            ax_ctl.errorbar(
                lam,
                mid,
                yerr=[mid - lo, hi - mid],
                color=_PATH_CONTROL_STYLE[control],
                linestyle=linestyle,
                marker="o",
                markersize=3,
                capsize=2,
                linewidth=1.2,
                label=f"{method} vs {CONTROL_TITLES[control]}",
            )
    ax_ctl.axhline(1.0, color="0.5", linewidth=0.8)
    ax_ctl.set_title(f"L1 model / matched control (95 % CI, {n_seeds} seeds)")
    ax_ctl.set_ylabel("paired median ε*(L1) / ε*(control)")
    if ax_ctl.get_legend_handles_labels()[0]:
        ax_ctl.legend(fontsize=6.5, loc="best")

    ax_auc.set_title(f"ε* AUC: area under the robust-accuracy curve, ε ≤ {path.eps_max:g}")
    ax_auc.set_ylabel(f"ε* AUC ({unit}, pixel units of [0, 1])")
    ax_med.set_title("Median ε* over correctly classified inputs")
    ax_med.set_ylabel(f"median ε* ({unit}, pixel units; log scale)")
    ax_med.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}")
    ax_med.yaxis.set_major_formatter(plain)
    ax_med.yaxis.set_minor_formatter(plain)
    ax_acc.set_title("Clean accuracy")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_sp.set_title("Sparsity of W")
    ax_sp.set_ylabel("weights that are zero (%)")
    ax_sp.set_ylim(-3, 103)
    for ax in (ax_auc, ax_med, ax_acc, ax_sp, ax_ctl):
        ax.set_xscale("log")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel("λ  (objective: mean cross-entropy + λ·‖W‖₁)")
    ax_norm.grid(True, which="major", alpha=0.3)
    ax_auc.legend(fontsize=8, loc="best")
    ax_med.legend(fontsize=7, loc="best")
    ax_acc.legend(fontsize=8, loc="best")
    ax_sp.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"L1 path of multinomial logistic regression on {path.dataset}: exact FGSM ε* over {path.n_eval} test inputs, seeds {', '.join(map(str, path.seeds))}",
        fontsize=12,
    )
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    fig.savefig(png, dpi=120)
    fig.savefig(svg)
    return {"png": png, "svg": svg}
