"""Tests of sparank.compare (bootstrap, paired comparison, Holm, verdicts) on synthetic data whose answer is known."""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import binom

from sparank.compare import (
    LESS_ROBUST,
    MORE_ROBUST,
    NO_DIFFERENCE,
    _bootstrap,
    _hierarchical_means,
    bootstrap_p_value,
    hierarchical_bootstrap,
    holm,
    paired_comparison,
    paired_log_ratios,
    verdict_flip,
    verdicts,
)


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


# --------------------------------------------------------------------------- paired comparison and verdicts

EPS_MAX = 0.5


def _arm(rng: np.random.Generator, mu: float, n: int, *, wrong: float = 0.1) -> np.ndarray:
    """Synthetic ε* of one model: log-normal around exp(mu), censored (inf) above EPS_MAX, a fraction clean-wrong (0)."""
    eps = np.exp(mu + 0.5 * rng.standard_normal(n))
    eps[eps > EPS_MAX] = np.inf
    eps[rng.random(n) < wrong] = 0.0
    return eps


def _dense_seeds(rng: np.random.Generator, n_seeds: int = 3, n: int = 200) -> tuple[np.ndarray, list[np.ndarray]]:
    """Seed-level random effects (the seed's location of log ε*) and the dense model's ε* per seed."""
    mus = math.log(0.08) + 0.3 * rng.standard_normal(n_seeds)
    return mus, [_arm(rng, mu, n) for mu in mus]


def _planted(rng: np.random.Generator, dense: list[np.ndarray], factor: float) -> list[np.ndarray]:
    """ε*_reg = ε*_dense × factor × log-normal noise (sd 0.1 in log): the median log-ratio is log(factor) (before capping)."""
    return [d * factor * np.exp(0.1 * rng.standard_normal(len(d))) for d in dense]


@pytest.mark.parametrize(("factor", "verdict"), [(0.8, LESS_ROBUST), (1.25, MORE_ROBUST)])
def test_planted_factor_gives_its_verdict_interval_and_differences(factor, verdict):
    """×0.8 (×1.25): less (more) robust, interval on that side and containing log(factor); AUC, A(ε), accuracy from a direct count."""
    rng = np.random.default_rng(11)
    _, dense = _dense_seeds(rng)
    reg = _planted(rng, dense, factor)
    n_boot = 300
    c = paired_comparison(reg, dense, eps_max=EPS_MAX, rng=np.random.default_rng(0), reference_eps=[0.05, 0.1, EPS_MAX], n_boot=n_boot)
    assert verdicts([c]) == [verdict]
    assert c.log_ratio.contains(math.log(factor))
    if factor < 1:
        assert c.log_ratio.high < 0 and c.auc_difference.high < 0 and c.robust_accuracy_at(0.05).high < 0
    else:
        assert c.log_ratio.low > 0 and c.auc_difference.low > 0 and c.robust_accuracy_at(0.05).low > 0
    # every replicate on one side of 0: the smallest p-value the definition allows
    assert c.p_value == pytest.approx(2 / (n_boot + 1))
    # the differences, counted directly over the pooled inputs
    r, d = np.concatenate(reg), np.concatenate(dense)
    assert c.auc_difference.estimate == pytest.approx(np.minimum(r, EPS_MAX).mean() - np.minimum(d, EPS_MAX).mean())
    assert (c.auc_reg, c.auc_dense) == pytest.approx((np.minimum(r, EPS_MAX).mean(), np.minimum(d, EPS_MAX).mean()))
    for eps in (0.05, 0.1, EPS_MAX):
        assert c.robust_accuracy_at(eps).estimate == pytest.approx(np.mean(r > eps) - np.mean(d > eps))
    assert c.clean_accuracy_change.estimate == pytest.approx(np.mean(r > 0) - np.mean(d > 0)) == 0  # the same clean-wrong inputs
    assert c.clean_accuracy_change.low == c.clean_accuracy_change.high == 0
    both = (r > 0) & (d > 0)
    assert c.log_ratio.estimate == pytest.approx(np.median(np.log(np.minimum(r[both], EPS_MAX) / np.minimum(d[both], EPS_MAX))))
    assert (c.n_seeds, c.n_inputs, c.n_paired) == (3, 600, int(both.sum()))
    assert c.ratio.estimate == pytest.approx(math.exp(c.log_ratio.estimate))


