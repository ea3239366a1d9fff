"""Online RL against a reward: PPO (value model + GAE), GRPO and RLOO in one loop.

Each iteration (one `step`), top to bottom:
  1. rollout: a batch of prompts, `group_size` responses each, sampled from the policy;
  2. score: the proxy (reward model), the reward functions and/or the gold scorer, each
     function given its samples' prompts and prompt-row columns; the optimised score
     (model_weight * proxy + the weighted functions; else the proxy; else gold) gets the no-EOS
     and overlong penalties, then optional whitening and clipping; with dynamic sampling
     (grpo, rloo), groups whose scores all agree are dropped from the loss, or first replaced
     by groups of more prompts sampled to refill the batch;
  3. log-probs of the policy and the reference (and values, for ppo), without gradients (the
     policy's pass is left to the update when there is one update per rollout, see
     needs_policy_pass);
  4. rewards and advantages: ppo: -kl_coef * KL per token plus the score at the last token,
     GAE, whitening; grpo / rloo: the score (minus the sequence KL when it is in the reward)
     compared within each prompt's group, the same advantage at every token;
  5. `epochs` passes over shuffled minibatches: clipped policy loss (token ratios, or GSPO's
     sequence ratios; aggregated per token, per sequence or by a constant, ppo.loss_type) (+
     clipped value loss, entropy bonus, KL loss), microbatch gradient accumulation, early stop
     on approximate KL;
     each token's policy-gradient term weighted by its truncated importance weight when the
     sampler's policy is not the trainer's (rollout.is_correction, tether.losses.mismatch);
  6. KL controller update, log, sample responses, evaluate, checkpoint.

Dropout is off in every model (log-probs of the same text must not depend on the pass), so the
first minibatch of each iteration has ratio 1 (to float rounding: its rows may be batched or
packed differently from the rollout pass's). A prompt's samples share one row behind one copy
of the prompt (train.share_prompt, grpo and rloo; tether.models.shared_prompt).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from tether.config import PPOConfig, PPORewardConfig, RolloutConfig
from tether.data.collate import collate
from tether.data.order import batch_indices
from tether.data.prompts import PromptRow, encode_prompts, load_prompts
from tether.data.tokenize import Encoded, wants_chat_template
from tether.device import autocast, peak_memory, to_device
from tether.distributed import Dist, setup
from tether.errors import ConfigError, DataError
from tether.eval.health import RolloutWatch
from tether.eval.policy import heldout_metrics
from tether.losses.mismatch import is_weights, mismatch_stats
from tether.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    group_advantages,
    groups_with_spread,
    kl_loss,
    kl_per_token,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    overlong_penalty,
    policy_loss,
    shape_rewards,
    value_loss,
)
from tether.metric_names import (
    DATA_EPOCH,
    KL_COEF,
    KL_SEQ,
    LOSS_KL,
    LOSS_POLICY,
    LOSS_VALUE,
    MISMATCH_IS_TRUNCATED_FRAC,
    MISMATCH_IS_WEIGHT_MEAN,
    MISMATCH_KL_K1,
    MISMATCH_KL_K3,
    OPTIM_GRAD_NORM,
    OPTIM_LR,
    PERF_GENERATE_S,
    PERF_GENERATE_TOKENS_PER_S,
    PERF_PREPARE_S,
    PERF_REFILL_S,
    PERF_SCORE_S,
    PERF_STEP_S,
    PERF_TOKENS_PER_S,
    PERF_TRAIN_S,
    POLICY_ENTROPY,
    PPO_ADVANTAGE_MEAN,
    PPO_ADVANTAGE_STD,
    PPO_APPROX_KL,
    PPO_CLIPFRAC,
    PPO_DROPPED_FRAC,
    PPO_EARLY_STOP,
    PPO_EXPLAINED_VARIANCE,
    PPO_REFILL_ROUNDS,
    PPO_RETURNS_MEAN,
    PPO_UPDATES,
    PPO_VALUE_CLIPFRAC,
    PPO_ZERO_SPREAD_FRAC,
    RESPONSE_LENGTH,
    RESPONSE_NO_EOS_FRAC,
    REWARD_GOLD,
    REWARD_GOLD_STD,
    REWARD_OVERLONG_PENALTY,
    REWARD_PREFIX,
    REWARD_PROXY,
    REWARD_PROXY_STD,
    REWARD_SCORE,
)
from tether.models.loading import load_causal_lm, load_tokenizer, nf4_device, resolve
from tether.models.logprobs import TokenLogits, first_scored, forward_token_logits
from tether.models.lora import apply_lora
from tether.models.reward import RewardModel
from tether.models.shared_prompt import PackedLogits, group_runs, packed_logits
from tether.models.value import ValueModel, logits_and_values, value_head
from tether.precision import check_settings, master_model, maybe_compile, to_bf16
from tether.rollout.backends import make_generator
from tether.rollout.base import Generation, Generator, SamplingParams, stream_seed
from tether.rundir import MetricsLog, NullLog, prepare_run_dir
from tether.tasks.gold import GoldScorer, call_scorer, column_lists, load_gold_scorer
from tether.tasks.rewards import RewardFunction, load_reward_functions, weighted_sum
from tether.trainers.common import (
    StopRequests,
    due,
    epochs_for,
    export_policy,
    optimizer_step,
    print_header,
    save_when_due,
    start_or_resume,
)

# The metrics of a score (its mean and spread over a rollout), and of a phase's seconds (Laps).
SCORE_METRICS = {"gold": (REWARD_GOLD, REWARD_GOLD_STD), "proxy": (REWARD_PROXY, REWARD_PROXY_STD)}
# A reward function's score is "fn:<label>" among an iteration's scores, logged as reward/<label>;
# "combined" is model_weight * proxy + the weighted functions, when there are functions.
FUNCTION = "fn:"
LAP_METRICS = {"generate": PERF_GENERATE_S, "score": PERF_SCORE_S, "refill": PERF_REFILL_S,
               "prepare": PERF_PREPARE_S, "train": PERF_TRAIN_S, "step": PERF_STEP_S}
MISMATCH_METRICS = {"kl_k1": MISMATCH_KL_K1, "kl_k3": MISMATCH_KL_K3,
                    "weight_mean": MISMATCH_IS_WEIGHT_MEAN,
                    "truncated_frac": MISMATCH_IS_TRUNCATED_FRAC}


def eos_penalty_applies(finished: torch.Tensor, reward: PPORewardConfig,
                        rollout: RolloutConfig, main: bool = True) -> bool:
    """Whether the no-EOS penalty (reward.penalize_no_eos) applies to this run, from its first
    rollout: only when at least reward.no_eos_min_finished of it ends with EOS. Says why not."""
    share = finished.float().mean().item()
    if share >= reward.no_eos_min_finished:
        return True
    if main:
        tqdm.write(f"note: only {share:.0%} of the starting policy's responses end with EOS "
                   f"within rollout.max_new_tokens={rollout.max_new_tokens}, under "
                   f"reward.no_eos_min_finished={reward.no_eos_min_finished:g}: the no-EOS "
                   f"penalty is off for this run (it would mostly teach the policy to stop "
                   f"early). Raise rollout.max_new_tokens, or set "
                   f"reward.no_eos_min_finished=0 to apply it anyway.")
    return False


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off for good, in train mode too (gradient checkpointing needs train mode)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop",
                 "attn_pdrop"):
        if config is not None and isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)


def cut_at_stop(tokenizer, response_ids: list[int], stop: str) -> tuple[list[int], bool]:
    """The shortest prefix of the response whose text contains `stop`, and whether one did."""
    if not stop or stop not in tokenizer.decode(response_ids, skip_special_tokens=True):
        return response_ids, False
    for end in range(1, len(response_ids) + 1):
        if stop in tokenizer.decode(response_ids[:end], skip_special_tokens=True):
            return response_ids[:end], True
    return response_ids, False  # unreachable: the whole response contains it


@dataclass
class Rollout:
    """One iteration's samples as [N, T] tensors (right-padded prompt + response); `mask` is 1
    on response tokens. N = prompts x group_size, the samples of a prompt consecutive."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    prompt_index: list[int]
    texts: list[str]
    finished: torch.Tensor  # [N] bool
    # [N, T] the log-probs the generation backend gave the response tokens (0 elsewhere), to
    # compare with the trainer's; None when it gave none
    sampler_logprobs: torch.Tensor | None
    # what it was built from (build_rollout), by prompt: dynamic sampling rebuilds it with
    # some prompts' groups replaced
    prompt_ids: list[list[int]]
    generations: list[list[Generation]]


