"""The reward-KL frontier: points from training logs and best-of-n, fits, warnings."""

import math

import numpy as np
import pytest

from tether.eval.frontier import (
    best_of_n_points,
    fit_points,
    hacking_warnings,
    trajectory_points,
)
from tether.eval.health import health_findings


def test_trajectory_points_are_the_held_out_evaluations():
    metrics = [{"step": 0, "eval/kl": -1e-7, "eval/gold": 0.1, "eval/proxy": 0.0},
               {"step": 1, "loss/policy": 0.3},  # not an evaluation step
               {"step": 5, "eval/kl": 2.0, "eval/gold": 0.4}]
    points = trajectory_points("ppo", metrics)
    assert [(p["step"], p["kl"], p["gold"], p["proxy"]) for p in points] == [
        (0, 0.0, 0.1, 0.0), (5, 2.0, 0.4, None)]  # a tiny negative KL estimate is clipped


def test_best_of_n_points_use_the_analytic_kl_and_the_max_by_proxy():
    proxy = [[0.0, 1.0, 2.0, 3.0]]
    gold = [[3.0, 2.0, 1.0, 0.0]]  # the proxy ranks exactly backwards
    points = best_of_n_points({"n": 4, "proxy": proxy, "gold": gold})
    assert [p["n"] for p in points] == [1, 2, 4]
    assert [p["kl"] for p in points] == pytest.approx([0, math.log(2) - 0.5,
                                                       math.log(4) - 0.75])
    assert points[0]["gold"] == pytest.approx(1.5) and points[0]["proxy"] == pytest.approx(1.5)
    # n = N picks the proxy's best sample: the gold worst.
    assert points[-1]["proxy"] == pytest.approx(3.0) and points[-1]["gold"] == pytest.approx(0.0)
    assert [p["n"] for p in best_of_n_points({"n": 6, "proxy": [[0] * 6],
                                              "gold": None})] == [1, 2, 4, 6]


def test_fits_recover_the_curve_and_refuse_points_bunched_at_one_kl():
    alpha, beta, offset = 0.8, 0.2, -0.1
    d = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    rl = [{"method": "ppo", "kl": float(x * x), "proxy": None,
           "gold": offset + (x * (alpha - beta * math.log(x)) if x > 0 else 0.0)} for x in d]
    (fit,) = fit_points(rl)
    assert fit["method"] == "ppo" and fit["form"] == "rl" and fit["reward"] == "gold"
    assert (fit["alpha"], fit["beta"], fit["offset"]) == pytest.approx((alpha, beta, offset))
    bunched = [{"method": "dpo", "kl": kl, "gold": g, "proxy": None}
               for kl, g in [(0.0, 0.0), (1.40, 0.3), (1.45, 0.31), (1.5, 0.29)]]
    assert fit_points(bunched) == []


def test_warnings_for_a_falling_gold_and_for_a_proxy_only_win():
    points = [{"method": "ppo", "step": s, "kl": s / 10, "proxy": p, "gold": g}
              for s, p, g in [(0, 0.0, 0.1), (10, 0.5, 0.6), (20, 1.0, 0.4), (30, 1.5, 0.2)]]
    (warning,) = hacking_warnings(points, {})
    assert warning.startswith("ppo: gold fell from 0.60 (step 10) to 0.20 (step 30)")
    rising = [dict(p, gold=p["proxy"]) for p in points]
    assert hacking_warnings(rising, {}) == []
    summaries = {"ppo": {"win_rate": {"gold": {"mean": 0.3, "ci": [0.2, 0.4]},
                                      "proxy": {"mean": 0.8, "ci": [0.7, 0.9]}}}}
    (warning,) = hacking_warnings([], summaries)
    assert "beats the baseline by the proxy" in warning
    assert warning.endswith("the reward model is being exploited")


def test_a_warning_names_what_the_run_s_own_checks_flagged():
    """The own-task run of issue 19: PPO's gold fell because the no-EOS penalty drove the
    reward, and the warning blamed the reward model."""
    metrics = [{"step": s, "health/no_eos_penalty": float(s < 4), "health/collapse": 0.0}
               for s in range(1, 7)]
    assert health_findings(metrics) == [
        "the no-EOS penalty, not the reward model, was driving the reward (3 of 6 checks)"]
    assert health_findings([{"step": 1, "health/collapse": 0.0}]) == []
    cause = "; its own checks flagged: the no-EOS penalty ..."
    points = [{"method": "ppo", "step": s, "kl": s / 10, "proxy": p, "gold": g}
              for s, p, g in [(0, 0.0, 0.6), (10, 0.5, 0.6), (20, 1.0, 0.4), (30, 1.5, 0.2)]]
    (warning,) = hacking_warnings(points, {}, {"ppo": cause})
    assert warning.endswith(cause)
    summaries = {"ppo": {"win_rate": {"gold": {"mean": 0.3, "ci": [0.2, 0.4]},
                                      "proxy": {"mean": 0.8, "ci": [0.7, 0.9]}}}}
    (warning,) = hacking_warnings([], summaries, {"ppo": cause})
    assert "exploited" not in warning and "no-EOS penalty" in warning


def test_a_fall_of_gold_within_its_noise_is_not_a_warning():
    """Gold 0.83 -> 0.79 on 32 prompts (sd 0.4, se 0.07) is noise: the report said the reward
    model was exploited (issue 19). The trainers log eval/gold_se; trajectory points carry it."""
    metrics = [{"step": s, "eval/kl": s / 10, "eval/proxy": p, "eval/gold": g,
                "eval/gold_se": 0.4 / math.sqrt(32)}
               for s, p, g in [(0, 0.0, 0.5), (10, 0.5, 0.83), (20, 1.0, 0.81), (30, 1.5, 0.79)]]
    points = trajectory_points("ppo", metrics)
    assert points[-1]["gold_se"] == pytest.approx(0.0707, abs=1e-4)
    assert hacking_warnings(points, {}) == []
    falling = [dict(p, gold=g) for p, g in zip(points, [0.5, 0.83, 0.6, 0.45], strict=True)]
    (warning,) = hacking_warnings(falling, {})
    assert warning.startswith("ppo: gold fell from 0.83 (step 10) to 0.45 (step 30)")


def test_best_of_n_points_carry_the_noise_of_their_gold():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(40, 8)).tolist(), rng.normal(size=(40, 8)).tolist()
    points = best_of_n_points({"n": 8, "proxy": proxy, "gold": gold})
    first = points[0]  # n = 1: the mean of every sample, prompts averaged
    per_prompt = np.mean(gold, axis=1)
    assert first["gold_se"] == pytest.approx(np.std(per_prompt, ddof=1) / math.sqrt(40))
    assert all(p["gold_se"] > 0 for p in points)