def test_a_model_against_itself_is_no_difference_with_p_one():
    rng = np.random.default_rng(2)
    _, dense = _dense_seeds(rng)
    c = paired_comparison(dense, dense, eps_max=EPS_MAX, rng=np.random.default_rng(0), reference_eps=[0.1], n_boot=200)
    assert c.p_value == 1.0
    assert (c.log_ratio.estimate, c.log_ratio.low, c.log_ratio.high) == (0.0, 0.0, 0.0)
    assert (c.auc_difference.estimate, c.auc_difference.low, c.auc_difference.high) == (0.0, 0.0, 0.0)
    assert c.robust_accuracy_at(0.1).estimate == 0.0
    assert verdicts([c]) == [NO_DIFFERENCE]


def test_two_draws_from_one_distribution_are_no_difference():
    rng = np.random.default_rng(3)
    mus, dense = _dense_seeds(rng)
    reg = [_arm(rng, mu, 200) for mu in mus]  # the same seed effects, fresh inputs-level draws
    c = paired_comparison(reg, dense, eps_max=EPS_MAX, rng=np.random.default_rng(0), n_boot=300)
    assert c.log_ratio.contains(0.0) and c.auc_difference.contains(0.0)
    assert c.p_value > 0.05
    assert verdicts([c]) == [NO_DIFFERENCE]


def test_log_ratio_interval_is_the_hierarchical_bootstrap_of_the_paired_log_ratios():
    """The same generator state gives exactly :func:`hierarchical_bootstrap`'s interval (it is used, not re-implemented)."""
    rng = np.random.default_rng(4)
    _, dense = _dense_seeds(rng, n=80)
    reg = _planted(rng, dense, 0.9)
    c = paired_comparison(reg, dense, eps_max=EPS_MAX, rng=np.random.default_rng(9), n_boot=150)
    groups = [paired_log_ratios(r, d, cap=EPS_MAX) for r, d in zip(reg, dense)]
    assert c.log_ratio == hierarchical_bootstrap(groups, rng=np.random.default_rng(9), n_boot=150)


def test_false_positive_rate_after_holm_is_at_most_alpha():
    """200 null studies (3 seeds × 100 inputs, 5 regularised arms against one dense arm per seed, seed effects shared).

    Each arm of a seed is drawn from the same distribution, so every null holds; Holm
    over the 5 comparisons must keep the family-wise error rate at alpha = 0.05. The
    count of studies with any significant verdict is Binomial(200, FWER): the test
    fails if it exceeds the 0.999 quantile of Binomial(200, 0.05) (21), so a correct
    procedure fails it with probability < 0.1 %. n_boot = 200 suffices here: the
    smallest p-value, 2/201 ≈ 0.00995, is below Holm's first threshold 0.05/5, and the
    +1 in the p-value keeps its Monte Carlo error conservative.
    """
    alpha, studies, m = 0.05, 200, 5
    limit = binom.ppf(0.999, studies, alpha)
    rng = np.random.default_rng(2024)
    false_positive = 0
    for _ in range(studies):
        mus = math.log(0.1) + 0.3 * rng.standard_normal(3)
        dense = [_arm(rng, mu, 100) for mu in mus]
        comparisons = [paired_comparison([_arm(rng, mu, 100) for mu in mus], dense, eps_max=EPS_MAX, rng=rng, n_boot=200) for _ in range(m)]
        false_positive += any(v != NO_DIFFERENCE for v in verdicts(comparisons, alpha=alpha))
    assert false_positive <= limit


def test_masks_define_correctness_and_are_checked():
    reg = [np.array([0.1, 0.0, 0.2, np.inf])]
    dense = [np.array([0.2, 0.1, 0.0, 0.3])]
    # input 1 of reg: correct but ε* = 0 (an infimum at a tie): clean accuracy counts it, the log-ratios cannot
    reg_ok = [np.array([True, True, True, True])]
    dense_ok = [np.array([True, True, False, True])]
    c = paired_comparison(reg, dense, eps_max=EPS_MAX, rng=np.random.default_rng(0), reg_correct=reg_ok, dense_correct=dense_ok, n_boot=50)
    assert (c.clean_accuracy_reg, c.clean_accuracy_dense) == (1.0, 0.75)
    assert c.n_paired == 2  # inputs 0 and 3
    assert c.log_ratio.estimate == pytest.approx(np.median([math.log(0.1 / 0.2), math.log(EPS_MAX / 0.3)]))
    assert c.auc_reg == pytest.approx((0.1 + 0.0 + 0.2 + EPS_MAX) / 4)
    without = paired_comparison(reg, dense, eps_max=EPS_MAX, rng=np.random.default_rng(0), n_boot=50)
    assert without.clean_accuracy_reg == 0.75  # ε* = 0 read as clean-wrong
    with pytest.raises(ValueError, match="dense_correct"):
        paired_comparison(reg, dense, eps_max=EPS_MAX, rng=np.random.default_rng(0), dense_correct=[np.array([True, False, False, True])])


