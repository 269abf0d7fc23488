"""Paired comparisons of per-input robustness, bootstrap intervals and verdicts (PROTOCOL §6).

Two models measured on the same inputs give, per input, a paired log-ratio
``log(ε*_A / ε*_B)``. When the models are trained with several seeds, each
seed gives one vector of log-ratios over the inputs (its own pair of models),
and the uncertainty has two sources: which seeds were drawn and which inputs.
:func:`hierarchical_bootstrap` resamples both, seeds first and then inputs
within each drawn seed (Davison & Hinkley 1997, "Bootstrap Methods and their
Application", §3.8, two-stage resampling), and returns a percentile interval
of the pooled statistic (by default the median log-ratio).

On top of it, for one regularised model against its dense counterpart of the
same seed, over several seeds:

- :func:`paired_comparison` -> :class:`PairedComparison`: the median paired
  log-ratio with its interval and a bootstrap p-value (:func:`bootstrap_p_value`),
  and the paired differences in AUC, robust accuracy ``A(ε)`` and clean accuracy,
  each with an interval;
- :func:`holm` (Holm 1979 step-down) and :func:`verdicts`: "more robust",
  "less robust" or "no significant difference" for each comparison of a study;
- :func:`verdict_flip`: whether the FGSM-ε* verdict and the best-ε* verdict disagree.

Pure numpy; every random draw comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from sparank.store import Store

#: bootstrap replicates by default: enough for a stable 95 % percentile interval
DEFAULT_N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_groups: int  # seeds
    n_values: int  # paired values pooled over the groups

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def exp(self) -> Interval:
        """The interval of ``exp(statistic)``: a log-ratio interval as a ratio interval."""
        return Interval(math.exp(self.estimate), math.exp(self.low), math.exp(self.high), self.confidence, self.n_groups, self.n_values)


def _median(values: np.ndarray) -> float:
    return float(np.median(values))


def hierarchical_bootstrap(
    groups: Sequence[np.ndarray],
    *,
    rng: np.random.Generator,
    statistic: Callable[[np.ndarray], float] = _median,
    n_boot: int = DEFAULT_N_BOOT,
    confidence: float = 0.95,
) -> Interval:
    """Percentile interval of ``statistic`` over values pooled from several groups (seeds), resampling both levels.

    One replicate draws ``len(groups)`` groups with replacement, then, within each
    drawn group, as many values as it has with replacement, pools them and applies
    ``statistic``. The estimate is ``statistic`` of all values pooled.

    Args:
        groups: one 1-D array of paired values per seed (e.g. log-ratios over inputs);
            empty groups are dropped; at least one must be non-empty.
        rng: the generator every draw comes from (``np.random.default_rng(seed)``).
        statistic: pooled values -> number; default the median.
        n_boot: replicates.
        confidence: the interval's coverage, in (0, 1).

    Returns:
        :class:`Interval` (estimate, low, high).

    Raises:
        ValueError: no values, a non-finite value, ``n_boot < 1`` or ``confidence`` outside (0, 1).

    Example:
        >>> hierarchical_bootstrap([np.log(r0), np.log(r1), np.log(r2)], rng=np.random.default_rng(0)).exp()
    """
    arrays = _check_groups(groups, n_boot=n_boot, confidence=confidence)
    interval, _ = _bootstrap(arrays, rng=rng, statistic=statistic, n_boot=n_boot, confidence=confidence)
    return interval


def _check_groups(groups: Sequence[np.ndarray], *, n_boot: int, confidence: float) -> list[np.ndarray]:
    """The non-empty groups as flat float64 arrays; the checks of :func:`hierarchical_bootstrap`."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}; e.g. 0.95")
    arrays = [np.asarray(g, dtype=np.float64).reshape(-1) for g in groups]
    arrays = [a for a in arrays if len(a)]
    if not arrays:
        raise ValueError("groups hold no values; pass at least one non-empty array of paired values")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("groups contain NaN or inf; cap ε* (e.g. at eps_max) before taking log-ratios")
    return arrays


