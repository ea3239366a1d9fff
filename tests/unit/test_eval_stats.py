"""Evaluation statistics against hand-computed values."""

import math

import numpy as np
import pytest

from tether.eval.stats import (
    accuracy_by_bucket,
    bootstrap_ci,
    calibration,
    pearson,
    rankdata,
    spearman,
)

# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_contains_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(2.0, 1.0, 50), rng.normal(2.0, 1.0, 5000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s
    assert lo_l < large.mean() < hi_l
    # the width goes as 1 / sqrt(n): 100x the data, ~10x narrower
    assert 6 < (hi_s - lo_s) / (hi_l - lo_l) < 14
    # and about 2 * 1.96 * sigma / sqrt(n)
    assert (hi_l - lo_l) == pytest.approx(2 * 1.96 / math.sqrt(5000), rel=0.15)


def test_bootstrap_deterministic_per_seed_and_degenerate_cases():
    x = np.arange(20.0)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)
    assert bootstrap_ci([5.0]) == (5.0, 5.0)
    assert bootstrap_ci([2.0] * 7, groups=[0, 0, 1, 1, 1, 2, 2]) == (2.0, 2.0)
    lo, hi = bootstrap_ci(x, statistic=np.median, n_boot=200)
    assert lo <= 9.5 <= hi
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="one label per value"):
        bootstrap_ci([1.0, 2.0], groups=[0])


def test_group_bootstrap_wider_when_groups_are_correlated():
    # 40 prompts, 10 pairs each; a prompt's pairs share its (random) level: strongly correlated
    rng = np.random.default_rng(0)
    level = rng.normal(0.0, 1.0, 40)
    values = np.repeat(level, 10) + rng.normal(0.0, 0.1, 400)
    groups = np.repeat(np.arange(40), 10)
    lo_i, hi_i = bootstrap_ci(values)
    lo_g, hi_g = bootstrap_ci(values, groups)
    assert lo_g < values.mean() < hi_g
    # effectively 40 observations, not 400: ~sqrt(10) wider
    assert (hi_g - lo_g) > 2.5 * (hi_i - lo_i)


def test_group_bootstrap_of_constant_groups_is_iid_bootstrap_of_group_values():
    # equal-size groups holding one value each: resampling groups == resampling those values
    level = np.array([0.3, -1.0, 2.0, 0.7, 0.1, 1.5])
    values = np.repeat(level, 3)
    groups = np.repeat(["p0", "p1", "p2", "p3", "p4", "p5"], 3)
    shuffled = np.random.default_rng(0).permutation(18)  # group members need not be adjacent
    assert bootstrap_ci(values[shuffled], groups[shuffled], seed=7) == \
        pytest.approx(bootstrap_ci(level, seed=7))


def test_group_bootstrap_with_unequal_groups_weights_by_size():
    # group a: ten 1s, group b: one 0. Resamples are {a,a}: 1, {b,b}: 0, {a,b}: 10/11
    lo, hi = bootstrap_ci([1.0] * 10 + [0.0], groups=["a"] * 10 + ["b"], n_boot=2000,
                          alpha=0.4)
    assert set(np.round([lo, hi], 6)) <= {0.0, round(10 / 11, 6), 1.0}


# --- correlation -------------------------------------------------------------------------------


def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 20, 5]).tolist() == [2, 4, 4, 4, 1]
    assert rankdata([3, 1, 2]).tolist() == [3, 1, 2]
    assert rankdata([1, 1]).tolist() == [1.5, 1.5]


def test_pearson_hand_computed():
    # x - mean = [-1, 0, 1]; y - mean = [-4/3, -1/3, 5/3]; sxy = 3, sxx = 2, syy = 42/9
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_spearman_with_ties_hand_computed():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]; centred: [-1.5, 0, 0, 1.5] and
    # [-1.5, .5, -.5, 1.5]; sxy = 4.5, sxx = 4.5, syy = 5 -> rho = sqrt(0.9)
    # (scipy.stats.spearmanr gives 0.9486832980505138)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    # the textbook no-ties formula would give 1 - 6 * 0.5 / 60 = 0.95: ties matter
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) != pytest.approx(0.95)


def test_spearman_is_pearson_of_ranks_and_rank_invariant():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 50)  # many ties
    y = x + rng.integers(0, 3, 50)
    assert spearman(x, y) == pytest.approx(pearson(rankdata(x), rankdata(y)))
    assert spearman(x, np.exp(y)) == pytest.approx(spearman(x, y))  # monotone transform
    z = rng.normal(size=30)
    assert spearman(z, z**3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="length"):
        spearman([1, 2], [1, 2, 3])


