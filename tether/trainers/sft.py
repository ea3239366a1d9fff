"""Supervised fine-tuning: maximise the likelihood of demonstration responses.

One loop, top to bottom: load -> (resume) -> for each optimizer step: forward/backward over
microbatches, clip, step, log, evaluate, checkpoint -> export final/.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tether.config import SFTConfig
from tether.data.order import batch_indices, chunks
from tether.data.packing import Microbatches
from tether.data.sft import load_sft_data
from tether.device import autocast, peak_memory
from tether.distributed import setup
from tether.losses.sft import masked_nll
from tether.metric_names import (
    DATA_EPOCH,
    EVAL_LOSS,
    LOSS_TRAIN,
    OPTIM_GRAD_NORM,
    OPTIM_LR,
    PERF_STEP_S,
    PERF_TOKENS_PER_S,
)
from tether.models.loading import load_causal_lm, load_tokenizer, nf4_device
from tether.models.lora import apply_lora
from tether.models.shared_prompt import sequence_logprobs
from tether.precision import check_settings, master_model, maybe_compile, to_bf16
from tether.rundir import prepare_run_dir
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


def train(cfg: SFTConfig, hooks: Hooks | None = None, progress_bar: bool = True) -> Path:
    """Run SFT as configured; return the final/ directory. Under torchrun, every process
    runs this; each takes its slice of every batch. `hooks`: see common.Hooks;
    `progress_bar`: False hides its progress bar (rank 0 draws it)."""
    hooks = hooks or Hooks()
    torch.manual_seed(cfg.train.seed)
    d = setup(cfg.train.strategy, cfg.train.device)
    masters = check_settings(cfg.model, cfg.train, d.device)  # before any model loads

    # 1. Data first (a bad row should not wait for a model to load), then the model.
    tokenizer = load_tokenizer(cfg.model.name)
    data = load_sft_data(cfg.data, tokenizer, cfg.train.seed)
    print_data_stats(data.stats, d)
    batches = Microbatches(cfg.train.micro_batch_size, cfg.train.max_tokens_per_microbatch,
                           [len(e.input_ids) for e in data.train], d)
    run_dir, checkpoint = prepare_run_dir(cfg.run_dir, cfg.resume, write=d.main)

    def build() -> torch.nn.Module:
        m = load_causal_lm(cfg.model.name, seed=cfg.train.seed,
                           hub_kernels=cfg.model.hub_kernels, attention=cfg.model.attention,
                           nf4_on=nf4_device(cfg.model, d.device))
        return apply_lora(m, cfg.model.lora) if cfg.model.lora.enabled else m

    model = d.place(build())
    if masters:
        to_bf16(model)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    batch_size, micro = cfg.train.batch_size, cfg.train.micro_batch_size
    per_epoch, total_steps = plan_steps(cfg.train, len(data.train), cfg.data.train)
    print_header(f"model {cfg.model.name}", model,
                 f"{len(data.train)} train / {len(data.eval)} eval examples; {total_steps} "
                 f"steps of {batch_size} sequences ({d.processes}; {batches})", d)
    model = d.wrap(maybe_compile(model, cfg.train.compile))

    # 2. Optimizer and schedule, restored with everything else on resume.
    optimizer, scheduler, start_step, log = start_or_resume(
        run_dir, checkpoint, model, cfg.optim, total_steps, num_examples=len(data.train),
        data_source=cfg.data.train, master_weights=masters, dist=d, config=cfg)

    # FSDP2 holds the head's weight sharded outside the model's forward: the plain head there.
    chunk = 0 if d.sharded else cfg.train.logits_chunk

    def run_forward(examples: list, packed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs and loss masks, [R, T] (see sequence_logprobs)."""
        with autocast(cfg.train.bf16, d.device):
            return sequence_logprobs(model, examples, tokenizer.pad_token_id, one_row=packed,
                                     chunk=chunk)

    @torch.no_grad()
    def evaluate() -> float:
        # Every rank evaluates the whole (small) eval set: FSDP2 needs all ranks in every
        # forward, and nothing needs reducing.
        model.eval()
        nll, count = 0.0, 0
        for examples in chunks(data.eval, micro):
            logprobs, mask = run_forward(examples)
            nll += masked_nll(logprobs, mask, num_tokens=1).item()
            count += int(mask.sum())
        model.train()
        return nll / max(count, 1)

    if checkpoint is None and data.eval:
        log.log(0, {EVAL_LOSS: evaluate()})

    # 3. The loop.
    model.train()
    last_saved = checkpoint
    hooks.started(model)
    progress = tqdm(total=total_steps, initial=start_step, desc="sft", unit="step",
                    dynamic_ncols=True, disable=not (d.main and progress_bar))
    with StopRequests() as stop:
        for step in range(start_step, total_steps):
            hooks.step_started(step + 1)
            started = time.perf_counter()
            indices = batch_indices(len(data.train), batch_size, step, cfg.train.seed)
            examples = [data.train[i] for i in indices]
            # Normalise by the whole batch's response tokens (every rank counts them itself), so
            # that microbatches and ranks add up to the gradient of one big batch.
            num_tokens = sum(sum(e.loss_mask) for e in examples)
            loss = 0.0
            for part in batches(indices):
                micro_examples = [data.train[i] for i in part]
                hooks.micro_batch(micro_examples, batches.packed)
                micro_loss = masked_nll(*run_forward(micro_examples, batches.packed), num_tokens)
                d.backward(micro_loss)
                loss += micro_loss.item()
            [loss] = d.sum(loss)
            grad_norm, lr = optimizer_step(model, optimizer, scheduler, cfg.optim.max_grad_norm,
                                           loss, step + 1, last_saved, d)
            elapsed = time.perf_counter() - started

            done = step + 1
            metrics = {LOSS_TRAIN: loss, OPTIM_LR: lr, OPTIM_GRAD_NORM: grad_norm,
                       PERF_STEP_S: elapsed,
                       PERF_TOKENS_PER_S: sum(len(e.input_ids) for e in examples) / elapsed,
                       **peak_memory(d.device), DATA_EPOCH: step / per_epoch}
            is_last = done == total_steps
            if data.eval and due(done, cfg.train.eval_every, is_last):
                metrics[EVAL_LOSS] = evaluate()
            if is_last or done % cfg.train.log_every == 0 or EVAL_LOSS in metrics:
                log.log(done, metrics)
            hooks.stepped(done, metrics)
            progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
            progress.update(1)
            last_saved = save_when_due(stop, run_dir, done, is_last, model, optimizer,
                                       scheduler, cfg.train, num_examples=len(data.train),
                                       steps_per_epoch=per_epoch, last_saved=last_saved, dist=d)
    progress.close()
    log.close()

    # 4. Export (rank 0; the others wait, so no one reads final/ half-written).
    whole = master_model(model, optimizer, build, dist=d)
    return export_policy(run_dir, whole, tokenizer, cfg, "sft", what="model", dist=d)
