"""Direct preference optimisation (and IPO, SLiC, robust DPO): train the policy on preferences.

load data -> reference log-probs (precomputed once and cached, or a live frozen model) ->
policy (+ LoRA) -> (resume) -> for each optimizer step: every response of a batch of prompts
through the policy in one forward pass, the loss over all of each prompt's pairs, backward,
clip, step, log, evaluate, checkpoint -> export final/.

A ranking of K responses stands for its C(K, 2) pairs, and each response goes through the
policy once however many pairs it is in. Pairs are averaged within a prompt, then over
prompts, as the reward model does (a pair is a ranking of two).

The reference machinery here (ReferenceLogps, precompute, policy_and_reference, sampled_eval)
also serves tether.trainers.kto: its config has the same model, ref, data, train and
sampled_eval sections, and its rows hold their sequences in `responses`, as a prompt does here.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tether.config import DPOConfig, DPOLossConfig
from tether.data.order import batch_indices, chunks
from tether.data.packing import Microbatches, group_tokens, split_microbatches
from tether.data.preferences import EncodedPreference, load_preference_data
from tether.data.prompts import encode_prompts, load_prompts
from tether.data.tokenize import Encoded, wants_chat_template
from tether.device import autocast, model_device, peak_memory
from tether.distributed import Dist, setup, unwrap
from tether.errors import ConfigError
from tether.eval.health import CollapseWatch
from tether.eval.policy import heldout_metrics
from tether.losses.dpo import LOSSES, chosen_nll, logratio_margin
from tether.metric_names import (
    DATA_EPOCH,
    EVAL_LOSS,
    EVAL_PREFIX,
    HELD_OUT,
    KL_CHOSEN,
    LOGPS_CHOSEN,
    LOGPS_REJECTED,
    LOSS_TRAIN,
    OPTIM_GRAD_NORM,
    OPTIM_LR,
    PERF_STEP_S,
    PERF_TOKENS_PER_S,
    REWARD_ACCURACY,
    REWARD_CHOSEN,
    REWARD_MARGIN,
    REWARD_REJECTED,
)
from tether.models.loading import load_causal_lm, load_tokenizer, nf4_device
from tether.models.lora import apply_lora
from tether.models.reward import RewardModel
from tether.models.shared_prompt import sequence_logprobs
from tether.precision import check_settings, master_model, maybe_compile, to_bf16
from tether.rollout.base import SamplingParams
from tether.rundir import prepare_run_dir
from tether.tasks.gold import load_gold_scorer
from tether.trainers.common import (
    Hooks,
    StopRequests,
    due,
    export_policy,
    optimizer_step,
    plan_steps,
    print_data_stats,
    print_header,
    save_when_due,
    start_or_resume,
)

REF_CACHE = "ref_logprobs.pt"


def response_logps(model: torch.nn.Module, responses: list[Encoded], pad_id: int,
                   bf16: bool, group_sizes: list[int] | None = None, one_row: bool = False,
                   chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs summed over each response's tokens (its loss_mask: the response and EOS,
    never the prompt or padding), and the number of those tokens; [R] each.

    All responses go through the model in one forward pass: chosen and rejected together.
    With `group_sizes` (the responses of each prompt, in order), each prompt's responses share
    one row and the prompt is read once; with `one_row`, everything is one padding-free row
    (tether.models.shared_prompt.sequence_logprobs). chunk > 0: the output head chunked
    (train.logits_chunk). On the model's device."""
    with autocast(bf16, model_device(model)):
        logprobs, mask = sequence_logprobs(model, responses, pad_id, group_sizes, one_row,
                                           chunk=chunk)
    return logprobs.sum(-1), mask.sum(-1)