class PolicyAndValue(torch.nn.Module):
    """Everything trained, as one module: the optimizer and checkpoints see `policy.*` and
    `value.*`, and its forward gives the logits and values of a batch in one call, which is
    what DDP wraps (its gradient hooks run on a module's forward)."""

    def __init__(self, policy: torch.nn.Module, value: torch.nn.Module | None,
                 shared_head: bool, bf16: bool, chunk: int = 0):
        super().__init__()
        self.policy, self.value = policy, value
        self.shared_head, self.bf16, self.chunk = shared_head, bf16, chunk

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                mask: torch.Tensor, groups: list[int] | None = None
                ) -> tuple[TokenLogits | PackedLogits, torch.Tensor | None]:
        """The logits that predict the response tokens (`mask`; see response_logits), and
        values at every position."""
        with autocast(self.bf16, input_ids.device):
            if self.shared_head:
                return logits_and_values(self.policy, self.value, input_ids, attention_mask,
                                         first_scored(mask), self.chunk)
            logits = response_logits(self.policy, input_ids, attention_mask, mask, groups,
                                     self.chunk)
            values = None if self.value is None else self.value(input_ids, attention_mask)
        return logits, values


def response_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, mask: torch.Tensor,
                    groups: list[int] | None, chunk: int = 0) -> TokenLogits | PackedLogits:
    """Logits for the response tokens `mask`: with `groups` (the rows of each prompt, in
    order) the responses of a prompt share one row and the prompt is read once; else a row
    each, logits from the first response column on. Either way an object whose .logprobs and
    .entropy give [N, T] values; chunk > 0: the head runs that many tokens at a time then
    (train.logits_chunk)."""
    if groups is not None:
        return packed_logits(model, input_ids, attention_mask, mask, groups, chunk=chunk)
    return forward_token_logits(model, input_ids, attention_mask, first_scored(mask), chunk)


def needs_policy_pass(cfg: PPOConfig, world: int) -> bool:
    """Whether an iteration needs the policy's no-grad pass over the rollout (old log-probs,
    entropy) before updating. Not with one update per rollout (one epoch of one minibatch),
    the KL in the loss and no value model: the policy before the update is then the one the
    update's own forward runs, whose detached log-probs and entropy stand for the pass (the
    ratio is exactly 1; TRL skips it too). Under torchrun it runs: each rank's update sees
    only its slice."""
    one_update = cfg.ppo.epochs == 1 and \
        cfg.ppo.minibatch_size == cfg.rollout.batch_size * cfg.rollout.group_size
    return not (one_update and cfg.algo != "ppo" and cfg.ppo.kl_in == "loss" and world == 1)


def build_rollout(tokenizer, prompt_ids: list[list[int]], generations: list[list[Generation]],
                  stop: str, device: torch.device | str = "cpu") -> Rollout:
    """The rollout's tensors, each response cut at `stop` (rollout.stop_string), its sampler
    log-probs with it."""
    examples, texts, finished, prompt_index, logprobs = [], [], [], [], []
    for i, (prompt, samples) in enumerate(zip(prompt_ids, generations, strict=True)):
        for g in samples:
            response, stopped = cut_at_stop(tokenizer, g.response_ids, stop)
            examples.append(Encoded(prompt + response, [0] * len(prompt) + [1] * len(response)))
            texts.append(tokenizer.decode(response, skip_special_tokens=True))
            finished.append(g.finished or stopped)
            prompt_index.append(i)
            logprobs.append(None if g.logprobs is None else g.logprobs[:len(response)])
    batch = to_device(collate(examples, tokenizer.pad_token_id), device)
    sampler_logprobs = None
    if all(lp is not None for lp in logprobs):
        # Right-padded rows: a response starts right after its prompt.
        sampler_logprobs = torch.zeros(batch["input_ids"].shape)
        for row, (example, lp) in enumerate(zip(examples, logprobs, strict=True)):
            start = len(example.input_ids) - len(lp)
            sampler_logprobs[row, start:start + len(lp)] = torch.tensor(lp)
        sampler_logprobs = sampler_logprobs.to(device)
    return Rollout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"].float(),
                   prompt_index, texts, torch.tensor(finished, device=device), sampler_logprobs,
                   prompt_ids, generations)


@dataclass
class TokenPasses:
    """A rollout's per-token quantities before any update, [N, T] each (0 off the response)."""

    logprobs: torch.Tensor  # the rollout policy's (without a policy pass the update fills them)
    ref_logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor | None  # ppo's value estimates; None for grpo and rloo