def _bootstrap(
    arrays: list[np.ndarray], *, rng: np.random.Generator, statistic: Callable[[np.ndarray], float], n_boot: int, confidence: float
) -> tuple[Interval, np.ndarray]:
    """:func:`hierarchical_bootstrap` on checked groups, with its replicates ``(n_boot,)`` (the draws are the same, in the same order)."""
    pooled = np.concatenate(arrays)
    estimate = statistic(pooled)
    n_groups = len(arrays)
    replicates = np.empty(n_boot)
    for r in range(n_boot):
        drawn = rng.integers(0, n_groups, size=n_groups)
        parts = [arrays[g][rng.integers(0, len(arrays[g]), size=len(arrays[g]))] for g in drawn]
        replicates[r] = statistic(np.concatenate(parts))
    low, high = _percentile_interval(replicates, confidence)
    return Interval(float(estimate), low, high, confidence, n_groups, len(pooled)), replicates


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap replicates (``np.quantile``, linear interpolation)."""
    alpha = (1 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_log_ratios(ours: np.ndarray, theirs: np.ndarray, *, cap: float) -> np.ndarray:
    """``log(min(a, cap) / min(b, cap))`` per input over inputs with both values positive (clean-wrong: ε* = 0, dropped).

    ``ours`` and ``theirs`` are ε* of the same inputs, in the same order; censored
    values (``inf``) are capped at ``cap`` (ε_max), so a censored pair gives 0.
    """
    a = np.minimum(np.asarray(ours, dtype=np.float64), cap)
    b = np.minimum(np.asarray(theirs, dtype=np.float64), cap)
    if a.shape != b.shape:
        raise ValueError(f"ours and theirs must be the same inputs, got shapes {a.shape} and {b.shape}")
    both = (a > 0) & (b > 0)
    return np.log(a[both]) - np.log(b[both])


# --------------------------------------------------------------------------- the comparison and the verdict (§6)

Verdict = Literal["more robust", "less robust", "no significant difference"]
MORE_ROBUST: Verdict = "more robust"
LESS_ROBUST: Verdict = "less robust"
NO_DIFFERENCE: Verdict = "no significant difference"
VERDICTS: tuple[Verdict, ...] = (MORE_ROBUST, LESS_ROBUST, NO_DIFFERENCE)


def _tail_p_values(replicates: np.ndarray) -> tuple[float, float]:
    """One-sided bootstrap p-values ``((1 + #{t ≤ 0}) / (B + 1), (1 + #{t ≥ 0}) / (B + 1))``: evidence for > 0, for < 0."""
    b = len(replicates)
    return float((1 + np.count_nonzero(replicates <= 0)) / (b + 1)), float((1 + np.count_nonzero(replicates >= 0)) / (b + 1))


def bootstrap_p_value(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value for "the statistic is 0", from its bootstrap replicates ``(B,)``.

    ``p = min(1, 2 · min(p_more, p_less))`` with ``p_more = (1 + #{t*_b ≤ 0}) / (B + 1)`` and
    ``p_less = (1 + #{t*_b ≥ 0}) / (B + 1)``: twice the smaller tail of the bootstrap
    distribution beyond 0, the inversion of the percentile interval (Davison & Hinkley
    1997, §4.4). The ``+1`` (North, Curtis & Sham 2002, "A note on the calculation of
    empirical P values from Monte Carlo procedures") counts the observed data as one
    replicate, so ``p ≥ 2 / (B + 1) > 0``: a p-value of 0 is never reported, and ``B``
    limits how small a p-value (hence how many comparisons under Holm) can be resolved.
    Replicates exactly 0 count in both tails (conservative): all-zero replicates give 1.

    Link with the interval: with ``q = np.quantile`` (linear, as :func:`hierarchical_bootstrap`),
    ``p ≤ α`` implies that the ``1 − α`` percentile interval excludes 0 on the side of the
    small tail, for every ``B`` and ``α``: ``p_more ≤ α/2`` means ``k = #{t* ≤ 0} ≤ α(B+1)/2 − 1
    < (B−1)α/2``, so the order statistics at and after position ``⌊(B−1)α/2⌋`` (the two the
    lower endpoint interpolates) are > 0; the upper tail is symmetric. The converse fails
    only at the edge: e.g. ``B = 2000``, ``α = 0.05``, exactly 50 replicates ≤ 0 with
    the 50th close to 0: the interval's interpolated lower end is above 0, ``p = 102/2001 ≈ 0.051``.

    Raises:
        ValueError: no replicates or a NaN among them.
    """
    reps = np.asarray(replicates, dtype=np.float64).reshape(-1)
    if reps.size == 0 or np.isnan(reps).any():
        raise ValueError(f"replicates must be a non-empty array without NaN, got {reps.size} values")
    p_more, p_less = _tail_p_values(reps)
    return min(1.0, 2 * min(p_more, p_less))


@dataclass(frozen=True)
class PairedComparison:
    """A regularised model against its dense counterpart of the same seed, over seeds (PROTOCOL §6).

    Differences are regularised − dense; every :class:`Interval` is a percentile interval
    of a two-stage (seeds, then inputs) bootstrap.
    """

    log_ratio: Interval  # median of log(ε*_reg / ε*_dense) over inputs correct in both (ε* capped at eps_max)
    p_value: float  # two-sided bootstrap p for "median log-ratio = 0" (bootstrap_p_value)
    p_more: float  # one-sided: (1 + #{replicates ≤ 0}) / (n_boot + 1), small when the regularised model is more robust
    p_less: float  # one-sided: (1 + #{replicates ≥ 0}) / (n_boot + 1), small when it is less robust
    auc_difference: Interval  # AUC_reg − AUC_dense, AUC = mean(min(ε*, eps_max)) over all inputs (clean-wrong: 0)
    auc_reg: float
    auc_dense: float
    reference_eps: tuple[float, ...]
    robust_accuracy_difference: tuple[Interval, ...]  # A_reg(ε) − A_dense(ε) at each reference ε, A(ε) = fraction ε* > ε
    clean_accuracy_change: Interval  # clean accuracy reg − dense
    clean_accuracy_reg: float
    clean_accuracy_dense: float
    eps_max: float
    n_seeds: int
    n_inputs: int  # inputs pooled over seeds (the eval set once per seed)
    n_paired: int  # of which correct in both models with ε* > 0: the log-ratios
    n_boot: int

    @property
    def ratio(self) -> Interval:
        """The median ratio ``ε*_reg / ε*_dense`` and its interval."""
        return self.log_ratio.exp()

    def robust_accuracy_at(self, eps: float) -> Interval:
        """The difference in ``A(eps)``, for an ``eps`` among :attr:`reference_eps`."""
        for ref, interval in zip(self.reference_eps, self.robust_accuracy_difference, strict=True):
            if ref == eps:
                return interval
        raise ValueError(f"eps={eps} is not a reference ε of this comparison; pick one of {list(self.reference_eps)}")


def paired_comparison(
    reg: Sequence[np.ndarray],
    dense: Sequence[np.ndarray],
    *,
    eps_max: float,
    rng: np.random.Generator,
    reg_correct: Sequence[np.ndarray] | None = None,
    dense_correct: Sequence[np.ndarray] | None = None,
    reference_eps: Sequence[float] = (),
    n_boot: int = DEFAULT_N_BOOT,
    confidence: float = 0.95,
) -> PairedComparison:
    """Compare a regularised model with its dense counterpart, seed by seed, on the same inputs (PROTOCOL §2, §6).

    Per seed ``s``, ``reg[s]`` and ``dense[s]`` are ε* of the two models trained with
    seed ``s``, on the same inputs in the same order (``inf``: censored; ``0``: clean-wrong).

    - **log-ratio**: ``r(x) = log(min(ε*_reg, eps_max) / min(ε*_dense, eps_max))`` over
      the inputs correct in both (:func:`paired_log_ratios`); its pooled median with the
      interval of :func:`hierarchical_bootstrap` (the same draws: the same ``rng`` state
      gives the same interval) and :func:`bootstrap_p_value` of the same replicates.
      A seed with no input correct in both adds no log-ratio (``log_ratio.n_groups`` counts
      the seeds that do).
    - **AUC, A(ε), clean accuracy**: per input, ``min(ε*_reg, eps_max) − min(ε*_dense, eps_max)``,
      ``[ε*_reg > ε] − [ε*_dense > ε]`` and ``[correct_reg] − [correct_dense]`` over all
      inputs; their pooled means (AUC = mean(min(ε*, eps_max)), PROTOCOL §2) with intervals
      from one joint two-stage bootstrap (the same distribution as :func:`hierarchical_bootstrap`
      with ``statistic=np.mean``, drawn as counts, so all the differences share each replicate).
      Pooled means weight seeds by their input count (equal for one eval set).

    Calibration (simulated, 3 seeds × 100 inputs, n_boot = 200): when the paired effect
    is the same in every seed, resampling both levels over-counts input noise and the
    test is conservative (2–3 % of null p-values ≤ 0.05); when the effect itself varies
    from seed to seed (a per-seed shift of the log-ratio, sd 0.1 / 0.3), three seeds
    cannot show that spread and it is liberal (7 % / 21 %). More seeds are the only cure.

    Args:
        reg, dense: one 1-D float array ``(N_s,)`` of ε* per seed each; ``N_s ≥ 1``.
        eps_max: the ε_max the ε* were measured with (> 0): the cap and the AUC's range.
        rng: the generator every draw comes from.
        reg_correct, dense_correct: optional boolean masks ``(N_s,)`` per seed, the clean
            correctness. Without them an input is correct iff ε* > 0. With them, a wrong
            input must have ε* = 0; a correct one with ε* = 0 (an infimum at a tie, §2)
            counts as correct, adds 0 to the AUC and is left out of the log-ratios (log 0).
        reference_eps: ε values in ``[0, eps_max]`` for the robust-accuracy differences.
        n_boot: replicates; the smallest p-value is ``2 / (n_boot + 1)``, so a study of
            ``m`` comparisons needs ``n_boot ≥ 2m/α − 1`` (see :func:`verdicts`).
        confidence: the intervals' coverage.

    Returns:
        :class:`PairedComparison`.

    Raises:
        ValueError: seeds or shapes that do not pair up, NaN or negative ε*, a mask that
            calls an input with ε* > 0 wrong, ``eps_max`` not positive and finite, a reference
            ε outside ``[0, eps_max]``, no input correct in both models (nothing to compare).

    Example:
        >>> c = paired_comparison([reg_s0, reg_s1, reg_s2], [dense_s0, dense_s1, dense_s2], eps_max=0.5,
        ...                       rng=np.random.default_rng(0), reference_eps=[0.05, 0.1])
        >>> c.ratio, c.p_value, c.auc_difference, c.robust_accuracy_at(0.1)
    """
    regs, denses, reg_ok, dense_ok, refs = _check_comparison(
        reg, dense, eps_max=eps_max, reg_correct=reg_correct, dense_correct=dense_correct, reference_eps=reference_eps
    )
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}; e.g. 0.95")
    log_groups = [
        paired_log_ratios(r[ok_r & ok_d], d[ok_r & ok_d], cap=eps_max) for r, d, ok_r, ok_d in zip(regs, denses, reg_ok, dense_ok)
    ]
    if not any(len(g) for g in log_groups):
        raise ValueError("no input is correct (with ε* > 0) in both models in any seed: there is no paired log-ratio to compare")
    arrays = _check_groups(log_groups, n_boot=n_boot, confidence=confidence)
    log_ratio, replicates = _bootstrap(arrays, rng=rng, statistic=_median, n_boot=n_boot, confidence=confidence)
    p_more, p_less = _tail_p_values(replicates)

    # per input, the columns: AUC term, clean accuracy, then A(ε) at each reference ε (reg − dense each)
    def columns(eps: np.ndarray, ok: np.ndarray) -> np.ndarray:
        return np.column_stack([np.minimum(eps, eps_max), ok.astype(np.float64)] + [(eps > e).astype(np.float64) for e in refs])

    per_seed = [(columns(r, ok_r), columns(d, ok_d)) for r, d, ok_r, ok_d in zip(regs, denses, reg_ok, dense_ok)]
    n_inputs = sum(len(r) for r in regs)
    reg_means = sum(a.sum(axis=0) for a, _ in per_seed) / n_inputs
    dense_means = sum(b.sum(axis=0) for _, b in per_seed) / n_inputs
    diffs = [a - b for a, b in per_seed]
    estimates = sum(d.sum(axis=0) for d in diffs) / n_inputs
    mean_reps = _hierarchical_means(diffs, rng=rng, n_boot=n_boot)
    intervals = []
    for j in range(diffs[0].shape[1]):
        low, high = _percentile_interval(mean_reps[:, j], confidence)
        intervals.append(Interval(float(estimates[j]), low, high, confidence, len(regs), n_inputs))
    return PairedComparison(
        log_ratio=log_ratio,
        p_value=bootstrap_p_value(replicates),
        p_more=p_more,
        p_less=p_less,
        auc_difference=intervals[0],
        auc_reg=float(reg_means[0]),
        auc_dense=float(dense_means[0]),
        reference_eps=refs,
        robust_accuracy_difference=tuple(intervals[2:]),
        clean_accuracy_change=intervals[1],
        clean_accuracy_reg=float(reg_means[1]),
        clean_accuracy_dense=float(dense_means[1]),
        eps_max=float(eps_max),
        n_seeds=len(regs),
        n_inputs=n_inputs,
        n_paired=log_ratio.n_values,
        n_boot=n_boot,
    )


def _check_comparison(
    reg: Sequence[np.ndarray],
    dense: Sequence[np.ndarray],
    *,
    eps_max: float,
    reg_correct: Sequence[np.ndarray] | None,
    dense_correct: Sequence[np.ndarray] | None,
    reference_eps: Sequence[float],
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray], tuple[float, ...]]:
    """The checks of :func:`paired_comparison`: ε* and masks per seed as arrays, and the reference ε."""
    if not (math.isfinite(eps_max) and eps_max > 0):
        raise ValueError(f"eps_max must be positive and finite, got {eps_max}; pass the ε_max the ε* were measured with")
    if len(reg) != len(dense) or not len(reg):
        raise ValueError(f"reg and dense must hold one ε* array per seed, the same seeds; got {len(reg)} and {len(dense)}")
    regs = [np.asarray(a, dtype=np.float64) for a in reg]
    denses = [np.asarray(a, dtype=np.float64) for a in dense]
    for s, (r, d) in enumerate(zip(regs, denses)):
        if r.ndim != 1 or r.shape != d.shape or not len(r):
            raise ValueError(f"reg[{s}] and dense[{s}] must be 1-D ε* of the same (>= 1) inputs, got shapes {r.shape} and {d.shape}")
        for name, a in (("reg", r), ("dense", d)):
            if np.isnan(a).any() or (a < 0).any():
                raise ValueError(f"{name}[{s}] holds NaN or negative ε*; use inf for censored and 0 for clean-wrong")
    masks = []
    for name, given, eps in (("reg_correct", reg_correct, regs), ("dense_correct", dense_correct, denses)):
        if given is None:
            masks.append([e > 0 for e in eps])
            continue
        if len(given) != len(eps):
            raise ValueError(f"{name} must hold one mask per seed ({len(eps)}), got {len(given)}")
        ok = [np.asarray(m) for m in given]
        for s, (m, e) in enumerate(zip(ok, eps)):
            if m.dtype != np.bool_ or m.shape != e.shape:
                raise ValueError(f"{name}[{s}] must be a boolean mask of shape {e.shape}, got {m.dtype} {m.shape}")
            if (~m & (e > 0)).any():
                raise ValueError(
                    f"{name}[{s}] marks inputs with ε* > 0 as wrong; a clean-wrong input has ε* = 0 (are the inputs in the same order?)"
                )
        masks.append(ok)
    refs = tuple(float(e) for e in reference_eps)
    for e in refs:
        if not 0 <= e <= eps_max:
            raise ValueError(f"reference_eps must lie in [0, eps_max={eps_max:g}] (A(ε) beyond ε_max is unknown), got {e:g}")
    return regs, denses, masks[0], masks[1], refs


def _hierarchical_means(groups: Sequence[np.ndarray], *, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Two-stage bootstrap replicates ``(n_boot, k)`` of the pooled column means of ``groups`` (one ``(N_g, k)`` array per seed).

    The same distribution as :func:`hierarchical_bootstrap` with ``statistic=np.mean`` per
    column, drawn as counts: a replicate draws how often each group is taken
    (multinomial, ``G`` draws), then ``times · N_g`` indices of each group uniformly
    (the union of ``times`` independent resamples of size ``N_g``), and divides the
    pooled sums by the pooled count. Chunked so that one count matrix stays ~32 MB.
    """
    n_groups = len(groups)
    sizes = np.array([len(g) for g in groups])
    k = groups[0].shape[1]
    out = np.empty((n_boot, k))
    chunk = max(1, (1 << 22) // int(sizes.max()))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        times = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=b)  # (b, G)
        sums = np.zeros((b, k))
        for g, values in enumerate(groups):
            n = int(sizes[g])
            rows = np.repeat(np.arange(b), times[:, g] * n)
            counts = np.bincount(rows * n + rng.integers(0, n, size=rows.size), minlength=b * n).reshape(b, n)
            sums += counts @ values
        out[start : start + b] = sums / (times @ sizes)[:, None]
    return out


def holm(p_values: Sequence[float], *, alpha: float = 0.05) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected, controlling the family-wise error rate at ``alpha``.

    Sort the ``m`` p-values ascending, ``p_(1) ≤ … ≤ p_(m)``; reject ``H_(1) … H_(i)`` for the
    largest ``i`` such that ``p_(j) ≤ alpha / (m − j + 1)`` for every ``j ≤ i``; stop at the
    first failure. Valid under any dependence between the tests, and uniformly more
    powerful than Bonferroni (Holm 1979, "A simple sequentially rejective multiple test
    procedure", Scand. J. Statist. 6:65–70). Ties are rejected or kept together.

    Args:
        p_values: ``m`` p-values in [0, 1] (any order; the answer is in the same order).
        alpha: the family-wise error rate, in (0, 1).

    Returns:
        ``m`` booleans, True where the hypothesis is rejected.

    Raises:
        ValueError: a p-value outside [0, 1] or NaN, ``alpha`` outside (0, 1).

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.005])   # 0.005 ≤ .05/4, 0.01 ≤ .05/3, 0.03 > .05/2: stop
        [True, False, False, True]
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}; e.g. 0.05")
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p_values must lie in [0, 1], got {p.tolist()}")
    m = len(p)
    rejected = [False] * m
    for j, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (m - j):
            break
        rejected[int(i)] = True
    return rejected


def verdicts(comparisons: Sequence[PairedComparison], *, alpha: float = 0.05) -> list[Verdict]:
    """The verdict of each comparison of a study (PROTOCOL §6), Holm-corrected across them.

    A comparison is **more robust** (**less robust**) when its median log-ratio's
    p-value (:attr:`PairedComparison.p_value`) is rejected by :func:`holm` at ``alpha``
    across all the ``comparisons`` given, and its median log-ratio is > 0 (< 0);
    otherwise **no significant difference**. The family is what is passed: one call per
    family (e.g. all of a study's FGSM-ε* comparisons, and separately its best-ε* ones).

    Against PROTOCOL §6 ("more robust if the whole interval is above 0 ... with Holm's
    correction"): the Holm-adjusted test replaces reading the unadjusted 95 % interval.
    Whenever a verdict is significant, its p ≤ alpha, so (see :func:`bootstrap_p_value`)
    its ``1 − alpha`` percentile interval lies wholly on the verdict's side of 0; with
    a single comparison the two rules agree except at the edge where the interval's
    interpolated end just clears 0 and ``p`` is just above ``alpha``. With several, an
    interval may exclude 0 while Holm keeps "no significant difference": that is the
    correction. The displayed intervals are unadjusted (coverage of each alone). If the
    comparisons' ``confidence`` is not ``1 − alpha`` the interval and verdict may differ.

    A significant comparison whose median lies on the other side of 0 from most of its
    bootstrap replicates (possible in principle, never expected) is reported as no
    significant difference, with a warning.

    Raises:
        ValueError: ``alpha`` outside (0, 1), or a comparison whose ``n_boot`` cannot reach
            Holm's first threshold ``alpha / m`` (``2 / (n_boot + 1) > alpha / m``: rerun
            :func:`paired_comparison` with ``n_boot ≥ 2m/alpha − 1``).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}; e.g. 0.05")
    m = len(comparisons)
    needed = math.ceil(2 * m / alpha - 1 - 1e-9)
    for i, c in enumerate(comparisons):
        if c.n_boot < needed:  # 2 / (n_boot + 1) > alpha / m
            raise ValueError(
                f"comparison {i} has n_boot={c.n_boot}: its p-value cannot go below {2 / (c.n_boot + 1):.3g} > alpha/m = {alpha / m:.3g}; "
                f"rerun paired_comparison with n_boot >= {needed}"
            )
    out: list[Verdict] = []
    for i, (c, significant) in enumerate(zip(comparisons, holm([c.p_value for c in comparisons], alpha=alpha))):
        estimate = c.log_ratio.estimate
        if not significant:
            out.append(NO_DIFFERENCE)
        elif estimate > 0 and c.p_more < c.p_less:
            out.append(MORE_ROBUST)
        elif estimate < 0 and c.p_less < c.p_more:
            out.append(LESS_ROBUST)
        else:
            warnings.warn(
                f"comparison {i}: significant (p = {c.p_value:.3g}) but its median log-ratio {estimate:.3g} lies on the other side of 0 "
                "from its bootstrap replicates; reported as no significant difference",
                stacklevel=2,
            )
            out.append(NO_DIFFERENCE)
    return out


def verdict_flip(fgsm: Verdict, best: Verdict, *, reversal_only: bool = False) -> bool:
    """Whether the verdict on FGSM ε* and the verdict on best ε* (PROTOCOL §3) disagree.

    By default any change of conclusion is a flip: a significant FGSM verdict that the
    stronger attacks do not confirm (e.g. "more robust" under FGSM, "no significant
    difference" under best ε*: a sign of gradient masking), one they reveal, or a
    reversal. With ``reversal_only=True`` only "more robust" ↔ "less robust" counts.

    Raises:
        ValueError: a verdict that is not one of :data:`VERDICTS`.
    """
    for name, v in (("fgsm", fgsm), ("best", best)):
        if v not in VERDICTS:
            raise ValueError(f"{name} must be one of {list(VERDICTS)}, got {v!r}")
    if reversal_only:
        return {fgsm, best} == {MORE_ROBUST, LESS_ROBUST}
    return fgsm != best


# --------------------------------------------------------------------------- a whole store: every run against its counterpart (§6)

#: the families of PROTOCOL §5, by regulariser name (anything else: "other")
DENSE = "none"
CONTROL = "l2"


def method_family(name: str) -> str:
    """``"dense"`` (none), ``"baseline"`` (l2), ``"sparse"``, ``"low-rank"``, ``"reference"`` (adversarial) or ``"other"``."""
    from sparank.regularisers import adversarial, lowrank, sparse

    if name == DENSE:
        return "dense"
    if name == CONTROL:
        return "baseline"
    for family, module in (("sparse", sparse), ("low-rank", lowrank), ("reference", adversarial)):
        if name in {cls.name for cls in module.METHODS}:
            return family
    return "other"


#: keys of a stored regulariser config that are derived from the trained model, not chosen: left out of a method's identity
_DERIVED = ("name", "strength", "extra_epochs", "ranks", "units_removed")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def stored_number(value: Any) -> float | None:
    """A stored number (``"inf"``/``"nan"`` strings as floats), or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class StudyRun:
    """One trained run of a store, as the study comparison reads it (``config``, ``metrics``, ``structure``)."""

    id: str
    dataset: str
    arch: str
    train: dict[str, Any]  # training settings without the seed
    seed: int
    method: str  # the regulariser's name
    strength: float | None
    options: dict[str, Any]  # the regulariser's options (what it was asked, not what it derived)
    budget: dict[str, Any] | None  # metrics["budget"]: epochs, steps, train_epochs, fine_tune_epochs
    test_accuracy: float | None  # on the whole test split
    sparsity: float | None  # fraction of weights exactly 0
    effective_sparsity: float | None  # fraction with |w| <= 1e-3·max|w| (PROTOCOL §4)
    effective_rank_ratio: float | None  # mean over layers of effective rank / full rank

    @property
    def family(self) -> str:
        return method_family(self.method)

    @property
    def group(self) -> tuple[str, str, str]:
        """(dataset, arch, training settings): runs of one grid, whose seeds pair up."""
        return (self.dataset, self.arch, _canonical(self.train))

    @property
    def identity(self) -> tuple[str, str, str, str, str]:
        """(dataset, arch, train, method, strength and options): the seeds of one comparison share it."""
        return (*self.group, self.method, _canonical({"strength": self.strength, **self.options}))


@dataclass(frozen=True)
class StudyMeasurement:
    """The FGSM or best-ε* measurement of one run on one set of inputs: ε* per input as numpy arrays ``(N,)``."""

    id: int
    run_id: str
    kind: Literal["fgsm", "best"]
    norm: str
    eps_max: float
    settings: str  # canonical JSON of the attack settings and data source: equal settings measure alike
    attacks: tuple[str, ...]  # the attacks measured ("fgsm"; for best, those it is the best of)
    indices: np.ndarray  # (N,) int64, test-split indices
    eps: np.ndarray  # (N,) float64, ε* (0 clean-wrong, inf censored or no direction)
    correct: np.ndarray  # (N,) bool, classified correctly at ε = 0
    summary: dict[str, Any]  # the stored Summary.to_dict() (with "masking" for best)
    certified: np.ndarray | None = None  # (N,) bool: ε* proved (FGSM with certify), not scanned; None where not asked

    @property
    def masking(self) -> dict[str, Any] | None:
        return self.summary.get("masking")


@dataclass(frozen=True)
class StudyRecords:
    """What :func:`study_comparisons` needs from a store, read once: its trained runs and their FGSM / best measurements."""

    runs: tuple[StudyRun, ...]
    measurements: tuple[StudyMeasurement, ...]  # oldest first
    skipped: tuple[tuple[str, str], ...] = ()  # (run id, why it is not part of any comparison)

    @classmethod
    def from_store(cls, store: Store) -> StudyRecords:
        """Read every run of a store and, per run, each FGSM and best-ε* measurement with its brackets.

        A run is part of the study when its config names a dataset, an architecture, a
        regulariser and a seed (``config["spec"]`` of :mod:`sparank.run` or the CLI's
        ``config["train"]["seed"]``); linear-path and imported runs are listed in ``skipped``.
        """
        from sparank.robustness import CLEAN_WRONG

        runs: list[StudyRun] = []
        skipped: list[tuple[str, str]] = []
        for record in store.runs():
            run, why = _study_run(record)
            if run is None:
                skipped.append((record.id, why))
            else:
                runs.append(run)
        kept = {r.id for r in runs}
        measurements: list[StudyMeasurement] = []
        for m in store.measurements():
            if m.run_id not in kept:
                continue
            c = m.config
            attack = c.get("attack", "fgsm")
            if attack not in ("fgsm", "best") or c.get("method") == "closed_form":
                continue
            table = store.brackets(m.id)
            settings = {"attack_settings": c.get("attack_settings") or {"attack": attack}, "data_source": c.get("data_source")}
            settings.update({k: c[k] for k in ("bounds", "split") if k in c})
            if attack == "best":
                attacks = tuple(str(s.get("attack", "?")) for s in (c.get("attack_settings") or {}).get("of", []))
            else:
                attacks = ("fgsm",)
            measurements.append(
                StudyMeasurement(
                    id=m.id,
                    run_id=m.run_id,
                    kind=attack,
                    norm=str(c["norm"]),
                    eps_max=float(c["eps_max"]),
                    settings=_canonical(settings),
                    attacks=attacks,
                    indices=table.input_index.numpy().astype(np.int64),
                    eps=table.eps_hi.numpy().astype(np.float64),
                    correct=(table.status != int(CLEAN_WRONG)).numpy(),
                    summary=m.summary,
                    certified=None if table.certified is None else table.certified.numpy().astype(bool),
                )
            )
        return cls(runs=tuple(runs), measurements=tuple(measurements), skipped=tuple(skipped))

    def run(self, run_id: str) -> StudyRun:
        for r in self.runs:
            if r.id == run_id:
                return r
        raise KeyError(run_id)

    def of(self, run_id: str, kind: str) -> list[StudyMeasurement]:
        """The run's measurements of this kind, newest first."""
        return [m for m in reversed(self.measurements) if m.run_id == run_id and m.kind == kind]


def _study_run(record: Any) -> tuple[StudyRun | None, str]:
    """A stored run as a :class:`StudyRun`, or None and the reason it is not one."""
    if record.kind in ("linear", "import", "audit"):  # an audit's runs: a user's model and its compressed copies
        return None, f"kind {record.kind!r}: not a trained run of a study grid"
    config = record.config or {}
    spec = config.get("spec") or {}
    if spec.get("sklearn"):
        return None, "fitted by scikit-learn's SAGA (a point of the L1 path), not a trained run of a study grid"
    reg = config.get("regulariser") or {}
    train = dict(config.get("train") or spec.get("train") or {})  # TrainConfig.to_dict(): the seed is taken out below
    seed = spec.get("seed", config.get("seed", train.get("seed")))
    train.pop("seed", None)
    method = reg.get("name", spec.get("regulariser"))
    if not config.get("dataset") or not config.get("arch") or method is None or seed is None:
        return None, "its config names no dataset, arch, regulariser or seed"
    # the stored regulariser config holds every option resolved (defaults included), from the CLI and from run.py alike
    options = {k: v for k, v in reg.items() if k not in _DERIVED}
    strength = reg.get("strength", spec.get("strength"))
    metrics = record.metrics or {}
    structure = record.structure or {}
    return (
        StudyRun(
            id=record.id,
            dataset=str(config["dataset"]),
            arch=str(config["arch"]),
            train=train,
            seed=int(seed),
            method=str(method),
            strength=stored_number(strength),
            options=options,
            budget=metrics.get("budget"),
            test_accuracy=stored_number(metrics.get("test_accuracy")),
            sparsity=stored_number(structure.get("sparsity")),
            effective_sparsity=stored_number(structure.get("effective_sparsity")),
            effective_rank_ratio=stored_number(structure.get("mean_effective_rank_ratio")),
        ),
        "",
    )


@dataclass(frozen=True)
class ControlComparison:
    """A sparse or low-rank method against the ``l2`` run of the same grid and seed closest in clean accuracy (PROTOCOL §6)."""

    l2_run_ids: tuple[str, ...]  # per seed compared (FGSM), in seed order
    l2_strengths: tuple[float | None, ...]
    l2_test_accuracy: float | None  # mean over those runs
    fgsm: PairedComparison | None
    fgsm_verdict: Verdict | None
    best: PairedComparison | None
    best_verdict: Verdict | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ComparisonRow:
    """One regularised method at one strength against its dense counterpart, over seeds: a row of the verdict table.

    ``fgsm`` and ``best`` are :func:`paired_comparison` of FGSM ε* and of best ε* (where cross-check
    attacks ran), regularised run against its counterpart of the same seed; their verdicts are
    Holm-corrected across the store's comparisons of the same ε* kind. A comparison that could not
    be made is None, and ``notes`` say why.
    """

    index: int  # 1-based position in the table
    dataset: str
    arch: str
    train: dict[str, Any]
    method: str
    family: str  # method_family(method)
    strength: float | None
    options: dict[str, Any]
    norm: str | None
    eps_max: float | None
    seeds: tuple[int, ...]  # seeds in the FGSM comparison
    run_ids: tuple[str, ...]  # the regularised runs, in seed order
    dense_run_ids: tuple[str, ...]  # their counterparts, in the same order
    fgsm: PairedComparison | None
    fgsm_verdict: Verdict | None
    best: PairedComparison | None
    best_verdict: Verdict | None
    best_attacks: tuple[str, ...]  # the attacks best ε* is the best of
    flip: bool | None  # verdict_flip(fgsm_verdict, best_verdict), None without both
    test_accuracy: float | None  # mean over run_ids, whole test split
    test_accuracy_dense: float | None
    sparsity: float | None  # means over run_ids / dense_run_ids
    sparsity_dense: float | None
    effective_sparsity: float | None
    effective_sparsity_dense: float | None
    effective_rank_ratio: float | None
    effective_rank_ratio_dense: float | None
    masking_checked: bool  # masking flags were stored (with best ε*) for every regularised run
    masked_runs: tuple[str, ...]  # regularised runs with a masking flag raised
    masking_flags: tuple[str, ...]  # the flags raised, over those runs
    control: ControlComparison | None  # sparse and low-rank methods only
    notes: tuple[str, ...] = ()
    variant: str = ""  # the options that set this row apart from rows of the same method and strength ("attack=pgd"), else ""

    @property
    def label(self) -> str:
        """``l1 λ=0.001`` etc.: the method, its strength and, where needed to tell rows apart, its distinguishing options."""
        strength = "" if self.strength is None else f" {_strength_symbol(self.method)}={self.strength:g}"
        return f"{self.method}{strength}" + (f" ({self.variant})" if self.variant else "")


def _strength_symbol(method: str) -> str:
    return {"magnitude": "s", "magnitude_gradual": "s", "factorised": "r", "svd_truncate": "r", "adversarial": "ε"}.get(method, "λ")


def _mean_of(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept and len(kept) == len(values) else None


def _match(reg: StudyMeasurement, candidates: Sequence[StudyMeasurement]) -> StudyMeasurement | None:
    """The newest of ``candidates`` measured like ``reg`` (norm, ε_max, settings) on the same inputs in the same order."""
    for m in candidates:
        if (m.norm, m.eps_max, m.settings, m.attacks) == (reg.norm, reg.eps_max, reg.settings, reg.attacks) and np.array_equal(
            m.indices, reg.indices
        ):
            return m
    return None


def _why_unmatched(kind: str, reg: StudyMeasurement, other_id: str, candidates: Sequence[StudyMeasurement]) -> str:
    name = "FGSM" if kind == "fgsm" else "best-ε*"
    if not candidates:
        return f"{other_id} has no {name} measurement"
    same = [m for m in candidates if (m.norm, m.eps_max) == (reg.norm, reg.eps_max)]
    if not same:
        return f"{other_id} was measured with other norm / ε_max than {reg.run_id} ({reg.norm}, {reg.eps_max:g})"
    if not any(np.array_equal(m.indices, reg.indices) for m in same):
        return (
            f"the {name} evaluation inputs differ ({reg.run_id}: {len(reg.indices)} inputs, "
            f"{other_id}: {', '.join(str(len(m.indices)) for m in same)}); measure both on the same inputs"
        )
    return f"{reg.run_id} and {other_id} were measured with different {name} settings or attacks"


@dataclass
class _Pending:
    """One comparison's paired data, before the bootstrap: per seed (seed, regularised ε* measurement, other's, other run)."""

    pairs: list[tuple[int, StudyMeasurement, StudyMeasurement, StudyRun]]
    notes: list[str]
    comparison: PairedComparison | None = None
    verdict: Verdict | None = None


def study_comparisons(
    store_or_records: Store | StudyRecords,
    *,
    reference_eps: Sequence[float],
    alpha: float = 0.05,
    n_boot: int | None = None,
    seed: int = 0,
) -> list[ComparisonRow]:
    """Every regularised method and strength of a store against its dense counterpart, over seeds (PROTOCOL §6).

    Runs are grouped by (dataset, arch, training settings). In a group, each run of a
    regulariser other than ``none`` is paired with its **counterpart**: the ``none`` run of
    the same seed and the same training budget (``metrics["budget"]``: a method that
    fine-tunes is paired with ``none`` fine-tuned as long), measured with the same settings
    on the same inputs in the same order (else that seed is left out, and a note says why).
    The seeds of one (method, strength, options) form one :func:`paired_comparison`, on FGSM ε*
    and, where cross-check attacks ran (a best-ε* record of more than FGSM), on best ε*.

    Verdicts (:func:`verdicts`) are Holm-corrected within four families: FGSM ε* against the
    dense counterpart, best ε* against it, and the same two for the controls. The **control**
    of a sparse or low-rank method: per seed, the ``l2`` run of the same group and seed, measured
    on the same inputs, closest in clean (test) accuracy (ties: the smaller strength).

    Args:
        store_or_records: a :class:`~sparank.store.Store` or :meth:`StudyRecords.from_store` of it.
        reference_eps: ε values for the robust-accuracy differences; those above a comparison's
            ``eps_max`` are left out of it (with a note).
        alpha: the family-wise error rate of Holm's correction; the intervals' coverage is ``1 − alpha``.
        n_boot: bootstrap replicates per comparison; None: the larger of :data:`DEFAULT_N_BOOT`
            and the smallest that Holm needs for the largest family (``2m/alpha − 1``).
        seed: the bootstrap's base seed; each comparison draws from its own generator, seeded by
            this and its identity, so a row's interval does not depend on the other rows.

    Returns:
        One :class:`ComparisonRow` per (group, method, strength, options, norm, ε_max), ordered by
        group, family, method and strength; rows that could not be compared carry notes.

    Raises:
        ValueError: ``alpha`` outside (0, 1), a negative reference ε, or an ``n_boot`` too small for Holm.
    """
    from sparank.store import Store

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}; e.g. 0.05")
    refs = tuple(float(e) for e in reference_eps)
    if any(not (math.isfinite(e) and e >= 0) for e in refs):
        raise ValueError(f"reference_eps must be finite and >= 0, got {list(refs)}; e.g. [0.02, 0.05, 0.1]")
    records = StudyRecords.from_store(store_or_records) if isinstance(store_or_records, Store) else store_or_records
    family_order = {"sparse": 0, "low-rank": 1, "baseline": 2, "reference": 3, "other": 4}

    by_identity: dict[tuple[str, ...], list[StudyRun]] = {}
    for run in records.runs:
        if run.method != DENSE:
            by_identity.setdefault(run.identity, []).append(run)
    dense_runs = [r for r in records.runs if r.method == DENSE]
    l2_runs = [r for r in records.runs if r.method == CONTROL]

    plans = []  # (identity, norm, eps_max, runs, {kind: (dense _Pending, control _Pending | None)})
    for identity, runs in sorted(
        by_identity.items(),
        key=lambda item: (item[0][:3], family_order.get(method_family(item[0][3]), 9), item[0][3], item[1][0].strength or 0.0, item[0][4]),
    ):
        runs = sorted(runs, key=lambda r: (r.seed, r.id))
        keys = list(dict.fromkeys((m.norm, m.eps_max) for r in runs for m in records.of(r.id, "fgsm")))
        for norm, eps_max in keys or [(None, None)]:
            per_kind = {}
            for kind in ("fgsm", "best"):
                dense = _collect(records, runs, kind, norm, eps_max, lambda r: _counterparts(r, dense_runs), "dense counterpart")
                control = None
                if method_family(runs[0].method) in ("sparse", "low-rank"):
                    control = _collect(records, runs, kind, norm, eps_max, lambda r: _l2_candidates(r, l2_runs, records), "l2 control")
                per_kind[kind] = (dense, control)
            plans.append((identity, norm, eps_max, runs, per_kind))

    sizes = [sum(bool(plan[4][kind][i] and plan[4][kind][i].pairs) for plan in plans) for kind in ("fgsm", "best") for i in (0, 1)]
    needed = math.ceil(2 * max(sizes + [1]) / alpha - 1 - 1e-9)
    boot = max(DEFAULT_N_BOOT, needed) if n_boot is None else n_boot
    for plan_index, (identity, _norm, eps_max, _runs, per_kind) in enumerate(plans):
        for kind in ("fgsm", "best"):
            for which, pending in zip(("dense", "control"), per_kind[kind]):
                if pending is None or not pending.pairs:
                    continue
                used = tuple(e for e in refs if e <= (eps_max or 0.0))
                if len(used) < len(refs):
                    note = f"reference ε above ε_max = {eps_max:g} left out: {[e for e in refs if e not in used]}"
                    if note not in pending.notes:
                        pending.notes.append(note)
                digest = hashlib.sha256(_canonical([list(identity), kind, which, _norm, eps_max]).encode()).digest()
                rng = np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])
                try:
                    pending.comparison = paired_comparison(
                        [p[1].eps for p in pending.pairs],
                        [p[2].eps for p in pending.pairs],
                        eps_max=float(eps_max),  # type: ignore[arg-type]
                        rng=rng,
                        reg_correct=[p[1].correct for p in pending.pairs],
                        dense_correct=[p[2].correct for p in pending.pairs],
                        reference_eps=used,
                        n_boot=boot,
                        confidence=1 - alpha,
                    )
                except ValueError as e:
                    pending.notes.append(f"{kind} comparison not made: {e}")
    for kind in ("fgsm", "best"):
        for i in (0, 1):
            family = [plan[4][kind][i] for plan in plans if plan[4][kind][i] is not None and plan[4][kind][i].comparison is not None]
            for pending, verdict in zip(family, verdicts([p.comparison for p in family], alpha=alpha)):  # type: ignore[misc]
                pending.verdict = verdict

    rows: list[ComparisonRow] = []
    for identity, norm, eps_max, runs, per_kind in plans:
        (fgsm, fgsm_control), (best, best_control) = per_kind["fgsm"], per_kind["best"]
        used_runs = [p[3] for p in fgsm.pairs]
        reg_runs = [records.run(p[1].run_id) for p in fgsm.pairs] or list(runs)
        notes = list(dict.fromkeys(fgsm.notes + best.notes))
        best_measurements = [m for r in reg_runs for m in records.of(r.id, "best")[:1]]
        masking = [m.masking for m in best_measurements if m.masking is not None]
        masked = tuple(m.run_id for m in best_measurements if m.masking is not None and m.masking.get("masked"))
        raised = tuple(sorted({flag for m in best_measurements if m.masking for flag, up in (m.masking.get("flags") or {}).items() if up}))
        best_attacks = best.pairs[0][1].attacks if best.pairs else ()
        control = None
        if fgsm_control is not None:
            assert best_control is not None
            l2_used = [p[3] for p in fgsm_control.pairs]
            control = ControlComparison(
                l2_run_ids=tuple(r.id for r in l2_used),
                l2_strengths=tuple(r.strength for r in l2_used),
                l2_test_accuracy=_mean_of([r.test_accuracy for r in l2_used]) if l2_used else None,
                fgsm=fgsm_control.comparison,
                fgsm_verdict=fgsm_control.verdict,
                best=best_control.comparison,
                best_verdict=best_control.verdict,
                notes=tuple(dict.fromkeys(fgsm_control.notes + best_control.notes)),
            )
        first = runs[0]
        rows.append(
            ComparisonRow(
                index=len(rows) + 1,
                dataset=first.dataset,
                arch=first.arch,
                train=first.train,
                method=first.method,
                family=first.family,
                strength=first.strength,
                options=first.options,
                norm=norm,
                eps_max=eps_max,
                seeds=tuple(p[0] for p in fgsm.pairs),
                run_ids=tuple(r.id for r in reg_runs),
                dense_run_ids=tuple(r.id for r in used_runs),
                fgsm=fgsm.comparison,
                fgsm_verdict=fgsm.verdict,
                best=best.comparison,
                best_verdict=best.verdict,
                best_attacks=best_attacks,
                flip=None if fgsm.verdict is None or best.verdict is None else verdict_flip(fgsm.verdict, best.verdict),
                test_accuracy=_mean_of([r.test_accuracy for r in reg_runs]),
                test_accuracy_dense=_mean_of([r.test_accuracy for r in used_runs]) if used_runs else None,
                sparsity=_mean_of([r.sparsity for r in reg_runs]),
                sparsity_dense=_mean_of([r.sparsity for r in used_runs]) if used_runs else None,
                effective_sparsity=_mean_of([r.effective_sparsity for r in reg_runs]),
                effective_sparsity_dense=_mean_of([r.effective_sparsity for r in used_runs]) if used_runs else None,
                effective_rank_ratio=_mean_of([r.effective_rank_ratio for r in reg_runs]),
                effective_rank_ratio_dense=_mean_of([r.effective_rank_ratio for r in used_runs]) if used_runs else None,
                masking_checked=bool(reg_runs) and len(masking) == len(reg_runs),
                masked_runs=masked,
                masking_flags=raised,
                control=control,
                notes=tuple(notes),
            )
        )
    return _with_variants(rows)


def _with_variants(rows: list[ComparisonRow]) -> list[ComparisonRow]:
    """Rows of the same group, method and strength that differ in options get those options in their label."""
    from dataclasses import replace

    out = []
    for row in rows:
        twins = [
            r
            for r in rows
            if (r.dataset, r.arch, r.train, r.method, r.strength) == (row.dataset, row.arch, row.train, row.method, row.strength)
        ]
        keys = sorted(
            {k for r in twins for k in r.options if any(_canonical(r.options.get(k)) != _canonical(t.options.get(k)) for t in twins)}
        )
        variant = ", ".join(f"{k}={row.options.get(k)}" for k in keys)
        out.append(replace(row, variant=variant) if variant else row)
    return out


def _counterparts(run: StudyRun, dense_runs: Sequence[StudyRun]) -> list[StudyRun]:
    """The ``none`` runs of ``run``'s group and seed with its training budget, oldest first."""
    return [d for d in dense_runs if d.group == run.group and d.seed == run.seed and (run.budget is None or d.budget == run.budget)]


def _l2_candidates(run: StudyRun, l2_runs: Sequence[StudyRun], records: StudyRecords) -> list[StudyRun]:
    """The ``l2`` runs of ``run``'s group and seed, closest in test accuracy first (ties: smaller strength)."""
    same = [r for r in l2_runs if r.group == run.group and r.seed == run.seed]
    target = run.test_accuracy
    if target is None:
        return sorted(same, key=lambda r: (r.strength or 0.0, r.id))
    return sorted(same, key=lambda r: (math.inf if r.test_accuracy is None else abs(r.test_accuracy - target), r.strength or 0.0, r.id))


def _collect(
    records: StudyRecords,
    runs: Sequence[StudyRun],
    kind: str,
    norm: str | None,
    eps_max: float | None,
    others: Callable[[StudyRun], list[StudyRun]],
    what: str,
) -> _Pending:
    """Per seed, the regularised run's ``kind`` measurement (newest at this norm and ε_max) and its partner's on the same inputs."""
    pending = _Pending(pairs=[], notes=[])
    name = "FGSM" if kind == "fgsm" else "best ε*"
    seen: set[int] = set()
    missing: list[StudyRun] = []
    for run in runs:
        if run.seed in seen:
            pending.notes.append(f"seed {run.seed}: {run.id} repeats a seed already compared; left out")
            continue
        mine = [m for m in records.of(run.id, kind) if (m.norm, m.eps_max) == (norm, eps_max)]
        if kind == "best":
            mine = [m for m in mine if set(m.attacks) - {"fgsm"}]
        if not mine:
            missing.append(run)
            continue
        candidates = others(run)
        if not candidates:
            budget = "" if run.budget is None else f", budget {run.budget}"
            pending.notes.append(
                f"seed {run.seed}: no {what} for {run.id} (same dataset, arch, training, seed{budget if what.startswith('dense') else ''})"
            )
            continue
        found = None
        for other in candidates:
            theirs = records.of(other.id, kind)
            for m in mine:
                match = _match(m, theirs)
                if match is not None:
                    found = (m, match, other)
                    break
            if found:
                break
        if found is None:
            other = candidates[0]
            pending.notes.append(
                f"seed {run.seed}: {name} of {run.id} not paired with {what} {other.id}: "
                + _why_unmatched(kind, mine[0], other.id, records.of(other.id, kind))
            )
            continue
        seen.add(run.seed)
        pending.pairs.append((run.seed, found[0], found[1], found[2]))
    if missing and kind == "best" and len(missing) == len(runs):
        pending.notes.append("no cross-check attack ran: no best-ε* comparison")
    elif missing:
        pending.notes += [
            f"seed {r.seed}: {r.id} has no {name} measurement" + (" of a cross-check attack" if kind == "best" else "") for r in missing
        ]
    return pending


# --------------------------------------------------------------------------- the L1 path's controls (sparank.linear_path)

#: the controls every L1 model is compared with, in table order
CONTROLS = ("reference", "rescaled", "l2_accuracy", "l2_norm")
CONTROL_TITLES = {
    "reference": "same method, smallest λ",
    "rescaled": "reference × ‖W‖₁ ratio",
    "l2_accuracy": "L2 path, matched accuracy",
    "l2_norm": "L2 path, matched ‖W‖₁",
}


@dataclass(frozen=True)
class PathComparison:
    """ε* of one L1 model (method, λ) against one control, paired over inputs and pooled over seeds."""

    method: str
    lam: float
    control: str  # one of CONTROLS
    ratio: float | None  # exp(median log(ε*/ε*_control)); None if refused (unconverged reference) or no common correct input
    low: float | None  # 95 % hierarchical bootstrap interval of the ratio
    high: float | None
    fraction_lower: float | None  # pooled fraction of inputs whose ε* is strictly below the control's
    n_seeds: int
    n_inputs: int  # paired inputs pooled over seeds
    control_accuracy: float | None  # the control's clean accuracy, mean over seeds
    control_l1_norm: float | None  # the control's ||W||_1, mean over seeds
    note: str = ""  # why the ratio is missing, if it is


def _closest(candidates: Sequence[Any], value: float, key: Callable[[Any], float]) -> Any:
    return min(candidates, key=lambda p: (abs(key(p) - value), p.lam))


def path_comparisons(
    methods: Sequence[str],
    grid: Sequence[float],
    l2_grid: Sequence[float],
    seeds: Sequence[int],
    points: Mapping[tuple[str, float, int], Any],
    eps_star: Mapping[tuple[str, float, int], np.ndarray],
    correct: Mapping[tuple[str, float, int], np.ndarray],
    *,
    eps_max: float,
    n_boot: int = DEFAULT_N_BOOT,
) -> list[PathComparison]:
    """Every L1 model of the path against each control of :data:`CONTROLS`, paired per seed, pooled over seeds.

    Args:
        methods, grid, l2_grid, seeds: the path's fitting methods, λ grid, L2 control grid and seeds.
        points: ``(method, λ, seed)`` -> its :class:`~sparank.linear_path.PathPoint` (``converged``,
            ``clean_accuracy``, ``l1_norm``, ``lam``); ``"l2"`` for the L2 path.
        eps_star: ε* per evaluation input of every point, and of ``("rescaled:<method>", λ, seed)``,
            the method's reference scaled to the point's ``||W||_1``.
        correct: which evaluation inputs each of them classifies correctly.

    Returns:
        One :class:`PathComparison` per (method, λ, control): the median paired ratio of ε* with its
        95 % hierarchical bootstrap interval (seeds, then inputs). A reference that did not converge
        is refused (ratio None, a note, and a warning).
    """
    comparisons: list[PathComparison] = []
    rng = np.random.default_rng(0)
    for method in methods:
        unconverged = [s for s in seeds if points[(method, grid[0], s)].converged is False]
        for lam in grid:
            for control in CONTROLS:
                if control.startswith("l2") and not l2_grid:
                    continue
                groups, lower, matched = [], [], []
                for seed in seeds:
                    point = points[(method, lam, seed)]
                    if control == "reference":
                        key = (method, grid[0], seed)
                    elif control == "rescaled":
                        key = (f"rescaled:{method}", lam, seed)
                    else:
                        l2_points = [points[("l2", v, seed)] for v in l2_grid]
                        if control == "l2_accuracy":
                            best = _closest(l2_points, point.clean_accuracy, lambda p: p.clean_accuracy)
                        else:
                            best = _closest(l2_points, math.log(point.l1_norm), lambda p: math.log(max(p.l1_norm, 1e-300)))
                        key = ("l2", best.lam, seed)
                    ours, theirs = eps_star[(method, lam, seed)], eps_star[key]
                    both = correct[(method, lam, seed)] & correct[key]
                    groups.append(paired_log_ratios(ours, theirs, cap=eps_max))
                    lower.append(np.minimum(ours[both], eps_max) < np.minimum(theirs[both], eps_max))
                    if control == "rescaled":  # same predictions as the reference, the L1 model's norm
                        ref = points[(method, grid[0], seed)]
                        matched.append((ref.clean_accuracy, point.l1_norm))
                    else:
                        matched.append((points[key].clean_accuracy, points[key].l1_norm))
                n_inputs = int(sum(len(g) for g in groups))
                acc = float(np.mean([m[0] for m in matched]))
                norm_ = float(np.mean([m[1] for m in matched]))
                base = {"method": method, "lam": lam, "control": control, "n_seeds": len(seeds), "n_inputs": n_inputs,
                        "control_accuracy": acc, "control_l1_norm": norm_}  # fmt: skip
                missing = None
                if unconverged and control in ("reference", "rescaled"):
                    missing = f"refused: the reference (λ = {grid[0]:.3g}) did not converge for seed(s) {unconverged}"
                elif n_inputs == 0:
                    missing = "no input correct under both"
                if missing is not None:
                    comparisons.append(PathComparison(**base, ratio=None, low=None, high=None, fraction_lower=None, note=missing))
                    continue
                interval = hierarchical_bootstrap(groups, rng=rng, n_boot=n_boot).exp()
                comparisons.append(
                    PathComparison(
                        **base,
                        ratio=interval.estimate,
                        low=interval.low,
                        high=interval.high,
                        fraction_lower=float(np.concatenate(lower).mean()),
                    )
                )
    if any(c.note.startswith("refused") for c in comparisons):
        warnings.warn(
            "an L1 path's reference fit did not converge: its reference comparisons are not reported; raise max_iter", stacklevel=3
        )
    return comparisons