def prefs_logps(model: torch.nn.Module, prefs: list[EncodedPreference], pad_id: int, bf16: bool,
                share_prompt: bool, one_row: bool = False, chunk: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """response_logps of every response of `prefs`, in order."""
    return response_logps(model, [r for p in prefs for r in p.responses], pad_id, bf16,
                          [len(p.responses) for p in prefs] if share_prompt else None,
                          one_row, chunk)


def prefs_tokens(pref: EncodedPreference, share_prompt: bool) -> int:
    """The tokens a prompt's responses take in a packed row (train.max_tokens_per_microbatch
    counts these)."""
    return group_tokens([r.input_ids for r in pref.responses], share_prompt)


@dataclass
class Pairs:
    """(better, worse) indices into the flat responses of some prompts, and each pair's weight:
    1 / (pairs of its prompt) / (prompts in the whole batch), so weights sum to one over the
    batch however it is split into microbatches."""

    better: torch.Tensor
    worse: torch.Tensor
    weight: torch.Tensor


def preference_pairs(prefs: list[EncodedPreference], num_groups: int,
                     device: torch.device | str = "cpu") -> Pairs:
    better, worse, weight = [], [], []
    offset = 0
    for pref in prefs:
        pairs = pref.source.pairs()
        better += [offset + i for i, _ in pairs]
        worse += [offset + j for _, j in pairs]
        weight += [1 / (len(pairs) * num_groups)] * len(pairs)
        offset += len(pref.responses)
    return Pairs(torch.tensor(better, device=device), torch.tensor(worse, device=device),
                 torch.tensor(weight, device=device))


def dpo_objective(logps: torch.Tensor, ref_logps: torch.Tensor, num_tokens: torch.Tensor,
                  pairs: Pairs, cfg: DPOLossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted loss over `pairs`, and the weighted sums of the per-pair metrics (they add
    up to batch means over microbatches, as the loss does)."""
    chosen, rejected = logps[pairs.better], logps[pairs.worse]
    ref_chosen, ref_rejected = ref_logps[pairs.better], ref_logps[pairs.worse]
    margin = logratio_margin(chosen, rejected, ref_chosen, ref_rejected)
    per_pair = LOSSES[cfg.loss](margin, cfg.beta, cfg.label_smoothing)
    if cfg.sft_weight:
        per_pair = per_pair + cfg.sft_weight * chosen_nll(chosen, num_tokens[pairs.better])
    loss = (pairs.weight * per_pair).sum()

    with torch.no_grad():
        reward_chosen = cfg.beta * (chosen - ref_chosen)
        reward_rejected = cfg.beta * (rejected - ref_rejected)
        correct = (margin > 0).float() + 0.5 * (margin == 0).float()
        per_pair_metrics = {
            REWARD_CHOSEN: reward_chosen, REWARD_REJECTED: reward_rejected,
            REWARD_ACCURACY: correct, REWARD_MARGIN: reward_chosen - reward_rejected,
            # log pi/ref summed over a chosen response: the sequence-level KL estimate, though
            # off-policy (the chosen responses were not sampled from the current policy).
            KL_CHOSEN: chosen - ref_chosen,
            LOGPS_CHOSEN: chosen, LOGPS_REJECTED: rejected}
        sums = {k: (pairs.weight * v).sum().item() for k, v in per_pair_metrics.items()}
    return loss, sums


class ReferenceLogps:
    """Reference log-probs of the responses of `data.train[i]` / `data.eval[i]`, either looked
    up in a precomputed table or computed now by a frozen model."""

    def __init__(self, table: dict[str, list[torch.Tensor]] | None = None,
                 model: torch.nn.Module | None = None, switch: Callable = contextlib.nullcontext,
                 pad_id: int = 0, bf16: bool = False, share_prompt: bool = True, chunk: int = 0):
        self.table, self.model, self.switch = table, model, switch
        self.pad_id, self.bf16, self.share_prompt, self.chunk = pad_id, bf16, share_prompt, chunk

    def __call__(self, split: str, indices: list[int], prefs: list[EncodedPreference],
                 device: torch.device | str = "cpu", one_row: bool = False) -> torch.Tensor:
        """Summed log-probs of every response of `prefs`, float32 on `device`; `one_row`:
        packed without padding, as the policy's pass is."""
        if self.table is not None:
            return torch.cat([self.table[split][i] for i in indices]).to(device)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self.switch():
            logps, _ = prefs_logps(self.model, prefs, self.pad_id, self.bf16,
                                   self.share_prompt, one_row, self.chunk)
        self.model.train(was_training)
        return logps.float().to(device)


def load_cached(cache: Path, key: str,
                quiet: bool = False) -> dict[str, list[torch.Tensor]] | None:
    """The table in `cache` if it was written for the same reference and data (`key`)."""
    if not cache.exists():
        return None
    saved = torch.load(cache, map_location="cpu", weights_only=True)
    if saved.get("key") != key:
        return None
    if not quiet:
        print(f"reference log-probs: loaded from {cache}")
    return saved["table"]


def precompute(live: ReferenceLogps, data, micro: int, cache: Path, key: str, budget: int = 0,
               progress_bar: bool = True) -> dict[str, list[torch.Tensor]]:
    """The reference log-probs of every train and eval response, written to `cache`; in
    packed micro-batches of at most `budget` tokens when it is > 0 (train.max_tokens_per_
    microbatch), as training runs the policy; with a progress bar unless `progress_bar` is
    False."""
    table: dict[str, list[torch.Tensor]] = {}
    started = time.perf_counter()
    total = len(data.train) + len(data.eval)
    with tqdm(total=total, desc="reference log-probs", unit="prompt", dynamic_ncols=True,
              disable=not progress_bar) as bar:
        for split, prefs in (("train", data.train), ("eval", data.eval)):
            table[split] = []
            for part in split_microbatches(prefs, micro, budget,
                                           lambda p: prefs_tokens(p, live.share_prompt)):
                flat = live(split, [], part, one_row=budget > 0)  # on the CPU: the table stays
                table[split] += [t.clone() for t in flat.split([len(p.responses)
                                                                for p in part])]
                bar.update(len(part))
    tmp = cache.with_name(f".{cache.name}.tmp")
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "table": table}, tmp)
    tmp.replace(cache)
    print(f"reference log-probs: {total} prompts in {time.perf_counter() - started:.1f} s, "
          f"cached in {cache}")
    return table


