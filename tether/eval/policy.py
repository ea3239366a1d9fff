"""Evaluate a policy by sampling from it: gold score, proxy reward, KL to a reference, length.

    evaluate_policy     sample n responses per prompt and measure each one (per-sample records)
    summarize           means with grouped bootstrap intervals, EOS share, paired win rates
    sequence_kl         sum over response tokens of log pi - log ref (pure torch)
    response_logprobs   per-token log-probs of the response tokens of (prompt, response) pairs

A record is a plain dict, ready for `json.dumps`:
{"prompt_index", "sample_index", "response", "gold", "proxy", "kl", "num_tokens", "finished"};
gold, proxy and kl are None when there is no gold scorer, reward model or reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from tether.data.collate import pad_batch
from tether.data.order import chunks
from tether.data.prompts import PromptRow
from tether.data.tokenize import Messages
from tether.device import autocast, model_device
from tether.eval.stats import bootstrap_ci
from tether.metric_names import (
    EVAL_EMPTY,
    EVAL_GOLD,
    EVAL_GOLD_SE,
    EVAL_KL,
    EVAL_NUM_TOKENS,
    EVAL_PROXY,
)
from tether.models.head import DEFAULT_CHUNK
from tether.models.logprobs import forward_logprobs
from tether.models.reward import RewardModel
from tether.rollout.backends import make_generator
from tether.rollout.base import Generator, SamplingParams
from tether.tasks.gold import GoldScorer, score_all

# Per-sample numbers that get a mean and an interval in the summary.
METRICS = ("gold", "proxy", "kl", "num_tokens")
# Compared pair by pair against the baseline policy's sample with the same (prompt, index).
WIN_METRICS = ("gold", "proxy")


# ---------------------------------------------------------------------------------------------
# KL
# ---------------------------------------------------------------------------------------------


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """sum_t mask[:, t] * (logprobs - ref_logprobs)[:, t], shape [B].

    For responses y sampled from pi, this is the single-sample Monte-Carlo estimate of
    KL(pi || ref) = E_y~pi[log pi(y) - log ref(y)] (unbiased; any one value may be negative).
    Masked-out positions never count, whatever they hold (even inf or NaN from padding)."""
    diff = logprobs.float() - ref_logprobs.float()
    return torch.where(mask.bool(), diff, torch.zeros_like(diff)).sum(-1)


@torch.no_grad()
def response_logprobs(model: torch.nn.Module, sequences: Sequence[tuple[list[int], list[int]]],
                      pad_id: int, *, batch_size: int = 8, bf16: bool = False,
                      temperature: float = 1.0, chunk: int = DEFAULT_CHUNK
                      ) -> list[torch.Tensor]:
    """log p(response token t | prompt, response < t) for each (prompt_ids, response_ids) pair:
    one float32 CPU tensor of len(response_ids) per pair, in order. `chunk`: tokens per chunk
    of the output head (train.logits_chunk; 0: all at once).

    Rows are right-padded, so a prompt's tokens sit at positions 0.. as when it was sampled
    (forward_logprobs also numbers positions from the attention mask)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    out: list[torch.Tensor] = []
    try:
        for part in chunks(list(sequences), batch_size):
            ids = [list(p) + list(r) for p, r in part]
            input_ids = pad_batch(ids, pad_id, "right").to(device)
            attention_mask = pad_batch([[1] * len(s) for s in ids], 0, "right").to(device)
            with autocast(bf16, device):
                logprobs = forward_logprobs(model, input_ids, attention_mask,
                                            temperature=temperature, chunk=chunk).cpu()
            for row, (prompt, response) in zip(logprobs, part, strict=True):
                out.append(row[len(prompt):len(prompt) + len(response)].clone())
    finally:
        model.train(was_training)
    return out


def _kl_of(policy_lp: list[torch.Tensor], ref_lp: list[torch.Tensor]) -> list[float]:
    logprobs = torch.nn.utils.rnn.pad_sequence(policy_lp, batch_first=True)
    ref = torch.nn.utils.rnn.pad_sequence(ref_lp, batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(x)) for x in policy_lp],
                                           batch_first=True)
    return sequence_kl(logprobs, ref, mask).tolist()


def kl_caveat(params: SamplingParams) -> str | None:
    """Why the KL column is not KL(pi || ref) under these sampling settings, or None."""
    if params.temperature == 1.0 and params.top_p == 1.0:
        return None
    return (f"KL is measured with temperature-1 log-probs on responses sampled at temperature "
            f"{params.temperature:g}, top_p {params.top_p:g}: it is not KL(policy || "
            f"reference) (that needs temperature=1 top_p=1), only a comparable number")


# ---------------------------------------------------------------------------------------------
# Sampling and scoring
# ---------------------------------------------------------------------------------------------