@dataclass
class Batch:
    """One iteration's data as the phases fill it in: samples, scores, passes, advantages."""

    rollout: Rollout
    scores: dict[str, torch.Tensor]  # [N] by scorer: proxy, gold, (first rollout) empty
    objective: torch.Tensor  # [N] the score optimised: penalised, whitened, clipped
    passes: TokenPasses
    advantages: torch.Tensor  # [N, T]
    returns: torch.Tensor | None  # [N, T], ppo only
    # [N] bool: the samples the loss sees (ppo.dynamic_sampling drops the groups whose scores
    # all agree; every sample otherwise)
    keep: torch.Tensor
    # grpo, rloo: how the rollout was sampled: its groups without spread, before any refill
    # (ppo/zero_spread_frac), and the refill rounds (ppo/refill_rounds)
    sampling: dict[str, float] = field(default_factory=dict)


@dataclass
class UpdateStats:
    """The update phase's account: its metrics averaged over the optimizer updates it made."""

    metrics: dict[str, float]
    updates: int
    first_lr: float  # the rate its first update used
    stopped_early: bool  # ppo.target_approx_kl was exceeded


@dataclass
class Prompts:
    """The training prompts and the held-out ones: their rows (prompt, messages, columns) and
    token ids."""

    rows: list[PromptRow]
    ids: list[list[int]]
    eval_rows: list[PromptRow]
    eval_ids: list[list[int]]


@dataclass
class Loop:
    """What every phase of an iteration reads: the settings, the processes and the models."""

    cfg: PPOConfig
    d: Dist
    tokenizer: PreTrainedTokenizerBase
    policy: torch.nn.Module  # with its LoRA adapter, if any; also trained.policy
    trained: PolicyAndValue  # everything the optimizer updates
    forward: torch.nn.Module  # `trained` for the update's passes: under DDP, compiled if asked
    reference: torch.nn.Module | None  # None: the policy with its adapter off
    reward_model: RewardModel | None
    gold: GoldScorer | None
    functions: list[RewardFunction]  # reward.functions
    generator: Generator  # the rollout backend (rollout.backend)
    params: SamplingParams
    chunk: int  # train.logits_chunk; 0 under fsdp2, whose head weight stays sharded
    share: bool  # a prompt's samples share one row (grpo, rloo; train.share_prompt)
    policy_pass: bool  # see needs_policy_pass
    correct: bool  # see corrects_mismatch

    def grouped(self, rollout: Rollout, idx: torch.Tensor
                ) -> tuple[torch.Tensor, list[int] | None]:
        """A microbatch's rows with each prompt's samples together, and how many of each."""
        if not self.share:
            return idx, None
        prompt = torch.tensor(rollout.prompt_index)[idx]
        order = torch.argsort(prompt, stable=True)
        return idx[order], group_runs(prompt[order].tolist())

    def reference_logits(self, ids: torch.Tensor, am: torch.Tensor, m: torch.Tensor,
                         groups: list[int] | None) -> TokenLogits | PackedLogits:
        """The reference policy's response logits: its own model, or the adapter off."""
        d, bf16 = self.d, self.cfg.train.bf16
        if self.reference is not None:
            with autocast(bf16, d.device):
                return response_logits(self.reference, ids, am, m, groups, self.chunk)
        with self.policy.disable_adapter(), d.gathered(self.trained), autocast(bf16, d.device):
            return response_logits(self.policy, ids, am, m, groups, self.chunk)


def corrects_mismatch(cfg: PPOConfig, generator: Generator) -> bool:
    """Whether the policy gradient is weighted by truncated importance weights
    (rollout.is_correction): always, or on auto when the backend's numerics are not the
    trainer's. The weights need the backend's log-probs: where it returns none, auto corrects
    nothing and always stops the run (collect)."""
    setting = cfg.rollout.is_correction
    return setting == "always" or (setting == "auto" and not generator.matches_trainer)


def check_config(cfg: PPOConfig, d: Dist) -> None:
    """What needs the number of processes or an optional package to check, before loading."""
    if cfg.rollout.backend == "vllm":
        from tether.rollout.vllm import require_vllm

        require_vllm()
        if d.sharded:
            raise ConfigError("rollout.backend=vllm loads the whole policy into its engine in "
                              "every process: use train.strategy=ddp with it")
    if cfg.rollout.backend == "static" and d.sharded:
        raise ConfigError("rollout.backend=static holds a whole copy of the policy in every "
                          "process: use train.strategy=ddp with it, or rollout.backend=hf")
    for key, value in (("rollout.batch_size", cfg.rollout.batch_size),
                       ("ppo.minibatch_size", cfg.ppo.minibatch_size)):
        if value % d.world:
            raise ConfigError(f"{key} ({value}) must be a multiple of the number of processes "
                              f"({d.world})")


def load_prompt_sets(cfg: PPOConfig, tokenizer: PreTrainedTokenizerBase, d: Dist) -> Prompts:
    """The rollout prompts and the held-out evaluation prompts, read and tokenised."""
    rcfg = cfg.rollout
    chat = wants_chat_template(tokenizer, rcfg.chat_template)
    rows, stats = load_prompts(rcfg.prompts)
    if len(rows) < rcfg.batch_size:
        raise DataError(f"{rcfg.prompts}: {len(rows)} prompts, fewer than "
                        f"rollout.batch_size={rcfg.batch_size}")
    eval_rows = load_prompts(cfg.eval_prompts, cfg.eval_num_prompts)[0] if cfg.eval_prompts \
        else []
    if d.main:
        print(f"prompts: {stats.summary()}" + (f"; {len(eval_rows)} held out for evaluation"
                                               if eval_rows else ""))
    def encode(rows: list[PromptRow]) -> list[list[int]]:
        return encode_prompts(tokenizer, [r.messages for r in rows], chat,
                              rcfg.max_prompt_length)[0]

    return Prompts(rows, encode(rows), eval_rows, encode(eval_rows))