def data_key(ref_name: str, precision: str, data) -> str:
    """Identifies the reference log-probs: the reference, the precision, every token."""
    h = hashlib.sha256(f"{ref_name}|{precision}".encode())
    for split in (data.train, data.eval):
        h.update(b"|split")
        for pref in split:
            for r in pref.responses:
                h.update(np.asarray(r.input_ids, dtype=np.int64).tobytes())
                h.update(np.asarray(r.loss_mask, dtype=np.int8).tobytes())
    return h.hexdigest()


def sampled_eval(cfg: DPOConfig, tokenizer, device: torch.device, chunk: int = 0
                 ) -> Callable[[torch.nn.Module], dict[str, float]]:
    """Gold, proxy and KL of fresh samples on held-out prompts, for plotting DPO's reward
    against its KL like PPO's. The prompts and the scorer are read now, so a mistake stops the
    run before any model loads; the frozen reference (the KL needs its log-probs of the new
    samples) and the reward model load at the first evaluation and stay."""
    ecfg = cfg.sampled_eval
    rows = load_prompts(ecfg.prompts, ecfg.num_prompts)[0]
    messages = [r.messages for r in rows]
    prompt_ids = encode_prompts(tokenizer, messages, wants_chat_template(tokenizer, "auto"),
                                ecfg.max_prompt_length)[0]
    gold = load_gold_scorer(ecfg.gold) if ecfg.gold else None
    if ecfg.reward_model and not Path(ecfg.reward_model).is_dir():
        raise ConfigError(f"sampled_eval.reward_model={ecfg.reward_model} is not a directory "
                          f"(a `tether rm` run's final/)")
    params = SamplingParams(temperature=1.0, max_new_tokens=ecfg.max_new_tokens)
    models: dict = {}

    def evaluate(policy: torch.nn.Module) -> dict[str, float]:
        if not models:
            models["reference"] = load_causal_lm(
                cfg.ref.model or cfg.model.name, seed=cfg.train.seed,
                hub_kernels=cfg.model.hub_kernels, attention=cfg.model.attention,
                # under QLoRA the training reference is the 4-bit base: KL is measured to it
                nf4_on=None if cfg.ref.model else nf4_device(cfg.model, device),
            ).requires_grad_(False).eval()
            models["reference"].to(device)
            models["reward"] = RewardModel.from_pretrained(
                ecfg.reward_model, cfg.model.hub_kernels, cfg.model.attention).to(device) \
                if ecfg.reward_model else None
            if models["reward"] is not None:
                models["reward"].model.requires_grad_(False).eval()
        return heldout_metrics(policy, tokenizer, prompt_ids, messages, params=params,
                               seed=cfg.train.seed, batch_size=cfg.train.micro_batch_size * 4,
                               reference=models["reference"], gold=gold,
                               reward_model=models["reward"], bf16=cfg.train.bf16,
                               chunk=chunk, prompt_rows=rows)

    return evaluate


