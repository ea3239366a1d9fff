"""Offline rows of `python -m bench vs-trl`: sft, rm, rm-k4, dpo, dpo-precomputed.

Each side runs its framework's real training loop, gated one optimizer step at a time
(bench.vs_trl.Gate): tether's `train(cfg)` (tether.trainers.sft / rm / dpo) and TRL's
`Trainer.train()` (SFTTrainer, RewardTrainer, DPOTrainer). A measured step is one whole turn of
the loop between two gate points: fetching and collating the batch, forward, loss, per-step
metrics, backward, clipping, AdamW, logging. Set-up (loading, tokenising, reference
precomputation) comes before the first gate point, so it is in no step time.

- tether: `train(cfg, hooks, progress_bar=False)` with a config loaded as `tether <stage>
  key=value ...` loads it: a temporary run_dir, no eval set, checkpoints only at the end (never
  reached), max_steps beyond what the harness asks for; no progress bar (TRL's is off too).
  Its hooks (tether.trainers.common.Hooks): `started` sees the model (trainable parameters,
  shape for FLOPs); `step_started`, at the top of each step, waits at the gate (the gate
  point); `micro_batch` sees each micro-batch's examples, for their real tokens and padded
  width; `stepped` reads the step's loss. metrics.jsonl is still written every step.
- TRL: the trainer in `trainer_gate` (gate points at on_train_begin and every on_step_end); its
  `compute_loss` is wrapped to read the batch's real tokens and padded width, and the loss.

Common settings. Same model weights (tether's loader, seed 0), same token ids and masks (tether
tokenises once; TRL gets a pre-tokenised dataset), same batches in the same order (TRL's
dataset is tether's batch order for the steps to run, `train_sampling_strategy="sequential"`),
batch --batch-size, --max-length, gradient accumulation 1 (tether micro_batch_size =
batch_size), precision (fp32, or bf16 autocast with fp32 weights: tether train.bf16, TRL
bf16=True, which on CPU is accelerate's autocast around the model's forward), and AdamW with
tether's defaults for the stage (lr: sft 2e-5, rm 1e-5, dpo 1e-6; betas 0.9/0.999, eps 1e-8,
weight decay 0, gradient clipping at norm 1) at a constant learning rate, no warmup. Llama has
no dropout, so both sides train in train mode deterministically. tokens = real (non-padding)
tokens of the step; flops = tokens x (6 N + 12 L d T) (bench.sft.model_flops_per_token), plus
tokens x (2 N + 4 L d T) for a live reference's forward, T = the batch's padded width, N the
trained model's parameters but an input embedding not tied to the LM head (a lookup: the reward
models' N leaves it out). The same formula and numbers on both sides.

Rows:
- sft: response-only NLL on examples/sft/reviews.jsonl (400 demonstrations of varied length,
  so padding matters; with the tiny tokenizer 8 are cut to 128 tokens by tether's prompt_left
  truncation, and TRL gets the cut ids). TRL: SFTTrainer on {input_ids, completion_mask} with
  completion_only_loss=True; its default loss_type chunked_nll projects only response tokens
  through the LM head, in checkpointed chunks of 256 tokens, where tether computes the logits
  of every position from the batch's first response token on.
- rm: Bradley-Terry on pairs built from the reviews: prompt i, chosen = review i's own
  continuation, rejected = review i+1's. tether: its reward model (the policy with a scalar head,
  tether.models.reward) on the pairs as 2-response rankings. TRL: RewardTrainer on {chosen_ids,
  rejected_ids} with an AutoModelForSequenceClassification(num_labels=1) built from the same
  backbone, tether's head weights copied in (neither head has a bias). Both read the reward at
  the last real token.
- rm-k4: rankings of K = 4: prompt i, responses = the continuations of reviews i..i+3, ranked
  in that order. tether scores each response once and takes all C(4, 2) = 6 pairs of a prompt;
  TRL, whose RewardTrainer takes pairs only, gets the 6 pairs of each ranking (batch 6 x
  --batch-size pairs), so it forwards 12 sequences per ranking where tether forwards 4. Tokens
  count the 4 unique responses per ranking on both sides (the same data per step), so the 3x
  forwards show as TRL's lower tokens/s and MFU. The first losses compare: tether averages
  over a prompt's pairs, then over prompts, which with 6 pairs for every prompt is TRL's mean
  over all pairs.
- dpo: the sigmoid loss at tether's default beta 0.1 on the pairs of the rm row, with a live
  frozen reference copy of the model: tether ref.precompute=false; TRL DPOTrainer with a
  ref_model and precompute_ref_log_probs=False. tether's truncation is `drop` here (pairs longer
  than --max-length are left out), because TRL's format shares one prompt between chosen and
  rejected, which prompt_left truncation of the two sequences would not keep.
- dpo-precomputed: the same with reference log-probs computed once before training on both sides
  (tether's default ref.precompute=true; TRL 1.13's precompute_ref_log_probs=True, which uses
  the policy itself before training and keeps no reference model). The precomputation is
  before the first gate point, so it is not in the step time on either side.

Deliberate differences that remain (each also printed as a note with its row):
- TRL's DPOTrainer always tokenises text (it has no pre-tokenised path, unlike SFTTrainer and
  RewardTrainer), so the dpo rows give it tether's token ids through a subclass whose
  `_prepare_dataset` returns the dataset as is; collator, forward, loss, metrics and loop are
  TRL's.
- TRL's defaults are kept except where they would change the work: activation checkpointing is
  off (TRL's default is on; tether's model.gradient_checkpointing is false) and progress bars,
  logging output, saving and reporting are off. So TRL keeps: AdamW with fused=True
  (transformers' default on torch >= 2.8, as tether's), and the metrics it computes in every
  step (sft: entropy and token accuracy; rm:
  reward min/mean/max, accuracy, margin; dpo: entropy over the full logits, mean logits, token
  accuracy, rewards, margins, log-probs).
- Weight decay is 0 on both sides; were it not, tether decays matrices only and transformers
  everything but biases and norm weights.
- dpo-precomputed under --precision bf16: TRL computes its reference table in fp32 (the model's
  forward is not yet wrapped in accelerate's autocast in __init__), tether under bf16 autocast,
  so first losses then differ at bf16 rounding; neither is in the step time.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.sft import model_flops_per_token
from bench.vs_trl import MEMORY_STEPS, Gate, Row, Side, on_gpu, trainer_gate
from tether.config import DPOConfig, RMConfig, SFTConfig, load_config
from tether.data.order import batch_indices
from tether.data.preferences import EncodedPreference, load_preference_data
from tether.data.sft import load_sft_data
from tether.data.tokenize import Encoded
from tether.metric_names import LOSS_TRAIN
from tether.models.loading import load_causal_lm, load_tokenizer, resolve
from tether.models.reward import RewardModel
from tether.models.shared_prompt import row_widths
from tether.models.tiny import TINY
from tether.trainers.common import Hooks

SEED = 0
REVIEWS = Path(__file__).resolve().parents[1] / "examples" / "sft" / "reviews.jsonl"
SHARED = ("a prompt's responses in one row, the prompt read once (train.share_prompt); MFU "
          "counts the tokens read")
# Steps each loop is given beyond the most the harness asks of one side (warm-up, measured
# rounds, or the memory run's MEMORY_STEPS), so that it never runs out.
SPARE_STEPS = 8


@dataclass
class Built:
    """A built side, and (for tests) its trainable parameters as they are now."""

    side: Side
    weights: Callable[[], dict[str, torch.Tensor]]


@dataclass
class _Arch:
    params: int  # N: parameters in matmuls (see of())
    layers: int
    d_model: int

    @classmethod
    def of(cls, model) -> _Arch:
        """N counts every parameter but the input embedding, whose lookup is free, unless it is
        tied to the LM head, whose matmul it then is (as bench.sft counts it). So a reward
        model's N leaves its embedding out."""
        embedding = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        tied = head is not None and head.weight is embedding
        params = sum(p.numel() for p in model.parameters()) - (0 if tied else embedding.numel())
        return cls(params, model.config.num_hidden_layers, model.config.hidden_size)

    def flops(self, tokens: int, width: int, live_ref: bool) -> int:
        per_token = model_flops_per_token(self.params, self.layers, self.d_model, width)
        if live_ref:  # the reference's no-grad forward over the same sequences
            per_token += 2 * self.params + 4 * self.layers * self.d_model * width
        return tokens * per_token


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _horizon(args: argparse.Namespace) -> int:
    return max(args.warmup + args.steps, MEMORY_STEPS) + SPARE_STEPS