def test_paired_comparison_validation_errors():
    rng = np.random.default_rng(0)
    one = [np.array([0.1, 0.2])]
    with pytest.raises(ValueError, match="eps_max"):
        paired_comparison(one, one, eps_max=0.0, rng=rng)
    with pytest.raises(ValueError, match="one ε\\* array per seed"):
        paired_comparison(one, one + one, eps_max=EPS_MAX, rng=rng)
    with pytest.raises(ValueError, match="same"):
        paired_comparison(one, [np.array([0.1, 0.2, 0.3])], eps_max=EPS_MAX, rng=rng)
    with pytest.raises(ValueError, match="NaN or negative"):
        paired_comparison([np.array([0.1, np.nan])], one, eps_max=EPS_MAX, rng=rng)
    with pytest.raises(ValueError, match="reference_eps"):
        paired_comparison(one, one, eps_max=EPS_MAX, rng=rng, reference_eps=[0.6])
    with pytest.raises(ValueError, match="no input is correct"):
        paired_comparison([np.array([0.0, 0.1])], [np.array([0.1, 0.0])], eps_max=EPS_MAX, rng=rng)
    with pytest.raises(ValueError, match="n_boot"):
        paired_comparison(one, one, eps_max=EPS_MAX, rng=rng, n_boot=0)
    with pytest.raises(ValueError, match="not a reference"):
        paired_comparison(one, one, eps_max=EPS_MAX, rng=rng, n_boot=10).robust_accuracy_at(0.1)


def test_mean_bootstrap_matches_the_two_stage_variance_and_the_loop():
    """The count-based two-stage bootstrap of means: its variance is the closed form, and it agrees with the loop on unequal groups."""
    rng = np.random.default_rng(5)
    g, n, n_boot = 10, 50, 4000
    groups = [rng.normal(rng.normal(0, 1), 2, size=(n, 1)) for _ in range(g)]
    reps = _hierarchical_means(groups, rng=np.random.default_rng(0), n_boot=n_boot)[:, 0]
    means = np.array([x.mean() for x in groups])
    within = np.array([x.var() for x in groups])  # population variances: resampling draws from the empirical law
    var_theory = (means.var() + within.mean() / n) / g  # G independent draws of (group, then mean of n values)
    assert reps.var() == pytest.approx(var_theory, rel=0.1)  # relative MC sd of a variance at B = 4000: ~2 %
    assert abs(reps.mean() - means.mean()) < 4 * math.sqrt(var_theory / n_boot)
    unequal = [rng.normal(o, 1, size=k) for o, k in ((0.0, 10), (1.0, 40), (3.0, 25))]
    counts = _hierarchical_means([u[:, None] for u in unequal], rng=np.random.default_rng(1), n_boot=n_boot)[:, 0]
    _, loop = _bootstrap(unequal, rng=np.random.default_rng(2), statistic=lambda v: float(np.mean(v)), n_boot=n_boot, confidence=0.95)
    assert counts.std() == pytest.approx(loop.std(), rel=0.08)  # two MC sds of ~1.1 % each: 8 % is > 5 sigma
    assert abs(counts.mean() - loop.mean()) < 5 * loop.std() * math.sqrt(2 / n_boot)


def test_bootstrap_p_value_by_hand():
    assert bootstrap_p_value(np.array([1.0, 2.0, 3.0])) == pytest.approx(2 * 1 / 4)
    assert bootstrap_p_value(np.zeros(10)) == 1.0
    assert bootstrap_p_value(np.array([-1.0, 0.0, 1.0, 2.0])) == 1.0  # 2 · 3/5 capped at 1
    assert bootstrap_p_value(np.array([-1.0] * 199)) == pytest.approx(0.01)
    assert bootstrap_p_value(np.array([-2.0, -1.0] * 10 + [0.5])) == pytest.approx(2 * 2 / 22)
    with pytest.raises(ValueError, match="replicates"):
        bootstrap_p_value(np.array([]))