def shares_base(cfg: DPOConfig) -> bool:
    """Whether the reference is the policy with its LoRA adapter off (ref.share_base)."""
    return cfg.model.lora.enabled and cfg.ref.share_base and \
        (cfg.ref.model or cfg.model.name) == cfg.model.name


def check_reference_vocabulary(cfg: DPOConfig, tokenizer) -> None:
    """A reference with other token ids than the policy's gives log-probs of other texts."""
    if cfg.ref.model not in ("", cfg.model.name) and \
            load_tokenizer(cfg.ref.model).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"ref.model={cfg.ref.model} has a different vocabulary from "
                          f"model.name={cfg.model.name}; their log-probs cannot be compared")


def reference_description(cfg: DPOConfig) -> str:
    """How the reference log-probs are obtained, for the header line."""
    return ("precomputed" if cfg.ref.precompute else "live") + \
        (" (the policy with its LoRA adapter off)" if shares_base(cfg)
         else f" ({cfg.ref.model or cfg.model.name})")


def policy_builder(cfg: DPOConfig, device: torch.device) -> Callable[[], torch.nn.Module]:
    """Builds the policy's modules (with its adapter, if any) from model.name."""
    def build() -> torch.nn.Module:
        m = load_causal_lm(cfg.model.name, seed=cfg.train.seed,
                           hub_kernels=cfg.model.hub_kernels, attention=cfg.model.attention,
                           nf4_on=nf4_device(cfg.model, device))
        return apply_lora(m, cfg.model.lora) if cfg.model.lora.enabled else m
    return build


def load_policy(cfg: DPOConfig, d: Dist, masters: bool) -> torch.nn.Module:
    """The policy, placed on this process's device, ready to train."""
    model = d.place(policy_builder(cfg, d.device)())
    if masters:
        to_bf16(model)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def policy_and_reference(cfg: DPOConfig, d: Dist, data, tokenizer, run_dir: Path,
                         masters: bool, chunk: int, progress_bar: bool = True
                         ) -> tuple[torch.nn.Module, ReferenceLogps]:
    """The policy and its reference log-probs (see _policy_and_reference), on every process:
    the others wait for rank 0's table and read it from run_dir/REF_CACHE."""
    cache = run_dir / REF_CACHE
    key = data_key(cfg.ref.model or cfg.model.name,
                   "bf16 weights" if masters else "bf16" if cfg.train.bf16 else "fp32", data)
    model, ref = _policy_and_reference(cfg, d, data, tokenizer, cache, key, masters, chunk,
                                       progress_bar)
    d.barrier()  # rank 0's table is written
    if ref is None:
        ref = ReferenceLogps(table=load_cached(cache, key, quiet=True))
    return model, ref


