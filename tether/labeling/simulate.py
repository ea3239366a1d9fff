"""A simulated labeler: noisy Bradley-Terry / Plackett-Luce choices from a gold scorer.

`tether label simulate` (labeling/commands.py) runs it on a candidates file:

    tether label simulate candidates=runs/sample/candidates.jsonl temperature=0.5

Every response is scored once by the gold scorer (g, e.g. VADER sentiment for the built-in
task; the scorer sees the response text alone). With temperature T and flip rate f:

- format=pairs: each labelled pair (a, b) is decided by P(a over b) = sigmoid((g_a - g_b) / T),
  then flipped with probability f.
- format=rankings: each prompt's K responses are ordered by Plackett-Luce with utilities g / T
  (pick the best with probability softmax(g / T), then the best of the rest, ...), sampled
  exactly with the Gumbel-max trick: sort g_i / T + Gumbel noise, descending. Every one of the
  C(K, 2) pairs a ranking implies then has exactly P(a above b) = sigmoid((g_a - g_b) / T),
  the same as format=pairs, whatever the other responses. Then, with probability f, the whole
  order is reversed (a labeler who read the scale upside down), so each implied pair is flipped
  with probability exactly f, as in format=pairs. Independent flips per pair are not an option
  for a ranking: they can produce cycles (a > b > c > a) that no ranking expresses.

In both formats, every labelled pair therefore has, marginally,
P(label a over b) = (1 - f) * sigmoid((g_a - g_b) / T) + f * sigmoid((g_b - g_a) / T).

The labels' agreement with gold (the share of labelled pairs, gold ties excluded, whose
preferred response has the higher gold score) is the noise ceiling that a reward model's
accuracy against these labels is compared with; `simulate` returns it with the labels, and
the command prints it and writes it to <output>.stats.json beside them.

- format=thumbs (for KTO): every response gets a thumb of its own, up with probability
  P(up) = sigmoid((g - threshold) / T), then flipped with probability f; a rater judging one
  response against an absolute bar rather than against another response. The threshold is
  by default the median gold score of the rated responses, so about half the thumbs are up.
  Its agreement with gold is the share of thumbs that match g > threshold (responses exactly
  at the threshold left out), expected (1 - f) * sigmoid(|g - t| / T) + f * sigmoid(-|g - t|
  / T) for each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tether.config import SimulateLabelsConfig
from tether.data.candidates import Candidates
from tether.errors import ConfigError
from tether.tasks.gold import GoldScorer, score_all


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    """1 / (1 + exp(-x)), written so that |x| of 1e6 (temperature -> 0) neither overflows
    nor warns."""
    return 0.5 * (1.0 + np.tanh(np.asarray(x, dtype=float) / 2.0))


def agreement_with_gold(gold_preferred: Sequence[float],
                        gold_other: Sequence[float]) -> float | None:
    """Share of labelled pairs whose preferred response has the higher gold score, pairs tied
    in gold left out; None if every pair is tied."""
    a, b = np.asarray(gold_preferred, dtype=float), np.asarray(gold_other, dtype=float)
    differ = a != b
    return float(np.mean(a[differ] > b[differ])) if differ.any() else None


def expected_agreement(gold_diffs: Sequence[float], temperature: float,
                       flip_rate: float) -> float | None:
    """E[agreement] given the pairs' gold differences |g_a - g_b| (ties left out):
    mean of (1 - f) * sigmoid(|d| / T) + f * sigmoid(-|d| / T). No sampling noise, so this
    is what to tune T against."""
    d = np.abs(np.asarray(gold_diffs, dtype=float))
    d = d[d > 0]
    if d.size == 0:
        return None
    p = sigmoid(d / temperature)
    return float(np.mean((1 - flip_rate) * p + flip_rate * (1 - p)))


def simulate(candidates: Candidates, scorer: GoldScorer,
             cfg: SimulateLabelsConfig) -> tuple[list[dict], dict]:
    """Label candidates (their responses distinct within each row: tether.data.candidates
    merged any the same); returns (output rows, stats). No file I/O.

    Random draws come from numpy's default_rng(cfg.seed), in row order, so the same rows,
    scorer and config give the same labels. For pairs, every pair draws its preference and its
    flip from separate uniforms, so changing flip_rate alone only flips some labels.
    """
    if not cfg.temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {cfg.temperature}")
    if not 0 <= cfg.flip_rate <= 1:
        raise ConfigError(f"flip_rate must be in [0, 1], got {cfg.flip_rate}")
    rows = candidates.rows
    gold = score_all(rows, scorer)
    rng = np.random.default_rng(cfg.seed)
    if cfg.format == "thumbs":
        out_rows, stats = _label_thumbs(rows, gold, rng, cfg)
        return out_rows, {**stats, "identical_responses_merged": candidates.merged,
                          "prompts_left_out": candidates.left_out}
    if cfg.format not in ("rankings", "pairs"):
        raise ConfigError(f"format must be rankings, pairs or thumbs, got '{cfg.format}'")
    label = _label_rankings if cfg.format == "rankings" else _label_pairs
    out_rows, better, worse, extra = label(rows, gold, rng, cfg)
    better, worse = np.asarray(better, dtype=float), np.asarray(worse, dtype=float)
    all_gold = np.concatenate(gold)
    stats = {
        "format": cfg.format,
        "prompts": len(rows),
        "rows": len(out_rows),
        "pairs": int(better.size),
        "gold_ties": int(np.sum(better == worse)),
        "agreement_with_gold": agreement_with_gold(better, worse),
        "expected_agreement": expected_agreement(better - worse, cfg.temperature,
                                                 cfg.flip_rate),
        "temperature": cfg.temperature,
        "flip_rate": cfg.flip_rate,
        "seed": cfg.seed,
        "gold_mean": float(all_gold.mean()),
        "gold_std": float(all_gold.std()),
        "identical_responses_merged": candidates.merged,
        "prompts_left_out": candidates.left_out,
        **extra,
    }
    return out_rows, stats


def _label_rankings(rows, gold, rng, cfg):
    out_rows, better, worse = [], [], []
    for row, g in zip(rows, gold, strict=True):
        k = len(g)
        keys = g / cfg.temperature + rng.gumbel(size=k)
        order = np.argsort(-keys, kind="stable")  # best first: Plackett-Luce on g / T
        if rng.random() < cfg.flip_rate:
            order = order[::-1]
        ranks = np.empty(k, dtype=int)
        ranks[order] = np.arange(k)
        out_rows.append({"prompt": row["prompt"], "responses": row["responses"],
                         "ranks": ranks.tolist(), "gold_scores": g.tolist(),
                         **({"finished": row["finished"]} if "finished" in row else {})})
        # the C(K, 2) pairs the ranking implies, in (better, worse) order
        for pos, i in enumerate(order):
            for j in order[pos + 1:]:
                better.append(g[i])
                worse.append(g[j])
    return out_rows, better, worse, {}


def _label_pairs(rows, gold, rng, cfg):
    out_rows, better, worse = [], [], []
    short = 0
    for row, g in zip(rows, gold, strict=True):
        responses = row["responses"]
        k = len(responses)
        combos = [(i, j) for i in range(k) for j in range(i + 1, k)]
        if cfg.pairs_per_prompt == 0:
            picked = combos
        else:
            if cfg.pairs_per_prompt > len(combos):
                short += 1
            m = min(cfg.pairs_per_prompt, len(combos))
            picked = [combos[c] for c in rng.permutation(len(combos))[:m]]
        for i, j in picked:
            a_wins = rng.random() < sigmoid((g[i] - g[j]) / cfg.temperature)
            if rng.random() < cfg.flip_rate:
                a_wins = not a_wins
            c, r = (i, j) if a_wins else (j, i)
            out_rows.append({"prompt": row["prompt"], "chosen": responses[c],
                             "rejected": responses[r], "gold_chosen": float(g[c]),
                             "gold_rejected": float(g[r]),
                             **({"chosen_finished": row["finished"][c],
                                 "rejected_finished": row["finished"][r]}
                                if "finished" in row else {})})
            better.append(g[c])
            worse.append(g[r])
    extra = {"prompts_with_fewer_pairs": short}
    return out_rows, better, worse, extra


def _label_thumbs(rows, gold, rng, cfg) -> tuple[list[dict], dict]:
    """{prompt, completion, label, gold_score, and finished where the candidates have it} for
    every response, in row order; each draws its thumb and its flip from separate uniforms,
    as pairs do."""
    all_gold = np.concatenate(gold)
    threshold = float(np.median(all_gold)) if cfg.threshold is None else cfg.threshold
    out_rows, labels = [], []
    for row, g in zip(rows, gold, strict=True):
        finished = row.get("finished") or [None] * len(g)
        for response, score, ended in zip(row["responses"], g, finished, strict=True):
            up = bool(rng.random() < sigmoid((score - threshold) / cfg.temperature))
            if rng.random() < cfg.flip_rate:
                up = not up
            out_rows.append({"prompt": row["prompt"], "completion": response, "label": up,
                             "gold_score": float(score),
                             **({"finished": ended} if ended is not None else {})})
            labels.append(up)
    labels = np.asarray(labels)
    above, at = all_gold > threshold, all_gold == threshold
    distance = np.abs(all_gold[~at] - threshold)
    p = sigmoid(distance / cfg.temperature)
    stats = {
        "format": "thumbs",
        "prompts": len(rows),
        "rows": len(out_rows),
        "thumbs_up": int(labels.sum()),
        "thumbs_down": int((~labels).sum()),
        "threshold": threshold,
        "threshold_from": "median gold score" if cfg.threshold is None else "config",
        "gold_ties": int(at.sum()),  # responses exactly at the threshold: no right thumb
        "agreement_with_gold": float(np.mean(labels[~at] == above[~at])) if distance.size
        else None,
        "expected_agreement": float(np.mean((1 - cfg.flip_rate) * p + cfg.flip_rate * (1 - p)))
        if distance.size else None,
        "temperature": cfg.temperature,
        "flip_rate": cfg.flip_rate,
        "seed": cfg.seed,
        "gold_mean": float(all_gold.mean()),
        "gold_std": float(all_gold.std()),
    }
    return out_rows, stats


def thumbs_summary(stats: dict, out) -> str:
    """What `tether label simulate format=thumbs` prints."""
    agreement, expected = stats["agreement_with_gold"], stats["expected_agreement"]
    agree = "n/a (every response is at the threshold)" if agreement is None else \
        f"{agreement:.3f}"
    expect = "" if expected is None else f" (expected {expected:.3f} from T and flip_rate)"
    return (f"wrote {stats['rows']} thumbs rows ({stats['thumbs_up']} up, "
            f"{stats['thumbs_down']} down) for {stats['prompts']} prompts to {out}\n"
            f"threshold {stats['threshold']:.4g} ({stats['threshold_from']}); agreement with "
            f"gold (thumb up = gold above it): {agree}{expect}; {stats['gold_ties']} responses "
            f"at the threshold left out")