def _schedule(num_examples: int, batch_size: int, steps: int) -> list[int]:
    """tether's example indices for its first `steps` steps, in order (tether.data.order)."""
    return [i for step in range(steps) for i in batch_indices(num_examples, batch_size, step, SEED)]


@contextlib.contextmanager
def _quiet():
    """No progress bars, warnings, info logs or prints while a side is set up (captured output
    is shown if set-up fails)."""
    import datasets
    import transformers
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_TELEMETRY = True  # TRL's trainers ping the Hub otherwise
    # Raised by TRL's reference forward in DPO steps (once); nothing to act on here.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                            category=FutureWarning)
    tqdm_disable = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # TRL's reference precomputation reads it for its bar
    bars = datasets.is_progress_bar_enabled(), transformers.logging.is_progress_bar_enabled()
    verbosity = transformers.logging.get_verbosity()
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()  # "Loading weights" of a real model
    transformers.logging.set_verbosity_error()
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(out.getvalue())
        raise
    finally:
        if tqdm_disable is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = tqdm_disable
        transformers.logging.set_verbosity(verbosity)
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            transformers.logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------
# tether's side: its own train(cfg), gated
# ---------------------------------------------------------------------------------------------

def _tether_config(cls: type, args: argparse.Namespace, run_dir: Path, data: Path,
                   *more: str):
    return load_config(cls, None, [
        f"run_dir={run_dir}", f"model.name={args.model}", f"data.train={data}",
        "data.eval_fraction=0", f"data.max_length={args.max_length}",
        "optim.schedule=constant", "optim.warmup_steps=0",
        f"train.batch_size={args.batch_size}", f"train.micro_batch_size={args.batch_size}",
        f"train.max_steps={_horizon(args)}", "train.eval_every=0", "train.save_every=0",
        f"train.bf16={'true' if args.precision == 'bf16' else 'false'}", f"train.seed={SEED}",
        f"train.device={args.device}", *more, *args.tether_set])