def _policy_and_reference(cfg: DPOConfig, d: Dist, data, tokenizer, cache: Path, key: str,
                          masters: bool, chunk: int, progress_bar: bool = True
                          ) -> tuple[torch.nn.Module, ReferenceLogps | None]:
    """The policy and the reference log-probs it is compared with: a table computed once
    (ref.precompute; kept in `cache` for this reference and data, `key`) or a frozen model run
    live: ref.model, or with LoRA and ref.share_base the policy with its adapter off. A
    separate reference that is only precomputed is loaded, used and freed before the policy,
    so two copies are never in memory at once. Under torchrun rank 0 precomputes: None for the
    others, who read its table from `cache` once it is written."""
    if cfg.ref.precompute and not d.main:
        return load_policy(cfg, d, masters), None
    live = {"pad_id": tokenizer.pad_token_id, "bf16": cfg.train.bf16,
            "share_prompt": cfg.train.share_prompt, "chunk": chunk}

    def tabulate(ref: ReferenceLogps) -> dict[str, list[torch.Tensor]]:
        return precompute(ref, data, cfg.train.micro_batch_size, cache, key,
                          cfg.train.max_tokens_per_microbatch, progress_bar)

    table = load_cached(cache, key) if cfg.ref.precompute else None
    if table is None and not shares_base(cfg):
        ref_model = d.place(load_causal_lm(cfg.ref.model or cfg.model.name,
                                           seed=cfg.train.seed, hub_kernels=cfg.model.hub_kernels,
                                           attention=cfg.model.attention).requires_grad_(False))
        if masters:
            to_bf16(ref_model)
        if not cfg.ref.precompute:
            return load_policy(cfg, d, masters), ReferenceLogps(model=ref_model, **live)
        table = tabulate(ReferenceLogps(model=ref_model, **live))
        del ref_model
        gc.collect()
    policy = load_policy(cfg, d, masters)
    if table is None:  # the base model: the policy with its adapter switched off
        ref = ReferenceLogps(model=policy, switch=policy.disable_adapter, **live)
        if not cfg.ref.precompute:
            return policy, ref
        table = tabulate(ref)
    return policy, ReferenceLogps(table=table)


