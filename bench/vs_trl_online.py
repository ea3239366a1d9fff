"""Online-RL rows of `python -m bench vs-trl`: grpo and rloo (tether against TRL), ppo (tether).

A step is one whole iteration: generation + scoring + reference (and old) log-probs + one
optimizer step on the batch just generated.

What each side runs
-------------------
tether (all three rows): its real loop, `tether.trainers.ppo.train(cfg)` with algo=grpo | rloo |
ppo, in a `bench.vs_trl.Gate`. The gate point is the loop's metrics writer: the log that
`start_or_resume` hands the loop is wrapped so that, once an iteration's metrics are written,
it calls `gate.wait()`. So set-up and the first iteration run before the first step, and a step
holds one whole iteration (generation, scoring, log-probs, the update, its metrics and log
line) plus the previous one's few remaining lines (progress, the checkpoint check). Temporary
run_dir; no evaluation prompts, no sample logging, no checkpoint before the end of a loop far
longer than any benchmark (train.max_steps=100000). Stage times are that iteration's perf/*
metrics, as the loop logged them (the names bench.ppo reads): generate, score, "log-probs +
values" (perf/prepare_s: the no-grad passes, the KL and the advantages), train (perf/train_s:
the update). Its set-up prints and progress bar are silenced. Generation is wrapped too, to
force the response length and to count the tokens of the rollout.

TRL (grpo, rloo): `GRPOTrainer` / `RLOOTrainer`' own `train()`, gated at on_step_end
(`bench.vs_trl.trainer_gate`): with steps_per_generation=1, num_iterations=1 and no gradient
accumulation, each optimizer step generates, scores and trains on one batch. Stages are timed
by wrapping the trainer's own methods (instance attributes, the code unchanged): generate =
`_generate` (prompt templating, `model.generate`, decoding), score = `_calculate_rewards`,
"log-probs + values" = the rest of `_generate_and_score_completions` (the no-grad forwards,
advantages, its metrics), train = from `training_step`'s start to on_step_end minus the
generation and scoring in it (forward, backward, clipping, AdamW). On both sides the stages
leave out the loop's bookkeeping between iterations (logging, the data loader).

ppo has no TRL side: no current TRL release has PPO. Its row reports tether's stage split.

Identical work (checked by the harness: trainable parameters and tokens per step)
--------------------------------------------------------------------------------
- The same policy weights (tether's loader; TRL reads the same weights from a directory: the
  tiny model saved once, the embedded model's cached conversion) and tokenizer; the frozen
  reference is a second copy of the same weights on both sides.
- The same prompts: sentiment-task prompts (tether.tasks.sentiment.make_prompts) as one user
  turn in the tokenizer's chat template, all of the same token length (the most common length
  among 1000 of them that fits in --max-length with the response), so each framework draws
  its batches in its own order and still every batch has the same tokens. batch_size /
  group_size prompts x group_size completions (ppo: batch_size prompts x 1).
- Exactly --gen-len new tokens per completion on both sides: min_new_tokens = max_new_tokens
  (EOS is masked until then; tether through the policy's generate, TRL through
  generation_kwargs), so tokens per step = completions x (prompt + gen_len) on both.
- Plain sampling: temperature 1, top_p 1, no top-k, min-p or repetition penalty.
- The same reward: `reward` below, a cheap deterministic function of the completion text (the
  share of its characters that are vowels). tether takes it as reward.gold
  ('bench.vs_trl_online:reward', optimised since there is no reward model), TRL as a reward
  function. No reward model: its forward passes would cost the same on both sides; the rows
  time the frameworks. tether's no-EOS penalty is off (every response is cut at gen_len, and
  TRL has none).
- KL to the frozen reference with tether's coefficient (ppo.kl_coef 0.05) on both sides:
  grpo: a k3 loss term on the sampled tokens (tether ppo.kl_in=loss, kl_estimator=k3; TRL's
  beta, use_bias_correction_kl=False, which would multiply it by the policy ratio); rloo: the
  summed k1 log-ratio subtracted from each sequence's reward (tether kl_in=reward, k1; TRL
  RLOO's only form). ppo: tether's per-token KL reward (its default).
- Advantages: grpo group-centred and divided by the group std (TRL scale_rewards=group; the
  std's epsilon is 1e-4 in TRL, 1e-6 in tether), rloo leave-one-out (TRL normalize_advantages
  off); ppo: GAE over a value model (tether's default: a separate copy of the policy's trunk
  with a scalar head, trained with the policy).
- One update per generation: tether ppo.epochs=1, one minibatch = one microbatch of all the
  completions; TRL per_device_train_batch_size = all the completions, gradient accumulation 1,
  steps_per_generation 1, num_iterations 1. Clip range 0.2 on both.
- Optimizer: AdamW with tether's defaults for online RL (lr 1e-5 constant, no warm-up, betas
  0.9 / 0.999, eps 1e-8, weight decay 0, gradient norm clipped to 1), torch.optim.AdamW's
  fused kernel on both (TRL optim=adamw_torch_fused, transformers' default for this torch).
- Precision: --precision fp32, or bf16 autocast with fp32 weights (tether train.bf16, TRL
  bf16=True through accelerate). Dropout off, gradient checkpointing off on both.

Differences that remain (each framework's own algorithm; none changes the tokens)
-------------------------------------------------------------------------------
- Samples differ: each framework draws from its own RNG stream, so rewards, advantages and
  losses differ from the first step (compare_loss=False; the loss column is printed only).
- tether (grpo, rloo) packs a prompt's completions into one row behind the prompt in every
  pass after generation (train.share_prompt): the prompt is read once per group, where TRL
  reads it once per completion. Same tokens, same results; fewer FLOPs, and they count it.
- grpo: neither runs the old policy's log-prob pass: with one update per generation the ratio
  is taken against the update's own detached log-probs (tether: ppo.needs_policy_pass).
- rloo: TRL's ratio is per sequence (summed log-probs) and its loss a mean over sequences;
  tether's is per token and a mean over tokens. Same passes, same cost.
- Both compute logits only where a completion token is predicted (logits_to_keep); tether's
  no-grad pass also computes the full-vocabulary entropy. The FLOPs below count the model,
  not these implementation choices.
- TRL re-applies the chat template to the prompts every iteration; tether encodes them once.

Counted per step
----------------
tokens: prompt + completion tokens of all completions (what the update trains on).
flops (model FLOPs, N parameters with a tied embedding counted once, L layers, width d):
generation: the prompt's p tokens in one forward at 2 N + 4 L d p each (tether: once per
prompt, TRL: once per completion), then the r - 1 sampled tokens fed back at 2 N + 4 L d T
each, T the context length at that point; every
no-grad pass over a sequence of S = p + r tokens (tether: old log-probs and reference; TRL
grpo: reference; TRL rloo: old and reference) S (2 N + 4 L d S); the update S (6 N + 12 L d S)
(bench.sft.model_flops_per_token); for tether's grpo and rloo S is a packed row, p plus the
group's responses. ppo adds its value model (its trunk and head, N without the
embedding lookup): one no-grad pass and one trained pass.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from bench.sft import model_flops_per_token
from bench.vs_trl import Gate, Row, Side, on_gpu, trainer_gate
from tether.config import PPOConfig, load_config
from tether.metric_names import (
    LOSS_KL,
    LOSS_POLICY,
    LOSS_VALUE,
    PERF_GENERATE_S,
    PERF_PREPARE_S,
    PERF_SCORE_S,
    PERF_TRAIN_S,
)

MAX_STEPS = 100_000  # the loops' length: far more iterations than a benchmark steps
PROMPT_POOL = 1000  # sentiment prompts the same-length ones are chosen from
STAGES = {"generate": PERF_GENERATE_S, "score": PERF_SCORE_S,
          "log-probs + values": PERF_PREPARE_S, "train": PERF_TRAIN_S}  # as bench.ppo


def reward(texts: list[str]) -> list[float]:
    """The reward of both sides: the share of a completion's characters that are vowels."""
    return [sum(c in "aeiou" for c in t.lower()) / max(len(t), 1) for t in texts]


