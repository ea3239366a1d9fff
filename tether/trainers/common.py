"""The few steps every training loop shares: the header and data lines, checkpoint round
trips, the optimizer step with its divergence check, the export of final/, and the hooks
that benchmarks and tests watch the loops of sft, rm and dpo through.

Kept as plain functions (not a Trainer base class) so each loop still reads top to bottom."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tether.checkpoint import (
    capture_rng,
    checkpoint_path,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_final,
)
from tether.config import BatchTrainConfig, OptimConfig, TrainConfig, to_yaml
from tether.data.order import steps_per_epoch
from tether.distributed import Dist
from tether.errors import DataError, Interrupted, TrainingDiverged
from tether.model_card import model_card
from tether.models.lora import count_parameters, is_lora
from tether.optim import (
    MasterAdamW,
    make_optimizer,
    make_scheduler,
    master_optimizer,
    with_masters,
    without_masters,
)
from tether.rundir import MetricsLog, NullLog, read_metrics, write_config
from tether.tracking import check_available

SINGLE = Dist()  # one process: every collective below is a no-op


@dataclass
class Hooks:
    """Seams for code that watches the loop of sft, rm or dpo (benchmarks, tests) without
    patching it; each does nothing unless given. Steps are numbered from 1, as metrics.jsonl
    and the checkpoints number them (PPO's loop has its own, tether.trainers.ppo.Hooks).

    - started(model): once set up, before the first step, with the model the optimizer
      trains (compiled or wrapped, as configured);
    - step_started(step): at the top of each step, before its batch is read;
    - micro_batch(examples, packed): for each micro-batch of a step, before its forward, with
      its examples (sft: Encoded sequences; rm and dpo: EncodedPreference, a prompt with its
      responses) and whether they are packed into one row (train.max_tokens_per_microbatch);
    - stepped(step, metrics): after each step's update, with its metrics (logged or not)."""

    started: Callable[[torch.nn.Module], None] = lambda model: None
    step_started: Callable[[int], None] = lambda step: None
    micro_batch: Callable[[list, bool], None] = lambda examples, packed: None
    stepped: Callable[[int, dict[str, float]], None] = lambda step, metrics: None


# train.epochs=0: as many passes as give at least AUTO_STEPS optimizer steps, at most
# AUTO_EPOCHS of them. Small data then still gets enough updates (a freshly initialised reward
# head needs them), and large data gets one pass. 70, not 50: a reward model on 205 prompts
# (25 steps a pass; the pipeline's at 256 prompts) got 2 passes at 50 and learned less on both
# built-in tasks than with 3 (BENCHMARKS.md, "Three passes for the pipeline's reward model").
AUTO_STEPS, AUTO_EPOCHS = 70, 4


def epochs_for(train: TrainConfig, steps_per_epoch: int) -> int:
    """train.epochs, or for 0 (auto) the passes AUTO_STEPS and AUTO_EPOCHS ask for."""
    if train.epochs:
        return train.epochs
    return min(AUTO_EPOCHS, max(1, math.ceil(AUTO_STEPS / steps_per_epoch)))


def print_data_stats(stats: dict[str, Any], dist: Dist = SINGLE) -> None:
    """One line per data split (data/train, data/eval): what was read, kept and dropped."""
    for split, split_stats in stats.items():
        if dist.main:
            print(f"data/{split}: {split_stats.summary()}")


def print_header(title: str, model: torch.nn.Module, plan: str, dist: Dist = SINGLE) -> None:
    """A loop's first line: what trains (`title`), its parameter counts, then `plan` (the
    data, the steps, the processes)."""
    trainable, total = count_parameters(model)
    if dist.main:
        print(f"{title}: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable; "
              f"{plan}")


def plan_steps(train: BatchTrainConfig, num_examples: int, source: str) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for `num_examples` training examples."""
    per_epoch = steps_per_epoch(num_examples, train.batch_size)
    if per_epoch == 0:
        raise DataError(f"{source}: {num_examples} training examples, fewer than "
                        f"train.batch_size={train.batch_size}")
    return per_epoch, train.max_steps or epochs_for(train, per_epoch) * per_epoch


def save_training_state(run_dir: Path, step: int, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, scheduler: Any, *,
                        num_examples: int, steps_per_epoch: int, keep: int,
                        extra: dict | None = None, dist: Dist = SINGLE) -> Path:
    """`extra`: whatever else a loop must restore (e.g. an adaptive KL coefficient). Called on
    every rank (gathering FSDP2 shards is collective); rank 0 writes. With a MasterAdamW
    (train.bf16_weights), "model" holds its fp32 masters, not their bf16 rounding, and
    "optimizer" the rest of its state: the same checkpoint as a plain AdamW run writes."""
    optimizer_state = dist.optimizer_state(model, optimizer)
    if isinstance(optimizer, MasterAdamW):
        optimizer_state, weights = without_masters(optimizer_state)
    else:
        weights = dist.trainable_state(model)
    state = {
        "step": step, "model": weights, "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(), "rng": capture_rng(), "extra": extra or {},
        # The batch order is a function of (seed, step); these let resume check it.
        "data": {"num_examples": num_examples, "epoch": step // steps_per_epoch,
                 "batch_in_epoch": step % steps_per_epoch}}
    path = save_checkpoint(run_dir, step, state, keep=keep) if dist.main else \
        checkpoint_path(run_dir, step)
    dist.barrier()  # no rank goes on (or resumes) before the checkpoint is complete
    return path


def restore_training_state(checkpoint: Path, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, scheduler: Any, *,
                           num_examples: int, data_source: str, extra: dict | None = None,
                           dist: Dist = SINGLE) -> int:
    """Load everything a checkpoint holds; return the step to continue from. `extra` is
    updated in place with what save_training_state was given as its `extra`."""
    state = load_checkpoint(checkpoint)
    if state["data"]["num_examples"] != num_examples:
        raise DataError(f"{data_source}: {num_examples} training examples now, "
                        f"{state['data']['num_examples']} when {checkpoint} was written; "
                        f"resuming would not continue the same data order")
    dist.load_trainable_state(model, state["model"])  # rounded, where the model is bf16
    optimizer_state = state["optimizer"]
    if isinstance(optimizer, MasterAdamW) and all(
            isinstance(n, str) for g in optimizer_state["param_groups"] for n in g["params"]):
        optimizer_state = with_masters(optimizer_state, state["model"])  # the exact fp32 ones
    dist.load_optimizer_state(model, optimizer, optimizer_state)
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    if extra is not None:
        extra.update(state.get("extra", {}))
    if dist.main:
        print(f"resumed from {checkpoint} at step {state['step']}")
    return state["step"]


def restore_weights(checkpoint: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, dist: Dist = SINGLE) -> None:
    """Only a checkpoint's trained weights back in `model` (and, with a MasterAdamW, its fp32
    masters, which final/ is written from); the schedule, data order and RNG stay as they
    are. For the end of a run that keeps its best evaluation (rm's train.keep_best)."""
    state = load_checkpoint(checkpoint)
    dist.load_trainable_state(model, state["model"])
    if isinstance(optimizer, MasterAdamW):
        dist.load_optimizer_state(model, optimizer,
                                  with_masters(state["optimizer"], state["model"]))


def start_or_resume(run_dir: Path, checkpoint: Path | None, model: torch.nn.Module,
                    optim: OptimConfig, total_updates: int, *, num_examples: int,
                    data_source: str, extra: dict | None = None,
                    lr_by_prefix: dict[str, float] | None = None, dist: Dist = SINGLE,
                    master_weights: bool = False, config: Any = None,
                    ) -> tuple[torch.optim.Optimizer, Any, int, MetricsLog]:
    """The optimizer, its schedule over `total_updates` optimizer steps, the step to start
    from and the metrics log (rank 0's; the others log nothing); everything restored from
    `checkpoint` when resuming. `master_weights` (tether.precision.master_weights(cfg.train)):
    a MasterAdamW, fp32 masters of a model tether.precision.to_bf16 has cast. `config`: the
    run's configuration, written to config.yaml once the checkpoint has been restored (so a
    resume that fails leaves the run's config as it was)."""
    report_to = config.train.report_to if config is not None and dist.main else []
    check_available(report_to)  # a missing tracker package stops the run before any write
    optimizer = make_optimizer(model, optim, lr_by_prefix, master_weights=master_weights)
    if isinstance(optimizer, MasterAdamW):
        optimizer.broadcast_masters()  # DDP gave every process rank 0's weights: ditto masters
    scheduler = make_scheduler(optimizer, optim, total_updates)
    start_step = 0
    if checkpoint is not None:
        start_step = restore_training_state(checkpoint, model, optimizer, scheduler,
                                            num_examples=num_examples, data_source=data_source,
                                            extra=extra, dist=dist)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            write_config(run_dir, config)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if checkpoint else None,
                     report_to=report_to, config=config) if dist.main else NullLog()
    return optimizer, scheduler, start_step, log