def train(cfg: DPOConfig, hooks: Hooks | None = None, progress_bar: bool = True) -> Path:
    """Run DPO (or a relative) as configured; return the final/ directory. Under torchrun,
    every process runs this; each takes its slice of every batch of prompts. `hooks`: see
    common.Hooks; `progress_bar`: False draws none of its progress bars (rank 0 draws them)."""
    hooks = hooks or Hooks()
    torch.manual_seed(cfg.train.seed)
    d = setup(cfg.train.strategy, cfg.train.device)
    masters = check_settings(cfg.model, cfg.train, d.device)  # before any model loads

    # 1. Data first (a bad row should not wait for a model to load).
    tokenizer = load_tokenizer(cfg.model.name)
    data = load_preference_data(cfg.data, tokenizer, cfg.train.seed)
    print_data_stats(data.stats, d)
    # FSDP2 holds the head's weight sharded outside the model's forward: the plain head there.
    chunk = 0 if d.sharded else cfg.train.logits_chunk
    sampled = sampled_eval(cfg, tokenizer, d.device, chunk) if cfg.sampled_eval.prompts \
        else None
    budget, share_prompt = cfg.train.max_tokens_per_microbatch, cfg.train.share_prompt
    batches = Microbatches(cfg.train.micro_batch_size, budget,
                           [prefs_tokens(p, share_prompt) for p in data.train], d,
                           unit="prompt with its responses")
    run_dir, checkpoint = prepare_run_dir(cfg.run_dir, cfg.resume, write=d.main)
    batch_size, micro, bf16 = cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.bf16
    pad_id = tokenizer.pad_token_id

    # 2. The policy and its reference (policy_and_reference says which comes first).
    check_reference_vocabulary(cfg, tokenizer)
    model, ref = policy_and_reference(cfg, d, data, tokenizer, run_dir, masters, chunk,
                                      progress_bar)

    per_epoch, total_steps = plan_steps(cfg.train, len(data.train), cfg.data.train)
    pairs = sum(len(p.source.pairs()) for p in data.train)
    print_header(f"dpo ({cfg.dpo.loss}, beta {cfg.dpo.beta}) on {cfg.model.name}", model,
                 f"reference log-probs {reference_description(cfg)}; {len(data.train)} prompts "
                 f"with {pairs} pairs for training, {len(data.eval)} held out; {total_steps} "
                 f"steps of {batch_size} prompts ({d.processes}; {batches})", d)
    model = d.wrap(maybe_compile(model, cfg.train.compile))

    # 3. Optimizer and schedule, restored with everything else on resume.
    optimizer, scheduler, start_step, log = start_or_resume(
        run_dir, checkpoint, model, cfg.optim, total_steps, num_examples=len(data.train),
        data_source=cfg.data.train, master_weights=masters, dist=d, config=cfg)

    def forward(split: str, indices: list[int], prefs: list[EncodedPreference], num_groups: int,
                packed: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
        logps, num_tokens = prefs_logps(model, prefs, pad_id, bf16, share_prompt, packed, chunk)
        return dpo_objective(logps, ref(split, indices, prefs, d.device, packed), num_tokens,
                             preference_pairs(prefs, num_groups, d.device), cfg.dpo)

    collapse = CollapseWatch()

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        # Every rank evaluates everything (FSDP2 needs all ranks in each forward); sampling
        # with the same seed, they draw the same responses.
        model.eval()
        metrics = {}
        if data.eval:
            loss, sums = 0.0, {}
            for indices in chunks(list(range(len(data.eval))), micro):
                micro_loss, micro_sums = forward("eval", indices,
                                                 [data.eval[i] for i in indices], len(data.eval))
                loss += micro_loss.item()
                sums = {k: sums.get(k, 0.0) + v for k, v in micro_sums.items()}
            metrics = {EVAL_LOSS: loss, **{HELD_OUT[k]: v for k, v in sums.items()}}
        if sampled is not None:
            metrics |= sampled(unwrap(model))
            collapse.check(metrics, d.main)
        model.train()
        return metrics

    if checkpoint is None and (data.eval or sampled):
        log.log(0, evaluate())

    # 4. The loop.
    model.train()
    last_saved, metrics = checkpoint, {}
    hooks.started(model)
    progress = tqdm(total=total_steps, initial=start_step, desc="dpo", unit="step",
                    dynamic_ncols=True, disable=not (d.main and progress_bar))
    with StopRequests() as stop:
        for step in range(start_step, total_steps):
            hooks.step_started(step + 1)
            started = time.perf_counter()
            indices = batch_indices(len(data.train), batch_size, step, cfg.train.seed)
            loss, sums, tokens = 0.0, {}, 0
            # Pair weights count the whole batch's prompts: microbatches and ranks add up to it.
            for micro_indices in batches(indices):
                prefs = [data.train[i] for i in micro_indices]
                hooks.micro_batch(prefs, batches.packed)
                micro_loss, micro_sums = forward("train", micro_indices, prefs, len(indices),
                                                 batches.packed)
                d.backward(micro_loss)
                loss += micro_loss.item()
                sums = {k: sums.get(k, 0.0) + v for k, v in micro_sums.items()}
                tokens += sum(prefs_tokens(p, share_prompt) for p in prefs)
            loss, tokens, *summed = d.sum(loss, tokens, *sums.values())
            sums = dict(zip(sums, summed, strict=True))
            grad_norm, lr = optimizer_step(model, optimizer, scheduler, cfg.optim.max_grad_norm,
                                           loss, step + 1, last_saved, d)
            elapsed = time.perf_counter() - started

            done = step + 1
            metrics = {LOSS_TRAIN: loss, **sums, OPTIM_LR: lr, OPTIM_GRAD_NORM: grad_norm,
                       PERF_STEP_S: elapsed, PERF_TOKENS_PER_S: tokens / elapsed,
                       **peak_memory(d.device), DATA_EPOCH: step / per_epoch}
            is_last = done == total_steps
            evaluated = bool(data.eval or sampled) and due(done, cfg.train.eval_every, is_last)
            if evaluated:
                metrics.update(evaluate())
            if is_last or done % cfg.train.log_every == 0 or evaluated:
                log.log(done, metrics)
            hooks.stepped(done, metrics)
            progress.set_postfix(loss=f"{loss:.3f}", acc=f"{sums[REWARD_ACCURACY]:.2f}",
                                 margin=f"{sums[REWARD_MARGIN]:.3f}")
            progress.update(1)
            last_saved = save_when_due(stop, run_dir, done, is_last, model, optimizer,
                                       scheduler, cfg.train, num_examples=len(data.train),
                                       steps_per_epoch=per_epoch, last_saved=last_saved, dist=d)
    progress.close()
    log.close()
    held_out = {k: v for k, v in metrics.items() if k.startswith(EVAL_PREFIX)}
    if held_out and d.main:
        print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in held_out.items()))

    # 5. Export (rank 0; the others wait, so no one reads final/ half-written).
    whole = master_model(model, optimizer, policy_builder(cfg, d.device), dist=d)
    return export_policy(run_dir, whole, tokenizer, cfg, "dpo", dist=d)
