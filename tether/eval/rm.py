"""How good is a reward model on held-out preferences, and how is it wrong?"""

from __future__ import annotations

import numpy as np

from tether.data.preferences import EncodedPreference
from tether.eval.stats import accuracy_by_bucket, bootstrap_ci, calibration, pearson, spearman
from tether.metric_names import (
    EVAL_ACCURACY,
    EVAL_ACCURACY_CI_HI,
    EVAL_ACCURACY_CI_LO,
    EVAL_ACCURACY_VS_GOLD,
    EVAL_ECE,
    EVAL_EMPTY_WINS,
    EVAL_LABEL_GOLD_AGREEMENT,
    EVAL_LOSS,
    EVAL_MARGIN,
    EVAL_PAIRS,
    EVAL_PROMPTS,
    EVAL_REWARD_LENGTH_CORR,
    EVAL_SPEARMAN_GOLD,
)
from tether.models.reward import RewardModel

# Response-length difference (better minus worse, in tokens): a reward model that prefers
# longer answers whatever they say shows up as accuracy rising with this difference.
LENGTH_EDGES = [-16, -8, -2, 2, 8, 16]


def prompt_ids(prefs: list[EncodedPreference]) -> list[int]:
    """For each row of `prefs`, the index of its prompt among the distinct prompts, in order
    of first appearance: rows that share a prompt (several pair rows over one prompt's
    responses) share an id."""
    ids: dict[tuple, int] = {}
    return [ids.setdefault(p.source.prompt_key(), len(ids)) for p in prefs]


def pair_prompt_groups(prefs: list[EncodedPreference]) -> np.ndarray:
    """The prompt id of every (better, worse) pair of `prefs`, in the order of
    `evaluate_preferences`: the clusters of the accuracy's bootstrap interval."""
    ids = prompt_ids(prefs)
    return np.array([ids[r] for r, p in enumerate(prefs) for _ in p.source.pairs()], dtype=int)


def evaluate_preferences(rm: RewardModel, prefs: list[EncodedPreference], *,
                         batch_size: int = 16, bf16: bool = False, seed: int = 0,
                         progress: bool = False) -> tuple[dict[str, float], dict]:
    """Metrics for `metrics.jsonl` and details (tables) for eval.json and the report.

    Accuracy is over (better, worse) pairs (EVAL_PAIRS); its bootstrap interval resamples
    whole prompts (EVAL_PROMPTS distinct ones), since the pairs of one prompt share its
    responses, whether they come from one ranking row or from several pair rows.

    Calibration uses raw score differences, the quantity Bradley-Terry fits: a pair predicts
    P(better wins) = sigmoid(r_better - r_worse). Each pair is counted both ways round (the
    symmetric reliability diagram), else every label would be 1 and any model would look
    overconfident or underconfident by construction. EVAL_EMPTY_WINS: how often the empty
    response to a prompt outscores one of its real responses. `progress`: show a bar over the
    scoring batches."""
    flat = [e for p in prefs for e in p.responses]
    raw = rm.raw_scores_of(flat, batch_size, bf16,
                           progress="rm: held-out eval" if progress else "").numpy()
    lengths = np.array([sum(e.loss_mask) for e in flat])
    better, worse = [], []
    empty, beside = [], []  # each prompt's empty response; the real responses beside it
    offset = 0
    for pref in prefs:
        k = len(pref.responses)
        for i, j in pref.source.pairs():
            better.append(offset + i)
            worse.append(offset + j)
        if (e := rm.encode(pref.source.prompt, "")) is not None:
            empty.append(e)
            beside.append(range(offset, offset + k))
        offset += k
    empty_raw = rm.raw_scores_of(empty, batch_size, bf16).numpy()
    empty_wins = [empty_raw[n] > raw[i] for n, rows in enumerate(beside) for i in rows]
    groups = pair_prompt_groups(prefs)
    better, worse = np.array(better), np.array(worse)
    diff = raw[better] - raw[worse]
    correct = (diff > 0) + 0.5 * (diff == 0)
    lo, hi = bootstrap_ci(correct, groups, seed=seed)
    ece, reliability = calibration(1 / (1 + np.exp(-diff)), np.ones_like(diff), symmetric=True)
    metrics = {
        EVAL_ACCURACY: float(correct.mean()), EVAL_ACCURACY_CI_LO: lo, EVAL_ACCURACY_CI_HI: hi,
        # the Bradley-Terry loss on held-out pairs, -log sigmoid(diff), computed stably
        EVAL_LOSS: float(np.logaddexp(0.0, -diff).mean()),
        EVAL_MARGIN: float(diff.mean()), EVAL_ECE: ece,
        EVAL_PAIRS: float(len(diff)), EVAL_PROMPTS: float(len(np.unique(groups))),
        EVAL_REWARD_LENGTH_CORR: pearson(raw, lengths) if len(raw) > 2 else float("nan"),
        # how often an empty response outscores a real response to the same prompt
        EVAL_EMPTY_WINS: float(np.mean(empty_wins)) if empty_wins else float("nan"),
    }
    details = {"reliability": reliability,
               "by_length_diff": accuracy_by_bucket(correct, lengths[better] - lengths[worse],
                                                    LENGTH_EDGES)}
    if all(p.source.gold is not None for p in prefs):
        gold = np.concatenate([p.source.gold for p in prefs])
        gold_diff = gold[better] - gold[worse]
        decided = gold_diff != 0
        metrics[EVAL_SPEARMAN_GOLD] = spearman(raw, gold)
        if decided.any():  # pairs gold ranks equal say nothing about agreement
            # How often the labels themselves agree with gold: the ceiling for the accuracy.
            metrics[EVAL_LABEL_GOLD_AGREEMENT] = float((gold_diff[decided] > 0).mean())
            metrics[EVAL_ACCURACY_VS_GOLD] = float(
                (np.sign(diff[decided]) == np.sign(gold_diff[decided])).mean())
    return metrics, details


def format_table(metrics: dict[str, float]) -> str:
    rows = [("pairwise accuracy", f"{metrics[EVAL_ACCURACY]:.3f}  (95% CI "
                                  f"{metrics[EVAL_ACCURACY_CI_LO]:.3f}-"
                                  f"{metrics[EVAL_ACCURACY_CI_HI]:.3f}, "
                                  f"{int(metrics[EVAL_PAIRS])} pairs)"),
            ("mean margin r_better - r_worse", f"{metrics[EVAL_MARGIN]:.3f}"),
            ("expected calibration error", f"{metrics[EVAL_ECE]:.3f}"),
            ("corr(reward, response length)", f"{metrics[EVAL_REWARD_LENGTH_CORR]:.3f}"),
            ("empty response beats a real one", f"{metrics[EVAL_EMPTY_WINS]:.3f}")]
    if EVAL_LABEL_GOLD_AGREEMENT in metrics:
        rows += [("labels' agreement with gold", f"{metrics[EVAL_LABEL_GOLD_AGREEMENT]:.3f}"),
                 ("reward order agrees with gold", f"{metrics[EVAL_ACCURACY_VS_GOLD]:.3f}")]
    if EVAL_SPEARMAN_GOLD in metrics:
        rows += [("Spearman(reward, gold)", f"{metrics[EVAL_SPEARMAN_GOLD]:.3f}")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)