def build_loop(cfg: PPOConfig, d: Dist, tokenizer: PreTrainedTokenizerBase,
               gold: GoldScorer | None, functions: list[RewardFunction], masters: bool) -> Loop:
    """Load the reward model, the policy, its value model and its reference, on the device."""
    algo, pcfg = cfg.algo, cfg.ppo
    loading = {"hub_kernels": cfg.model.hub_kernels, "attention": cfg.model.attention}
    reward_model = RewardModel.from_pretrained(cfg.reward.model, **loading).to(d.device) \
        if cfg.reward.model else None
    if reward_model is not None:
        reward_model.model.requires_grad_(False).eval()
    policy = load_causal_lm(cfg.model.name, seed=cfg.train.seed,
                            nf4_on=nf4_device(cfg.model, d.device), **loading)
    disable_dropout(policy)
    if cfg.model.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    value_model: torch.nn.Module | None = None
    if algo == "ppo" and pcfg.value_model == "separate":
        # InstructGPT initialises the value function from the reward model; that needs a
        # causal trunk reading the policy's tokens. Otherwise start from the policy.
        from_rm = (reward_model is not None and reward_model.kind == "policy"
                   and reward_model.tokenizer.get_vocab() == tokenizer.get_vocab())
        value_model = (ValueModel.from_reward_model(reward_model.model) if from_rm
                       else ValueModel.from_policy(policy))
        disable_dropout(value_model)
        if d.main:
            print(f"value model: initialised from the {'reward model' if from_rm else 'policy'}")
    elif algo == "ppo":
        value_model = value_head(policy)
    reference = None  # with LoRA: the policy with its adapter off
    if cfg.model.lora.enabled:
        policy = apply_lora(policy, cfg.model.lora)
    else:
        reference = d.place(load_causal_lm(cfg.model.name, seed=cfg.train.seed, **loading)
                            .requires_grad_(False))
        disable_dropout(reference)
        reference.eval()
    # FSDP2 holds the head's weight sharded outside the model's forward: the plain head there.
    chunk = 0 if d.sharded else cfg.train.logits_chunk
    shared_head = algo == "ppo" and pcfg.value_model == "head"
    trained = d.place(PolicyAndValue(policy, value_model, shared_head, cfg.train.bf16, chunk))
    if masters:  # the trained weights, and every frozen model the loop runs
        for m in (trained, reference, reward_model and reward_model.model):
            if m is not None:
                to_bf16(m)
    rcfg = cfg.rollout
    generator = make_generator(rcfg.backend, policy, tokenizer, bf16=cfg.train.bf16,
                               model_path=str(resolve(cfg.model.name)) if rcfg.backend == "vllm"
                               else "", compile=rcfg.compile,
                               dtype=rcfg.dtype)
    params = SamplingParams(temperature=rcfg.temperature, top_p=rcfg.top_p,
                            max_new_tokens=rcfg.max_new_tokens)
    # grpo / rloo: a prompt's samples share one row in every pass, the prompt read once (ppo's
    # value model reads every position of every row, so it keeps a row per sample).
    share = cfg.train.share_prompt and algo != "ppo" and rcfg.group_size > 1
    # The training passes go through DDP when there is one; compiled, generation is not.
    forward = d.wrap(maybe_compile(trained, cfg.train.compile))
    return Loop(cfg, d, tokenizer, policy, trained, forward, reference, reward_model, gold,
                functions, generator, params, chunk, share, needs_policy_pass(cfg, d.world),
                corrects_mismatch(cfg, generator))


def policy_builder(cfg: PPOConfig, device: torch.device):
    """A fresh copy of the policy's modules, for gathering fsdp2 shards into at the end."""
    def build() -> torch.nn.Module:
        policy = load_causal_lm(cfg.model.name, seed=cfg.train.seed,
                                hub_kernels=cfg.model.hub_kernels, attention=cfg.model.attention,
                                nf4_on=nf4_device(cfg.model, device))
        disable_dropout(policy)
        return apply_lora(policy, cfg.model.lora) if cfg.model.lora.enabled else policy
    return build


def collect(loop: Loop, prompt_ids: list[list[int]], step: int, refill: int = 0) -> Rollout:
    """Phase 1, rollout: each process samples its share of the prompts (under fsdp2 from
    weights gathered whole for it), then every process holds all of them. `refill` > 0: the
    step's refill-th extra rollout (dynamic sampling), from random streams of its own."""
    d, rcfg = loop.d, loop.cfg.rollout
    mine = d.shard(range(len(prompt_ids) * rcfg.group_size))  # a prompt's are consecutive
    seed = loop.cfg.train.seed * 100_003 + step
    if refill:
        seed = stream_seed(seed, -refill)
    with d.whole(loop.trained):
        generated = loop.generator.generate(
            [prompt_ids[i] for i in d.shard(range(len(prompt_ids)))], rcfg.group_size,
            loop.params, seed=seed, first_sample=mine.start)
    generations = [g for part in d.all_objects(generated) for g in part]
    rollout = build_rollout(loop.tokenizer, prompt_ids, generations, rcfg.stop_string, d.device)
    if rollout.sampler_logprobs is None and rcfg.is_correction == "always":
        raise ConfigError(f"rollout.is_correction=always needs the log-probs of the sampled "
                          f"tokens, which rollout.backend={rcfg.backend} does not return here "
                          f"(vllm: only at rollout.top_p=1)")
    return rollout


def score(loop: Loop, rollout: Rollout, prompts: list[PromptRow], rows: range,
          empty: bool = False) -> dict[str, torch.Tensor]:
    """Phase 2: the scores of the rollout's `rows` (this process's share), gathered: "proxy"
    from the reward model, "gold" from the gold scorer, "fn:<label>" from each reward function
    (NaN where it returned None), and with functions "combined", the weighted sum; with
    `empty`, also ("empty") the reward model's score of an empty response to each row's prompt.
    `prompts`: the rollout's prompt rows, by rollout.prompt_index; every scorer gets each
    sample's prompt and its row's columns."""
    d, micro = loop.d, loop.cfg.ppo.micro_batch_size
    sample_rows = [prompts[rollout.prompt_index[i]] for i in rows]
    texts = rollout.texts[rows.start:rows.stop]
    given, columns = [r.prompt for r in sample_rows], column_lists(sample_rows)
    scores = {}
    if loop.reward_model is not None:
        answers = {"proxy": texts} | ({"empty": [""] * len(texts)} if empty else {})
        for key, responses in answers.items():
            scores[key] = torch.tensor(loop.reward_model.score(
                [r.messages for r in sample_rows], responses, batch_size=micro,
                bf16=loop.cfg.train.bf16), device=d.device)
    if loop.gold is not None:
        scores["gold"] = torch.tensor(call_scorer(loop.gold, texts, given, columns),
                                      dtype=torch.float32, device=d.device)
    for f in loop.functions:
        scores[FUNCTION + f.label] = torch.tensor(f(texts, given, columns), dtype=torch.float32,
                                                  device=d.device)
    scores = {k: d.all_rows(v) for k, v in scores.items()}
    if loop.functions:
        combined = torch.tensor(weighted_sum(
            {f.label: scores[FUNCTION + f.label].cpu().numpy() for f in loop.functions},
            loop.functions), dtype=torch.float32, device=d.device)
        if "proxy" in scores:
            combined = combined + loop.cfg.reward.model_weight * scores["proxy"]
        scores["combined"] = combined
    return scores


