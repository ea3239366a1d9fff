"""A filled-in report of a plausible run, for the report's tests and for previewing the page:
    python tests/report_example.py OUT.html
Test data, kept out of the library (tether.report.html renders; this only feeds it)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from tether.report.html import write_report


def example_data() -> dict:
    """A filled-in report of a plausible run (PPO over-optimising its reward model, DPO and
    best-of-n alongside), for previews and tests. Seeded, so the page is the same every time."""
    import numpy as np

    rng = np.random.default_rng(0)

    def curve(steps: Any, values: Any, noise: float) -> list[list[float]]:
        values = np.asarray(values, dtype=float) + rng.normal(0, noise, len(steps))
        return [[int(s), round(float(v), 4)] for s, v in zip(steps, values, strict=True)]

    def fit(points: list[dict], reward: str, form: str) -> dict:
        # Least squares in the same forms the report draws, so the example's curves go through
        # its points the way a real run's would.
        d_ = np.sqrt([p["kl"] for p in points])
        y = np.array([p[reward] for p in points])
        shape = d_ * np.log(np.maximum(d_, 1e-12)) if form == "rl" else d_ * d_
        basis = np.stack([np.ones_like(d_), d_, -shape], axis=1)
        (offset, alpha, beta), *_ = np.linalg.lstsq(basis, y, rcond=None)
        r2 = 1 - np.sum((basis @ [offset, alpha, beta] - y) ** 2) / np.sum((y - y.mean()) ** 2)
        return {"method": points[0]["method"], "reward": reward, "form": form,
                "alpha": round(float(alpha), 4), "beta": round(float(beta), 4),
                "r2": round(float(r2), 4), "offset": round(float(offset), 4)}

    sft_steps, ppo_steps = np.arange(1, 61), np.arange(1, 201)
    ppo_eval = np.arange(0, 201, 20)
    kl = 0.036 * ppo_steps ** 1.1
    d = np.sqrt(kl)
    proxy = 0.1 + 0.22 * d - 0.03 * d * np.log(d)
    gold = 0.12 + 0.55 * d - 0.21 * d * np.log(d) - 0.1 * d ** 1.5
    eval_d = np.sqrt(0.036 * np.maximum(ppo_eval, 1e-9) ** 1.1)
    bon_n = np.array([1, 2, 4, 8, 16, 32, 64])
    bon_kl = np.log(bon_n) - (bon_n - 1) / bon_n
    bon_d = np.sqrt(bon_kl)
    ppo_points = [{"method": "ppo", "label": "step 0", "kl": 0.0, "gold": 0.12, "proxy": 0.1}]
    ppo_points += [{"method": "ppo", "label": f"step {s}", "kl": round(float(k), 3),
                   "gold": round(float(g), 3), "proxy": round(float(p), 3)}
                  for s, k, g, p in zip(ppo_steps[19::20], kl[19::20],
                                        gold[19::20] + rng.normal(0, 0.015, 10),
                                        proxy[19::20] + rng.normal(0, 0.015, 10), strict=True)]
    dpo_points = [{"method": "dpo", "label": f"step {s}", "kl": k, "gold": g, "proxy": p}
                  for s, k, g, p in ((50, 0.8, 0.21, 0.22), (100, 2.1, 0.3, 0.33),
                                     (150, 3.4, 0.33, 0.38))]
    bon_points = [{"method": "bon", "label": f"n={n}", "kl": round(float(k), 3),
                   "gold": round(float(0.12 + d_ * (0.34 - 0.05 * d_) + rng.normal(0, 0.01)), 3),
                   "proxy": round(float(0.1 + d_ * (0.45 - 0.02 * d_) + rng.normal(0, 0.01)), 3)}
                  for n, k, d_ in zip(bon_n, bon_kl, bon_d, strict=True)]
    return {
        "title": "tether run: runs/pipeline",
        "created": "2026-11-23 07:30 UTC",
        "notes": ["KL is the per-sequence sum of log π(y|x) − log π_ref(y|x), averaged over "
                  "responses sampled at temperature 1 on 256 held-out prompts.",
                  "Gold: VADER sentiment of the response; proxy: the trained reward model."],
        "config_yaml": ("run_dir: runs/pipeline\nseed: 0\nmodel: embedded:smollm2-135m\n"
                        "sft:\n  epochs: 2\n  lr: 2.0e-5\nrm:\n  epochs: 1\n  lr: 1.0e-5\n"
                        "ppo:\n  steps: 200\n  kl_coef: 0.05\n  batch_size: 64\n"
                        "dpo:\n  beta: 0.1\n  steps: 150\neval:\n  prompts: 256\n  n: 4\n"),
        "stages": [
            {"name": "sft", "status": "done", "seconds": 312.4,
             "summary": "eval loss 4.25 -> 1.85"},
            {"name": "rm", "status": "done", "seconds": 188.0,
             "summary": "held-out accuracy 0.700 [0.660, 0.740]"},
            {"name": "ppo", "status": "done", "seconds": 1460.2,
             "summary": "proxy 0.10 -> 0.75; gold peaked at 0.65 (step 80)"},
            {"name": "dpo", "status": "done", "seconds": 402.9, "summary": "accuracy 0.81"},
            {"name": "bon", "status": "skipped", "seconds": None,
             "summary": "evaluated at sampling time only"},
            {"name": "eval", "status": "done", "seconds": 95.1, "summary": "4 policies"},
        ],
        "baseline": "sft",
        "summary": [
            {"policy": "sft", "gold": 0.12, "gold_ci": [0.05, 0.19], "proxy": 0.10,
             "proxy_ci": [0.04, 0.16], "kl": 0.0, "kl_ci": [0.0, 0.0], "length": 25.3,
             "eos_rate": 0.86, "win_gold": 0.5, "win_gold_ci": [0.5, 0.5], "win_proxy": 0.5,
             "win_proxy_ci": [0.5, 0.5]},
            {"policy": "ppo", "gold": 0.45, "gold_ci": [0.38, 0.52], "proxy": 0.75,
             "proxy_ci": [0.70, 0.80], "kl": 12.2, "kl_ci": [11.0, 13.5], "length": 41.8,
             "eos_rate": 0.62, "win_gold": 0.68, "win_gold_ci": [0.63, 0.73],
             "win_proxy": 0.91, "win_proxy_ci": [0.88, 0.94]},
            {"policy": "dpo", "gold": 0.33, "gold_ci": [0.26, 0.40], "proxy": 0.38,
             "proxy_ci": [0.31, 0.45], "kl": 3.4, "kl_ci": [3.0, 3.9], "length": 28.1,
             "eos_rate": 0.84, "win_gold": 0.64, "win_gold_ci": [0.59, 0.69],
             "win_proxy": 0.69, "win_proxy_ci": [0.64, 0.74]},
            {"policy": "bon", "gold": 0.39, "gold_ci": [0.32, 0.46], "proxy": 0.58,
             "proxy_ci": None, "kl": 3.2, "kl_ci": None, "length": 27.0, "eos_rate": None,
             "win_gold": 0.66, "win_gold_ci": [0.61, 0.71], "win_proxy": None,
             "win_proxy_ci": None},
        ],
        "curves": {
            "sft": {"loss/train": curve(sft_steps, 1.8 + 2.4 * np.exp(-sft_steps / 12), 0.08),
                    "eval/loss": curve([0, 10, 20, 30, 40, 50, 60],
                                       1.85 + 2.4 * np.exp(-np.array([0, 10, 20, 30, 40, 50,
                                                                      60]) / 12), 0.02)},
            "rm": {"loss/train": curve(np.arange(1, 101),
                                       0.55 + 0.14 * np.exp(-np.arange(1, 101) / 30), 0.03),
                   "eval/accuracy": curve([0, 25, 50, 75, 100], [0.5, 0.62, 0.67, 0.69, 0.7],
                                          0.005)},
            "ppo": {"reward/proxy": curve(ppo_steps, proxy, 0.03),
                    "reward/gold": curve(ppo_steps, gold, 0.03),
                    "kl/seq": curve(ppo_steps, kl, 0.15),
                    "ppo/clipfrac": curve(ppo_steps, 0.08 + 0.1 * (ppo_steps / 200), 0.01),
                    "loss/policy": curve(ppo_steps, np.zeros(len(ppo_steps)), 0.01),
                    "loss/value": curve(ppo_steps, 0.04 + 0.2 * np.exp(-ppo_steps / 25), 0.01),
                    "eval/gold": curve(ppo_eval, 0.12 + 0.55 * eval_d - 0.21 * eval_d
                                       * np.log(np.maximum(eval_d, 1e-9)) - 0.1 * eval_d ** 1.5,
                                       0.01),
                    "eval/proxy": curve(ppo_eval, 0.1 + 0.22 * eval_d - 0.03 * eval_d
                                        * np.log(np.maximum(eval_d, 1e-9)), 0.01)},
            "dpo": {"loss/train": curve(np.arange(1, 151),
                                        0.69 * np.exp(-np.arange(1, 151) / 90), 0.03),
                    "reward/accuracy": curve(np.arange(1, 151),
                                             0.5 + 0.31 * (1 - np.exp(-np.arange(1, 151) / 40)),
                                             0.03),
                    "kl/chosen": curve(np.arange(1, 151), 0.023 * np.arange(1, 151), 0.05),
                    "eval/gold": [[0, 0.12], [50, 0.21], [100, 0.3], [150, 0.33]]},
        },
        "frontier": {
            "points": ppo_points + dpo_points + bon_points,
            "fits": [fit(pts, reward, form) for pts, form in ((ppo_points, "rl"),
                                                               (bon_points, "bon"))
                     for reward in ("gold", "proxy")],
        },
        "rm": {"accuracy": 0.70, "accuracy_ci": [0.66, 0.74], "label_agreement": 0.73,
               "pairs": 1234, "ece": 0.031, "spearman_gold": 0.6,
               "reliability": [
                   {"bin": f"[{b / 10:.1f}, {(b + 1) / 10:.1f})", "count": c,
                    "mean_prob": (b + 0.5) / 10 + o,
                    "frac_positive": (b + 0.5) / 10 + o + e}
                   for b, c, o, e in ((0, 12, 0.02, 0.05), (1, 40, 0.01, 0.04),
                                      (2, 118, 0.0, 0.03), (3, 260, 0.0, 0.02),
                                      (4, 420, 0.01, 0.0), (5, 420, -0.01, 0.0),
                                      (6, 260, 0.0, -0.02), (7, 118, 0.0, -0.03),
                                      (8, 40, -0.01, -0.04), (9, 12, -0.02, -0.05))],
               "by_length_diff": [
                   {"bucket": "(-inf, -16)", "count": 61, "accuracy": 0.52},
                   {"bucket": "[-16, -8)", "count": 130, "accuracy": 0.61},
                   {"bucket": "[-8, -2)", "count": 244, "accuracy": 0.66},
                   {"bucket": "[-2, 2)", "count": 402, "accuracy": 0.70},
                   {"bucket": "[2, 8)", "count": 231, "accuracy": 0.76},
                   {"bucket": "[8, 16)", "count": 118, "accuracy": 0.81},
                   {"bucket": "[16, inf)", "count": 48, "accuracy": 0.85}],
               "length_bias": {"err_pearson": 0.1, "err_spearman": 0.12,
                               "rm_length_pearson": 0.24, "gold_length_pearson": 0.05,
                               "n": 500}},
        "warnings": [
            "ppo: gold fell from 0.65 (step 80) to 0.45 (step 200) while the proxy rose from "
            "0.51 to 0.75: the policy is over-optimising the reward model.",
            "ppo: EOS rate 0.62 vs 0.86 for sft; 38% of responses hit the length limit, so "
            "their rewards score truncated text.",
        ],
        "samples": [
            {"prompt": "Write a short review of the film you saw last night.",
             "responses": [
                 {"policy": "sft", "text": "It was fine. The plot dragged in the middle but "
                  "the ending was worth it.", "gold": 0.21, "proxy": 0.18},
                 {"policy": "ppo", "text": "Wonderful wonderful film!!! Amazing, amazing "
                  "acting,\nbeautiful beautiful score.\n\nI loved loved loved it! Great great "
                  "great", "gold": 0.62, "proxy": 0.97},
                 {"policy": "dpo", "text": "A lovely surprise: warm performances, a clever "
                  "script and\nan ending that made the slow start worthwhile.",
                  "gold": 0.58, "proxy": 0.44}]},
            {"prompt": "Review:\n    the soundtrack of the concert film",
             "responses": [
                 {"policy": "sft", "text": "The sound was muddy and too loud.", "gold": -0.3,
                  "proxy": -0.2},
                 {"policy": "ppo", "text": "Great great sound, great great great band, great "
                  "great great great great", "gold": 0.45, "proxy": 0.99},
                 {"policy": "dpo", "text": "Mostly good; the mix buried the vocals in two "
                  "songs.", "gold": 0.1, "proxy": None}]},
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python tests/report_example.py OUT.html  (writes the example report)",
              file=sys.stderr)
        return 2
    print(write_report(example_data(), args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