def clip_and_check(model: torch.nn.Module, max_grad_norm: float, loss: float, step: int,
                   last_checkpoint: Path | None, dist: Dist = SINGLE) -> float:
    """Clip gradients; stop (before the optimizer step spoils the weights) on NaN/inf. `loss`
    is the global one (the same on every rank), so every rank stops together. When a
    MasterAdamW trains the model (train.bf16_weights), its fp32 master gradients are the ones
    measured and clipped: the true norm, not the bf16 gradients'."""
    params = [p for p in model.parameters() if p.requires_grad]
    masters = master_optimizer(params)
    grad_norm = dist.clip_grad_norm(masters.master_grads() if masters else params,
                                    max_grad_norm or math.inf)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        where = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                 else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"loss {loss} / gradient norm {grad_norm} at step {step}: training diverged; "
            f"{where}. Try a lower optim.lr or optim.max_grad_norm.")
    return grad_norm


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   max_grad_norm: float, loss: float, step: int,
                   last_checkpoint: Path | None, dist: Dist = SINGLE) -> tuple[float, float]:
    """One update of every loop: clip (stopping on NaN/inf, see clip_and_check), step the
    optimizer at the scheduled rate, advance the schedule, clear the gradients. Returns
    (gradient norm before clipping, the learning rate this update used: the first parameter
    group's, i.e. the body's where a head has its own)."""
    grad_norm = clip_and_check(model, max_grad_norm, loss, step, last_checkpoint, dist)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr


def save_when_due(stop: StopRequests, run_dir: Path, step: int, is_last: bool,
                  model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                  train: TrainConfig, *, num_examples: int, steps_per_epoch: int,
                  last_saved: Path | None, extra: dict | None = None,
                  dist: Dist = SINGLE) -> Path | None:
    """The end of every loop's step: a checkpoint when train.save_every says so or a stop was
    requested (Ctrl-C), and then, for a stop, the end of the loop (Interrupted). Returns the
    newest checkpoint."""
    if stop.requested(dist) or due(step, train.save_every, is_last):
        last_saved = save_training_state(run_dir, step, model, optimizer, scheduler,
                                         num_examples=num_examples,
                                         steps_per_epoch=steps_per_epoch,
                                         keep=train.keep_checkpoints, extra=extra, dist=dist)
    stop.stop_here(step, last_saved, is_last)
    return last_saved


def due(step: int, every: int, is_last: bool) -> bool:
    return is_last or (every > 0 and step % every == 0)


def final_texts(stage: str, cfg: Any, run_dir: Path, adapter: bool) -> dict[str, str]:
    """What final/ holds besides the weights: the model card (README.md) and the resolved
    config it was trained with. adapter: final/ holds an unmerged LoRA adapter."""
    metrics = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() \
        else []
    return {"README.md": model_card(stage, cfg, metrics, adapter),
            "tether_config.yaml": to_yaml(cfg)}


def export_policy(run_dir: Path, whole: torch.nn.Module, tokenizer: Any, cfg: Any, stage: str,
                  what: str = "policy", dist: Dist = SINGLE) -> Path:
    """Write final/ from the whole model (tether.precision.master_model's), with its model
    card, on rank 0, the others waiting so no one reads it half-written."""
    final, lora = run_dir / "final", cfg.model.lora
    if dist.main:
        adapter = is_lora(whole) and not lora.merge_on_save
        save_final(whole, tokenizer, final, lora.merge_on_save,
                   final_texts(stage, cfg, run_dir, adapter))
        merged = is_lora(whole) and lora.merge_on_save
        print(f"final {what}: {final}" + (" (LoRA merged)" if merged else ""))
    dist.barrier()
    return final


class StopRequests:
    """Ctrl-C (SIGINT) or SIGTERM while a loop trains: the first lets the current step finish,
    then the loop writes a checkpoint and stops (Interrupted); a second stops at once.

        with StopRequests() as stop:
            for step in ...:
                ...
                last_saved = save_when_due(stop, ...)  # checkpoints, then stops if asked

    Under torchrun the processes agree (requested is collective), so all of them save the same
    step. Outside the main thread (a benchmark's loop) signals stay with their handlers."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.stopping = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        tqdm.write("stopping after this step, once its checkpoint is written "
                   "(Ctrl-C again to stop at once)")

    def requested(self, dist: Dist = SINGLE) -> bool:
        """Whether any process was asked to stop; every process calls it at the same step."""
        self.stopping = dist.max(float(self.signal is not None))[0] > 0
        return self.stopping

    def stop_here(self, step: int, checkpoint: Path | None, is_last: bool) -> None:
        """Stop (Interrupted) after a requested() that said so, unless the run is done."""
        if self.stopping and not is_last:
            raise Interrupted(step, checkpoint)