def objective_of(scores: dict[str, torch.Tensor], rollout: Rollout, reward: PPORewardConfig,
                 penalize_no_eos: bool, max_new_tokens: int) -> torch.Tensor:
    """The score optimised: the weighted sum with reward functions, else the proxy when there is
    a reward model, else gold; with the no-EOS penalty and the overlong penalty
    (reward.overlong_buffer), then optional whitening (mean kept) and clipping."""
    objective = scores[next(k for k in ("combined", "proxy", "gold") if k in scores)].clone()
    if penalize_no_eos:
        objective[~rollout.finished] = reward.no_eos_score
    if reward.overlong_buffer:
        objective = objective + overlong_penalty(rollout.mask.sum(-1), max_new_tokens,
                                                 reward.overlong_buffer, reward.overlong_penalty)
    if reward.whiten:
        objective = (objective - objective.mean()) / (objective.std() + 1e-8) + objective.mean()
    if reward.clip:
        objective = objective.clamp(-reward.clip, reward.clip)
    return objective


@dataclass
class Scored:
    """A rollout with its scores: what dynamic sampling's refill (phase 2b) works on."""

    rollout: Rollout
    indices: list[int]  # the prompts (indices into Prompts.rows), one per group
    scores: dict[str, torch.Tensor]  # [N] by scorer
    objective: torch.Tensor  # [N]
    refill_rounds: int = 0  # extra rollouts sampled


def refill(loop: Loop, prompts: Prompts, batch: Scored, step: int, rows: range,
           penalize_no_eos: bool) -> Scored:
    """Phase 2b, dynamic sampling's refill (ppo.dynamic_sampling_rounds; DAPO, Yu et al. 2025,
    section 3.2): while some groups' scores all agree (no gradient), sample another
    rollout.batch_size prompts, drawn at random for (seed, step, round), score them, and put
    their groups whose scores differ in the place of those, in order. The rollout keeps its
    size; what is still without spread after the last round is dropped (Batch.keep)."""
    cfg, rcfg = loop.cfg, loop.cfg.rollout
    group = rcfg.group_size
    indices, scores = list(batch.indices), {k: v.clone() for k, v in batch.scores.items()}
    prompt_ids, generations = list(batch.rollout.prompt_ids), list(batch.rollout.generations)
    rollout, objective, rounds = batch.rollout, batch.objective, 0
    for rounds in range(1, cfg.ppo.dynamic_sampling_rounds + 1):
        extra = torch.randperm(len(prompts.rows), generator=torch.Generator().manual_seed(
            stream_seed(cfg.train.seed * 1_000_003 + step, rounds)))[:rcfg.batch_size].tolist()
        more = collect(loop, [prompts.ids[i] for i in extra], step, refill=rounds)
        more_scores = score(loop, more, [prompts.rows[i] for i in extra], rows)
        more_objective = objective_of(more_scores, more, cfg.reward, penalize_no_eos,
                                      rcfg.max_new_tokens)
        flat = (~groups_with_spread(objective, group)[::group]).nonzero().flatten().tolist()
        useful = groups_with_spread(more_objective, group)[::group].nonzero().flatten().tolist()
        for a, b in zip(flat, useful, strict=False):  # as many as both have
            indices[a], prompt_ids[a], generations[a] = extra[b], more.prompt_ids[b], \
                more.generations[b]
            for key, values in scores.items():
                values[a * group:(a + 1) * group] = more_scores[key][b * group:(b + 1) * group]
        rollout = build_rollout(loop.tokenizer, prompt_ids, generations, rcfg.stop_string,
                                loop.d.device)
        objective = objective_of(scores, rollout, cfg.reward, penalize_no_eos,
                                 rcfg.max_new_tokens)
        if groups_with_spread(objective, group).all():
            break
    return Scored(rollout, indices, scores, objective, rounds)


@torch.no_grad()
def per_token(loop: Loop, rollout: Rollout, rows: range) -> TokenPasses:
    """Phase 3: old log-probs and entropy (zeros without the policy pass), reference
    log-probs and values of the rollout's `rows` (this process's share; the rest gathered)."""
    d, temperature = loop.d, loop.cfg.rollout.temperature
    out: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [], "entropy": [],
                                          "values": []}
    # In order: a prompt's samples are consecutive, so `grouped` keeps the order.
    for idx in torch.arange(rows.start, rows.stop).split(loop.cfg.ppo.micro_batch_size):
        idx, groups = loop.grouped(rollout, idx)
        ids, am, m = rollout.input_ids[idx], rollout.attention_mask[idx], rollout.mask[idx]
        if loop.policy_pass:
            logits, values = loop.trained(ids, am, m, groups)
            logprobs, entropy = logits.logprobs_and_entropy(ids, temperature)
            if values is not None:
                out["values"].append(values)
        else:
            logprobs = entropy = torch.zeros(ids.shape, device=d.device)
        out["logprobs"].append(logprobs)
        out["entropy"].append(entropy)
        ref_logits = loop.reference_logits(ids, am, m, groups)
        out["ref_logprobs"].append(ref_logits.logprobs(ids, temperature))
    gathered = {k: d.all_rows(torch.cat(v)) if v else None for k, v in out.items()}
    return TokenPasses(**gathered)