def test_p_at_most_alpha_implies_the_percentile_interval_excludes_zero():
    """The claim in bootstrap_p_value's docstring, checked over many replicate sets with ties at 0, and its edge counterexample."""
    rng = np.random.default_rng(6)
    significant = 0
    for _ in range(3000):
        b = int(rng.integers(1, 400))
        reps = (rng.integers(-3, 4, size=b) + rng.integers(-4, 5)).astype(np.float64)
        for alpha in (0.01, 0.05, 0.2, 0.5):
            p = bootstrap_p_value(reps)
            low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
            if p <= alpha:
                significant += 1
                assert low > 0 or high < 0
                assert (low > 0) == (np.count_nonzero(reps <= 0) < np.count_nonzero(reps >= 0))
    assert significant > 1000  # the implication was exercised
    # the converse fails only at the edge: B = 2000, 50 replicates ≤ 0, the 50th just below 0
    reps = np.concatenate([np.full(49, -1.0), [-0.001], np.ones(1950)])
    low, _ = np.quantile(reps, [0.025, 0.975])
    assert low > 0 and bootstrap_p_value(reps) == pytest.approx(102 / 2001) and bootstrap_p_value(reps) > 0.05


def _holm_by_closed_testing(p: list[float], alpha: float) -> list[bool]:
    """Holm as the closed test of Bonferroni tests: reject H_i iff every subset S ∋ i has min_{j∈S} p_j ≤ alpha/|S|."""
    m = len(p)
    out = []
    for i in range(m):
        subsets = (s for k in range(1, m + 1) for s in itertools.combinations(range(m), k) if i in s)
        out.append(all(min(p[j] for j in s) <= alpha / len(s) for s in subsets))
    return out


def test_holm_by_hand():
    # sorted 0.005 ≤ .0125, 0.01 ≤ .0167, 0.03 > .025: stop
    assert holm([0.01, 0.04, 0.03, 0.005], alpha=0.05) == [True, False, False, True]
    # step-down gains over Bonferroni (.0125): 0.013 ≤ .0167, 0.02 ≤ .025, 0.04 ≤ .05
    assert holm([0.04, 0.001, 0.02, 0.013], alpha=0.05) == [True, True, True, True]
    # stops at the first failure even though 0.04 ≤ 0.05
    assert holm([0.001, 0.03, 0.02, 0.04], alpha=0.05) == [True, False, False, False]
    assert holm([0.02, 0.02], alpha=0.05) == [True, True] and holm([0.03, 0.03], alpha=0.05) == [False, False]
    assert holm([], alpha=0.05) == []
    with pytest.raises(ValueError, match="p_values"):
        holm([0.5, 1.2])
    with pytest.raises(ValueError, match="alpha"):
        holm([0.5], alpha=0.0)


def test_holm_agrees_with_closed_testing():
    rng = np.random.default_rng(7)
    for _ in range(400):
        m = int(rng.integers(1, 7))
        p = list(np.round(rng.uniform(0, 0.06, size=m) ** rng.uniform(0.5, 2), 3))  # ties and values near the thresholds
        alpha = float(rng.choice([0.05, 0.1]))
        assert holm(p, alpha=alpha) == _holm_by_closed_testing(p, alpha)


def _with_p(c, p: float, estimate: float):
    """A comparison with a chosen two-sided p on the side of ``estimate`` (the other tail near 1)."""
    small = p / 2
    interval = replace(c.log_ratio, estimate=estimate)
    return replace(c, log_ratio=interval, p_value=p, p_more=small if estimate > 0 else 1.0, p_less=small if estimate < 0 else 1.0)


def test_verdicts_apply_holm_across_the_comparisons():
    rng = np.random.default_rng(8)
    _, dense = _dense_seeds(rng, n=30)
    base = paired_comparison(dense, dense, eps_max=EPS_MAX, rng=np.random.default_rng(0), n_boot=300)
    a, b, c = _with_p(base, 0.001, 0.2), _with_p(base, 0.02, -0.1), _with_p(base, 0.04, 0.3)
    assert verdicts([a, b, c]) == [MORE_ROBUST, LESS_ROBUST, MORE_ROBUST]  # .001 ≤ .0167, .02 ≤ .025, .04 ≤ .05
    b2 = _with_p(base, 0.03, -0.1)
    assert verdicts([a, b2, c]) == [MORE_ROBUST, NO_DIFFERENCE, NO_DIFFERENCE]  # each alone would be significant
    assert verdicts([b2]) == [LESS_ROBUST]
    with pytest.warns(UserWarning, match="other side"):
        odd = replace(a, p_more=1.0, p_less=0.0005)  # significant, but the replicates below 0 and the median above
        assert verdicts([odd]) == [NO_DIFFERENCE]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdicts([a])


