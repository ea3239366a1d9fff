"""The few steps every training loop shares: checkpoint round trips and the divergence check.

Kept as plain functions (not a Trainer base class) so each loop still reads top to bottom."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch

from tether.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_trainable_state,
    restore_rng,
    save_checkpoint,
    trainable_state,
)
from tether.config import OptimConfig, TrainConfig
from tether.data.order import steps_per_epoch
from tether.errors import DataError, TrainingDiverged
from tether.optim import make_optimizer, make_scheduler
from tether.rundir import MetricsLog


def plan_steps(train: TrainConfig, num_examples: int, source: str) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for `num_examples` training examples."""
    per_epoch = steps_per_epoch(num_examples, train.batch_size)
    if per_epoch == 0:
        raise DataError(f"{source}: {num_examples} training examples, fewer than "
                        f"train.batch_size={train.batch_size}")
    return per_epoch, train.max_steps or train.epochs * per_epoch


def autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def save_training_state(run_dir: Path, step: int, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, scheduler: Any, *,
                        num_examples: int, steps_per_epoch: int, keep: int,
                        extra: dict | None = None) -> Path:
    """`extra`: whatever else a loop must restore (e.g. an adaptive KL coefficient)."""
    return save_checkpoint(run_dir, step, {
        "step": step, "model": trainable_state(model), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": capture_rng(), "extra": extra or {},
        # The batch order is a function of (seed, step); these let resume check it.
        "data": {"num_examples": num_examples, "epoch": step // steps_per_epoch,
                 "batch_in_epoch": step % steps_per_epoch}}, keep=keep)


def restore_training_state(checkpoint: Path, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, scheduler: Any, *,
                           num_examples: int, data_source: str, extra: dict | None = None) -> int:
    """Load everything a checkpoint holds; return the step to continue from. `extra` is
    updated in place with what save_training_state was given as its `extra`."""
    state = load_checkpoint(checkpoint)
    if state["data"]["num_examples"] != num_examples:
        raise DataError(f"{data_source}: {num_examples} training examples now, "
                        f"{state['data']['num_examples']} when {checkpoint} was written; "
                        f"resuming would not continue the same data order")
    load_trainable_state(model, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    if extra is not None:
        extra.update(state.get("extra", {}))
    print(f"resumed from {checkpoint} at step {state['step']}")
    return state["step"]


def start_or_resume(run_dir: Path, checkpoint: Path | None, model: torch.nn.Module,
                    optim: OptimConfig, total_updates: int, *, num_examples: int,
                    data_source: str, extra: dict | None = None,
                    lr_by_prefix: dict[str, float] | None = None,
                    ) -> tuple[torch.optim.Optimizer, Any, int, MetricsLog]:
    """The optimizer, its schedule over `total_updates` optimizer steps, the step to start
    from and the metrics log; everything restored from `checkpoint` when resuming."""
    optimizer = make_optimizer(model, optim, lr_by_prefix)
    scheduler = make_scheduler(optimizer, optim, total_updates)
    start_step = 0
    if checkpoint is not None:
        start_step = restore_training_state(checkpoint, model, optimizer, scheduler,
                                            num_examples=num_examples, data_source=data_source,
                                            extra=extra)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if checkpoint else None)
    return optimizer, scheduler, start_step, log


def clip_and_check(model: torch.nn.Module, max_grad_norm: float, loss: float, step: int,
                   last_checkpoint: Path | None) -> float:
    """Clip gradients; stop (before the optimizer step spoils the weights) on NaN/inf."""
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in model.parameters() if p.requires_grad], max_grad_norm or math.inf).item()
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        where = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                 else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"loss {loss} / gradient norm {grad_norm} at step {step}: training diverged; "
            f"{where}. Try a lower optim.lr or optim.max_grad_norm.")
    return grad_norm


def due(step: int, every: int, is_last: bool) -> bool:
    return is_last or (every > 0 and step % every == 0)
