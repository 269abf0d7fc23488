"""Paired comparisons of per-input robustness with bootstrap intervals (PROTOCOL §6).

Two models measured on the same inputs give, per input, a paired log-ratio
``log(ε*_A / ε*_B)``. When the models are trained with several seeds, each
seed gives one vector of log-ratios over the inputs (its own pair of models),
and the uncertainty has two sources: which seeds were drawn and which inputs.
:func:`hierarchical_bootstrap` resamples both, seeds first and then inputs
within each drawn seed (Davison & Hinkley 1997, "Bootstrap Methods and their
Application", §3.8, two-stage resampling), and returns a percentile interval
of the pooled statistic (by default the median log-ratio).

Pure numpy; every random draw comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    pooled = np.concatenate(arrays)
    estimate = statistic(pooled)
    n_groups = len(arrays)
    replicates = np.empty(n_boot)
    for r in range(n_boot):
        drawn = rng.integers(0, n_groups, size=n_groups)
        parts = [arrays[g][rng.integers(0, len(arrays[g]), size=len(arrays[g]))] for g in drawn]
        replicates[r] = statistic(np.concatenate(parts))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return Interval(float(estimate), float(low), float(high), confidence, n_groups, len(pooled))


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