def test_verdicts_refuse_an_n_boot_that_cannot_reach_holm():
    rng = np.random.default_rng(9)
    _, dense = _dense_seeds(rng, n=30)
    c = paired_comparison(dense, dense, eps_max=EPS_MAX, rng=np.random.default_rng(0), n_boot=200)
    assert verdicts([c] * 5) == [NO_DIFFERENCE] * 5  # 2/201 ≤ 0.05/5
    needed = math.ceil(2 * 6 / 0.05 - 1)  # 2/(B+1) ≤ alpha/m
    with pytest.raises(ValueError, match=f"n_boot >= {needed}"):
        verdicts([c] * 6)


def test_verdict_flip():
    assert verdict_flip(MORE_ROBUST, NO_DIFFERENCE) and verdict_flip(NO_DIFFERENCE, LESS_ROBUST)
    assert verdict_flip(MORE_ROBUST, LESS_ROBUST, reversal_only=True)
    assert not verdict_flip(MORE_ROBUST, NO_DIFFERENCE, reversal_only=True)
    assert not verdict_flip(LESS_ROBUST, LESS_ROBUST) and not verdict_flip(NO_DIFFERENCE, NO_DIFFERENCE)
    with pytest.raises(ValueError, match="best"):
        verdict_flip(MORE_ROBUST, "robuster")


# --------------------------------------------------------------------------- a whole store: study_comparisons

import torch  # noqa: E402

from sparank.compare import StudyRecords, study_comparisons  # noqa: E402
from sparank.robustness import CENSORED, CLEAN_WRONG, FOOLED, RobustnessResult  # noqa: E402
from sparank.store import Store  # noqa: E402

_FGSM = {"attack": "fgsm", "resolution": 0.01, "tol": 1e-6}
_PGD = {"attack": "pgd", "steps": 10}
_TRAIN = {"epochs": 10, "batch_size": 64, "lr": 0.01, "optimizer": "adam", "momentum": 0.9}


def _result(eps: np.ndarray, attack: str = "fgsm", settings: dict | None = None) -> RobustnessResult:
    """A stored-shape result with ε* = ``eps`` (0: clean-wrong, inf: censored)."""
    eps_t = torch.as_tensor(eps, dtype=torch.float64)
    status = torch.full(eps_t.shape, int(FOOLED), dtype=torch.int64)
    status[eps_t == 0] = int(CLEAN_WRONG)
    status[eps_t.isinf()] = int(CENSORED)
    return RobustnessResult(
        eps_lo=torch.where(eps_t.isinf(), torch.full_like(eps_t, EPS_MAX), eps_t * 0.999),
        eps_hi=eps_t,
        status=status,
        labels=torch.zeros(len(eps_t), dtype=torch.int64),
        directions=None,
        norm="linf",
        eps_max=EPS_MAX,
        resolution=0.01 if attack == "fgsm" else 0.0,
        tol=1e-6 if attack == "fgsm" else 0.0,
        attack=attack,
        settings=settings or _FGSM,
    )


def _add_run(
    store: Store,
    method: str,
    strength: float | None,
    seed: int,
    fgsm: np.ndarray | None,
    *,
    accuracy: float = 0.9,
    fine_tune: int = 0,
    best: np.ndarray | None = None,
    indices: np.ndarray | None = None,
    masked: bool = False,
    sparsity: float = 0.0,
    rank_ratio: float = 0.8,
    train: dict | None = None,
    options: dict | None = None,
) -> str:
    """A run shaped like the CLI's (config, metrics with budget, structure), its FGSM ε* and optionally best ε* over FGSM and PGD."""
    reg = {"name": method, "strength": strength, "layers": ["fc1", "out"], "extra_epochs": fine_tune, **(options or {})}
    if fine_tune:
        reg["fine_tune_epochs"] = fine_tune
    run_id = store.add_run(
        kind="train",
        config={"dataset": "digits", "arch": "mlp:16", "train": {**(train or _TRAIN), "seed": seed}, "regulariser": reg},
        metrics={
            "test_accuracy": accuracy,
            "budget": {"epochs": 10 + fine_tune, "steps": 220 + 22 * fine_tune, "fine_tune_epochs": fine_tune},
        },
        structure={"sparsity": sparsity, "effective_sparsity": sparsity, "mean_effective_rank_ratio": rank_ratio},
    )
    if fgsm is not None:
        idx = torch.arange(len(fgsm)) if indices is None else torch.as_tensor(indices)
        store.add_measurement(run_id, config={"n": len(fgsm), "attack": "fgsm", "data_source": "test"}, result=_result(fgsm), indices=idx)
    if best is not None:
        masking = {"masked": masked, "flags": {"gradient": masked, "unbounded": False}}
        result = _result(best, "best", {"attack": "best", "of": [_FGSM, _PGD]})
        store.add_measurement(
            run_id,
            config={"n": len(best), "attack": "best", "data_source": "test"},
            result=result,
            indices=torch.arange(len(best)),
            extra_summary={"masking": masking},
        )
    return run_id


