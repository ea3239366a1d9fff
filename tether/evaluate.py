"""`tether eval`: compare policies by sampling from each on the same prompts.

    tether eval policies=runs/sft/final,runs/dpo/final reference=runs/sft/final \
        prompts=prompts.jsonl n=4

Every policy is sampled with the same seed and batches, so identical policies give identical
samples and samples pair up across policies by (prompt, sample index) for win rates. Only the
reference and one policy are in memory at a time (plus the reward model, if any).

Output (one JSON file, written atomically):
{"config": {...}, "prompts": [as given], "baseline": name, "warnings": [...],
 "policies": {name: {"policy": path, "summary": {...}, "samples": [records]}}}
with records and summaries as described in tether.eval.policy.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from tether.config import EvalConfig, to_dict
from tether.data.prompts import PromptRow, encode_prompts, load_prompts
from tether.data.tokenize import wants_chat_template
from tether.device import pick_device
from tether.errors import ConfigError, DataError, UserError
from tether.eval.policy import evaluate_policy, format_table, kl_caveat, summarize
from tether.eval.task_gold import choose_gold
from tether.files import atomic_write_text, check_output
from tether.models.loading import load_causal_lm, load_tokenizer, resolve
from tether.models.reward import RewardModel
from tether.models.tiny import TINY
from tether.rollout.backends import make_generator
from tether.rollout.base import SamplingParams
from tether.tasks.gold import GoldScorer, load_gold_scorer


def _same_model(a: str, b: str) -> bool:
    """Whether two model names point at the same model (runs/sft/final == ./runs/sft/final/)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def _check_tokenizer(policy: str, tokenizer: PreTrainedTokenizerBase, reference: str,
                     ref_tokenizer: PreTrainedTokenizerBase) -> None:
    # KL compares the two models' log-probs of the same token ids: they must mean the same text.
    if tokenizer.get_vocab() != ref_tokenizer.get_vocab():
        raise UserError(f"policy '{policy}' and reference '{reference}' have different "
                        f"tokenizers; KL needs the same vocabulary (or leave reference empty)")


def run(cfg: EvalConfig) -> Path:
    """Sample and measure every policy; write cfg.output; return its path."""
    policies, names = cfg.policy_list(), cfg.policy_names()
    baseline = cfg.baseline_index()
    output = check_output(cfg.output)
    if Path(cfg.prompts).exists() and output.resolve() == Path(cfg.prompts).resolve():
        raise ConfigError(f"output '{cfg.output}' would overwrite the prompts")

    # Everything the user can get wrong is checked before the first model loads.
    gold_name, note = choose_gold(cfg.gold, policies)
    if note:
        print(note, flush=True)
    gold = load_gold_scorer(gold_name) if gold_name else None
    rows, stats = load_prompts(cfg.prompts, cfg.num_prompts, cfg.skip_bad_rows)
    if not rows:
        raise DataError(f"{cfg.prompts}: no prompts to evaluate on")
    for name in policies + ([cfg.reference] if cfg.reference else []):
        if name != TINY:  # built in-process, nothing to find
            resolve(name)  # a UserError naming the model if it is not embedded or a directory
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens)
    warnings = [w for w in [kl_caveat(params) if cfg.reference else None] if w]
    print(f"prompts: {stats.summary()}; using {len(rows)}, {cfg.n} samples each")
    for w in warnings:
        print(f"warning: {w}")

    device = pick_device(cfg.device)
    reward_model = RewardModel.from_pretrained(cfg.reward_model).to(device) \
        if cfg.reward_model else None
    reference = ref_tokenizer = None
    if cfg.reference:
        ref_tokenizer = load_tokenizer(cfg.reference)
        reference = load_causal_lm(cfg.reference).to(device)

    all_records = []
    for policy, name in zip(policies, names, strict=True):
        all_records.append(_evaluate_one(cfg, policy, name, rows, params, gold,
                                         reward_model, reference, ref_tokenizer))

    summaries = {name: summarize(records, all_records[baseline], seed=cfg.seed)
                 for name, records in zip(names, all_records, strict=True)}
    result = {
        "config": to_dict(cfg),
        "prompts": [row.prompt for row in rows],
        "baseline": names[baseline],
        "warnings": warnings,
        "policies": {name: {"policy": policy, "summary": summaries[name], "samples": records}
                     for name, policy, records in zip(names, policies, all_records, strict=True)},
    }
    atomic_write_text(output, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(format_table(summaries, names[baseline]))
    print(f"wrote {len(policies)} policies x {len(rows)} prompts x {cfg.n} samples -> {output}")
    return output


def _evaluate_one(cfg: EvalConfig, policy: str, name: str, rows: list[PromptRow],
                  params: SamplingParams, gold: GoldScorer | None,
                  reward_model: RewardModel | None, reference: torch.nn.Module | None,
                  ref_tokenizer: PreTrainedTokenizerBase | None) -> list[dict]:
    """Load one policy (or reuse the reference, if it is the same model), sample and measure
    it, and free it again."""
    messages = [row.messages for row in rows]
    shared = reference is not None and _same_model(policy, cfg.reference)
    tokenizer = ref_tokenizer if shared else load_tokenizer(policy)
    if reference is not None and not shared:
        _check_tokenizer(policy, tokenizer, cfg.reference, ref_tokenizer)
    # Each policy reads the prompts through its own tokenizer and chat template.
    chat = wants_chat_template(tokenizer, cfg.chat_template)
    prompt_ids, truncated = encode_prompts(tokenizer, messages, chat, cfg.max_prompt_length)
    if truncated:
        print(f"{name}: {truncated} prompts truncated to their last {cfg.max_prompt_length} "
              f"tokens")
    model = reference if shared else load_causal_lm(policy).to(pick_device(cfg.device))
    try:
        with tqdm(total=len(prompt_ids), desc=name, unit="prompt", dynamic_ncols=True) as bar:
            return evaluate_policy(
                model, tokenizer, prompt_ids, n=cfg.n, params=params, seed=cfg.seed,
                batch_size=cfg.batch_size, messages=messages, reference=reference, gold=gold,
                reward_model=reward_model, bf16=cfg.bf16, progress=bar.update, prompt_rows=rows,
                generator=make_generator(
                    cfg.backend, model, tokenizer, bf16=cfg.bf16,
                    model_path=str(resolve(policy)) if cfg.backend == "vllm" else ""))
    finally:
        if not shared:
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
