"""tether.eval.overopt: hand-computed values, brute force over subsets, and invariances."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tether.eval.overopt import (
    best_of_n,
    best_of_n_curve,
    bon_kl,
    fit_bon,
    fit_rl,
    length_bias,
    overoptimization_warning,
    predict,
)

# ---------------------------------------------------------------------------------------------
# bon_kl
# ---------------------------------------------------------------------------------------------


def test_bon_kl_values():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    assert bon_kl(4) == pytest.approx(math.log(4) - 0.75, abs=1e-15)
    assert isinstance(bon_kl(4), float)
    arr = bon_kl([1, 2, 4])
    assert isinstance(arr, np.ndarray)
    np.testing.assert_allclose(arr, [0.0, math.log(2) - 0.5, math.log(4) - 0.75], atol=1e-15)


@pytest.mark.parametrize("bad", [0, -1, 2.5, [1, 0], float("nan")])
def test_bon_kl_rejects_bad_n(bad):
    with pytest.raises(ValueError):
        bon_kl(bad)


# ---------------------------------------------------------------------------------------------
# best_of_n
# ---------------------------------------------------------------------------------------------


def brute_force(select, value, n):
    """Mean over prompts of the mean over all n-subsets of the value of the subset's max
    select; a tied maximum scores the mean value of the tied samples (random tie-breaking)."""
    s2, v2 = np.atleast_2d(select), np.atleast_2d(value)
    per_prompt = []
    for s, v in zip(s2, v2, strict=True):
        scores = []
        for subset in itertools.combinations(range(len(s)), n):
            idx = np.array(subset)
            top = s[idx].max()
            scores.append(v[idx][s[idx] == top].mean())
        per_prompt.append(np.mean(scores))
    return float(np.mean(per_prompt))


@pytest.mark.parametrize("n", range(1, 7))
def test_best_of_n_matches_brute_force(n):
    rng = np.random.default_rng(n)
    select, value = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    assert best_of_n(select, value, n) == pytest.approx(brute_force(select, value, n), abs=1e-12)


@pytest.mark.parametrize("n", range(1, 7))
def test_best_of_n_matches_brute_force_with_ties(n):
    rng = np.random.default_rng(100 + n)
    select = rng.integers(0, 3, size=(5, 6)).astype(float)  # many ties
    value = rng.normal(size=(5, 6))
    assert best_of_n(select, value, n) == pytest.approx(brute_force(select, value, n), abs=1e-12)


def test_best_of_n_ties_hand_computed():
    # N = 3, n = 2: subsets {0,1}, {0,2}, {1,2}; samples 1 and 2 tie on select = 5.
    # {0,1} -> 20, {0,2} -> 30, {1,2} -> mean(20, 30) = 25; expectation 25.
    assert best_of_n([1.0, 5.0, 5.0], [10.0, 20.0, 30.0], 2) == pytest.approx(25.0, abs=1e-12)


def test_best_of_n_endpoints():
    rng = np.random.default_rng(0)
    select, value = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    assert best_of_n(select, value, 1) == pytest.approx(value.mean(), abs=1e-12)
    top = value[np.arange(4), select.argmax(axis=1)]
    assert best_of_n(select, value, 8) == pytest.approx(top.mean(), abs=1e-12)


def test_best_of_n_one_prompt_1d():
    select, value = [3.0, 1.0, 2.0], [30.0, 10.0, 20.0]
    # n = 2: {0,1} -> 30, {0,2} -> 30, {1,2} -> 20
    assert best_of_n(select, value, 2) == pytest.approx(80 / 3, abs=1e-12)


def test_best_of_n_invariant_to_permuting_samples():
    rng = np.random.default_rng(1)
    select = rng.integers(0, 4, size=(3, 10)).astype(float)
    value = rng.normal(size=(3, 10))
    for n in (1, 3, 7, 10):
        base = best_of_n(select, value, n)
        for seed in range(3):
            perm = np.random.default_rng(seed).permutation(10)
            assert best_of_n(select[:, perm], value[:, perm], n) == pytest.approx(base,
                                                                                   abs=1e-12)


def test_best_of_n_groups_equal_to_rows_and_allow_unequal_sizes():
    rng = np.random.default_rng(2)
    select, value = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    groups = np.repeat(["a", "b", "c"], 5)
    order = rng.permutation(15)  # groups need not be contiguous
    flat = best_of_n(select.ravel()[order], value.ravel()[order], 3, groups=groups[order])
    assert flat == pytest.approx(best_of_n(select, value, 3), abs=1e-12)
    # prompt sizes 3 and 5: the mean of the two per-prompt values
    s = np.concatenate([select[0, :3], select[1]])
    v = np.concatenate([value[0, :3], value[1]])
    g = [0] * 3 + [1] * 5
    expected = 0.5 * (best_of_n(select[0, :3], value[0, :3], 2) + best_of_n(select[1], value[1], 2))
    assert best_of_n(s, v, 2, groups=g) == pytest.approx(expected, abs=1e-12)


def test_best_of_n_large_n_no_overflow():
    rng = np.random.default_rng(3)
    big_n = 512
    select, value = rng.normal(size=big_n), rng.normal(size=big_n)
    v_sorted = value[np.argsort(select)]
    for n in (1, 2, 64, 256, 511, 512):
        # reference with exact integer binomials (int / int is correctly rounded)
        weights = [math.comb(i, n - 1) / math.comb(big_n, n) for i in range(big_n)]
        expected = float(np.dot(weights, v_sorted))
        got = best_of_n(select, value, n)
        assert math.isfinite(got)
        assert got == pytest.approx(expected, abs=1e-10)


def test_best_of_n_increasing_in_n_when_value_is_select():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 1024))
    values = [best_of_n(x, x, n) for n in (1, 2, 4, 16, 64, 256, 1024)]
    assert all(np.isfinite(values))
    assert all(a < b for a, b in zip(values[:-1], values[1:], strict=True))


def test_best_of_n_errors():
    with pytest.raises(ValueError):
        best_of_n([[1.0, 2.0]], [[1.0, 2.0]], 3)  # n > N
    with pytest.raises(ValueError):
        best_of_n([[1.0, 2.0]], [[1.0, 2.0]], 0)
    with pytest.raises(ValueError):
        best_of_n([[1.0, 2.0]], [[1.0, 2.0, 3.0]], 1)  # shapes differ
    with pytest.raises(ValueError):
        best_of_n([[1.0, float("nan")]], [[1.0, 2.0]], 1)


def test_best_of_n_curve():
    rng = np.random.default_rng(5)
    select, value = rng.normal(size=(3, 16)), rng.normal(size=(3, 16))
    curve = best_of_n_curve(select, value, [1, 4, 16])
    assert [row["n"] for row in curve] == [1, 4, 16]
    for row in curve:
        assert set(row) == {"n", "kl", "value"}
        assert row["kl"] == bon_kl(row["n"])
        assert row["value"] == pytest.approx(best_of_n(select, value, row["n"]), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Fits
# ---------------------------------------------------------------------------------------------

D = np.array([0.1, 0.3, 0.5, 0.8, 1.0, 1.4, 2.0, 2.5])


def test_fit_bon_recovers_noiseless():
    r = D * (1.3 - 0.4 * D)
    fit = fit_bon(D, r)
    assert fit["alpha"] == pytest.approx(1.3, abs=1e-8)
    assert fit["beta"] == pytest.approx(0.4, abs=1e-8)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-8)
    np.testing.assert_allclose(predict(fit, D, "bon"), r, atol=1e-8)


def test_fit_rl_recovers_noiseless():
    r = D * (0.9 - 0.35 * np.log(D))
    fit = fit_rl(D, r)
    assert fit["alpha"] == pytest.approx(0.9, abs=1e-8)
    assert fit["beta"] == pytest.approx(0.35, abs=1e-8)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-8)
    np.testing.assert_allclose(predict(fit, D, "rl"), r, atol=1e-8)


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fits_recover_noisy(form):
    rng = np.random.default_rng(6)
    d = np.linspace(0.1, 3.0, 200)
    alpha, beta = 1.0, 0.3
    clean = d * (alpha - beta * (d if form == "bon" else np.log(d)))
    fit = (fit_bon if form == "bon" else fit_rl)(d, clean + rng.normal(scale=0.02, size=len(d)))
    assert fit["alpha"] == pytest.approx(alpha, abs=0.02)
    assert fit["beta"] == pytest.approx(beta, abs=0.02)
    assert 0.9 < fit["r2"] <= 1.0


def test_fit_rl_handles_d_zero():
    d = np.concatenate([[0.0], D])
    r = d * (0.9 - 0.35 * np.log(np.where(d > 0, d, 1.0)))  # R(0) = 0
    with np.errstate(all="raise"):  # no log(0) warning inside
        fit = fit_rl(d, r)
        assert predict(fit, 0.0, "rl") == 0.0
    assert fit["alpha"] == pytest.approx(0.9, abs=1e-8)
    assert fit["beta"] == pytest.approx(0.35, abs=1e-8)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-8)
    assert isinstance(predict(fit, 1.0, "rl"), float)
    assert predict(fit, 1.0, "rl") == pytest.approx(0.9, abs=1e-8)


def test_fit_bon_with_d_zero_and_sqrt_kl():
    d = np.sqrt(bon_kl([1, 2, 4, 8, 16, 64]))  # d = 0 at n = 1
    r = d * (0.5 - 0.1 * d)
    fit = fit_bon(d, r)
    assert fit["alpha"] == pytest.approx(0.5, abs=1e-8)
    assert fit["beta"] == pytest.approx(0.1, abs=1e-8)


def test_fit_r2_hand_computed():
    # d = [1, 2, 3], r = [1, 1, 1.5]: fitted by least squares; r2 = 1 - SS_res / SS_tot
    d, r = np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.5])
    fit = fit_bon(d, r)
    x = np.column_stack([d, -d * d])
    coef = np.linalg.solve(x.T @ x, x.T @ r)  # normal equations
    ss_res = np.sum((r - x @ coef) ** 2)
    ss_tot = np.sum((r - r.mean()) ** 2)
    assert fit["alpha"] == pytest.approx(coef[0], abs=1e-10)
    assert fit["r2"] == pytest.approx(1 - ss_res / ss_tot, abs=1e-10)


def test_fit_r2_nan_when_r_constant():
    assert math.isnan(fit_bon([1.0, 2.0], [0.5, 0.5])["r2"])


@pytest.mark.parametrize("fit", [fit_bon, fit_rl])
def test_fit_errors(fit):
    with pytest.raises(ValueError):
        fit([1.0], [1.0])  # one point
    with pytest.raises(ValueError):
        fit([0.0, 1.0], [0.0, 1.0])  # one usable point
    with pytest.raises(ValueError):
        fit([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])  # one distinct d
    with pytest.raises(ValueError):
        fit([1.0, 2.0, 3.0], [1.0, 2.0])  # mismatched lengths
    with pytest.raises(ValueError):
        fit([-1.0, 1.0, 2.0], [1.0, 2.0, 3.0])  # d < 0


def test_predict_bad_form():
    with pytest.raises(ValueError):
        predict({"alpha": 1.0, "beta": 0.0}, 1.0, "ppo")


# ---------------------------------------------------------------------------------------------
# Over-optimisation warning
# ---------------------------------------------------------------------------------------------


def test_warning_fires_on_rising_proxy_falling_gold():
    msg = overoptimization_warning([0, 10, 20, 30, 40], [0.2, 0.6, 1.10, 1.5, 1.85],
                                   [0.3, 0.6, 0.71, 0.65, 0.52])
    assert msg == ("gold fell from 0.71 (step 20) to 0.52 (step 40) while the proxy rose from "
                   "1.10 to 1.85: the policy is exploiting the reward model")


def test_warning_silent_when_both_rise():
    assert overoptimization_warning([0, 10, 20, 30], [0.1, 0.5, 0.9, 1.2],
                                    [0.1, 0.3, 0.4, 0.45]) is None


def test_warning_silent_when_proxy_also_falls():
    assert overoptimization_warning([0, 10, 20, 30], [0.1, 0.9, 0.8, 0.7],
                                    [0.1, 0.6, 0.5, 0.4]) is None


def test_warning_silent_with_too_few_points():
    assert overoptimization_warning([0, 10], [0.1, 1.0], [0.5, 0.2]) is None
    # three points given, but one is missing
    assert overoptimization_warning([0, 10, 20], [0.1, None, 1.0], [0.5, 0.6, 0.2]) is None
    # enough for min_points=2
    assert overoptimization_warning([0, 10], [0.1, 1.0], [0.5, 0.2], min_points=2) is not None


def test_warning_skips_missing_points():
    msg = overoptimization_warning([0, 10, 20, 30, 40], [0.0, 0.5, None, 1.0, 1.4],
                                   [0.2, 0.8, 0.9, float("nan"), 0.4])
    # step 20 (proxy None) and step 30 (gold NaN) are skipped: the gold peak is at step 10
    assert msg is not None
    assert "from 0.80 (step 10) to 0.40 (step 40)" in msg
    assert "proxy rose from 0.50 to 1.40" in msg


def test_warning_tol():
    steps, proxy, gold = [0, 1, 2], [0.0, 1.0, 1.05], [0.0, 1.0, 0.97]
    assert overoptimization_warning(steps, proxy, gold) is not None
    assert overoptimization_warning(steps, proxy, gold, tol=0.04) is None


def test_warning_more_digits_when_needed():
    msg = overoptimization_warning([0, 1, 2], [0.0, 1.0, 1.002], [0.0, 1.0, 0.999])
    assert msg is not None
    assert "from 1.000 (step 1) to 0.999 (step 2)" in msg
    assert "rose from 1.000 to 1.002" in msg


def test_warning_length_mismatch():
    with pytest.raises(ValueError):
        overoptimization_warning([0, 1, 2], [0.0, 1.0], [0.0, 1.0, 2.0])


# The case from issue 19: a quick run's gold 0.83 -> 0.79, each a mean of one response to each
# of 32 prompts. With gold's usual spread (sd 0.4) one such mean has SE 0.4 / sqrt(32) = 0.071,
# and the 95% band of a difference of two is 1.96 * sqrt(2) * 0.071 = 0.196.
NOISY = ([0, 10, 20, 30], [0.1, 0.4, 0.6, 0.9], [0.5, 0.83, 0.81, 0.79])
SE_32 = 0.4 / math.sqrt(32)


def test_warning_silent_when_gold_drop_is_within_its_noise():
    steps, proxy, gold = NOISY
    # A fixed tolerance alone (the frontier's 0.03) calls this over-optimisation ...
    assert overoptimization_warning(steps, proxy, gold, tol=0.03) is not None
    # ... the standard errors of the two means say it is noise.
    assert overoptimization_warning(steps, proxy, gold, tol=0.03, gold_se=SE_32) is None
    assert overoptimization_warning(steps, proxy, gold, gold_se=[SE_32] * 4) is None


def test_warning_fires_when_gold_drop_exceeds_its_noise():
    steps, proxy = NOISY[:2]
    msg = overoptimization_warning(steps, proxy, [0.5, 0.83, 0.7, 0.55], gold_se=SE_32)
    assert msg == ("gold fell from 0.83 (step 10) to 0.55 (step 30), more than the ±0.2 "
                   "sampling noise allows, while the proxy rose from 0.40 to 0.90: the policy "
                   "is exploiting the reward model")
    # The band is z * sqrt(se_peak^2 + se_last^2): only the peak's and the last point's count.
    just_inside = [0.5, 0.83, 0.7, 0.83 - 1.96 * math.hypot(0.05, 0.1) + 0.001]
    just_outside = just_inside[:3] + [just_inside[3] - 0.002]
    ses = [9.0, 0.05, 9.0, 0.1]
    assert overoptimization_warning(steps, proxy, just_inside, gold_se=ses) is None
    assert overoptimization_warning(steps, proxy, just_outside, gold_se=ses) is not None


def test_warning_unknown_se_falls_back_to_tol():
    steps, proxy, gold = NOISY
    assert overoptimization_warning(steps, proxy, gold, gold_se=[None, float("nan"), None,
                                                                 None]) is not None
    assert overoptimization_warning(steps, proxy, gold, tol=0.05, gold_se=[None] * 4) is None
    with pytest.raises(ValueError, match="gold_se"):
        overoptimization_warning(steps, proxy, gold, gold_se=[0.1, 0.1])


# ---------------------------------------------------------------------------------------------
# Length bias
# ---------------------------------------------------------------------------------------------


def test_length_bias_positive_when_rm_rewards_length():
    rng = np.random.default_rng(7)
    lengths = rng.integers(10, 200, size=300).astype(float)
    gold = rng.normal(size=300)
    out = length_bias(gold + 0.1 * lengths, gold, lengths)
    assert out["n"] == 300
    assert out["err_length_pearson"] > 0.5
    assert out["err_length_spearman"] > 0.5
    assert out["rm_length_pearson"] > out["gold_length_pearson"]
    assert abs(out["gold_length_pearson"]) < 0.2


def test_length_bias_negative_when_rm_penalises_length():
    rng = np.random.default_rng(8)
    lengths = rng.integers(10, 200, size=300).astype(float)
    gold = rng.normal(size=300)
    out = length_bias(gold - 0.1 * lengths, gold, lengths)
    assert out["err_length_pearson"] < -0.5


def test_length_bias_invariant_to_affine_rm():
    rng = np.random.default_rng(9)
    lengths = rng.integers(10, 200, size=50).astype(float)
    gold = rng.normal(size=50)
    rm = gold + 0.05 * lengths + rng.normal(size=50)
    a, b = length_bias(rm, gold, lengths), length_bias(3.0 * rm - 7.0, gold, lengths)
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-12)


def test_length_bias_errors():
    with pytest.raises(ValueError):
        length_bias([1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        length_bias([1.0], [1.0], [1.0])