def evaluate_policy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                    prompt_ids: list[list[int]], *, n: int, params: SamplingParams, seed: int,
                    batch_size: int = 8, messages: list[Messages] | None = None,
                    reference: torch.nn.Module | None = None, gold: GoldScorer | None = None,
                    reward_model: RewardModel | None = None, bf16: bool = False,
                    progress: Callable[[int], None] | None = None,
                    chunk: int = DEFAULT_CHUNK, generator: Generator | None = None,
                    prompt_rows: Sequence[PromptRow] | None = None) -> list[dict]:
    """Sample `n` responses per prompt and measure each one; records in (prompt, sample) order.
    `generator`: the backend that samples from `model` (default backend `auto`: static on a
    CPU, in the model's precision or bf16 with `bf16`; PPO passes its rollout backend, synced
    to the policy). `prompt_rows`: the prompts' rows, one per prompt, whose
    prompt and columns a gold scorer of the keyword form receives (tether.tasks.gold).

    Batch b of `batch_size` prompts is sampled with seed `seed + b` (as `tether sample` does),
    so two identical policies given the same prompts and seed produce identical samples, and
    samples of different policies pair up by (prompt_index, sample_index).

    - gold: the gold scorer on the response (with its prompt and columns from `prompt_rows`,
      for a scorer of the keyword form; as the simulated labeler sees it);
    - proxy: reward_model.score(prompt messages, response), which needs `messages`;
    - kl: sequence_kl of the policy's and the reference's temperature-1 log-probs over the
      sampled response tokens (EOS included). It estimates KL(policy || reference) only when
      the samples come from the policy itself, i.e. temperature=1 and top_p=1 (see
      `kl_caveat`); otherwise it is a comparable number, not that KL. The reference must
      share the policy's tokenizer;
    - num_tokens: response length in tokens, EOS included; finished: it ended with EOS.

    `progress(k)` is called after each batch with the number of prompts done in it. `chunk`:
    as in response_logprobs."""
    if reward_model is not None and (messages is None or len(messages) != len(prompt_ids)):
        raise ValueError("a reward model needs the prompts' messages, one per prompt")
    if prompt_rows is not None and len(prompt_rows) != len(prompt_ids):
        raise ValueError("prompt_rows: one per prompt")
    generator = generator or make_generator("auto", model, tokenizer, bf16=bf16)
    records: list[dict] = []
    for batch_index, start in enumerate(range(0, len(prompt_ids), batch_size)):
        batch = prompt_ids[start:start + batch_size]
        results = generator.generate(batch, n, params, seed=seed + batch_index)
        generations = [g for samples in results for g in samples]  # prompt-major
        texts = [tokenizer.decode(g.response_ids, skip_special_tokens=True) for g in generations]
        kl: list[float | None] = [None] * len(generations)
        if reference is not None:
            pairs = [(g.prompt_ids, g.response_ids) for g in generations]
            policy_lp = response_logprobs(model, pairs, tokenizer.pad_token_id,
                                          batch_size=batch_size, bf16=bf16, chunk=chunk)
            # The policy as its own reference: KL is exactly 0, no second forward pass.
            ref_lp = policy_lp if reference is model else response_logprobs(
                reference, pairs, tokenizer.pad_token_id, batch_size=batch_size, bf16=bf16,
                chunk=chunk)
            kl = _kl_of(policy_lp, ref_lp)
        proxy: list[float | None] = [None] * len(generations)
        if reward_model is not None:
            prompts = [messages[start + i // n] for i in range(len(generations))]
            proxy = reward_model.score(prompts, texts, batch_size=batch_size, bf16=bf16)
        for i, g in enumerate(generations):
            records.append({
                "prompt_index": start + i // n, "sample_index": i % n, "response": texts[i],
                "gold": None, "proxy": proxy[i], "kl": kl[i],
                "num_tokens": len(g.response_ids), "finished": g.finished,
            })
        if progress is not None:
            progress(len(batch))
    if gold is not None and records:
        _add_gold(records, gold, n, prompt_rows)
    return records


def heldout_metrics(policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                    prompt_ids: list[list[int]], messages: list[Messages], *,
                    params: SamplingParams, seed: int, batch_size: int,
                    reference: torch.nn.Module | None, gold: GoldScorer | None,
                    reward_model: RewardModel | None, bf16: bool,
                    chunk: int = DEFAULT_CHUNK, generator: Generator | None = None,
                    prompt_rows: Sequence[PromptRow] | None = None) -> dict[str, float]:
    """The trainers' periodic check, logged as eval/*: the mean gold, proxy, KL and length of
    one fresh sample per held-out prompt, the share of them that is empty (EVAL_EMPTY), and
    the standard error of the gold mean
    (EVAL_GOLD_SE: one sample per prompt, so sd / sqrt(prompts)), which tells a fall of gold
    from noise. The same seed every time, so successive evaluations differ by the policy, not
    by the sampling noise."""
    records = evaluate_policy(policy, tokenizer, prompt_ids, n=1, params=params, seed=seed,
                              batch_size=batch_size, messages=messages, reference=reference,
                              gold=gold, reward_model=reward_model, bf16=bf16, chunk=chunk,
                              generator=generator, prompt_rows=prompt_rows)
    metrics = {EVAL_EMPTY: float(np.mean([not r["response"].strip() for r in records]))} \
        if records else {}
    for key, name in (("gold", EVAL_GOLD), ("proxy", EVAL_PROXY), ("kl", EVAL_KL),
                      ("num_tokens", EVAL_NUM_TOKENS)):
        values = [r[key] for r in records if r[key] is not None]
        if values:
            metrics[name] = float(np.mean(values))
        if key == "gold" and len(values) > 1:
            metrics[EVAL_GOLD_SE] = float(np.std(values, ddof=1) / np.sqrt(len(values)))
    return metrics


def _add_gold(records: list[dict], gold: GoldScorer, n: int,
              prompt_rows: Sequence[PromptRow] | None) -> None:
    """One scorer call on all responses (the distinct ones, for the texts form), checked as the
    simulated labeler checks it (one finite number per response)."""
    rows = [{"responses": [r["response"] for r in records[i:i + n]]}
            for i in range(0, len(records), n)]
    if prompt_rows is not None:
        for row, prompt in zip(rows, prompt_rows, strict=True):
            row |= {"prompt": prompt.prompt, "columns": prompt.columns}
    scores = np.concatenate(score_all(rows, gold))
    for record, score in zip(records, scores.tolist(), strict=True):
        record["gold"] = score


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------


def _mean_ci(values: Sequence[float], groups: Sequence[int], seed: int) -> dict:
    # Resample whole prompts: the n samples of one prompt are correlated, so an iid
    # interval would be too narrow.
    lo, hi = bootstrap_ci(values, groups, seed=seed)
    return {"mean": float(np.mean(values)), "ci": [lo, hi]}


def win_rate(records: Sequence[dict], baseline_records: Sequence[dict], key: str, *,
             seed: int = 0) -> dict | None:
    """Share of samples whose `key` beats the baseline's sample of the same (prompt, sample
    index), ties counting half, with a 95% interval over prompts; None if `key` is missing."""
    base = {(r["prompt_index"], r["sample_index"]): r[key] for r in baseline_records}
    ours = {(r["prompt_index"], r["sample_index"]): r[key] for r in records}
    if len(base) != len(baseline_records) or base.keys() != ours.keys():
        raise ValueError("win rates need the same prompts and number of samples as the "
                         "baseline")
    if any(v is None for v in [*ours.values(), *base.values()]):
        return None
    wins = [1.0 if ours[k] > base[k] else 0.5 if ours[k] == base[k] else 0.0 for k in ours]
    return _mean_ci(wins, [k[0] for k in ours], seed)


def summarize(records: Sequence[dict], baseline_records: Sequence[dict] | None = None, *,
              seed: int = 0) -> dict:
    """{"prompts", "samples", "gold", "proxy", "kl", "num_tokens", "eos_fraction"}, each metric
    {"mean", "ci": [lo, hi]} (95% bootstrap over prompts) or None where it was not measured;
    with baseline records also "win_rate": {"gold": ..., "proxy": ...} against them."""
    if not records:
        raise ValueError("no records to summarize")
    groups = [r["prompt_index"] for r in records]
    summary: dict = {"prompts": len(set(groups)), "samples": len(records)}
    for key in METRICS:
        values = [r[key] for r in records]
        summary[key] = None if any(v is None for v in values) else _mean_ci(values, groups, seed)
    summary["eos_fraction"] = float(np.mean([r["finished"] for r in records]))
    if baseline_records is not None:
        summary["win_rate"] = {key: win_rate(records, baseline_records, key, seed=seed)
                               for key in WIN_METRICS}
    return summary


def format_table(summaries: dict[str, dict], baseline: str) -> str:
    """One line per policy: the means (with intervals for gold, proxy and win rates), with
    columns for what was not measured left out."""
    def stat(s: dict | None, digits: int = 3, ci: bool = True) -> str:
        if s is None:
            return "-"
        text = f"{s['mean']:.{digits}f}"
        return text + f" [{s['ci'][0]:.{digits}f}, {s['ci'][1]:.{digits}f}]" if ci else text

    columns: list[tuple[str, Callable[[dict], str]]] = [
        ("gold [95% CI]", lambda s: stat(s["gold"])),
        ("proxy [95% CI]", lambda s: stat(s["proxy"])),
        ("KL", lambda s: stat(s["kl"], ci=False)),
        ("tokens", lambda s: stat(s["num_tokens"], digits=1, ci=False)),
        ("EOS", lambda s: f"{s['eos_fraction']:.0%}"),
        (f"win vs {baseline} (gold)", lambda s: stat(s.get("win_rate", {}).get("gold"))),
        (f"win vs {baseline} (proxy)", lambda s: stat(s.get("win_rate", {}).get("proxy"))),
    ]
    cells = {title: [fmt(s) for s in summaries.values()] for title, fmt in columns}
    shown = [title for title, values in cells.items() if any(v != "-" for v in values)]
    header = ["policy", *shown]
    rows = [[name, *(cells[title][i] for title in shown)]
            for i, name in enumerate(summaries)]
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])