def _log_median(reg: list[np.ndarray], dense: list[np.ndarray]) -> float:
    """The pooled median log-ratio over inputs correct in both, by hand."""
    logs = []
    for r, d in zip(reg, dense):
        r, d = np.minimum(r, EPS_MAX), np.minimum(d, EPS_MAX)
        both = (r > 0) & (d > 0)
        logs.append(np.log(r[both] / d[both]))
    return float(np.median(np.concatenate(logs)))


def test_study_comparisons_find_planted_differences_with_their_sign_and_size(tmp_path):
    """×0.7 is less robust, ×1.3 more robust, an identical copy no difference (p = 1); estimates are the hand-computed medians."""
    rng = np.random.default_rng(1)
    _mus, dense = _dense_seeds(rng, n_seeds=3, n=150)
    weaker, stronger = _planted(rng, dense, 0.7), _planted(rng, dense, 1.3)
    with Store(tmp_path / "s") as store:
        for seed in (2, 0, 1):  # stored out of seed order
            _add_run(store, "l1", 1e-3, seed, weaker[seed], accuracy=0.88)
            _add_run(store, "none", None, seed, dense[seed])
            _add_run(store, "nuclear", 1e-3, seed, stronger[seed])
            _add_run(store, "prox_l1", 0.3, seed, dense[seed].copy())
        rows = study_comparisons(store, reference_eps=[0.05, 1.0])
    by = {r.method: r for r in rows}
    assert [r.method for r in rows] == ["l1", "prox_l1", "nuclear"]  # sparse, then low-rank
    assert [r.index for r in rows] == [1, 2, 3]
    assert by["l1"].fgsm_verdict == LESS_ROBUST and by["nuclear"].fgsm_verdict == MORE_ROBUST
    assert by["prox_l1"].fgsm_verdict == NO_DIFFERENCE and by["prox_l1"].fgsm.p_value == 1.0
    assert by["l1"].fgsm.ratio.contains(0.7) and by["nuclear"].fgsm.ratio.contains(1.3)
    assert by["l1"].fgsm.log_ratio.estimate == pytest.approx(_log_median(weaker, dense), abs=1e-12)
    assert by["nuclear"].fgsm.log_ratio.estimate == pytest.approx(_log_median(stronger, dense), abs=1e-12)
    assert by["l1"].seeds == (0, 1, 2) and by["l1"].fgsm.n_seeds == 3
    dense_ids = {s: rid for s, rid in zip(by["l1"].seeds, by["l1"].dense_run_ids)}
    with Store(tmp_path / "s", readonly=True) as store:
        for seed, rid in dense_ids.items():
            run = store.get_run(rid)
            assert run.config["regulariser"]["name"] == "none" and run.config["train"]["seed"] == seed
    assert by["l1"].fgsm.reference_eps == (0.05,)  # 1.0 > ε_max: left out, and said so
    assert any("above ε_max" in note for note in by["l1"].notes)
    assert by["l1"].test_accuracy == pytest.approx(0.88) and by["l1"].test_accuracy_dense == pytest.approx(0.9)
    assert by["l1"].best is None and "no cross-check attack ran" in " ".join(by["l1"].notes)
    # the L1 model's control: no l2 run in this store
    assert by["l1"].control is not None and by["l1"].control.fgsm is None and by["nuclear"].control is not None