def advantages(cfg: PPOConfig, objective: torch.Tensor, passes: TokenPasses, mask: torch.Tensor,
               kl_coef: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Phase 4, (advantages, returns). ppo: -kl_coef * KL per token plus the score at the last
    token, GAE, whitening; grpo / rloo: the score (minus the sequence KL when it is in the
    reward) compared within each prompt's group, the same advantage at every token."""
    pcfg, in_reward = cfg.ppo, cfg.ppo.kl_in == "reward"
    if cfg.algo == "ppo":
        kl = kl_per_token(passes.logprobs, passes.ref_logprobs, pcfg.kl_estimator)
        rewards = shape_rewards(objective, kl, mask, kl_coef if in_reward else 0.0)
        advantages, returns = gae(rewards, passes.values, mask, pcfg.gamma, pcfg.lam)
        if pcfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return advantages, returns
    total = objective
    if in_reward:
        kl = kl_per_token(passes.logprobs, passes.ref_logprobs, pcfg.kl_estimator)
        total = total - kl_coef * masked_sum(kl, mask, dim=-1)
    per_sequence = group_advantages(total, cfg.rollout.group_size, cfg.algo,
                                    scale=pcfg.group_scale)
    return per_sequence[:, None] * mask, None


def accumulate(loop: Loop, batch: Batch, minibatch: torch.Tensor, kl_coef: float
               ) -> dict[str, float]:
    """One minibatch's losses, backpropagated microbatch by microbatch (this process's slice
    of it); their parts summed over the microbatches and the processes."""
    cfg, d, pcfg = loop.cfg, loop.d, loop.cfg.ppo
    rollout, passes, temperature = batch.rollout, batch.passes, cfg.rollout.temperature
    # The tokens the losses see: the response tokens of the samples kept (dynamic sampling).
    loss_mask = rollout.mask * batch.keep[:, None]
    # Normalisers of the whole minibatch (every rank counts its tokens and sequences), so the
    # ranks' slices and the microbatches add up to one process's gradient.
    num_tokens = loss_mask[minibatch].sum()
    aggregation = {"loss_type": pcfg.loss_type, "num_tokens": num_tokens,
                   "num_sequences": loss_mask[minibatch].bool().any(-1).sum(),
                   "max_length": cfg.rollout.max_new_tokens}
    clip_low, clip_high = pcfg.clip_bounds()
    sums: dict[str, float] = {}
    for idx in d.shard(minibatch).split(pcfg.micro_batch_size):
        idx, groups = loop.grouped(rollout, idx)
        ids, am, m = rollout.input_ids[idx], rollout.attention_mask[idx], rollout.mask[idx]
        logits, values = loop.forward(ids, am, m, groups)  # every response, kept or not
        m = loss_mask[idx]
        logprobs = logits.logprobs(ids, temperature)
        if not loop.policy_pass:  # this forward is the rollout policy's (needs_policy_pass)
            with torch.no_grad():
                passes.logprobs[idx] = logprobs.detach()
                passes.entropy[idx] = logits.entropy(temperature)
        importance = None
        if loop.correct and rollout.sampler_logprobs is not None:
            importance = is_weights(passes.logprobs[idx], rollout.sampler_logprobs[idx], m,
                                    cfg.rollout.is_cap)
        loss, s = policy_loss(logprobs, passes.logprobs[idx], batch.advantages[idx], m,
                              clip_low, weights=importance, clip_range_high=clip_high,
                              importance_sampling_level=pcfg.importance_sampling_level,
                              **aggregation)
        # Token means of the stats, as shares of the minibatch (0 where nothing is kept).
        weight = (m.sum() / num_tokens.clamp(min=1)).item()
        parts = {LOSS_POLICY: loss.item(),
                 PPO_CLIPFRAC: s["clipfrac"].nan_to_num().item() * weight,
                 PPO_APPROX_KL: s["approx_kl"].nan_to_num().item() * weight}
        if pcfg.entropy_coef:  # a token mean whatever the loss_type, as in TRL
            entropy = masked_sum(logits.entropy(temperature), m) / num_tokens.clamp(min=1)
            loss = loss - pcfg.entropy_coef * entropy
        if cfg.algo == "ppo":
            v_loss, vs = value_loss(values, passes.values[idx], batch.returns[idx], m,
                                    pcfg.clip_range_value, num_tokens=num_tokens)
            loss = loss + pcfg.vf_coef * v_loss
            parts |= {LOSS_VALUE: v_loss.item(),
                      PPO_VALUE_CLIPFRAC: vs["clipfrac"].item() * weight}
        if pcfg.kl_in == "loss":
            k_loss = kl_loss(logprobs, passes.ref_logprobs[idx], m,
                             estimator=pcfg.kl_estimator, **aggregation)
            loss = loss + kl_coef * k_loss
            parts[LOSS_KL] = k_loss.item()
        d.backward(loss)
        sums = {k: sums.get(k, 0.0) + v for k, v in parts.items()}
    return dict(zip(sums, d.sum(*sums.values()), strict=True))


def update(loop: Loop, optimizer: torch.optim.Optimizer, scheduler: Any, batch: Batch,
           kl_coef: float, step: int, last_saved: Path | None) -> UpdateStats:
    """Phase 5: `ppo.epochs` passes over shuffled minibatches, an optimizer update each;
    stops early once a minibatch's approximate KL exceeds ppo.target_approx_kl."""
    cfg, pcfg = loop.cfg, loop.cfg.ppo
    loop.trained.train()
    shuffle = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    sums: dict[str, float] = {}
    updates, first_lr = 0, 0.0
    for _ in range(pcfg.epochs):
        for minibatch in torch.randperm(len(batch.rollout.texts),
                                        generator=shuffle).split(pcfg.minibatch_size):
            mb = accumulate(loop, batch, minibatch, kl_coef)
            mb[OPTIM_GRAD_NORM], lr = optimizer_step(
                loop.trained, optimizer, scheduler, cfg.optim.max_grad_norm, mb[LOSS_POLICY],
                step + 1, last_saved, loop.d)
            first_lr = lr if updates == 0 else first_lr
            updates += 1
            sums = {k: sums.get(k, 0.0) + v for k, v in mb.items()}
            if pcfg.target_approx_kl and mb[PPO_APPROX_KL] > pcfg.target_approx_kl:
                return UpdateStats({k: v / updates for k, v in sums.items()}, updates,
                                   first_lr, True)
    return UpdateStats({k: v / updates for k, v in sums.items()}, updates, first_lr, False)


def iteration_metrics(cfg: PPOConfig, batch: Batch, stats: UpdateStats, seq_kl: torch.Tensor,
                      kl_coef: float, laps: dict[str, float], epoch: float,
                      device: torch.device) -> dict[str, float]:
    """Phase 6, what an iteration logs: its losses, rewards, KL, lengths and timings."""
    rollout, mask, adv = batch.rollout, batch.rollout.mask, batch.advantages
    lengths = mask.sum(-1)
    num_samples = len(rollout.texts)
    metrics = dict(stats.metrics)
    for key, values in batch.scores.items():
        if key in SCORE_METRICS:
            mean, std = SCORE_METRICS[key]
            metrics[mean], metrics[std] = values.mean().item(), values.std().item()
        elif key.startswith(FUNCTION):  # the mean over the completions it applies to
            metrics[REWARD_PREFIX + key[len(FUNCTION):]] = values.nanmean().item()
    metrics |= {
        REWARD_SCORE: batch.objective.mean().item(),
        KL_SEQ: seq_kl.mean().item(), KL_COEF: kl_coef,
        POLICY_ENTROPY: masked_mean(batch.passes.entropy, mask).item(),
        RESPONSE_LENGTH: lengths.float().mean().item(),
        RESPONSE_NO_EOS_FRAC: (~rollout.finished).float().mean().item(),
        PPO_ADVANTAGE_MEAN: masked_mean(adv, mask).item(),
        PPO_ADVANTAGE_STD: masked_var(adv, mask).sqrt().item(),
        PPO_UPDATES: stats.updates, PPO_EARLY_STOP: float(stats.stopped_early),
        OPTIM_LR: stats.first_lr,
        **{LAP_METRICS[k]: v for k, v in laps.items()}, **peak_memory(device),
        PERF_GENERATE_TOKENS_PER_S: lengths.sum().item() / laps["generate"],
        PERF_TOKENS_PER_S:
            stats.updates / (num_samples // cfg.ppo.minibatch_size) *
            rollout.attention_mask.sum().item() / max(laps["train"], 1e-9),
        DATA_EPOCH: epoch}
    metrics |= batch.sampling
    if cfg.ppo.dynamic_sampling:
        metrics[PPO_DROPPED_FRAC] = 1 - batch.keep.float().mean().item()
    if cfg.reward.overlong_buffer:
        metrics[REWARD_OVERLONG_PENALTY] = overlong_penalty(
            lengths, cfg.rollout.max_new_tokens, cfg.reward.overlong_buffer,
            cfg.reward.overlong_penalty).mean().item()
    if cfg.algo == "ppo":
        metrics[PPO_RETURNS_MEAN] = masked_mean(batch.returns, mask).item()
        metrics[PPO_EXPLAINED_VARIANCE] = explained_variance(batch.passes.values,
                                                               batch.returns, mask).item()
    if rollout.sampler_logprobs is not None:  # measured whether or not it is corrected for
        mismatch = mismatch_stats(batch.passes.logprobs, rollout.sampler_logprobs, mask,
                                  cfg.rollout.is_cap)
        metrics |= {MISMATCH_METRICS[k]: v.item() for k, v in mismatch.items()}
    return metrics


def evaluate(loop: Loop, prompts: Prompts) -> dict[str, float]:
    """The held-out check (eval/*): one fresh sample per held-out prompt."""
    with loop.d.whole(loop.trained):
        return heldout_metrics(loop.policy, loop.tokenizer, prompts.eval_ids,
                               [r.messages for r in prompts.eval_rows], params=loop.params,
                               seed=loop.cfg.train.seed, batch_size=loop.cfg.ppo.micro_batch_size,
                               reference=loop.reference, gold=loop.gold,
                               reward_model=loop.reward_model, bf16=loop.cfg.train.bf16,
                               chunk=loop.chunk, generator=loop.generator,
                               prompt_rows=prompts.eval_rows)


def empty_wins(empty: torch.Tensor | None, scores: dict[str, torch.Tensor]) -> float | None:
    """How often the reward model scores an empty response above the sampled one, when the
    rollout was scored for that (score's `empty`)."""
    if empty is None:
        return None
    return (empty > scores["proxy"]).float().mean().item()


@dataclass
class Hooks:
    """Seams for code that watches the loop (benchmarks, tests) without patching it: `started`
    once set up, before the first iteration; `iteration` after each iteration is logged."""

    started: Callable[[Loop], None] = lambda loop: None
    iteration: Callable[[Loop, Batch, dict[str, float]], None] = \
        lambda loop, batch, metrics: None


def optimised(cfg: PPOConfig, functions: list[RewardFunction]) -> str:
    """What the run optimises, in words, for its header."""
    if not functions:
        return f"reward model {cfg.reward.model}" if cfg.reward.model else \
            f"gold {cfg.reward.gold}"
    terms = [f"{cfg.reward.model_weight:g} * reward model"] if cfg.reward.model else []
    terms += [f"{f.weight:g} * {f.name}" for f in functions]
    return " + ".join(terms)


def postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The progress bar's figures: proxy beside gold (the proxy climbing while gold stalls is
    over-optimisation), KL, and the mean response length (a collapse to empty responses)."""
    return {k: f"{metrics[mean]:.3f}" for k, (mean, _) in SCORE_METRICS.items()
            if mean in metrics} | {"kl": f"{metrics[KL_SEQ]:.2f}",
                                   "len": f"{metrics[RESPONSE_LENGTH]:.1f}"}


class Laps:
    """Seconds per phase of an iteration: lap(name) closes the phase that just ended."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.last = now - self.last, now

    def total(self) -> dict[str, float]:
        return self.seconds | {"step": time.perf_counter() - self.started}


def train(cfg: PPOConfig, hooks: Hooks | None = None, progress_bar: bool = True) -> Path:
    """Run PPO / GRPO / RLOO as configured; return the final/ directory. `progress_bar`: False
    hides its progress bar (rank 0 draws it).

    Under torchrun each process samples, scores and runs the no-grad passes over its share of
    the prompts, and then every process holds the whole rollout (all-gathered); each takes its
    slice of every minibatch for the update. Every sample draws from its own random stream
    (tether.rollout.base.stream_seed), so the samples, the gradients and every statistic of the
    batch (advantage whitening among them) are those of one process."""
    hooks = hooks or Hooks()
    torch.manual_seed(cfg.train.seed)
    algo, pcfg, rcfg = cfg.algo, cfg.ppo, cfg.rollout
    d = setup(cfg.train.strategy, cfg.train.device)
    masters = check_settings(cfg.model, cfg.train, d.device)  # before any model loads
    check_config(cfg, d)
    # Data and scorer names first: mistakes fail fast.
    tokenizer = load_tokenizer(cfg.model.name)
    prompts = load_prompt_sets(cfg, tokenizer, d)
    gold = load_gold_scorer(cfg.reward.gold) if cfg.reward.gold else None
    functions = load_reward_functions(cfg.reward.functions)
    run_dir, checkpoint = prepare_run_dir(cfg.run_dir, cfg.resume, write=d.main)
    loop = build_loop(cfg, d, tokenizer, gold, functions, masters)

    per_epoch = len(prompts.rows) // rcfg.batch_size  # iterations per pass over the prompts
    total_steps = cfg.train.max_steps or epochs_for(cfg.train, per_epoch) * per_epoch
    num_samples = rcfg.batch_size * rcfg.group_size
    updates_per_step = pcfg.epochs * num_samples // pcfg.minibatch_size
    target = optimised(cfg, functions)
    print_header(f"{algo} on {cfg.model.name}", loop.trained,
                 f"{total_steps} iterations of {rcfg.batch_size} prompts x {rcfg.group_size} "
                 f"samples; optimising the {target} ({d.processes})", d)
    kl_ctl = (AdaptiveKLController(pcfg.kl_coef, pcfg.kl_target, pcfg.kl_horizon)
              if pcfg.adaptive_kl else FixedKLController(pcfg.kl_coef))
    extra: dict = {}
    optimizer, scheduler, start_step, log = start_or_resume(
        run_dir, checkpoint, loop.trained, cfg.optim, total_steps * updates_per_step,
        num_examples=len(prompts.rows), data_source=rcfg.prompts, extra=extra,
        lr_by_prefix={"value.": pcfg.value_lr} if pcfg.value_lr and algo == "ppo" else None,
        master_weights=masters, dist=d, config=cfg)
    if checkpoint is not None:
        kl_ctl.load_state_dict(extra["kl_controller"])
        # A backend with a copy of the policy (static, vllm) copied the weights it was built
        # from, not the checkpoint's.
        loop.generator.sync(loop.policy)
    # Whether the no-EOS penalty applies: decided on the run's first rollout, then kept.
    penalize_no_eos: bool | None = extra.get("penalize_no_eos") if cfg.reward.penalize_no_eos \
        else False
    samples_log = MetricsLog(run_dir / "samples.jsonl",
                             resume_step=start_step if checkpoint else None) \
        if d.main else NullLog()
    # Held-out evaluation samples the policy: rank 0 does it alone, except under fsdp2, where
    # its forwards gather shards, so every rank runs it (identically) and rank 0 logs it.
    evaluates = bool(prompts.eval_rows) and (d.main or d.sharded)
    if checkpoint is None and evaluates:
        log.log(0, evaluate(loop, prompts))

    last_saved, metrics = checkpoint, {}
    watch = RolloutWatch(main=d.main, has_reward_model=loop.reward_model is not None)
    mine = d.shard(range(num_samples))  # this process's samples of every rollout
    hooks.started(loop)
    progress = tqdm(total=total_steps, initial=start_step, desc=algo, unit="it",
                    dynamic_ncols=True, disable=not (d.main and progress_bar))
    with StopRequests() as stop:
        for step in range(start_step, total_steps):
            laps = Laps()
            loop.trained.eval()  # sampling and old log-probs; dropout is off anyway
            indices = batch_indices(len(prompts.rows), rcfg.batch_size, step, cfg.train.seed)
            rollout = collect(loop, [prompts.ids[i] for i in indices], step)
            laps.lap("generate")
            scores = score(loop, rollout, [prompts.rows[i] for i in indices], mine,
                           empty=watch.wants_empty_scores)
            # for the health check alone, on the first rollout: not logged
            wins = empty_wins(scores.pop("empty", None), scores)
            if penalize_no_eos is None:
                penalize_no_eos = eos_penalty_applies(rollout.finished, cfg.reward, rcfg, d.main)
            scored = Scored(rollout, indices, scores, objective_of(
                scores, rollout, cfg.reward, penalize_no_eos, rcfg.max_new_tokens))
            laps.lap("score")
            sampling = {} if algo == "ppo" else {PPO_ZERO_SPREAD_FRAC: 1 - groups_with_spread(
                scored.objective, rcfg.group_size).float().mean().item()}
            if pcfg.dynamic_sampling_rounds:
                if not groups_with_spread(scored.objective, rcfg.group_size).all():
                    scored = refill(loop, prompts, scored, step, mine, penalize_no_eos)
                sampling[PPO_REFILL_ROUNDS] = scored.refill_rounds
                laps.lap("refill")
            rollout, indices, scores, objective = \
                scored.rollout, scored.indices, scored.scores, scored.objective
            keep = groups_with_spread(objective, rcfg.group_size) if pcfg.dynamic_sampling \
                else torch.ones_like(rollout.finished)
            passes = per_token(loop, rollout, mine)
            kl_coef = kl_ctl.value
            batch = Batch(rollout, scores, objective, passes,
                          *advantages(cfg, objective, passes, rollout.mask, kl_coef), keep,
                          sampling)
            laps.lap("prepare")
            stats = update(loop, optimizer, scheduler, batch, kl_coef, step, last_saved)
            laps.lap("train")
            loop.generator.sync(loop.policy)  # vllm, static: the next rollout sees the update

            seq_kl = masked_sum(passes.logprobs - passes.ref_logprobs, rollout.mask, dim=-1)
            kl_ctl.update(seq_kl.mean().item(), num_samples)
            done, is_last = step + 1, step + 1 == total_steps
            metrics = iteration_metrics(cfg, batch, stats, seq_kl, kl_coef, laps.total(),
                                        epoch=step / per_epoch, device=d.device)
            metrics |= watch.check(done, rollout.mask.sum(-1).tolist(), rollout.finished.tolist(),
                                   objective.tolist(), penalize_no_eos, cfg.reward.no_eos_score,
                                   wins)
            if evaluated := evaluates and due(done, cfg.train.eval_every, is_last):
                metrics |= evaluate(loop, prompts)
            if is_last or done % cfg.train.log_every == 0 or evaluated:
                log.log(done, metrics)
            hooks.iteration(loop, batch, metrics)
            if due(done, cfg.sample_every, is_last):
                samples_log.write(done, {"samples": [
                    {"prompt": prompts.rows[indices[rollout.prompt_index[i]]].prompt,
                     "response": rollout.texts[i],
                     **{k: None if v[i].isnan() else v[i].item() for k, v in scores.items()}}
                    for i in range(min(4, num_samples))]})
            progress.set_postfix(postfix(metrics))
            progress.update(1)
            last_saved = save_when_due(
                stop, run_dir, done, is_last, loop.trained, optimizer, scheduler, cfg.train,
                num_examples=len(prompts.rows), steps_per_epoch=per_epoch,
                last_saved=last_saved, dist=d,
                extra={"kl_controller": kl_ctl.state_dict(), "penalize_no_eos": penalize_no_eos})
    progress.close()
    log.close()
    samples_log.close()
    if metrics and d.main:
        print(", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                        if k.split("/")[0] in ("reward", "kl", "eval")))
    whole = master_model(loop.trained, optimizer, policy_builder(cfg, d.device), part="policy",
                         dist=d)
    return export_policy(run_dir, whole, tokenizer, cfg, "ppo", dist=d)
