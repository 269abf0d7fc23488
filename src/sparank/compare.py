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

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

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
