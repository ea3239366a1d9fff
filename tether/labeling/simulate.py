"""A simulated labeler: noisy Bradley-Terry / Plackett-Luce choices from a gold scorer.

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
accuracy against these labels is compared with; it is printed, returned, and written to
<output>.stats.json beside the labels.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tether.config import SimulateLabelsConfig
from tether.data.readers import BadRow, read_rows
from tether.errors import ConfigError, DataError, UserError
from tether.tasks.registry import load_gold_scorer

Scorer = Callable[[list[str]], Sequence[float]]


def run(cfg: SimulateLabelsConfig) -> Path:
    """`tether label simulate`: read candidates, label them, write labels atomically."""
    # imported here: tether.checkpoint pulls in torch and peft (~5 s), which labelling never uses
    from tether.checkpoint import atomic_write_jsonl, atomic_write_text

    out = Path(cfg.output)
    if out.suffix != ".jsonl":
        raise ConfigError(f"output must be a .jsonl file, got '{cfg.output}'")
    if Path(cfg.candidates).resolve() == out.resolve():
        raise ConfigError(f"output '{cfg.output}' would overwrite the candidates")
    rows = read_candidates(cfg.candidates)
    scorer = load_gold_scorer(cfg.gold)
    out_rows, stats = simulate(rows, scorer, cfg)
    atomic_write_jsonl(out, out_rows)
    stats_path = stats_path_for(out)
    atomic_write_text(stats_path, json.dumps(stats, indent=2) + "\n")
    print(summary(stats, out))
    print(f"stats: {stats_path}")
    return out


def stats_path_for(output: Path) -> Path:
    """labels.jsonl -> labels.stats.json"""
    return output.with_name(output.stem + ".stats.json")


def summary(stats: dict, out: Path | str) -> str:
    agreement = stats["agreement_with_gold"]
    agree = "n/a (no pair differs in gold)" if agreement is None else f"{agreement:.3f}"
    expected = stats["expected_agreement"]
    expect = "" if expected is None else f" (expected {expected:.3f} from T and flip_rate)"
    return (f"wrote {stats['rows']} {stats['format']} rows for {stats['prompts']} prompts "
            f"({stats['pairs']} labelled pairs) to {out}\n"
            f"agreement with gold: {agree}{expect}; {stats['gold_ties']} pairs tied in gold "
            f"left out")


# ---------------------------------------------------------------------------------------------
# Reading candidates
# ---------------------------------------------------------------------------------------------


def read_candidates(source: str) -> list[dict[str, Any]]:
    """Candidate rows {"prompt", "responses": [K >= 2 strings]}; a bad row stops the run with
    its file:line."""
    rows = [parse_candidate(row.record, row.where) for row in read_rows(source)]
    if not rows:
        raise DataError(f"{source}: no candidate rows")
    return rows


def parse_candidate(record: Any, where: str) -> dict[str, Any]:
    """{"prompt", "responses"} from one candidates record, or DataError naming `where`."""
    if isinstance(record, BadRow):
        raise record
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with 'prompt' and 'responses', got "
                        f"{type(record).__name__}")
    if "prompt" not in record:
        raise DataError(f"{where}: missing 'prompt'")
    prompt = record["prompt"]
    if not isinstance(prompt, (str, list)):
        raise DataError(f"{where}: 'prompt' must be a string or a list of messages, got "
                        f"{type(prompt).__name__}")
    if "responses" not in record:
        raise DataError(f"{where}: missing 'responses' (a list of K >= 2 response strings, "
                        f"as written by `tether sample`)")
    responses = record["responses"]
    if not isinstance(responses, list):
        raise DataError(f"{where}: 'responses' must be a list of strings, got "
                        f"{type(responses).__name__}")
    if len(responses) < 2:
        what = "empty" if not responses else "a single response"
        raise DataError(f"{where}: 'responses' is {what}; comparing needs at least 2")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise DataError(f"{where}: responses[{i}] must be a string, got {type(r).__name__}")
    return {"prompt": prompt, "responses": responses}


# ---------------------------------------------------------------------------------------------
# Labelling
# ---------------------------------------------------------------------------------------------


def score_all(rows: Sequence[dict], scorer: Scorer) -> list[np.ndarray]:
    """Gold score of every response, one scorer call for all distinct texts."""
    texts = list(dict.fromkeys(r for row in rows for r in row["responses"]))
    scores = scorer(texts)
    try:
        scores = np.asarray(list(scores), dtype=float)
    except (TypeError, ValueError):
        raise UserError("the gold scorer must return one number per text") from None
    if scores.shape != (len(texts),):
        raise UserError(f"the gold scorer returned {scores.size} scores for {len(texts)} texts")
    if not np.all(np.isfinite(scores)):
        bad = texts[int(np.flatnonzero(~np.isfinite(scores))[0])]
        raise UserError(f"the gold scorer returned NaN or infinity, e.g. for {bad[:80]!r}")
    by_text = dict(zip(texts, scores.tolist(), strict=True))
    return [np.array([by_text[r] for r in row["responses"]]) for row in rows]


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


def simulate(rows: Sequence[dict], scorer: Scorer,
             cfg: SimulateLabelsConfig) -> tuple[list[dict], dict]:
    """Label candidate rows; returns (output rows, stats). No file I/O.

    Random draws come from numpy's default_rng(cfg.seed), in row order, so the same rows,
    scorer and config give the same labels. For pairs, every pair draws its preference and its
    flip from separate uniforms, so changing flip_rate alone only flips some labels.
    """
    if not cfg.temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {cfg.temperature}")
    if not 0 <= cfg.flip_rate <= 1:
        raise ConfigError(f"flip_rate must be in [0, 1], got {cfg.flip_rate}")
    rows = [parse_candidate(row, f"row {i}") for i, row in enumerate(rows)]
    gold = score_all(rows, scorer)
    rng = np.random.default_rng(cfg.seed)
    if cfg.format not in ("rankings", "pairs"):
        raise ConfigError(f"format must be rankings or pairs, got '{cfg.format}'")
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
                         "ranks": ranks.tolist(), "gold_scores": g.tolist()})
        # the C(K, 2) pairs the ranking implies, in (better, worse) order
        for pos, i in enumerate(order):
            for j in order[pos + 1:]:
                better.append(g[i])
                worse.append(g[j])
    return out_rows, better, worse, {}


def _label_pairs(rows, gold, rng, cfg):
    out_rows, better, worse = [], [], []
    identical, short = 0, 0
    for row, g in zip(rows, gold, strict=True):
        responses = row["responses"]
        k = len(responses)
        # a pair of identical texts says nothing (and the preference reader rejects it)
        combos = [(i, j) for i in range(k) for j in range(i + 1, k)
                  if responses[i] != responses[j]]
        identical += k * (k - 1) // 2 - len(combos)
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
                             "gold_rejected": float(g[r])})
            better.append(g[c])
            worse.append(g[r])
    extra = {"identical_pairs_skipped": identical, "prompts_with_fewer_pairs": short}
    return out_rows, better, worse, extra