def vowel_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """`reward` as a TRL reward function (conversational completions: one assistant turn)."""
    return reward([c[-1]["content"] if isinstance(c, list) else c for c in completions])


@dataclass
class OnlineSide(Side):
    """A Side that also holds its policy (None once closed), for tests to look at."""

    policy: torch.nn.Module | None = None


# ---- shared set-up ----

@lru_cache(maxsize=4)
def _same_length_prompts(model: str, longest: int) -> tuple[list[str], int]:
    """Sentiment prompts whose chat-templated encoding has the most common length that is at
    most `longest`, and that length."""
    from tether.data.tokenize import encode_prompt, wants_chat_template
    from tether.models.loading import load_tokenizer
    from tether.tasks.sentiment import make_prompts

    tokenizer = load_tokenizer(model)
    chat = wants_chat_template(tokenizer, "auto")
    texts = make_prompts(PROMPT_POOL, seed=0)
    lengths = [len(encode_prompt(tokenizer, [{"role": "user", "content": t}], chat))
               for t in texts]
    fitting = Counter(n for n in lengths if n <= longest)
    if not fitting:
        raise SystemExit(f"no sentiment prompt fits in --max-length minus --gen-len = {longest} "
                         f"tokens (the shortest has {min(lengths)})")
    length = fitting.most_common(1)[0][0]
    return [t for t, n in zip(texts, lengths, strict=True) if n == length], length


