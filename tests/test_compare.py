"""Tests of the hierarchical bootstrap (sparank.compare) on synthetic data whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparank.compare import hierarchical_bootstrap, paired_log_ratios


def test_planted_ratio_is_inside_the_interval_and_the_estimate_is_the_pooled_median():
    """A planted log-ratio of log 1.3 plus noise: the interval must contain it (catches a wrong centre or scale)."""
    rng = np.random.default_rng(0)
    truth = math.log(1.3)
    groups = [truth + 0.2 * rng.standard_normal(300) for _ in range(3)]
    interval = hierarchical_bootstrap(groups, rng=np.random.default_rng(1), n_boot=500)
    assert interval.contains(truth)
    assert interval.estimate == pytest.approx(float(np.median(np.concatenate(groups))))
    assert interval.low < interval.estimate < interval.high
    assert interval.high - interval.low < 0.1  # 900 values with sd 0.2: the median's interval is narrow
    ratio = interval.exp()
    assert ratio.contains(1.3) and ratio.estimate == pytest.approx(math.exp(interval.estimate))
    assert (interval.n_groups, interval.n_values) == (3, 900)


def test_constant_ratio_gives_a_point_interval():
    interval = hierarchical_bootstrap([np.full(50, 0.25), np.full(20, 0.25)], rng=np.random.default_rng(0), n_boot=50)
    assert (interval.estimate, interval.low, interval.high) == (0.25, 0.25, 0.25)


def test_null_coverage_is_about_nominal():
    """No effect: the 95 % interval contains 0 in at least ~95 % of repeats (catches intervals that are too narrow)."""
    hits = 0
    repeats = 200
    data_rng = np.random.default_rng(42)
    for r in range(repeats):
        groups = [data_rng.standard_normal(60) for _ in range(3)]
        hits += hierarchical_bootstrap(groups, rng=np.random.default_rng(r), n_boot=200).contains(0.0)
    assert hits / repeats >= 0.9


def test_seed_level_spread_widens_the_interval():
    """Seeds that disagree must widen the interval against resampling inputs alone (catches a bootstrap that ignores seeds)."""
    rng = np.random.default_rng(3)
    offsets = [-0.3, 0.0, 0.3]
    groups = [o + 0.05 * rng.standard_normal(200) for o in offsets]
    hierarchical = hierarchical_bootstrap(groups, rng=np.random.default_rng(0), n_boot=500)
    pooled_only = hierarchical_bootstrap([np.concatenate(groups)], rng=np.random.default_rng(0), n_boot=500)
    assert hierarchical.high - hierarchical.low > 3 * (pooled_only.high - pooled_only.low)


def test_is_reproducible_with_the_same_generator():
    groups = [np.arange(10.0), np.arange(5.0)]
    a = hierarchical_bootstrap(groups, rng=np.random.default_rng(7), n_boot=100)
    b = hierarchical_bootstrap(groups, rng=np.random.default_rng(7), n_boot=100)
    assert a == b


def test_paired_log_ratios_caps_and_drops_clean_wrong():
    ours = np.array([0.1, np.inf, 0.0, 0.2])
    theirs = np.array([0.2, np.inf, 0.3, np.inf])
    out = paired_log_ratios(ours, theirs, cap=0.5)
    assert np.allclose(out, [math.log(0.5), 0.0, math.log(0.2 / 0.5)])


def test_validation_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no values"):
        hierarchical_bootstrap([np.array([])], rng=rng)
    with pytest.raises(ValueError, match="NaN or inf"):
        hierarchical_bootstrap([np.array([1.0, np.inf])], rng=rng)
    with pytest.raises(ValueError, match="n_boot"):
        hierarchical_bootstrap([np.ones(3)], rng=rng, n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        hierarchical_bootstrap([np.ones(3)], rng=rng, confidence=95)
    with pytest.raises(ValueError, match="same inputs"):
        paired_log_ratios(np.ones(3), np.ones(4), cap=0.5)