def test_a_rerun_of_the_dense_model_is_no_difference_and_holm_spans_the_store(tmp_path):
    """Two draws of one distribution and an identical copy: no significant difference; verdicts are one Holm family per ε* kind."""
    rng = np.random.default_rng(5)
    _mus, dense = _dense_seeds(rng, n_seeds=3, n=150)
    redraw = [_arm(rng, math.log(np.median(d[np.isfinite(d) & (d > 0)])), len(d)) for d in dense]
    with Store(tmp_path / "s") as store:
        for seed in range(3):
            _add_run(store, "none", None, seed, dense[seed], best=dense[seed])
            _add_run(store, "l2", 0.0, seed, dense[seed].copy(), best=dense[seed].copy())
            _add_run(store, "group_lasso", 0.1, seed, redraw[seed], best=redraw[seed])
            _add_run(store, "svt", 0.1, seed, dense[seed] * 0.6, best=dense[seed])
        records = StudyRecords.from_store(store)
    rows = study_comparisons(records, reference_eps=[0.05])
    by = {r.method: r for r in rows}
    assert by["l2"].fgsm_verdict == NO_DIFFERENCE and by["l2"].fgsm.p_value == 1.0 and by["l2"].fgsm.ratio.estimate == 1.0
    assert by["group_lasso"].fgsm_verdict == NO_DIFFERENCE and by["group_lasso"].best_verdict == NO_DIFFERENCE
    # svt: weaker under FGSM, the same under the best attack: a flip
    assert by["svt"].fgsm_verdict == LESS_ROBUST and by["svt"].best_verdict == NO_DIFFERENCE and by["svt"].flip is True
    assert by["svt"].best_attacks == ("fgsm", "pgd")
    for kind in ("fgsm", "best"):
        family = [getattr(r, kind) for r in rows]
        assert [getattr(r, f"{kind}_verdict") for r in rows] == verdicts(family)
    # the controls are their own family: group_lasso vs the l2 run (identical to the dense model) gives the same ratio
    control = by["group_lasso"].control
    assert control.l2_run_ids == tuple(by["l2"].run_ids)
    assert control.fgsm.log_ratio.estimate == by["group_lasso"].fgsm.log_ratio.estimate


def test_counterpart_has_the_same_budget_seed_and_inputs(tmp_path):
    """A fine-tuned method pairs with `none` fine-tuned as long; other inputs or another training are left out with a reason."""
    rng = np.random.default_rng(2)
    _mus, dense = _dense_seeds(rng, n_seeds=2, n=120)
    with Store(tmp_path / "s") as store:
        plain = [_add_run(store, "none", None, s, dense[s] * 0.5) for s in range(2)]
        tuned = [_add_run(store, "none", None, s, dense[s], fine_tune=5) for s in range(2)]
        _add_run(store, "svd_truncate", 0.25, 0, dense[0].copy(), fine_tune=5)
        _add_run(store, "svd_truncate", 0.25, 1, dense[1][:100].copy(), fine_tune=5, indices=np.arange(100))
        _add_run(store, "magnitude", 0.5, 0, dense[0] * 0.5, fine_tune=3)  # no `none` fine-tuned 3 epochs
        _add_run(store, "l1", 1e-3, 0, dense[0] * 0.5, train={**_TRAIN, "lr": 0.1})  # no `none` with this training
        _add_run(store, "l1", 1e-3, 1, dense[1] * 0.5)
        rows = study_comparisons(store, reference_eps=[])
    by = {(r.method, r.train["lr"]): r for r in rows}
    svd = by[("svd_truncate", 0.01)]
    assert svd.dense_run_ids == (tuned[0],) and svd.seeds == (0,) and svd.fgsm.ratio.estimate == 1.0
    assert any("seed 1" in n and "evaluation inputs differ" in n for n in svd.notes)
    magnitude = by[("magnitude", 0.01)]
    assert magnitude.fgsm is None and magnitude.fgsm_verdict is None and magnitude.seeds == ()
    assert any("no dense counterpart" in n and "'fine_tune_epochs': 3" in n for n in magnitude.notes)
    l1 = by[("l1", 0.01)]
    assert l1.dense_run_ids == (plain[1],) and l1.fgsm.ratio.estimate == 1.0
    assert by[("l1", 0.1)].fgsm is None and any("no dense counterpart" in n for n in by[("l1", 0.1)].notes)


