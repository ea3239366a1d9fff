"""Reward against KL: where each method's policies lie, the over-optimisation fits, and the
warnings a report shows when the proxy and the gold reward part ways.

A point is one policy: a PPO or DPO evaluation during training (mean over fresh samples on
held-out prompts), or best-of-n from the starting policy. Its x is d = sqrt(KL to the
reference) (Gao et al. 2022 plot reward against d), its y the gold and the proxy reward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from tether.eval.overopt import best_of_n, bon_kl, fit_bon, fit_rl, overoptimization_warning
from tether.eval.policy import evaluate_policy
from tether.metric_names import EVAL_GOLD, EVAL_GOLD_SE, EVAL_KL, EVAL_PROXY
from tether.rollout.base import SamplingParams

# Changes of mean reward smaller than this are not called a trend: a mean over 16-64 held-out
# samples moves by a few hundredths from sampling noise alone.
NOISE = 0.03
# A fit needs points spread over KL: the largest d at least this many times the smallest.
MIN_SPREAD = 1.25
# Which functional form each method's curve follows (Gao et al. 2022, eq. 1 and 2).
FORMS = {"bon": "bon", "ppo": "rl", "dpo": "rl", "grpo": "rl", "rloo": "rl"}


def trajectory_points(method: str, metrics: Sequence[dict]) -> list[dict]:
    """The periodic held-out evaluations of a training run (eval/kl, eval/gold, eval/proxy
    in its metrics.jsonl), one point each."""
    points = []
    for m in metrics:
        if EVAL_KL not in m:
            continue
        points.append({"method": method, "label": f"step {m['step']}", "step": m["step"],
                       "kl": max(float(m[EVAL_KL]), 0.0),
                       "gold": m.get(EVAL_GOLD), "gold_se": m.get(EVAL_GOLD_SE),
                       "proxy": m.get(EVAL_PROXY)})
    return points


def sample_best_of_n(model: torch.nn.Module, tokenizer, prompt_ids: list[list[int]],
                     messages: list, *, n: int, params: SamplingParams, seed: int, gold,
                     reward_model, bf16: bool, progress=None, prompt_rows=None) -> dict:
    """n samples per prompt from the starting policy, scored by the proxy (what best-of-n
    selects by) and by gold (`prompt_rows`: the prompts' rows, for its keyword form); rows are
    prompts."""
    # Prompts per generate call: about 256 sequences at once whatever n is.
    records = evaluate_policy(model, tokenizer, prompt_ids, n=n, params=params, seed=seed,
                              batch_size=max(1, 256 // n), messages=messages, gold=gold,
                              reward_model=reward_model, bf16=bf16, progress=progress,
                              prompt_rows=prompt_rows)

    def table(key: str) -> list[list[float]] | None:
        if any(r[key] is None for r in records):
            return None
        return [[r[key] for r in records[i:i + n]] for i in range(0, len(records), n)]

    return {"n": n, "proxy": table("proxy"), "gold": table("gold"),
            "num_tokens": table("num_tokens")}


def best_of_n_points(samples: dict) -> list[dict]:
    """Best-of-n by the proxy for n = 1, 2, 4, ... up to the number of samples: the expected
    gold and proxy reward of the chosen sample (unbiased, from the same samples), at the
    analytic KL log n - (n - 1) / n."""
    proxy, gold, big_n = samples["proxy"], samples["gold"], samples["n"]
    ns = [2 ** i for i in range(int(math.log2(big_n)) + 1)]
    if ns[-1] != big_n:
        ns.append(big_n)
    return [{"method": "bon", "label": f"n={n}", "n": n, "kl": float(bon_kl(n)),
             "gold": best_of_n(proxy, gold, n) if gold is not None else None,
             "gold_se": _best_of_n_se(proxy, gold, n) if gold is not None else None,
             "proxy": best_of_n(proxy, proxy, n)} for n in ns]


def _best_of_n_se(proxy: list[list[float]], gold: list[list[float]], n: int) -> float | None:
    """Standard error of best-of-n's gold: its per-prompt values are independent across
    prompts, so their spread over sqrt(prompts)."""
    if len(gold) < 2:
        return None
    per_prompt = [best_of_n([p], [g], n) for p, g in zip(proxy, gold, strict=True)]
    return float(np.std(per_prompt, ddof=1) / math.sqrt(len(per_prompt)))


def fit_points(points: Sequence[dict]) -> list[dict]:
    """Gao et al.'s fits of the reward *gain* over the method's first point, R(d) = reward(d)
    - reward(d_0), per method and reward: d(alpha - beta d) for best-of-n, d(alpha - beta
    log d) for RL. The first point's reward is kept as `offset` to draw the curve. A method
    whose points do not spread over KL (3 distinct d > 0, the largest MIN_SPREAD times the
    smallest) gets no fit."""
    fits = []
    for method in dict.fromkeys(p["method"] for p in points):
        ours = [p for p in points if p["method"] == method]
        for reward in ("gold", "proxy"):
            usable = [p for p in ours if p[reward] is not None]
            d_positive = sorted({math.sqrt(p["kl"]) for p in usable if p["kl"] > 0})
            # Two coefficients from a cluster of points at one KL fit anything in between.
            if len(d_positive) < 3 or d_positive[-1] < MIN_SPREAD * d_positive[0]:
                continue
            offset = usable[0][reward]
            d = np.sqrt([p["kl"] for p in usable])
            r = np.array([p[reward] for p in usable]) - offset
            form = FORMS.get(method, "rl")
            try:
                fit = (fit_bon if form == "bon" else fit_rl)(d, r)
            except ValueError:  # fewer than two distinct d > 0: nothing to fit
                continue
            fits.append({"method": method, "reward": reward, "form": form, "offset": offset,
                         **fit})
    return fits


def hacking_warnings(points: Sequence[dict], summaries: dict[str, dict],
                     causes: dict[str, str] | None = None) -> list[str]:
    """A warning where a training run's proxy kept rising while its gold fell, and where a
    final policy beats the baseline by the proxy but loses to it by gold. `causes`: by
    method, what else its run flagged (appended: the fall may not be the reward model's)."""
    causes = causes or {}
    warnings = []
    for method in dict.fromkeys(p["method"] for p in points):
        ours = [p for p in points if p["method"] == method]
        steps = [p.get("step", p.get("n")) for p in ours]
        # A fall of gold counts only past its sampling noise (runs from before gold_se was
        # logged have only the fixed tolerance).
        text = overoptimization_warning(steps, [p["proxy"] for p in ours],
                                        [p["gold"] for p in ours], tol=NOISE,
                                        gold_se=[p.get("gold_se") for p in ours],
                                        unit="n=" if method == "bon" else "step ")
        if text:
            warnings.append(f"{method}: {text}{causes.get(method, '')}")
    for name, summary in summaries.items():
        wins = summary.get("win_rate") or {}
        gold, proxy = wins.get("gold"), wins.get("proxy")
        if gold and proxy and proxy["ci"][0] > 0.5 and gold["ci"][1] < 0.5:
            warnings.append(f"{name} beats the baseline by the proxy ({proxy['mean']:.2f} of "
                            f"samples) but loses to it by gold ({gold['mean']:.2f})"
                            + (causes.get(name) or ": the reward model is being exploited"))
    return warnings