# --- calibration -------------------------------------------------------------------------------


def test_perfectly_calibrated_has_zero_ece():
    # 20 predictions at each bin centre p, of which exactly 20 p are positive
    probs, labels = [], []
    for p in np.arange(0.05, 1.0, 0.1):
        positives = round(20 * p)
        probs += [p] * 20
        labels += [1] * positives + [0] * (20 - positives)
    ece, table = calibration(probs, labels)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert len(table) == 10 and all(row["count"] == 20 for row in table)
    assert table[6] == {"bin": "[0.6, 0.7)", "count": 20, "mean_prob": pytest.approx(0.65),
                        "frac_positive": pytest.approx(0.65)}


def test_miscalibrated_ece_hand_computed():
    # bin [0.7, 0.8): probs .72, .78, .75, .75 (mean .75), 1 of 4 positive -> gap .5
    # bin [0.3, 0.4): six at .35, 3 of 6 positive -> gap .15
    # ECE = 4/10 * .5 + 6/10 * .15 = 0.29
    probs = [0.72, 0.78, 0.75, 0.75] + [0.35] * 6
    labels = [1, 0, 0, 0] + [1, 1, 1, 0, 0, 0]
    ece, table = calibration(probs, labels)
    assert ece == pytest.approx(0.29)
    assert table == [
        {"bin": "[0.3, 0.4)", "count": 6, "mean_prob": pytest.approx(0.35),
         "frac_positive": 0.5},
        {"bin": "[0.7, 0.8)", "count": 4, "mean_prob": pytest.approx(0.75),
         "frac_positive": 0.25},
    ]


def test_calibration_bin_edges():
    _, table = calibration([0.0, 0.3, 1.0, 0.5], [0, 1, 1, 0], n_bins=10)
    assert [row["bin"] for row in table] == ["[0, 0.1)", "[0.3, 0.4)", "[0.5, 0.6)",
                                             "[0.9, 1]"]
    _, table = calibration([0.25, 0.5], [0, 1], n_bins=4)
    assert [row["bin"] for row in table] == ["[0.25, 0.5)", "[0.5, 0.75)"]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration([1.2], [1])
    with pytest.raises(ValueError, match="0 or 1"):
        calibration([0.5], [2])


def test_symmetric_calibration_for_pairs_labelled_chosen_first():
    # A calibrated reward model on pairs stored chosen-first: of pairs it rates 0.85 / 0.15
    # (either way round), the labeler picked its favourite 85% of the time. All labels are 1.
    probs = [0.85] * 17 + [0.15] * 3
    labels = [1] * 20
    ece, _ = calibration(probs, labels)
    assert ece == pytest.approx(0.85 * 0.15 + 0.15 * 0.85)  # looks miscalibrated: 0.255
    ece, table = calibration(probs, labels, symmetric=True)
    assert ece == pytest.approx(0.0)
    assert [(r["bin"], r["count"], r["frac_positive"]) for r in table] == \
        [("[0.1, 0.2)", 20, pytest.approx(0.15)), ("[0.8, 0.9)", 20, pytest.approx(0.85))]


# --- buckets -----------------------------------------------------------------------------------


def test_accuracy_by_bucket_hand_computed():
    correct = [1, 0, 1, 1, 0, 1, True]
    length_diff = [-15, -5, -3, 0, 12, 10, 9.5]
    assert accuracy_by_bucket(correct, length_diff, [-10, 0, 10]) == [
        {"bucket": "(-inf, -10)", "count": 1, "accuracy": 1.0},
        {"bucket": "[-10, 0)", "count": 2, "accuracy": 0.5},
        {"bucket": "[0, 10)", "count": 2, "accuracy": 1.0},
        {"bucket": "[10, inf)", "count": 2, "accuracy": 0.5},
    ]


def test_accuracy_by_bucket_skips_empty_and_checks_edges():
    assert accuracy_by_bucket([1, 0], [100, 200], [0, 10]) == [
        {"bucket": "[10, inf)", "count": 2, "accuracy": 0.5}]
    assert accuracy_by_bucket([1], [0.5], [0.25])[0]["bucket"] == "[0.25, inf)"
    with pytest.raises(ValueError, match="increasing"):
        accuracy_by_bucket([1], [1], [0, 0])
    with pytest.raises(ValueError, match="empty"):
        accuracy_by_bucket([1], [1], [])
