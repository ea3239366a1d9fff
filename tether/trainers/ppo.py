"""Online RL against a reward: PPO (value model + GAE), GRPO and RLOO in one loop.

Each iteration (one `step`), top to bottom:
  1. rollout: a batch of prompts, `group_size` responses each, sampled from the policy;
  2. score: the proxy (reward model) and/or the gold scorer; the optimised score (the proxy if
     there is one) gets the no-EOS penalty, then optional whitening and clipping;
  3. log-probs of the policy and the reference (and values, for ppo), without gradients (the
     policy's pass is left to the update when there is one update per rollout, see
     needs_policy_pass);
  4. rewards and advantages: ppo: -kl_coef * KL per token plus the score at the last token,
     GAE, whitening; grpo / rloo: the score (minus the sequence KL when it is in the reward)
     compared within each prompt's group, the same advantage at every token;
  5. `epochs` passes over shuffled minibatches: clipped policy loss (+ clipped value loss,
     entropy bonus, KL loss), microbatch gradient accumulation, early stop on approximate KL;
  6. KL controller update, log, sample responses, evaluate, checkpoint.

Dropout is off in every model (log-probs of the same text must not depend on the pass), so the
first minibatch of each iteration has ratio 1 (to float rounding: its rows may be batched or
packed differently from the rollout pass's). A prompt's samples share one row behind one copy
of the prompt (train.share_prompt, grpo and rloo; tether.models.shared_prompt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tether.checkpoint import save_final
from tether.config import PPOConfig, PPORewardConfig, RolloutConfig
from tether.data.collate import collate
from tether.data.order import batch_indices
from tether.data.prompts import encode_prompts, load_prompts
from tether.data.tokenize import Encoded, Messages, wants_chat_template
from tether.device import autocast, to_device
from tether.distributed import setup
from tether.errors import ConfigError, DataError
from tether.eval.health import health_flags, rollout_health
from tether.eval.policy import heldout_metrics
from tether.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    group_advantages,
    kl_loss,
    kl_per_token,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_loss,
    shape_rewards,
    value_loss,
)
from tether.models.loading import load_causal_lm, load_tokenizer, resolve
from tether.models.logprobs import TokenLogits, first_scored, forward_token_logits
from tether.models.lora import apply_lora, count_parameters, is_lora
from tether.models.reward import RewardModel
from tether.models.shared_prompt import PackedLogits, group_runs, packed_logits
from tether.models.value import ValueModel, logits_and_values, value_head
from tether.precision import check_settings, master_model, maybe_compile, to_bf16
from tether.rollout.backends import make_generator
from tether.rollout.base import Generation, SamplingParams
from tether.rundir import MetricsLog, NullLog, prepare_run_dir
from tether.tasks.gold import load_gold_scorer, score_all
from tether.trainers.common import (
    due,
    epochs_for,
    optimizer_step,
    save_training_state,
    start_or_resume,
)


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
    examples, texts, finished, prompt_index = [], [], [], []
    for i, (prompt, samples) in enumerate(zip(prompt_ids, generations, strict=True)):
        for g in samples:
            response, stopped = cut_at_stop(tokenizer, g.response_ids, stop)
            examples.append(Encoded(prompt + response, [0] * len(prompt) + [1] * len(response)))
            texts.append(tokenizer.decode(response, skip_special_tokens=True))
            finished.append(g.finished or stopped)
            prompt_index.append(i)
    batch = to_device(collate(examples, tokenizer.pad_token_id), device)
    return Rollout(batch["input_ids"], batch["attention_mask"], batch["loss_mask"].float(),
                   prompt_index, texts, torch.tensor(finished, device=device))


def train(cfg: PPOConfig) -> Path:
    """Run PPO / GRPO / RLOO as configured; return the final/ directory.

    Under torchrun each process samples, scores and runs the no-grad passes over its share of
    the prompts, and then every process holds the whole rollout (all-gathered); each takes its
    slice of every minibatch for the update. Every sample draws from its own random stream
    (tether.rollout.generate), so the samples, the gradients and every statistic of the batch
    (advantage whitening among them) are those of one process."""
    torch.manual_seed(cfg.train.seed)
    algo, pcfg, rcfg = cfg.algo, cfg.ppo, cfg.rollout
    bf16, temperature = cfg.train.bf16, rcfg.temperature
    d = setup(cfg.train.strategy, cfg.train.device)
    masters = check_settings(cfg.model, cfg.train, d.device)  # before any model loads
    if rcfg.backend == "vllm":
        from tether.rollout.vllm import require_vllm

        require_vllm()  # before loading anything
    if d.sharded and rcfg.backend == "vllm":
        raise ConfigError("rollout.backend=vllm loads the whole policy into its engine in "
                          "every process: use train.strategy=ddp with it")
    for key, value in (("rollout.batch_size", rcfg.batch_size),
                       ("ppo.minibatch_size", pcfg.minibatch_size)):
        if value % d.world:
            raise ConfigError(f"{key} ({value}) must be a multiple of the number of processes "
                              f"({d.world})")

    # 0. Prompts, scorers, models. Data and scorer names first: mistakes fail fast.
    tokenizer = load_tokenizer(cfg.model.name)
    chat = wants_chat_template(tokenizer, rcfg.chat_template)
    rows, stats = load_prompts(rcfg.prompts)
    messages: list[Messages] = [m for _, m in rows]
    prompt_ids, _ = encode_prompts(tokenizer, messages, chat, rcfg.max_prompt_length)
    eval_rows = load_prompts(cfg.eval_prompts, cfg.eval_num_prompts)[0] if cfg.eval_prompts \
        else []
    eval_ids = encode_prompts(tokenizer, [m for _, m in eval_rows], chat,
                              rcfg.max_prompt_length)[0]
    gold = load_gold_scorer(cfg.reward.gold) if cfg.reward.gold else None
    if len(rows) < rcfg.batch_size:
        raise DataError(f"{rcfg.prompts}: {len(rows)} prompts, fewer than "
                        f"rollout.batch_size={rcfg.batch_size}")
    if d.main:
        print(f"prompts: {stats.summary()}" + (f"; {len(eval_rows)} held out for evaluation"
                                               if eval_rows else ""))
    run_dir, checkpoint = prepare_run_dir(cfg.run_dir, cfg, cfg.resume, write=d.main)

    loading = {"hub_kernels": cfg.model.hub_kernels, "attention": cfg.model.attention}
    reward_model = RewardModel.from_pretrained(cfg.reward.model, **loading).to(d.device) \
        if cfg.reward.model else None
    if reward_model is not None:
        reward_model.model.requires_grad_(False).eval()
    def base_policy() -> torch.nn.Module:
        policy = load_causal_lm(cfg.model.name, seed=cfg.train.seed, **loading)
        disable_dropout(policy)
        return policy

    def build_policy() -> torch.nn.Module:  # a fresh copy for gathering fsdp2 shards into
        policy = base_policy()
        return apply_lora(policy, cfg.model.lora) if cfg.model.lora.enabled else policy

    policy = base_policy()
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
    if cfg.model.lora.enabled:
        policy = apply_lora(policy, cfg.model.lora)
        ref_model = None  # the policy with its adapter off
    else:
        ref_model = d.place(load_causal_lm(cfg.model.name, seed=cfg.train.seed, **loading)
                            .requires_grad_(False))
        disable_dropout(ref_model)
        ref_model.eval()
    shared_head = algo == "ppo" and pcfg.value_model == "head"
    # FSDP2 holds the head's weight sharded outside the model's forward: the plain head there.
    chunk = 0 if d.sharded else cfg.train.logits_chunk
    trained = d.place(PolicyAndValue(policy, value_model, shared_head, bf16, chunk))
    if masters:  # the trained weights, and every frozen model the loop runs
        for m in (trained, ref_model, reward_model and reward_model.model):
            if m is not None:
                to_bf16(m)

    per_epoch = len(rows) // rcfg.batch_size  # iterations per pass over the prompts
    total_steps = cfg.train.max_steps or epochs_for(cfg.train, per_epoch) * per_epoch
    num_samples = rcfg.batch_size * rcfg.group_size
    updates_per_step = pcfg.epochs * num_samples // pcfg.minibatch_size
    trainable, total = count_parameters(trained)
    target = f"reward model {cfg.reward.model}" if reward_model else f"gold {cfg.reward.gold}"
    if d.main:
        print(f"{algo} on {cfg.model.name}: {total / 1e6:.2f}M parameters, "
              f"{trainable / 1e6:.2f}M trainable; {total_steps} iterations of "
              f"{rcfg.batch_size} prompts x {rcfg.group_size} samples; optimising the "
              f"{target} ({d.processes})")
    # The training passes go through DDP when there is one; compiled, generation is not.
    forward = d.wrap(maybe_compile(trained, cfg.train.compile))

    kl_ctl = (AdaptiveKLController(pcfg.kl_coef, pcfg.kl_target, pcfg.kl_horizon)
              if pcfg.adaptive_kl else FixedKLController(pcfg.kl_coef))
    extra: dict = {}
    optimizer, scheduler, start_step, log = start_or_resume(
        run_dir, checkpoint, trained, cfg.optim, total_steps * updates_per_step,
        num_examples=len(rows), data_source=rcfg.prompts, extra=extra,
        lr_by_prefix={"value.": pcfg.value_lr} if pcfg.value_lr and value_model else None,
        master_weights=masters, dist=d)
    if checkpoint is not None:
        kl_ctl.load_state_dict(extra["kl_controller"])
    # Whether the no-EOS penalty applies: decided on the run's first rollout, then kept.
    penalize_no_eos: bool | None = extra.get("penalize_no_eos") if cfg.reward.penalize_no_eos \
        else False
    samples_log = MetricsLog(run_dir / "samples.jsonl",
                             resume_step=start_step if checkpoint else None) \
        if d.main else NullLog()
    generator = make_generator(rcfg.backend, policy, tokenizer, bf16=bf16,
                               model_path=str(resolve(cfg.model.name)) if rcfg.backend == "vllm"
                               else "")
    params = SamplingParams(temperature=temperature, top_p=rcfg.top_p,
                            max_new_tokens=rcfg.max_new_tokens)
    # grpo / rloo: a prompt's samples share one row in every pass, the prompt read once (ppo's
    # value model reads every position of every row, so it keeps a row per sample).
    share = cfg.train.share_prompt and algo != "ppo" and rcfg.group_size > 1

    def grouped(rollout: Rollout, idx: torch.Tensor) -> tuple[torch.Tensor, list[int] | None]:
        """A microbatch's rows with each prompt's samples together, and how many of each."""
        if not share:
            return idx, None
        prompt = torch.tensor(rollout.prompt_index)[idx]
        order = torch.argsort(prompt, stable=True)
        return idx[order], group_runs(prompt[order].tolist())

    policy_pass = needs_policy_pass(cfg, d.world)

    @torch.no_grad()
    def per_token(rollout: Rollout, rows: range) -> dict[str, torch.Tensor]:
        """Old log-probs (zeros without the policy pass), reference log-probs, entropy and
        values of the rollout's `rows` (this process's share; the others' are gathered)."""
        out: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [],
                                              "entropy": [], "values": []}
        # In order: a prompt's samples are consecutive, so `grouped` keeps the order.
        for idx in torch.arange(rows.start, rows.stop).split(pcfg.micro_batch_size):
            idx, groups = grouped(rollout, idx)
            ids, am, m = rollout.input_ids[idx], rollout.attention_mask[idx], rollout.mask[idx]
            if policy_pass:
                logits, values = trained(ids, am, m, groups)
                logprobs, entropy = logits.logprobs_and_entropy(ids, temperature)
                out["logprobs"].append(logprobs)
                out["entropy"].append(entropy)
            else:
                values = None
                out["logprobs"].append(torch.zeros(ids.shape, device=d.device))
                out["entropy"].append(torch.zeros(ids.shape, device=d.device))
            if ref_model is not None:
                with autocast(bf16, d.device):
                    ref_logits = response_logits(ref_model, ids, am, m, groups, chunk)
            else:
                with policy.disable_adapter(), d.gathered(trained), autocast(bf16, d.device):
                    ref_logits = response_logits(policy, ids, am, m, groups, chunk)
            out["ref_logprobs"].append(ref_logits.logprobs(ids, temperature))
            if values is not None:
                out["values"].append(values)
        return {k: d.all_rows(torch.cat(v)) for k, v in out.items() if v}

    def score(rollout: Rollout, prompts: list[Messages], rows: range, empty: bool = False
              ) -> dict[str, torch.Tensor]:
        """The scores of the rollout's `rows` (this process's share), gathered; with `empty`,
        also ("empty") the reward model's score of an empty response to each row's prompt."""
        sample_prompts = [prompts[rollout.prompt_index[i]] for i in rows]
        texts = rollout.texts[rows.start:rows.stop]
        scores = {}
        if reward_model is not None:
            answers = {"proxy": texts}
            if empty:
                answers["empty"] = [""] * len(texts)
            for key, responses in answers.items():
                scores[key] = torch.tensor(reward_model.score(
                    sample_prompts, responses, batch_size=pcfg.micro_batch_size, bf16=bf16),
                    device=d.device)
        if gold is not None:
            scores["gold"] = torch.tensor(score_all([{"responses": texts}], gold)[0],
                                          dtype=torch.float32, device=d.device)
        return {k: d.all_rows(v) for k, v in scores.items()}

    # Held-out evaluation samples the policy: rank 0 does it alone, except under fsdp2, where
    # its forwards gather shards, so every rank runs it (identically) and rank 0 logs it.
    evaluates = bool(eval_rows) and (d.main or d.sharded)

    def evaluate() -> dict[str, float]:
        with d.whole(trained):
            return heldout_metrics(policy, tokenizer, eval_ids, [m for _, m in eval_rows],
                                   params=params, seed=cfg.train.seed,
                                   batch_size=pcfg.micro_batch_size, reference=ref_model,
                                   gold=gold, reward_model=reward_model, bf16=bf16,
                                   chunk=chunk)

    if checkpoint is None and evaluates:
        log.log(0, evaluate())

    last_saved, metrics = checkpoint, {}
    first_length: float | None = None  # this run's first mean response length (collapse check)
    warned: set[str] = set()  # health warnings printed so far: each kind once
    empty_wins = None if reward_model is not None else float("nan")
    progress = tqdm(total=total_steps, initial=start_step, desc=algo, unit="it",
                    dynamic_ncols=True, disable=not d.main)
    for step in range(start_step, total_steps):
        started = time.perf_counter()
        trained.eval()  # sampling and old log-probs; dropout is off anyway

        # 1. Rollout: each process samples its share of the prompts (under fsdp2 from weights
        # gathered whole for it), then every process holds all of them.
        indices = batch_indices(len(rows), rcfg.batch_size, step, cfg.train.seed)
        batch_prompts = [prompt_ids[i] for i in indices]
        my_prompts = d.shard(range(rcfg.batch_size))
        mine = d.shard(range(num_samples))  # their samples: a prompt's are consecutive
        with d.whole(trained):
            generated = generator.generate(
                [batch_prompts[i] for i in my_prompts], rcfg.group_size, params,
                seed=cfg.train.seed * 100_003 + step, first_sample=mine.start)
        generations = [g for part in d.all_objects(generated) for g in part]
        rollout = build_rollout(tokenizer, batch_prompts, generations, rcfg.stop_string,
                                d.device)
        mask = rollout.mask
        generate_s = time.perf_counter() - started

        # 2. Scores: the optimised one is the proxy when there is a reward model.
        t0 = time.perf_counter()
        # the reward model's verdict on empty responses: checked on this run's first rollout
        scores = score(rollout, [messages[i] for i in indices], mine, empty=empty_wins is None)
        if "empty" in scores:
            empty_wins = (scores["empty"] > scores["proxy"]).float().mean().item()
        objective = (scores["proxy"] if reward_model is not None else scores["gold"]).clone()
        if penalize_no_eos is None:
            penalize_no_eos = eos_penalty_applies(rollout.finished, cfg.reward, rcfg, d.main)
        if penalize_no_eos:
            objective[~rollout.finished] = cfg.reward.no_eos_score
        if cfg.reward.whiten:
            objective = (objective - objective.mean()) / (objective.std() + 1e-8) + \
                objective.mean()
        if cfg.reward.clip:
            objective = objective.clamp(-cfg.reward.clip, cfg.reward.clip)
        score_s = time.perf_counter() - t0

        # 3. Log-probs, reference log-probs and values, before any update.
        t0 = time.perf_counter()
        old = per_token(rollout, mine)
        kl_in_reward = pcfg.kl_in == "reward"
        kl_coef = kl_ctl.value

        # 4. Rewards and advantages.
        if algo == "ppo":
            kl = kl_per_token(old["logprobs"], old["ref_logprobs"], pcfg.kl_estimator)
            rewards = shape_rewards(objective, kl, mask, kl_coef if kl_in_reward else 0.0)
            advantages, returns = gae(rewards, old["values"], mask, pcfg.gamma, pcfg.lam)
            if pcfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
        else:
            total_score = objective
            if kl_in_reward:
                kl = kl_per_token(old["logprobs"], old["ref_logprobs"], pcfg.kl_estimator)
                total_score = total_score - kl_coef * masked_sum(kl, mask, dim=-1)
            per_sequence = group_advantages(total_score, rcfg.group_size, algo,
                                            scale=pcfg.group_scale)
            advantages = per_sequence[:, None] * mask
            returns = None
        prepare_s = time.perf_counter() - t0

        # 5. Epochs over shuffled minibatches, microbatches accumulated.
        t0 = time.perf_counter()
        trained.train()
        shuffle = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
        sums: dict[str, float] = {}
        updates = 0
        stop_early = False
        for _ in range(pcfg.epochs):
            order = torch.randperm(num_samples, generator=shuffle)
            for minibatch in order.split(pcfg.minibatch_size):
                # Token means over the whole minibatch (every rank counts its tokens), so the
                # ranks' slices and the microbatches add up to one process's gradient.
                num_tokens = mask[minibatch].sum()
                mb: dict[str, float] = {}
                for idx in d.shard(minibatch).split(pcfg.micro_batch_size):
                    idx, groups = grouped(rollout, idx)
                    ids, am, m = rollout.input_ids[idx], rollout.attention_mask[idx], mask[idx]
                    logits, values = forward(ids, am, m, groups)
                    logprobs = logits.logprobs(ids, temperature)
                    if not policy_pass:  # this forward is the rollout policy's (see above)
                        with torch.no_grad():
                            old["logprobs"][idx] = logprobs.detach()
                            old["entropy"][idx] = logits.entropy(temperature)
                    loss, s = policy_loss(logprobs, old["logprobs"][idx], advantages[idx], m,
                                          pcfg.clip_range, num_tokens=num_tokens)
                    weight = (m.sum() / num_tokens).item()
                    parts = {"loss/policy": loss.item(), "ppo/clipfrac": s["clipfrac"].item()
                             * weight, "ppo/approx_kl": s["approx_kl"].item() * weight}
                    if pcfg.entropy_coef:
                        entropy = masked_sum(logits.entropy(temperature), m) / num_tokens
                        loss = loss - pcfg.entropy_coef * entropy
                    if algo == "ppo":
                        v_loss, vs = value_loss(values, old["values"][idx], returns[idx], m,
                                                pcfg.clip_range_value, num_tokens=num_tokens)
                        loss = loss + pcfg.vf_coef * v_loss
                        parts |= {"loss/value": v_loss.item(),
                                  "ppo/value_clipfrac": vs["clipfrac"].item() * weight}
                    if not kl_in_reward:
                        k_loss = kl_loss(logprobs, old["ref_logprobs"][idx], m,
                                         num_tokens=num_tokens, estimator=pcfg.kl_estimator)
                        loss = loss + kl_coef * k_loss
                        parts["loss/kl"] = k_loss.item()
                    d.backward(loss)
                    mb = {k: mb.get(k, 0.0) + v for k, v in parts.items()}
                mb = dict(zip(mb, d.sum(*mb.values()), strict=True))
                grad_norm, lr = optimizer_step(trained, optimizer, scheduler,
                                               cfg.optim.max_grad_norm, mb["loss/policy"],
                                               step + 1, last_saved, d)
                if updates == 0:
                    first_lr = lr  # logged: the rate this iteration's updates started at
                updates += 1
                mb["optim/grad_norm"] = grad_norm
                sums = {k: sums.get(k, 0.0) + v for k, v in mb.items()}
                if pcfg.target_approx_kl and mb["ppo/approx_kl"] > pcfg.target_approx_kl:
                    stop_early = True
                    break
            if stop_early:
                break
        train_s = time.perf_counter() - t0
        generator.sync(policy)  # vllm: the next rollout samples from the updated weights

        # 6. KL controller, metrics, samples, evaluation, checkpoint.
        seq_kl = masked_sum(old["logprobs"] - old["ref_logprobs"], mask, dim=-1)
        kl_ctl.update(seq_kl.mean().item(), num_samples)
        elapsed = time.perf_counter() - started
        done = step + 1
        lengths = mask.sum(-1)
        metrics = {k: v / updates for k, v in sums.items()}
        for key, values in scores.items():
            metrics[f"reward/{key}"] = values.mean().item()
            metrics[f"reward/{key}_std"] = values.std().item()
        metrics |= {
            "reward/score": objective.mean().item(),
            "kl/seq": seq_kl.mean().item(), "kl/coef": kl_coef,
            "policy/entropy": masked_mean(old["entropy"], mask).item(),
            "response/length": lengths.float().mean().item(),
            "response/no_eos_frac": (~rollout.finished).float().mean().item(),
            "ppo/advantage_mean": masked_mean(advantages, mask).item(),
            "ppo/advantage_std": masked_var(advantages, mask).sqrt().item(),
            "ppo/updates": updates, "ppo/early_stop": float(stop_early),
            "optim/lr": first_lr,
            "perf/generate_s": generate_s, "perf/score_s": score_s, "perf/prepare_s": prepare_s,
            "perf/train_s": train_s, "perf/step_s": elapsed,
            "perf/generate_tokens_per_s": lengths.sum().item() / generate_s,
            "perf/train_tokens_per_s":
                updates / (num_samples // pcfg.minibatch_size) *
                rollout.attention_mask.sum().item() / max(train_s, 1e-9),
            "data/epoch": step / per_epoch}
        if algo == "ppo":
            metrics["ppo/returns_mean"] = masked_mean(returns, mask).item()
            metrics["ppo/explained_variance"] = explained_variance(old["values"], returns,
                                                                   mask).item()
        # Health (tether.eval.health): flags every iteration, each kind's warning printed once.
        if first_length is None:
            first_length = metrics["response/length"]
        health = rollout_health(lengths.tolist(), rollout.finished.tolist(), objective.tolist(),
                                penalize_no_eos, cfg.reward.no_eos_score,
                                first_length, empty_wins)
        metrics |= health_flags(health)
        for kind, text in health.items():
            if d.main and kind not in warned:
                tqdm.write(f"warning (iteration {done}): {text}")
            warned.add(kind)
        is_last = done == total_steps
        if evaluates and due(done, cfg.train.eval_every, is_last):
            metrics |= evaluate()
        if is_last or done % cfg.train.log_every == 0 or "eval/gold" in metrics:
            log.log(done, metrics)
        if due(done, cfg.sample_every, is_last):
            samples_log.write(done, {"samples": [
                {"prompt": rows[indices[rollout.prompt_index[i]]][0], "response": rollout.texts[i],
                 **{k: v[i].item() for k, v in scores.items()}}
                for i in range(min(4, num_samples))]})
        # Proxy beside gold (the proxy climbing while gold stalls is over-optimisation) and the
        # mean response length (padding, or a collapse to empty responses), as they happen.
        progress.set_postfix({k: f"{metrics[f'reward/{k}']:.3f}" for k in ("gold", "proxy")
                              if f"reward/{k}" in metrics}
                             | {"kl": f"{metrics['kl/seq']:.2f}",
                                "len": f"{metrics['response/length']:.1f}"})
        progress.update(1)
        if due(done, cfg.train.save_every, is_last):
            last_saved = save_training_state(run_dir, done, trained, optimizer, scheduler,
                                             num_examples=len(rows), steps_per_epoch=per_epoch,
                                             keep=cfg.train.keep_checkpoints,
                                             extra={"kl_controller": kl_ctl.state_dict(),
                                                    "penalize_no_eos": penalize_no_eos},
                                             dist=d)
    progress.close()
    log.close()
    samples_log.close()
    final = run_dir / "final"
    whole = master_model(trained, optimizer, build_policy, part="policy", dist=d)
    if d.main:
        if metrics:
            print(", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                            if k.split("/")[0] in ("reward", "kl", "eval")))
        save_final(whole, tokenizer, final, cfg.model.lora.merge_on_save)
        print(f"final policy: {final}" + (" (LoRA merged)" if is_lora(policy) and
                                          cfg.model.lora.merge_on_save else ""))
    d.barrier()
    d.close()
    return final

