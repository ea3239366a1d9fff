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