def _tether_side(trainer, cfg, *, count: Callable[[list, bool], tuple[int, int, int]],
                 live_ref: bool, precision: str, tmp: Path, notes: list[str]) -> Built:
    """`trainer.train(cfg)` in a Gate, watched through its hooks (tether.trainers.common.Hooks).
    `count(examples, packed)` gives a micro-batch's (real tokens, tokens the model reads,
    widest row): the two differ where responses share their prompt's row."""
    record: dict = {}
    found: dict = {}

    def step_started(step: int) -> None:
        gate.wait()  # the gate point: the top of every step
        record.update(tokens=0, computed=0, width=0, loss=None)

    def micro_batch(examples: list, packed: bool) -> None:
        tokens, computed, width = count(examples, packed)
        record["tokens"] += tokens
        record["computed"] += computed
        record["width"] = max(record["width"], width)

    def stepped(step: int, metrics: dict[str, float]) -> None:
        record["loss"] = metrics[LOSS_TRAIN]

    hooks = Hooks(started=lambda model: found.update(model=model), step_started=step_started,
                  micro_batch=micro_batch, stepped=stepped)
    gate = Gate(lambda: trainer.train(cfg, hooks, progress_bar=False))
    try:
        with _quiet():
            gate.start()
    except BaseException:
        gate.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    model = found["model"]
    arch = _Arch.of(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def step() -> dict:
        seconds = gate.step()
        r = dict(record)
        return {"seconds": seconds, "tokens": r["tokens"],
                "flops": arch.flops(r["computed"], r["width"], live_ref), "loss": r["loss"]}

    def close() -> None:
        gate.close()
        found.clear()
        gc.collect()
        shutil.rmtree(tmp, ignore_errors=True)

    side = Side(step=step, trainable_params=trainable, dtype=precision, close=close,
                notes=[f"{trainer.__name__}.train(cfg), gated at the top of each step (its "
                       f"step_started hook); metrics.jsonl every step, progress bar off",
                       *notes])
    return Built(side, lambda: _trainable(found["model"]))


def _count_encoded(examples: list[Encoded], packed: bool) -> tuple[int, int, int]:
    """sft: packed, the widest row is all of them side by side."""
    lengths = [len(e.input_ids) for e in examples]
    return sum(lengths), sum(lengths), sum(lengths) if packed else max(lengths)


def _count_prefs(prefs: list[EncodedPreference], share_prompt: bool,
                 packed: bool) -> tuple[int, int, int]:
    """rm, dpo: packed, the widest row is all of them side by side (as _count_encoded)."""
    sequences = [r.input_ids for p in prefs for r in p.responses]
    rows = (row_widths(sequences, [len(p.responses) for p in prefs]) if share_prompt
            else [len(s) for s in sequences])
    return sum(len(s) for s in sequences), sum(rows), sum(rows) if packed else max(rows)


# ---------------------------------------------------------------------------------------------
# TRL's side: its Trainer.train(), gated
# ---------------------------------------------------------------------------------------------


def _trl_config(config_cls: type, args: argparse.Namespace, tether_cfg, out_dir: Path,
                batch_size: int, **more):
    optim = tether_cfg.optim
    return config_cls(
        output_dir=str(out_dir), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, max_steps=_horizon(args),
        learning_rate=optim.lr, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=optim.beta1, adam_beta2=optim.beta2, adam_epsilon=optim.eps,
        weight_decay=optim.weight_decay, max_grad_norm=optim.max_grad_norm,
        bf16=args.precision == "bf16", use_cpu=not on_gpu(args),
        activation_checkpointing=False,
        train_sampling_strategy="sequential", seed=SEED, data_seed=SEED,
        max_length=args.max_length, dataloader_num_workers=0, dataloader_pin_memory=False,
        report_to=[], logging_strategy="no", save_strategy="no", eval_strategy="no",
        disable_tqdm=True, **more)


def _trl_side(make_trainer: Callable[[], object], *, count: Callable[[dict], tuple[int, int]],
              live_ref: bool, precision: str, tmp: Path, notes: list[str]) -> Built:
    """A TRL trainer, built by `make_trainer()`, in trainer_gate. `count(inputs)` gives a batch's
    (real tokens, padded width) as its compute_loss receives it."""
    held: dict = {}
    record: dict = {}
    try:
        with _quiet():
            trainer = held["trainer"] = make_trainer()
            original = trainer.compute_loss

            def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
                tokens, width = count(inputs)  # first: compute_loss may change `inputs`
                out = original(model, inputs, return_outputs=return_outputs,
                               num_items_in_batch=num_items_in_batch)
                loss = out[0] if return_outputs else out
                record.update(tokens=tokens, width=width, loss=loss.item())
                return out

            trainer.compute_loss = compute_loss
            held["gate"] = trainer_gate(trainer)
    except BaseException:
        if "gate" in held:
            held["gate"].close()
        held.clear()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    model = trainer.model
    arch = _Arch.of(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del trainer, model

    def step() -> dict:
        seconds = held["gate"].step()
        r = dict(record)
        return {"seconds": seconds, "tokens": r["tokens"],
                "flops": arch.flops(r["tokens"], r["width"], live_ref), "loss": r["loss"]}

    def close() -> None:
        if "gate" in held:
            held["gate"].close()
        held.clear()
        gc.collect()
        shutil.rmtree(tmp, ignore_errors=True)

    side = Side(step=step, trainable_params=trainable, dtype=precision, close=close,
                notes=["activation checkpointing off (TRL's default is on; tether's is off); "
                       "AdamW fused=True (transformers' default, as tether's)", *notes])
    return Built(side, lambda: _trainable(held["trainer"].model))


def _count_batch(inputs: dict) -> tuple[int, int]:
    mask = inputs["attention_mask"]
    return int(mask.sum()), mask.shape[1]


def _count_unique_responses(pairs: list[tuple[int, int]], rankings_per_batch: int):
    """count(inputs) for a RewardTrainer batch [chosen rows; rejected rows] holding each ranking
    as its `pairs` in order: the real tokens of each response once, where it first appears."""
    first_chosen, first_rejected, seen = [], [], set()
    for better, worse in pairs:
        first_chosen.append(better not in seen)
        seen.add(better)
        first_rejected.append(worse not in seen)
        seen.add(worse)
    chosen = torch.tensor(first_chosen * rankings_per_batch)
    rejected = torch.tensor(first_rejected * rankings_per_batch)

    def count(inputs: dict) -> tuple[int, int]:
        mask = inputs["attention_mask"]
        n = mask.shape[0] // 2
        return int(mask[:n][chosen].sum() + mask[n:][rejected].sum()), mask.shape[1]

    return count


# ---------------------------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------------------------


def _build_sft(args: argparse.Namespace, side: str) -> Built:
    tmp = Path(tempfile.mkdtemp(prefix="vs_trl_sft_"))
    cfg = _tether_config(SFTConfig, args, tmp / "tether", REVIEWS)
    if side == "tether":
        import tether.trainers.sft as trainer
        return _tether_side(trainer, cfg, count=_count_encoded, live_ref=False,
                            precision=args.precision, tmp=tmp,
                            notes=["logits from the batch's first response token on, the "
                                   "loss on response tokens only"])

    def make_trainer():
        import trl
        from datasets import Dataset

        tokenizer = load_tokenizer(args.model)
        examples = load_sft_data(cfg.data, tokenizer, SEED).train
        order = _schedule(len(examples), args.batch_size, _horizon(args))
        dataset = Dataset.from_list([{"input_ids": examples[i].input_ids,
                                      "completion_mask": examples[i].loss_mask} for i in order])
        config = _trl_config(trl.SFTConfig, args, cfg, tmp / "trl", args.batch_size,
                             completion_only_loss=True)
        return trl.SFTTrainer(model=load_causal_lm(args.model, seed=SEED), args=config,
                              train_dataset=dataset, processing_class=tokenizer)

    return _trl_side(make_trainer, count=_count_batch, live_ref=False, precision=args.precision,
                     tmp=tmp, notes=["loss_type chunked_nll (TRL's default): the LM head on "
                                     "response tokens only, in checkpointed chunks of 256; "
                                     "entropy and token accuracy every step"])


def _write_preferences(path: Path, k: int) -> Path:
    """Preference rows from the reviews: prompt i with the continuations of reviews i..i+k-1,
    ranked in that order (k = 2: chosen = its own continuation, rejected = the next one's)."""
    reviews = [json.loads(line) for line in REVIEWS.read_text().splitlines() if line.strip()]
    rows = []
    for i, review in enumerate(reviews):
        responses = [reviews[(i + j) % len(reviews)]["completion"] for j in range(k)]
        rows.append({"prompt": review["prompt"], "chosen": responses[0],
                     "rejected": responses[1]} if k == 2 else
                    {"prompt": review["prompt"], "responses": responses, "ranks": list(range(k))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reward_trl_model(name: str):
    """AutoModelForSequenceClassification(num_labels=1) on the backbone tether's reward model
    starts from, with the head tether initialises (RewardModel.build, same seed) copied in."""
    from transformers import AutoModelForSequenceClassification

    if name == TINY:  # no directory to load from: the same random backbone, built in-process
        backbone = load_causal_lm(TINY, seed=SEED)
        backbone.config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(backbone.config)
        model.model.load_state_dict(backbone.model.state_dict())
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve(name), num_labels=1, dtype=torch.float32)
    reference = RewardModel.build(name, seed=SEED).model
    model.score.load_state_dict(reference.score.state_dict())
    del reference
    return model


def _build_rm(args: argparse.Namespace, side: str, k: int) -> Built:
    tmp = Path(tempfile.mkdtemp(prefix=f"vs_trl_rm{k}_"))
    data = _write_preferences(tmp / "preferences.jsonl", k)
    cfg = _tether_config(RMConfig, args, tmp / "tether", data, "reward.backbone=policy")
    if side == "tether":
        import tether.trainers.rm as trainer
        return _tether_side(
            trainer, cfg,
            count=lambda prefs, packed: _count_prefs(prefs, cfg.train.share_prompt, packed),
            live_ref=False, precision=args.precision, tmp=tmp,
            notes=[f"{SHARED}; all C({k}, 2) pairs of a prompt from its responses' scores; "
                   f"train accuracy and reward mean/std every step"])

    pairs = list(itertools.combinations(range(k), 2))  # tether's pairs() for ranks 0..k-1

    def make_trainer():
        import trl
        from datasets import Dataset

        tokenizer = load_tokenizer(args.model)
        prefs = load_preference_data(cfg.data, tokenizer, SEED).train
        assert all(p.source.pairs() == pairs for p in prefs)
        order = _schedule(len(prefs), args.batch_size, _horizon(args))
        dataset = Dataset.from_list([
            {"chosen_ids": prefs[i].responses[a].input_ids,
             "rejected_ids": prefs[i].responses[b].input_ids} for i in order for a, b in pairs])
        config = _trl_config(trl.RewardConfig, args, cfg, tmp / "trl",
                             args.batch_size * len(pairs))
        return trl.RewardTrainer(model=_reward_trl_model(args.model), args=config,
                                 train_dataset=dataset, processing_class=tokenizer)

    notes = ["reward min/mean/max, accuracy and margin every step"]
    if k > 2:
        notes.insert(0, f"the {len(pairs)} pairs of each ranking as rows: {2 * len(pairs)} "
                        f"sequences forwarded per ranking against tether's {k} "
                        f"({2 * len(pairs) / k:.0f}x); tokens count each response once")
    return _trl_side(make_trainer, count=_count_unique_responses(pairs, args.batch_size),
                     live_ref=False, precision=args.precision, tmp=tmp, notes=notes)


def _pretokenized_dpo_trainer():
    """DPOTrainer training on the token ids it is given (TRL 1.13 always tokenises text)."""
    import trl

    class PreTokenizedDPOTrainer(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    return PreTokenizedDPOTrainer


def _build_dpo(args: argparse.Namespace, side: str, precompute: bool) -> Built:
    tmp = Path(tempfile.mkdtemp(prefix="vs_trl_dpo_"))
    data = _write_preferences(tmp / "pairs.jsonl", 2)
    cfg = _tether_config(DPOConfig, args, tmp / "tether", data, "data.truncation=drop",
                         f"ref.precompute={'true' if precompute else 'false'}")
    ref = ("reference log-probs precomputed before the first step (not in step time)"
           if precompute else "live reference: a frozen copy's forward every step")
    if side == "tether":
        import tether.trainers.dpo as trainer
        return _tether_side(trainer, cfg,
                            count=lambda prefs, packed: _count_prefs(
                                prefs, cfg.train.share_prompt, packed),
                            live_ref=not precompute, precision=args.precision, tmp=tmp,
                            notes=[f"{ref}; {SHARED}; reward and log-prob metrics every step"])

    def make_trainer():
        import trl
        from datasets import Dataset

        tokenizer = load_tokenizer(args.model)
        prefs = load_preference_data(cfg.data, tokenizer, SEED).train
        rows = []
        for i in _schedule(len(prefs), args.batch_size, _horizon(args)):
            chosen, rejected = prefs[i].responses
            prompt = chosen.num_prompt_tokens
            assert chosen.input_ids[:prompt] == rejected.input_ids[:prompt]
            rows.append({"prompt_ids": chosen.input_ids[:prompt],
                         "chosen_ids": chosen.input_ids[prompt:],
                         "rejected_ids": rejected.input_ids[prompt:]})
        config = _trl_config(trl.DPOConfig, args, cfg, tmp / "trl", args.batch_size,
                             beta=cfg.dpo.beta, loss_type=[cfg.dpo.loss],
                             precompute_ref_log_probs=precompute)
        reference = None if precompute else load_causal_lm(args.model, seed=SEED)
        return _pretokenized_dpo_trainer()(
            model=load_causal_lm(args.model, seed=SEED), ref_model=reference, args=config,
            train_dataset=Dataset.from_list(rows), processing_class=tokenizer)

    notes = [f"{ref}; entropy over the full logits, mean logits, token accuracy, rewards, "
             f"margins and log-probs every step",
             "DPOTrainer always tokenises text: a subclass skips _prepare_dataset so that it "
             "trains on tether's token ids"]
    if precompute and args.precision == "bf16":
        notes.append("its reference table is computed in fp32 (accelerate's autocast wraps the "
                     "forward only when training starts), tether's under bf16 autocast")
    return _trl_side(make_trainer, count=_count_batch, live_ref=not precompute,
                     precision=args.precision, tmp=tmp, notes=notes)


def _row(name: str, help: str, build: Callable[[argparse.Namespace, str], Built]) -> Row:
    return Row(name=name, help=help, build=lambda args, side: build(args, side).side)


# row -> (args, "tether" | "trl") -> the Side with its weights (the tests look at them too)
BUILDERS: dict[str, Callable[[argparse.Namespace, str], Built]] = {
    "sft": _build_sft,
    "rm": lambda args, side: _build_rm(args, side, 2),
    "rm-k4": lambda args, side: _build_rm(args, side, 4),
    "dpo": lambda args, side: _build_dpo(args, side, precompute=False),
    "dpo-precomputed": lambda args, side: _build_dpo(args, side, precompute=True),
}

ROWS: list[Row] = [
    _row("sft", "SFT, response-only loss, reviews demonstrations (TRL SFTTrainer)",
         BUILDERS["sft"]),
    _row("rm", "reward model on chosen/rejected pairs (TRL RewardTrainer)", BUILDERS["rm"]),
    _row("rm-k4", "reward model on K=4 rankings; TRL gets each ranking's 6 pairs "
                  "(RewardTrainer)", BUILDERS["rm-k4"]),
    _row("dpo", "DPO sigmoid loss, live frozen reference (TRL DPOTrainer)", BUILDERS["dpo"]),
    _row("dpo-precomputed", "DPO with reference log-probs precomputed before training "
                            "(TRL DPOTrainer, precompute_ref_log_probs)",
         BUILDERS["dpo-precomputed"]),
]
