"""The audit report: what compressing one user's model costs in robustness, as HTML, Markdown, CSVs and figures (issue 11).

:func:`write_audit_report` writes into ``out_dir``:

- ``report.html``: self-contained (figures as base64 PNG, CSS inline, no script); it opens
  with the answer paragraph (:meth:`sparank.audit.AuditResult.answer`), then the table of
  every compression against the original, the figures, the original's measurements and the
  settings. Every number in the table also sits, at full precision, in its cell's ``data-value``;
- ``report.md``: the same answer and table in Markdown, the figures linked;
- ``compressions.csv``: one row per model (the original first) at full precision;
- ``per_input.csv``: ε* of every audit input under the original and every copy;
- ``figures/*.png`` and ``*.svg``: ε* AUC and clean accuracy against sparsity / rank fraction
  with their intervals, and the per-input scatter of ε* original vs compressed.

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects, never through pyplot.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparank.audit import AuditResult, CompressionComparison, ModelAudit
from sparank.compare import LESS_ROBUST, MORE_ROBUST, NO_DIFFERENCE
from sparank.compress import FAMILY_TITLES, LEVEL_NAMES

# the study report's table, CSV and style helpers: one look for both reports
from sparank.report import (
    _VERDICT_COLOURS,
    _VERDICT_CSS,
    Cell,
    _eps_unit,
    _html_opening,
    _html_table,
    _md,
    _md_table,
    _write_csv,
    percent_down,
)
from sparank.robustness import CLEAN_WRONG

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_FAMILY_COLOURS = {"magnitude": "#2ca02c", "global": "#1f77b4", "structured": "#9467bd", "svd": "#ff7f0e"}
_VERDICT_MARKERS = {NO_DIFFERENCE: "o", LESS_ROBUST: "v", MORE_ROBUST: "^"}


@dataclass(frozen=True)
class AuditReportPaths:
    """The files :func:`write_audit_report` wrote."""

    html: Path
    markdown: Path
    compressions_csv: Path
    per_input_csv: Path
    figures: tuple[Path, ...]  # the PNGs, in the order the HTML embeds them (each with an SVG beside it)


# --------------------------------------------------------------------------- numbers per model


def _flips(model: ModelAudit, original: ModelAudit) -> tuple[int, float | None, float | None]:
    """Inputs the original classifies correctly and the copy does not: their count, and the median original ε* of flipped / kept ones."""
    orig_ok = original.fgsm.status != int(CLEAN_WRONG)
    copy_ok = model.fgsm.status != int(CLEAN_WRONG)
    eps = np.minimum(original.fgsm.eps_hi.numpy(), original.fgsm.eps_max)
    flipped = (orig_ok & ~copy_ok).numpy()
    kept = (orig_ok & copy_ok).numpy()
    med = lambda m: float(np.median(eps[m])) if m.any() else None
    return int(flipped.sum()), med(flipped), med(kept)


def _proved(model: ModelAudit) -> tuple[int, int]:
    """Of the inputs the model classifies correctly (those a proof is about: a clean-wrong input's ε* = 0 needs none),
    how many have their FGSM ε* certified, and how many there are."""
    correct = model.fgsm.status != CLEAN_WRONG
    certified = model.fgsm.certified
    return (0 if certified is None else int((certified & correct).sum())), int(correct.sum())


def _certified_fraction(model: ModelAudit) -> float | None:
    """The share of :func:`_proved` (None: certification was not asked)."""
    if model.fgsm.certified is None:
        return None
    proved, correct = _proved(model)
    return proved / max(correct, 1)


def model_record(result: AuditResult, model: ModelAudit, comparison: CompressionComparison | None) -> dict[str, Any]:
    """One row of ``compressions.csv``: the model's measurements and, for a copy, its comparison with the original."""
    s = model.fgsm.summary()
    c = model.compression
    record: dict[str, Any] = {
        "model": model.label,
        "family": None if c is None else c.family,
        "level": None if c is None else c.level,
        "level_name": None if c is None else LEVEL_NAMES[c.family],
        "layers": None if c is None or c.layers is None else ",".join(c.layers),
        "sparsity": model.structure.sparsity,
        "mean_effective_rank_ratio": model.structure.mean_effective_rank_ratio,
        "clean_accuracy": model.clean_accuracy,
        "auc": s.auc,
        "median_eps": s.quantiles.get("50"),
        "censored_fraction": s.censored_fraction,
        "no_direction_fraction": s.no_direction_fraction,
        "certified_fraction": _certified_fraction(model),
        "best_auc": None if model.best is None else model.best.summary().auc,
        "masked": model.masked,
        "masking_flags": None if model.masking is None else [k for k, v in model.masking["flags"].items() if v],
        "seconds": model.seconds,
    }
    if comparison is not None:
        f = comparison.fgsm
        flipped, eps_flipped, eps_kept = _flips(model, result.original)
        record.update({
            "accuracy_change": comparison.accuracy_change,
            "accuracy_change_low": f.clean_accuracy_change.low,
            "accuracy_change_high": f.clean_accuracy_change.high,
            "ratio": f.ratio.estimate, "ratio_low": f.ratio.low, "ratio_high": f.ratio.high,
            "p_value": f.p_value,
            "auc_difference": f.auc_difference.estimate, "auc_difference_low": f.auc_difference.low,
            "auc_difference_high": f.auc_difference.high,
            **{f"robust_accuracy_difference_{e:g}": i.estimate for e, i in zip(f.reference_eps, f.robust_accuracy_difference)},
            "n_paired": f.n_paired,
            "verdict": comparison.fgsm_verdict,
            "best_ratio": None if comparison.best is None else comparison.best.ratio.estimate,
            "best_ratio_low": None if comparison.best is None else comparison.best.ratio.low,
            "best_ratio_high": None if comparison.best is None else comparison.best.ratio.high,
            "best_verdict": comparison.best_verdict,
            "flipped": flipped, "median_original_eps_flipped": eps_flipped, "median_original_eps_kept": eps_kept,
            "acceptable": comparison.acceptable,
        })  # fmt: skip
    return record


# --------------------------------------------------------------------------- the table


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def audit_table(result: AuditResult) -> tuple[list[str], list[list[Cell]]]:
    """The compressions table: one row per model, the original first."""
    best = result.settings.get("attacks")
    headers = ["model", "sparsity", "eff. rank", "clean acc.", "Δ acc. (points)", "FGSM ε* AUC", "ΔAUC", "median ε* ratio", "verdict"]
    if best:
        headers += ["best ε* ratio", "best verdict"]
    headers += ["masking"]
    headers += ["flipped (median orig. ε* flipped / kept)", "acceptable"]
    table: list[list[Cell]] = []
    o = result.original
    o_auc = o.fgsm.summary().auc
    row = [
        Cell("model", "original"),
        Cell("sparsity", f"{o.structure.sparsity:.3f}", o.structure.sparsity),
        Cell("effective_rank_ratio", f"{o.structure.mean_effective_rank_ratio:.3f}", o.structure.mean_effective_rank_ratio),
        Cell("clean_accuracy", f"{100 * o.clean_accuracy:.1f} %", o.clean_accuracy),
        Cell("accuracy_change", "–"),
        Cell("auc", f"{o_auc:.4g}", o_auc),
        Cell("auc_difference", "–"),
        Cell("ratio", "–"),
        Cell("verdict", "–"),
    ]
    if best:
        row += [Cell("best_ratio", "–"), Cell("best_verdict", "–")]
    row += [Cell("masking", _masking_text(o))]
    row += [Cell("flipped", "–"), Cell("acceptable", "–")]
    table.append(row)
    for m, c in zip(result.compressed, result.comparisons):
        f = c.fgsm
        auc = m.fgsm.summary().auc
        acc = f.clean_accuracy_change
        flipped, eps_f, eps_k = _flips(m, o)
        row = [
            Cell("model", m.label),
            Cell("sparsity", f"{m.structure.sparsity:.3f}", m.structure.sparsity),
            Cell("effective_rank_ratio", f"{m.structure.mean_effective_rank_ratio:.3f}", m.structure.mean_effective_rank_ratio),
            Cell("clean_accuracy", f"{100 * m.clean_accuracy:.1f} %", m.clean_accuracy),
            Cell("accuracy_change", f"{100 * acc.estimate:+.1f} [{100 * acc.low:+.1f}, {100 * acc.high:+.1f}]", acc.estimate, acc.low, acc.high),
            Cell("auc", f"{auc:.4g}", auc),
            Cell("auc_difference", f"{f.auc_difference.estimate:+.3g} [{f.auc_difference.low:+.3g}, {f.auc_difference.high:+.3g}]",
                 f.auc_difference.estimate, f.auc_difference.low, f.auc_difference.high),
            Cell("ratio", f"{f.ratio.estimate:.3g} [{f.ratio.low:.3g}, {f.ratio.high:.3g}]", f.ratio.estimate, f.ratio.low, f.ratio.high),
            Cell("verdict", c.fgsm_verdict, c.fgsm_verdict, css=_VERDICT_CSS[c.fgsm_verdict]),
        ]  # fmt: skip
        if best:
            b = c.best
            row += [
                Cell("best_ratio", "–" if b is None else f"{b.ratio.estimate:.3g} [{b.ratio.low:.3g}, {b.ratio.high:.3g}]",
                     None if b is None else b.ratio.estimate, None if b is None else b.ratio.low, None if b is None else b.ratio.high),
                Cell("best_verdict", c.best_verdict or "–", c.best_verdict, css=_VERDICT_CSS.get(c.best_verdict or "", "")),
            ]  # fmt: skip
        row += [
            Cell("masking", _masking_text(m)),
            Cell("flipped", f"{flipped} ({_num(eps_f)} / {_num(eps_k)})", flipped),
            Cell("acceptable", "yes" if c.acceptable else "no", c.acceptable),
        ]
        table.append(row)
    return headers, table


def _masking_text(m: ModelAudit) -> str:
    if m.masking is None:
        return "–"
    raised = [k for k, v in m.masking["flags"].items() if v]
    return "FLAGGED: " + ", ".join(raised) if raised else "none"


# --------------------------------------------------------------------------- figures


def _save(fig: Figure, stem: Path) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    png = buffer.getvalue()
    stem.with_suffix(".png").write_bytes(png)
    fig.savefig(stem.with_suffix(".svg"), format="svg")
    return png


def figure_trends(result: AuditResult) -> Figure:
    """ε* AUC (top) and clean accuracy (bottom) of every copy against its level, one column for pruning and one for rank.

    Error bars: the original's value plus the 95 % interval of the paired difference (copy − original).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    o = result.original
    o_auc = o.fgsm.summary().auc
    tol = float(result.settings["accuracy_tolerance"])
    kinds = [k for k in ("sparsity", "rank fraction") if any(LEVEL_NAMES[c.compression.family] == k for c in result.comparisons)]
    fig = Figure(figsize=(5.2 * len(kinds) + 1.2, 7.4), layout="constrained")
    axes = fig.subplots(2, len(kinds), squeeze=False, sharey="row")
    unit = _eps_unit(result.settings["norm"])
    for j, kind in enumerate(kinds):
        top, bottom = axes[0, j], axes[1, j]
        families = list(dict.fromkeys(c.compression.family for c in result.comparisons if LEVEL_NAMES[c.compression.family] == kind))
        width = 0.006 * (len(families) - 1)
        for fi, family in enumerate(families):
            rows = sorted(
                (
                    (m, c)
                    for m, c in zip(result.compressed, result.comparisons)
                    if c.compression.family == family and c.compression.layers is None
                ),
                key=lambda mc: mc[1].compression.level,
            )
            if not rows:
                continue
            colour = _FAMILY_COLOURS.get(family, "#555555")
            shift = (fi * 0.012 - width) if len(families) > 1 else 0.0  # side by side at a level
            xs = np.array([c.compression.level for _, c in rows]) + shift
            auc = np.array([m.fgsm.summary().auc for m, _ in rows])
            lo = np.array([o_auc + c.fgsm.auc_difference.low for _, c in rows])
            hi = np.array([o_auc + c.fgsm.auc_difference.high for _, c in rows])
            acc = np.array([m.clean_accuracy for m, _ in rows])
            alo = np.array([o.clean_accuracy + c.fgsm.clean_accuracy_change.low for _, c in rows])
            ahi = np.array([o.clean_accuracy + c.fgsm.clean_accuracy_change.high for _, c in rows])
            top.plot(xs, auc, "-", color=colour, lw=1.2, alpha=0.7)
            top.errorbar(xs, auc, yerr=[np.maximum(auc - lo, 0), np.maximum(hi - auc, 0)], fmt="none", ecolor=colour, capsize=3, lw=1)
            bottom.plot(xs, 100 * acc, "-", color=colour, lw=1.2, alpha=0.7)
            bottom.errorbar(xs, 100 * acc, yerr=[100 * np.maximum(acc - alo, 0), 100 * np.maximum(ahi - acc, 0)], fmt="none",
                            ecolor=colour, capsize=3, lw=1)  # fmt: skip
            for (m, c), x, a, ac in zip(rows, xs, auc, acc):
                marker = _VERDICT_MARKERS[c.fgsm_verdict]
                face = colour if c.acceptable else "white"
                top.plot([x], [a], marker=marker, ms=8, mfc=face, mec=colour, mew=1.5, ls="none")
                bottom.plot([x], [100 * ac], marker=marker, ms=8, mfc=face, mec=colour, mew=1.5, ls="none")
        top.axhline(o_auc, color="black", ls="--", lw=1)
        bottom.axhline(100 * o.clean_accuracy, color="black", ls="--", lw=1)
        bottom.axhline(100 * (o.clean_accuracy - tol), color="black", ls=":", lw=1)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            if kind == "rank fraction":
                ax.invert_xaxis()  # stronger compression to the right, as for sparsity
        what = (
            "sparsity setting (fraction of weights; structured: of neurons / filters)"
            if kind == "sparsity"
            else "rank fraction kept per layer"
        )
        bottom.set_xlabel(what)
        top.set_title(f"{'pruning' if kind == 'sparsity' else 'rank truncation'}: stronger to the right")
    axes[0, 0].set_ylabel(f"FGSM ε* AUC ({unit}, ε_max {result.settings['eps_max']:g})")
    axes[1, 0].set_ylabel("clean accuracy on the audit inputs (%)")
    handles = [
        Line2D([], [], color=_FAMILY_COLOURS[f], lw=2, label=FAMILY_TITLES[f])
        for f in dict.fromkeys(c.compression.family for c in result.comparisons)
        if f in _FAMILY_COLOURS
    ]
    handles += [
        Line2D([], [], color="black", ls="--", label="original"),
        Line2D([], [], color="black", ls=":", label=f"original − {100 * tol:g} point(s) (tolerance)"),
        Line2D([], [], marker="o", ls="none", color="grey", label="no significant difference"),
        Line2D([], [], marker="v", ls="none", color="grey", label="less robust"),
        Line2D([], [], marker="^", ls="none", color="grey", label="more robust"),
        Line2D([], [], marker="o", ls="none", mfc="white", mec="grey", label="hollow: not acceptable"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle("What each compression costs: robustness (top) and clean accuracy (bottom); bars: 95 % paired bootstrap interval")
    return fig


def figure_scatter(result: AuditResult) -> Figure:
    """Per input, ε* of the original (x) against ε* of each copy (y): one panel per compression, families in rows.

    Inputs the copy misclassifies (and the original does not) are red crosses at y = 0: the
    inputs that flip. ε* beyond the bulk (the 99th percentile of the finite ε*, censored ones included) are drawn on
    the panel's edge. Inputs the original misclassifies are left out.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    o = result.original
    eps_max = float(result.settings["eps_max"])
    families = list(dict.fromkeys(c.compression.family for c in result.comparisons))
    per_family = {f: [(m, c) for m, c in zip(result.compressed, result.comparisons) if c.compression.family == f] for f in families}
    cols = max(len(v) for v in per_family.values())
    fig = Figure(figsize=(2.6 * cols + 1.0, 2.6 * len(families) + 1.2), layout="constrained")
    axes = fig.subplots(len(families), cols, squeeze=False, sharex=True, sharey=True)
    ok_o = (o.fgsm.status != int(CLEAN_WRONG)).numpy()
    x_all = o.fgsm.eps_hi.numpy()
    fooled = [e[np.isfinite(e) & (e > 0)] for e in [x_all, *(m.fgsm.eps_hi.numpy() for m in result.compressed)]]
    pooled = np.concatenate(fooled)
    top = float(np.quantile(pooled, 0.99)) * 1.15 if pooled.size else eps_max  # the bulk of the finite ε*; the rest sit on the edge
    top = min(max(top, 1e-6), eps_max)
    unit = _eps_unit(result.settings["norm"])
    for r, family in enumerate(families):
        for j in range(cols):
            ax = axes[r, j]
            if j >= len(per_family[family]):
                ax.set_visible(False)
                continue
            m, c = per_family[family][j]
            y_all = m.fgsm.eps_hi.numpy()
            ok_c = (m.fgsm.status != int(CLEAN_WRONG)).numpy()
            both = ok_o & ok_c
            flipped = ok_o & ~ok_c
            edge = both & ((x_all > top) | (y_all > top))  # beyond the drawn range (censored included): on its edge
            colour = _FAMILY_COLOURS.get(family, "#555")
            ax.plot([0, top], [0, top], color="black", lw=0.8, ls="--")
            ax.scatter(x_all[both & ~edge], y_all[both & ~edge], s=7, alpha=0.45, color=colour, lw=0)
            ax.scatter(np.minimum(x_all[edge], top), np.minimum(y_all[edge], top), s=14, marker="^", alpha=0.6, color=colour, lw=0)
            ax.scatter(np.minimum(x_all[flipped], top), np.zeros(int(flipped.sum())), s=16, marker="x", color="#d73027", lw=1)
            ax.set_xlim(0, 1.04 * top)
            ax.set_ylim(-0.03 * top, 1.04 * top)
            ax.set_title(f"{c.compression.label}\n× {c.fgsm.ratio.estimate:.3g}, {c.fgsm_verdict}", fontsize=8,
                         color=_VERDICT_COLOURS[c.fgsm_verdict])  # fmt: skip
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[r, 0].set_ylabel(f"ε* of the copy ({unit})", fontsize=8)
    for j in range(cols):
        axes[-1, j].set_xlabel(f"ε* of the original ({unit})", fontsize=8)
    handles = [
        Line2D([], [], marker="o", ls="none", color="grey", label="correct in both"),
        Line2D([], [], marker="^", ls="none", color="grey", label=f"beyond {top:.3g} (censored included): on the edge"),
        Line2D([], [], marker="x", ls="none", color="#d73027", label="flipped: misclassified by the copy (drawn at 0)"),
        Line2D([], [], color="black", ls="--", label="equal ε*"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle("Which inputs lose robustness: FGSM ε* per input, original vs each compressed copy", fontsize=10)
    return fig


# --------------------------------------------------------------------------- the report


def certified_counts(result: AuditResult) -> tuple[int, int]:
    """:func:`_proved` summed over the original and every copy: (model, input) pairs certified, and correctly classified."""
    counts = [_proved(m) for m in (result.original, *result.compressed)]
    return sum(p for p, _ in counts), sum(c for _, c in counts)


def measure_line(result: AuditResult) -> str:
    """How FGSM ε* was measured in this audit: scanned at a resolution, or certified with the share of inputs proved."""
    h, tol = float(result.settings["resolution"]), float(result.settings["tol"])
    if not result.settings.get("certify"):
        return (
            f"FGSM ε* is the first misclassified point of a scan of the ray clip(x + ε·d) at resolution h = {h:g}, refined to a "
            f"verified bracket {tol:g} wide: a misclassified stretch shorter than h can be stepped over (--certify proves the "
            "first crossing instead)."
        )
    proved, total = certified_counts(result)
    share = percent_down(proved, total)
    left = total - proved
    rest = "" if not left else f"; the other {left} keep{'s' if left == 1 else ''} the scan at resolution h = {h:g}"
    return (
        f"FGSM ε* is certified: for {proved} of the {total} (model, input) pairs that the model classifies correctly ({share} %, "
        f"the original and every copy) every ε below ε* is proved classified correctly by bounds over the ray clip(x + ε·d), "
        f"and ε* is the verified first crossing to {tol:g}{rest}."
    )


def _settings_lines(result: AuditResult) -> list[str]:
    return [f"{k}: {v}" for k, v in result.settings.items()]


def write_audit_report(result: AuditResult, out_dir: str | Path, *, title: str | None = None) -> AuditReportPaths:
    """Write the audit report of ``result`` into ``out_dir`` (created; an earlier report's files are replaced).

    Returns:
        :class:`AuditReportPaths`.
    """
    from sparank import __version__

    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    title = title or "sparank audit: what compressing this model costs in robustness"
    figures: list[tuple[str, str, bytes]] = []
    captions = {
        "trends": "ε* AUC (top) and clean accuracy on the audit inputs (bottom) of each compressed copy against its level; the dashed "
        "line is the original, the dotted line the accuracy tolerance. Bars: the original's value plus the 95 % bootstrap interval "
        "of the paired difference (over inputs). Marker: verdict on the median ε* ratio; hollow markers are not acceptable "
        "(less robust, or more accuracy lost than the tolerance).",
        "scatter": "Per input, ε* of the original against ε* of each copy. Points below the dashed line lost robustness; red crosses "
        "are inputs the copy misclassifies outright (the flips). The pruning literature reports that flips concentrate at small "
        "original ε* (inputs near the original's decision boundary): compare where the crosses sit along the x axis.",
    }
    for name, make in (("trends", figure_trends), ("scatter", figure_scatter)):
        fig = make(result)
        figures.append((name, captions[name], _save(fig, fig_dir / name)))
    paths = [fig_dir / f"{n}.png" for n, _, _ in figures]

    records = [model_record(result, result.original, None)] + [
        model_record(result, m, c) for m, c in zip(result.compressed, result.comparisons)
    ]
    _write_csv(out / "compressions.csv", records)
    per_input: list[dict[str, Any]] = []
    labels = result.original.fgsm.labels.tolist()
    columns = [("original", result.original)] + [(m.label, m) for m in result.compressed]
    for i, label in enumerate(labels):
        row: dict[str, Any] = {"input": i, "label": label}
        for name, m in columns:
            row[f"eps {name}"] = float(m.fgsm.eps_hi[i])
        per_input.append(row)
    _write_csv(out / "per_input.csv", per_input)

    the_answer = result.answer()
    headers, table = audit_table(result)
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    meta = " · ".join(
        t for t in (result.model_note, result.inputs_note, f"{len(result.comparisons)} compressions",
                    f"audit time {result.seconds:.1f} s", f"sparank {__version__}", f"generated {generated}") if t
    )  # fmt: skip
    how = [
        (
            "ε* of an input: the smallest ε along its FGSM ray at which the model misclassifies it (PROTOCOL §2); censored inputs "
            "count at ε_max. AUC = mean of min(ε*, ε_max): the area under the robust-accuracy curve."
        ),
        measure_line(result),
        (
            "Median ε* ratio: over the inputs both models classify correctly, the median of ε*(copy) / ε*(original), with its 95 % "
            "bootstrap interval over inputs. Below 1 the copy is easier to fool. There is one original model, so the intervals "
            "cover the choice of inputs, not the randomness of training."
        ),
        (
            f"Verdict: less / more robust when the bootstrap test of the median log-ratio is rejected by Holm's procedure at "
            f"α = {result.settings['alpha']:g} across the audit's compressions; otherwise no significant difference."
        ),
        (
            "Acceptable: no verdict 'less robust' (FGSM ε*, and best ε* where cross-checks ran) and clean accuracy at most "
            f"{100 * float(result.settings['accuracy_tolerance']):g} point(s) below the original's."
        ),
        (
            "Flipped: inputs the original classifies correctly and the copy does not, with the median original ε* of the flipped "
            "and of the kept inputs."
        ),
        (
            "A copy whose gradients vanish (e.g. a layer pruned to zero makes the model constant) cannot be fooled along a gradient "
            "ray: its ε* is censored and it may read 'more robust' while its accuracy collapses; the masking flags and the accuracy "
            "tolerance are there for that."
        ),
    ]
    o_summary = result.original.fgsm.summary()
    original_lines = [
        f"clean accuracy {100 * result.original.clean_accuracy:.2f} % on {o_summary.n} inputs",
        f"FGSM ε* AUC {o_summary.auc:.5g}, median ε* {_num(o_summary.quantiles.get('50'), 4)}, censored {100 * o_summary.censored_fraction:.1f} %",
        f"sparsity {result.original.structure.sparsity:.4f}, mean effective-rank ratio {result.original.structure.mean_effective_rank_ratio:.4f}",
    ]
    if result.original.masking is not None:
        original_lines.append(f"gradient masking: {_masking_text(result.original)}")

    parts = [
        *_html_opening(title, meta, the_answer, how),
        '<h2 id="compressions">Each compression against the original</h2>',
        _html_table(headers, table, table_id="audit-table"),
        '<h2 id="figures">Figures</h2>',
    ]
    for name, caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure id="fig-{name}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append('<h2 id="original">The original model</h2><ul>' + "".join(f"<li>{html.escape(t)}</li>" for t in original_lines) + "</ul>")
    parts.append('<h2 id="settings">Settings</h2><pre>' + html.escape("\n".join(_settings_lines(result))) + "</pre>")
    parts.append("</body></html>")
    html_path = out / "report.html"
    html_path.write_text("\n".join(parts), encoding="utf-8")

    md = [f"# {_md(title)}", "", f"_{_md(meta)}_", "", "## The answer", "", _md(the_answer), "", "## How to read this report", ""]
    md += [f"- {_md(t)}" for t in how]
    md += ["", "## Each compression against the original", "", *_md_table(headers, table), "", "## Figures", ""]
    for name, caption, _ in figures:
        md += [f"![{_md(caption)}](figures/{name}.png)", "", _md(caption), ""]
    md += [
        "## The original model",
        "",
        *[f"- {_md(t)}" for t in original_lines],
        "",
        "## Settings",
        "",
        "```",
        *_settings_lines(result),
        "```",
        "",
    ]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    return AuditReportPaths(html_path, md_path, out / "compressions.csv", out / "per_input.csv", tuple(paths))


__all__ = ["AuditReportPaths", "audit_table", "figure_scatter", "figure_trends", "model_record", "write_audit_report"]