def _prompts(args: argparse.Namespace, per_step: int) -> tuple[list[str], int]:
    """At least `per_step` prompts of one token length (repeated if too few share one)."""
    texts, length = _same_length_prompts(args.model, args.max_length - args.gen_len)
    return (texts * -(-per_step // len(texts)))[:max(per_step, len(texts))], length


def _shape(args: argparse.Namespace, algo: str) -> tuple[int, int]:
    """(prompts, completions per prompt) of one iteration."""
    group = 1 if algo == "ppo" else args.group_size
    if algo != "ppo" and group < 2:
        raise SystemExit(f"{algo} compares the completions of a prompt: --group-size >= 2")
    if args.batch_size % group:
        raise SystemExit(f"--batch-size ({args.batch_size}) must be a multiple of --group-size "
                         f"({group})")
    return args.batch_size // group, group


def _tether_config(args: argparse.Namespace, algo: str, run_dir: str = "run",
                   prompts: str = "prompts.jsonl") -> PPOConfig:
    """tether's config of the row; the TRL side takes its shared settings from it too."""
    num_prompts, group = _shape(args, algo)
    kl = {"grpo": ["ppo.kl_in=loss", "ppo.kl_estimator=k3"],
          "rloo": ["ppo.kl_in=reward", "ppo.kl_estimator=k1"], "ppo": []}[algo]
    return load_config(PPOConfig, None, [
        f"run_dir={run_dir}", f"model.name={args.model}", f"algo={algo}",
        f"rollout.prompts={prompts}", f"rollout.batch_size={num_prompts}",
        f"rollout.group_size={group}", f"rollout.max_new_tokens={args.gen_len}",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "rollout.chat_template=auto",
        f"rollout.max_prompt_length={args.max_length - args.gen_len}",
        f"reward.gold={__name__}:reward", "reward.penalize_no_eos=false",
        "ppo.epochs=1", f"ppo.minibatch_size={args.batch_size}",
        f"ppo.micro_batch_size={args.batch_size}", *kl,
        f"train.max_steps={MAX_STEPS}", "train.save_every=0", "train.eval_every=0",
        "train.log_every=1", f"train.bf16={str(args.precision == 'bf16').lower()}",
        "train.seed=0", f"train.device={args.device}", f"sample_every={MAX_STEPS}",
        *args.tether_set])


# ---- FLOPs ----

@dataclass
class Arch:
    params: int  # N: matmul parameters (a tied embedding counted once, as the LM head)
    layers: int
    d_model: int

    @classmethod
    def of(cls, model: torch.nn.Module, params: int | None = None) -> Arch:
        config = model.config
        return cls(params if params is not None else sum(p.numel() for p in model.parameters()),
                   config.num_hidden_layers, config.hidden_size)

    def forward(self, seq: int) -> int:
        """A no-grad forward over a sequence of `seq` tokens."""
        return seq * (2 * self.params + 4 * self.layers * self.d_model * seq)

    def train(self, seq: int) -> int:
        """Forward and backward over a sequence of `seq` tokens."""
        return seq * model_flops_per_token(self.params, self.layers, self.d_model, seq)

    def generate(self, prompt: int, response: int) -> int:
        """Prefill of the prompt, then the response tokens fed back one at a time."""
        return self.forward(prompt) + self.decode(prompt, response)

    def decode(self, prompt: int, response: int) -> int:
        """The response tokens fed back one at a time after a prefilled prompt."""
        fed = response - 1  # the last sampled token is never fed back
        attention = 4 * self.layers * self.d_model * (fed * prompt + fed * (fed + 1) // 2)
        return fed * 2 * self.params + attention


def _iteration_flops(arch: Arch, lengths: list[tuple[int, int]], no_grad_passes: int,
                     value: Arch | None = None, group: int = 1) -> int:
    """Model FLOPs of one iteration over (prompt, response) lengths (see the docstring). With
    `group` > 1 each prompt is read once: prefilled once for its `group` samples, and in the
    passes after generation its responses packed after it."""
    flops = sum(arch.decode(prompt, response) for prompt, response in lengths)
    flops += sum(arch.forward(prompt) for prompt, _ in lengths[::group])
    rows = [lengths[i][0] + sum(r for _, r in lengths[i:i + group])
            for i in range(0, len(lengths), group)]
    for seq in rows:
        flops += no_grad_passes * arch.forward(seq) + arch.train(seq)
    for prompt, response in lengths if value is not None else []:
        flops += value.forward(prompt + response) + value.train(prompt + response)
    return flops


# ---- tether ----

def _force_length(loop, new_tokens: int) -> None:
    """Make tether's rollouts exactly `new_tokens` tokens (EOS masked until then), on this
    loop's models only: hf through `generate`'s min_new_tokens (an instance attribute over
    the method), static through its copy's output layer (max_new_tokens is `new_tokens`, so
    masking EOS at every step is the same)."""
    from tether.rollout.static import StaticGenerator

    if isinstance(loop.generator, StaticGenerator):
        eos = loop.tokenizer.eos_token_id
        loop.generator.model.get_output_embeddings().register_forward_hook(
            lambda module, args, out: out.index_fill_(-1, torch.tensor([eos], device=out.device),
                                                      float("-inf")))
        return
    model = loop.policy
    real = model.generate

    def generate(*args, **kwargs):
        kwargs.pop("min_length", None)  # tether passes 0; min_new_tokens replaces it
        kwargs["min_new_tokens"] = new_tokens
        return real(*args, **kwargs)

    model.generate = generate


def _tether_side(args: argparse.Namespace, algo: str) -> OnlineSide:
    from tether.models.lora import count_parameters
    from tether.trainers import ppo

    tmp = tempfile.TemporaryDirectory(prefix=f"vs-trl-{algo}-")
    num_prompts, group = _shape(args, algo)
    texts, _ = _prompts(args, num_prompts)
    prompts = Path(tmp.name) / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    cfg = _tether_config(args, algo, f"{tmp.name}/run", str(prompts))
    seen: dict = {}  # what the hooks saw: the models, the last iteration's data

    def started(loop) -> None:
        seen["trained"] = loop.trained
        _force_length(loop, args.gen_len)

    def iteration(loop, batch, metrics: dict) -> None:
        response_len = batch.rollout.mask.sum(-1).long()
        prompt_len = batch.rollout.attention_mask.sum(-1).long() - response_len
        seen["metrics"] = metrics
        seen["lengths"] = list(zip(prompt_len.tolist(), response_len.tolist(), strict=True))
        gate.wait()  # the gate point: once per iteration, once its metrics are written

    # Its set-up prints and its progress bar are silenced.
    gate = Gate(lambda: ppo.train(cfg, ppo.Hooks(started, iteration), progress_bar=False))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gate.start()  # returns at the first gate point: the end of the first iteration
    except BaseException:
        gate.close()
        tmp.cleanup()
        raise

    trained = seen.pop("trained")
    arch = Arch.of(trained.policy)
    value = None
    if trained.value is not None:  # ppo: a separate value model, its embedding a lookup
        embedding = trained.policy.get_input_embeddings().weight.numel()
        value = Arch(sum(p.numel() for p in trained.value.parameters()) - embedding,
                     arch.layers, arch.d_model)
    # the reference's log-probs, and the policy's old ones unless its update stands for them
    no_grad_passes = 2 if ppo.needs_policy_pass(cfg, world=1) else 1
    kl_coef, vf_coef = cfg.ppo.kl_coef, cfg.ppo.vf_coef

    def step() -> dict:
        seconds = gate.step()
        m, lengths = seen["metrics"], seen["lengths"]
        loss = m[LOSS_POLICY] + kl_coef * m.get(LOSS_KL, 0.0) + \
            vf_coef * m.get(LOSS_VALUE, 0.0)
        return {"seconds": seconds, "tokens": sum(p + r for p, r in lengths),
                "flops": _iteration_flops(arch, lengths, no_grad_passes, value,
                                          group if cfg.train.share_prompt else 1),
                "loss": loss, "stages": {name: m[key] for name, key in STAGES.items()}}

    def close() -> None:
        gate.close()
        side.policy = None
        seen.clear()
        tmp.cleanup()

    notes = [f"{num_prompts} prompts x {group}, {len(texts)} same-length prompts in all; "
             f"exactly {args.gen_len} new tokens (EOS masked until then)"]
    if algo != "ppo" and cfg.train.share_prompt:
        notes.append(f"each prompt read once, its {group} completions packed after it, in "
                     f"every pass after generation (train.share_prompt)")
    if algo == "ppo":
        notes.append("one epoch, one minibatch per iteration; value model: a separate copy of "
                     "the policy's trunk")
    side = OnlineSide(step=step, trainable_params=count_parameters(trained)[0],
                      dtype=args.precision, close=close, notes=notes,
                      policy=trained.policy)
    return side


# ---- TRL ----

def _model_dir(model: str, tmp: Path) -> str:
    """A directory `from_pretrained` reads the policy's weights from (TRL loads the reference
    from the same one)."""
    from tether.models.loading import load_causal_lm, resolve
    from tether.models.tiny import TINY

    if model != TINY:
        return str(resolve(model))
    path = tmp / "model"
    load_causal_lm(TINY, seed=0).save_pretrained(path)
    return str(path)


class _StageClock:
    """Times a TRL trainer's stages by wrapping its own methods (see the module docstring)."""

    def __init__(self, trainer) -> None:
        self.reset()
        self.lengths: list[tuple[int, int]] = []
        self.loss = float("nan")
        self._wrap(trainer, "_generate", "generate", self._keep_lengths)
        self._wrap(trainer, "_calculate_rewards", "score")
        self._wrap(trainer, "_generate_and_score_completions", "rollout")
        self._wrap(trainer, "training_step", "training_step", self._keep_loss)

    def reset(self) -> None:
        self.seconds = {"generate": 0.0, "score": 0.0, "rollout": 0.0}
        self.update_started = self.update_ended = None

    def _wrap(self, trainer, method: str, stage: str, after: Callable | None = None) -> None:
        real = getattr(trainer, method)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            if stage == "training_step":
                self.update_started = started
            out = real(*args, **kwargs)
            if stage in self.seconds:
                self.seconds[stage] += time.perf_counter() - started
            if after is not None:
                after(out)
            return out

        setattr(trainer, method, timed)

    def _keep_lengths(self, out) -> None:
        prompt_ids, completion_ids = out[0], out[1]
        self.lengths = [(len(p), len(c)) for p, c in zip(prompt_ids, completion_ids, strict=True)]

    def _keep_loss(self, out) -> None:
        self.loss = out.item()

    def stages(self) -> dict[str, float]:
        s = self.seconds
        update = self.update_ended - self.update_started - s["rollout"]
        return {"generate": s["generate"], "score": s["score"],
                "log-probs + values": s["rollout"] - s["generate"] - s["score"], "train": update}


def _trl_side(args: argparse.Namespace, algo: str) -> OnlineSide:
    import huggingface_hub.constants
    import trl
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback

    from tether.models.loading import load_tokenizer

    huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY = True  # TRL's trainers ping the Hub
    # TRL 1.13 still uses transformers' old names for activation checkpointing (noise only)
    warnings.filterwarnings("ignore", r"`(is_)?gradient_checkpointing` is deprecated",
                            FutureWarning)
    tmp = tempfile.TemporaryDirectory(prefix=f"vs-trl-{algo}-trl-")
    cfg = _tether_config(args, algo)
    num_prompts, group = _shape(args, algo)
    texts, _ = _prompts(args, num_prompts)
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": t}] for t in texts]})
    opt = cfg.optim
    shared = dict(
        output_dir=f"{tmp.name}/trl", use_cpu=not on_gpu(args), bf16=args.precision == "bf16",
        fp16=False,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, num_generations=group,
        max_completion_length=args.gen_len, generation_kwargs={"min_new_tokens": args.gen_len},
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=0, min_p=None,
        repetition_penalty=1.0, beta=cfg.ppo.kl_coef, epsilon=cfg.ppo.clip_range,
        optim="adamw_torch_fused", learning_rate=opt.lr, lr_scheduler_type="constant",
        warmup_steps=opt.warmup_steps, weight_decay=opt.weight_decay, adam_beta1=opt.beta1,
        adam_beta2=opt.beta2, adam_epsilon=opt.eps, max_grad_norm=opt.max_grad_norm,
        max_steps=MAX_STEPS, logging_steps=cfg.train.log_every, save_strategy="no",
        eval_strategy="no", report_to=[], disable_tqdm=True, log_completions=False,
        gradient_checkpointing=False, disable_dropout=True, use_vllm=False,
        mask_truncated_completions=False, seed=cfg.train.seed, dataloader_num_workers=0)
    if algo == "grpo":
        config = trl.GRPOConfig(**shared, loss_type="dapo", scale_rewards="group",
                                use_bias_correction_kl=False)
        trainer_class, no_grad_passes = trl.GRPOTrainer, 1  # the reference only (see above)
    else:
        config = trl.RLOOConfig(**shared, normalize_advantages=False)
        trainer_class, no_grad_passes = trl.RLOOTrainer, 2  # old log-probs and reference
    try:  # transformers' progress bars of saving and loading the weights go to stderr
        with contextlib.redirect_stderr(io.StringIO()):
            trainer = trainer_class(model=_model_dir(args.model, Path(tmp.name)),
                                    reward_funcs=vowel_reward, args=config,
                                    train_dataset=dataset,
                                    processing_class=load_tokenizer(args.model))
    except BaseException:
        tmp.cleanup()
        raise
    trainer.remove_callback(PrinterCallback)  # disable_tqdm prints every log instead
    clock = _StageClock(trainer)

    class UpdateEnd(TrainerCallback):  # added before the gate's, so it runs first
        def on_step_end(self, args, state, control, **kwargs):
            clock.update_ended = time.perf_counter()

    trainer.add_callback(UpdateEnd())
    try:
        gate = trainer_gate(trainer)
    except BaseException:
        tmp.cleanup()
        raise
    arch = Arch.of(trainer.model)

    def step() -> dict:
        clock.reset()
        seconds = gate.step()
        lengths = clock.lengths
        return {"seconds": seconds, "tokens": sum(p + r for p, r in lengths),
                "flops": _iteration_flops(arch, lengths, no_grad_passes),
                "loss": clock.loss, "stages": clock.stages()}

    def close() -> None:
        gate.close()
        side.policy = None
        trainer.accelerator.free_memory()
        tmp.cleanup()

    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    notes = [f"{type(trainer).__name__}, trl {trl.__version__}; "
             f"{num_prompts} prompts x {group}; exactly {args.gen_len} new tokens "
             f"(generation_kwargs min_new_tokens)"]
    side = OnlineSide(step=step, trainable_params=trainable, dtype=args.precision, close=close,
                      notes=notes, policy=trainer.model)
    return side


# ---- rows ----

def _build(algo: str) -> Callable[[argparse.Namespace, str], Side]:
    def build(args: argparse.Namespace, side: str) -> Side:
        return _tether_side(args, algo) if side == "tether" else _trl_side(args, algo)
    return build


ROWS: list[Row] = [
    Row("grpo", "GRPO iteration (generate, score, reference log-probs, one update): tether "
                "against TRL GRPOTrainer", _build("grpo"), compare_loss=False),
    Row("rloo", "RLOO iteration (generate, score, old and reference log-probs, one update): "
                "tether against TRL RLOOTrainer", _build("rloo"), compare_loss=False),
    Row("ppo", "PPO iteration with a value model, tether only (no current TRL release has "
               "PPO), split by stage", _build("ppo"), sides=("tether",), compare_loss=False),
]