def test_control_is_the_l2_run_of_the_seed_closest_in_accuracy(tmp_path):
    """Per seed, the l2 run nearest in test accuracy; a planted ×0.8 against it is found; masking flags are carried."""
    rng = np.random.default_rng(3)
    _mus, dense = _dense_seeds(rng, n_seeds=2, n=150)
    with Store(tmp_path / "s") as store:
        l2 = {}
        for s in range(2):
            _add_run(store, "none", None, s, dense[s], accuracy=0.95, best=dense[s])
            # seed 0: λ=1e-3 is closer to 0.90; seed 1: λ=1e-2 is
            l2[(s, 1e-3)] = _add_run(store, "l2", 1e-3, s, dense[s] * 2.0, accuracy=0.92 if s == 0 else 0.80, best=dense[s] * 2.0)
            l2[(s, 1e-2)] = _add_run(store, "l2", 1e-2, s, dense[s] * 3.0, accuracy=0.85 if s == 0 else 0.89, best=dense[s] * 3.0)
        control_eps = {0: dense[0] * 2.0, 1: dense[1] * 3.0}
        weaker = _planted(rng, [control_eps[0], control_eps[1]], 0.8)
        for s in range(2):
            _add_run(store, "magnitude_gradual", 0.8, s, weaker[s], accuracy=0.90, best=weaker[s], masked=(s == 1), sparsity=0.8)
        rows = study_comparisons(store, reference_eps=[0.05])
    row = next(r for r in rows if r.method == "magnitude_gradual")
    assert row.control.l2_run_ids == (l2[(0, 1e-3)], l2[(1, 1e-2)]) and row.control.l2_strengths == (1e-3, 1e-2)
    assert row.control.fgsm_verdict == LESS_ROBUST and row.control.fgsm.ratio.contains(0.8)
    assert row.control.fgsm.log_ratio.estimate == pytest.approx(_log_median(weaker, [control_eps[0], control_eps[1]]), abs=1e-12)
    assert row.control.l2_test_accuracy == pytest.approx((0.92 + 0.89) / 2)
    assert row.masking_checked and row.masked_runs == (row.run_ids[1],) and row.masking_flags == ("gradient",)
    assert row.sparsity == pytest.approx(0.8) and row.sparsity_dense == pytest.approx(0.0)
    # the l2 rows themselves have no control
    assert all(r.control is None for r in rows if r.method == "l2")


def test_study_comparisons_on_real_runs_an_irrelevant_setting_is_no_difference(tmp_path):
    """Trained through the CLI: l2 at λ = 0 trains the same weights as `none`, so every input's ε* is equal: p = 1."""
    from typer.testing import CliRunner

    from sparank.cli import app

    runner = CliRunner()
    store = str(tmp_path / "s")
    for seed in (0, 1):
        for extra in ([], ["--regulariser", "l2", "--strength", "0"]):
            args = ["train", "--dataset", "digits", "--arch", "mlp:16", "--epochs", "3", "--lr", "0.01", "--seed", str(seed)]
            result = runner.invoke(app, [*args, *extra, "--store", store, "--threads", "1"])
            assert result.exit_code == 0, result.output
    with Store(store) as s:
        ids = [r.id for r in s.runs()]
    for rid in ids:
        result = runner.invoke(app, ["measure", rid, "--n", "60", "--attack", "fgsm", "--attack", "pgd", "--steps", "5", "--store", store])
        assert result.exit_code == 0, result.output
    rows = study_comparisons(Store(store, readonly=True), reference_eps=[0.05])
    assert len(rows) == 1 and rows[0].method == "l2" and rows[0].seeds == (0, 1)
    assert rows[0].fgsm_verdict == NO_DIFFERENCE and rows[0].fgsm.p_value == 1.0 and rows[0].fgsm.ratio.estimate == 1.0
    assert rows[0].best_verdict == NO_DIFFERENCE and rows[0].best_attacks == ("fgsm", "pgd") and rows[0].flip is False
    assert rows[0].fgsm.clean_accuracy_change.estimate == 0.0


def test_rows_that_differ_only_in_options_are_told_apart(tmp_path):
    """Adversarial training with FGSM and with PGD at one ε: two rows, labelled by the option that differs; derived keys are ignored."""
    rng = np.random.default_rng(4)
    _mus, dense = _dense_seeds(rng, n_seeds=2, n=80)
    with Store(tmp_path / "s") as store:
        for s in range(2):
            _add_run(store, "none", None, s, dense[s])
            _add_run(store, "adversarial", 0.1, s, dense[s] * 1.5, options={"attack": "fgsm", "clean_fraction": 0.5})
            _add_run(store, "adversarial", 0.1, s, dense[s] * 2.0, options={"attack": "pgd", "clean_fraction": 0.5})
            _add_run(store, "svd_truncate", 0.25, s, dense[s], options={"ranks": {"fc1": 4 + s}})  # derived: one row over seeds
        rows = study_comparisons(store, reference_eps=[])
    labels = [r.label for r in rows]
    assert labels == ["svd_truncate r=0.25", "adversarial ε=0.1 (attack=fgsm)", "adversarial ε=0.1 (attack=pgd)"]
    assert [r.seeds for r in rows] == [(0, 1)] * 3
    assert rows[1].fgsm.ratio.contains(1.5) and rows[2].fgsm.ratio.contains(2.0)
