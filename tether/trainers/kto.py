"""KTO: train the policy on unpaired thumbs up / down (Ethayarajh et al. 2024).

load data -> reference log-probs (as DPO: precomputed once and cached, or a live frozen model;
with LoRA, the policy with its adapter off) -> policy (+ LoRA) -> (resume) -> for each
optimizer step: the reference point z0 from the whole batch's mismatched pairs, without
gradient; then each micro-batch's own completions through the policy, the loss against that
z0, backward; clip, step, log, evaluate, checkpoint -> export final/.

z0 is a mean over the whole batch, so it is computed before any micro-batch's loss: a batch
split into micro-batches (or over processes) gives the same update as the batch in one piece.
Each row's mismatched pair (its prompt with another row's completion, tether.data.unpaired)
is fixed when the data loads, so DPO's reference machinery tabulates the reference log-probs
of both once: it reads a row as a prompt with two responses, [own, mismatched].
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tether.config import KTOConfig, KTOLossConfig
from tether.data.order import batch_indices, chunks
from tether.data.packing import Microbatches
from tether.data.tokenize import Encoded
from tether.data.unpaired import EncodedUnpaired, class_counts, load_unpaired_data
from tether.device import peak_memory
from tether.distributed import Dist, setup, unwrap
from tether.eval.health import CollapseWatch
from tether.losses.kto import RECOMMENDED_RATIO, kto_losses, reference_point, weight_ratio
from tether.metric_names import (
    DATA_EPOCH,
    EVAL_KL_MISMATCHED,
    EVAL_LOSS,
    EVAL_PREFIX,
    KL_MISMATCHED,
    KTO_HELD_OUT,
    LOGPS_DESIRABLE,
    LOGPS_UNDESIRABLE,
    LOSS_TRAIN,
    OPTIM_GRAD_NORM,
    OPTIM_LR,
    PERF_STEP_S,
    PERF_TOKENS_PER_S,
    REWARD_DESIRABLE,
    REWARD_UNDESIRABLE,
)
from tether.models.loading import load_tokenizer
from tether.precision import check_settings, master_model, maybe_compile
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
from tether.trainers.dpo import (
    check_reference_vocabulary,
    policy_and_reference,
    policy_builder,
    prefs_tokens,
    reference_description,
    response_logps,
    sampled_eval,
)

OWN, MISMATCHED = 0, 1  # the columns of EncodedUnpaired.responses


def completion_logps(model: torch.nn.Module, rows: list[EncodedUnpaired], column: int,
                     pad_id: int, bf16: bool, packed: bool = False, chunk: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs [N] of each row's own completion (OWN) or of its mismatched pair
    (MISMATCHED), and their numbers of tokens."""
    sequences: list[Encoded] = [r.responses[column] for r in rows]
    return response_logps(model, sequences, pad_id, bf16, None, packed, chunk)


def kto_objective(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
                  z0: torch.Tensor, num_rows: int, counts: tuple[int, int],
                  cfg: KTOLossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of these rows as a share of a batch of `num_rows` (lambda_y - v summed, over
    num_rows), and the per-class metrics as shares of the batch's class means (`counts`:
    thumbs up and down in the whole batch), so micro-batches add up to the batch's values."""
    per_row = kto_losses(logps, ref_logps, desirable, z0, cfg.beta, cfg.desirable_weight,
                         cfg.undesirable_weight)
    loss = per_row.sum() / num_rows
    sums = {}
    with torch.no_grad():
        reward = cfg.beta * (logps - ref_logps)
        for up, count, reward_key, logps_key in (
                (True, counts[0], REWARD_DESIRABLE, LOGPS_DESIRABLE),
                (False, counts[1], REWARD_UNDESIRABLE, LOGPS_UNDESIRABLE)):
            if count:  # a batch of one class has no mean for the other
                mine = desirable == up
                sums[reward_key] = reward[mine].sum().item() / count
                sums[logps_key] = logps[mine].sum().item() / count
    return loss, sums


def balance_warning(rows: list[EncodedUnpaired], cfg: KTOLossConfig) -> str | None:
    """The paper's rule for imbalanced data, lambda_D n_D / (lambda_U n_U) in [1, 4/3]: what
    to set when the training rows break it."""
    up, down = class_counts(rows)
    ratio = weight_ratio(up, down, cfg.desirable_weight, cfg.undesirable_weight)
    lo, hi = RECOMMENDED_RATIO
    if lo <= ratio <= hi:
        return None
    base = cfg.undesirable_weight * down / up
    return (f"kto.desirable_weight * {up} thumbs-up / (kto.undesirable_weight * {down} "
            f"thumbs-down) = {ratio:.2f}, outside [1, 4/3], the KTO paper's recommendation "
            f"for imbalanced data; for these counts set kto.desirable_weight between "
            f"{lo * base:.3g} and {hi * base:.3g} (with kto.undesirable_weight="
            f"{cfg.undesirable_weight:g})")


def train(cfg: KTOConfig, hooks: Hooks | None = None, progress_bar: bool = True) -> Path:
    """Run KTO as configured; return the final/ directory. Under torchrun every process runs
    this and takes its slice of every batch. `hooks`: see common.Hooks (micro_batch gets
    EncodedUnpaired rows); `progress_bar`: False draws none."""
    hooks = hooks or Hooks()
    torch.manual_seed(cfg.train.seed)
    d: Dist = setup(cfg.train.strategy, cfg.train.device)
    masters = check_settings(cfg.model, cfg.train, d.device)  # before any model loads

    # 1. Data first (a bad row should not wait for a model to load).
    tokenizer = load_tokenizer(cfg.model.name)
    data = load_unpaired_data(cfg.data, tokenizer, cfg.train.seed)
    print_data_stats(data.stats, d)
    warning = balance_warning(data.train, cfg.kto)
    if warning and d.main:
        print(f"warning: {warning}")
    chunk = 0 if d.sharded else cfg.train.logits_chunk
    sampled = sampled_eval(cfg, tokenizer, d.device, chunk) if cfg.sampled_eval.prompts \
        else None
    budget, share_prompt = cfg.train.max_tokens_per_microbatch, cfg.train.share_prompt
    # A row's cost is both its sequences, as the reference's pass packs them.
    batches = Microbatches(cfg.train.micro_batch_size, budget,
                           [prefs_tokens(r, share_prompt) for r in data.train], d,
                           unit="row with its mismatched pair")
    run_dir, checkpoint = prepare_run_dir(cfg.run_dir, cfg.resume, write=d.main)
    batch_size, micro, bf16 = cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.bf16
    pad_id = tokenizer.pad_token_id

    # 2. The policy and its reference (tether.trainers.dpo.policy_and_reference).
    check_reference_vocabulary(cfg, tokenizer)
    model, ref = policy_and_reference(cfg, d, data, tokenizer, run_dir, masters, chunk,
                                      progress_bar)

    per_epoch, total_steps = plan_steps(cfg.train, len(data.train), cfg.data.train)
    up, down = class_counts(data.train)
    print_header(f"kto (beta {cfg.kto.beta}, weights {cfg.kto.desirable_weight:g} up / "
                 f"{cfg.kto.undesirable_weight:g} down) on {cfg.model.name}", model,
                 f"reference log-probs {reference_description(cfg)}; {len(data.train)} rows "
                 f"({up} up, {down} down) for training, {len(data.eval)} held out; "
                 f"{total_steps} steps of {batch_size} rows ({d.processes}; {batches})", d)
    model = d.wrap(maybe_compile(model, cfg.train.compile))

    # 3. Optimizer and schedule, restored with everything else on resume.
    optimizer, scheduler, start_step, log = start_or_resume(
        run_dir, checkpoint, model, cfg.optim, total_steps, num_examples=len(data.train),
        data_source=cfg.data.train, master_weights=masters, dist=d, config=cfg)

    def reference_pass(split: str, rows: list[EncodedUnpaired], parts: list[list[int]],
                       packed: bool = False) -> tuple[torch.Tensor, float, list[torch.Tensor]]:
        """Without gradient, over these micro-batches (the whole batch, with every process's):
        z0, the mean log pi/ref of the mismatched pairs it clamps (kl/mismatched), and each
        micro-batch's reference log-probs of its own completions."""
        kl_logps, kl_ref_logps, own_refs = [], [], []
        with torch.no_grad():
            for part in parts:
                part_rows = [rows[i] for i in part]
                both = ref(split, part, part_rows, d.device, packed).view(-1, 2)
                own_refs.append(both[:, OWN])
                kl_ref_logps.append(both[:, MISMATCHED])
                kl_logps.append(completion_logps(model, part_rows, MISMATCHED, pad_id, bf16,
                                                 packed, chunk)[0].float())
        kl_logps, kl_ref_logps = d.gather(torch.cat(kl_logps)), d.gather(torch.cat(kl_ref_logps))
        z0 = reference_point(kl_logps, kl_ref_logps).to(d.device)
        return z0, (kl_logps - kl_ref_logps).mean().item(), own_refs

    def forward(rows: list[EncodedUnpaired], own_ref: torch.Tensor, z0: torch.Tensor,
                num_rows: int, counts: tuple[int, int], packed: bool = False
                ) -> tuple[torch.Tensor, dict[str, float]]:
        logps, _ = completion_logps(model, rows, OWN, pad_id, bf16, packed, chunk)
        desirable = torch.tensor([r.desirable for r in rows], device=logps.device)
        return kto_objective(logps, own_ref, desirable, z0, num_rows, counts, cfg.kto)

    collapse = CollapseWatch()

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        # Every rank evaluates everything (FSDP2 needs all ranks in each forward).
        model.eval()
        metrics = {}
        if data.eval:
            parts = chunks(list(range(len(data.eval))), micro)
            z0, kl, own_refs = reference_pass("eval", data.eval, parts)
            loss, sums = 0.0, {}
            counts = class_counts(data.eval)
            for part, own_ref in zip(parts, own_refs, strict=True):
                micro_loss, micro_sums = forward([data.eval[i] for i in part], own_ref, z0,
                                                 len(data.eval), counts)
                loss += micro_loss.item()
                sums = {k: sums.get(k, 0.0) + v for k, v in micro_sums.items()}
            metrics = {EVAL_LOSS: loss, EVAL_KL_MISMATCHED: kl,
                       **{KTO_HELD_OUT[k]: v for k, v in sums.items()}}
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
    progress = tqdm(total=total_steps, initial=start_step, desc="kto", unit="step",
                    dynamic_ncols=True, disable=not (d.main and progress_bar))
    with StopRequests() as stop:
        for step in range(start_step, total_steps):
            hooks.step_started(step + 1)
            started = time.perf_counter()
            indices = batch_indices(len(data.train), batch_size, step, cfg.train.seed)
            counts = class_counts([data.train[i] for i in indices])
            parts = batches(indices)
            # z0 first, from the whole batch: the micro-batches' losses all use it.
            z0, kl, own_refs = reference_pass("train", data.train, parts, batches.packed)
            loss, sums, tokens = 0.0, {}, 0
            for part, own_ref in zip(parts, own_refs, strict=True):
                rows = [data.train[i] for i in part]
                hooks.micro_batch(rows, batches.packed)
                micro_loss, micro_sums = forward(rows, own_ref, z0, len(indices), counts,
                                                 batches.packed)
                d.backward(micro_loss)
                loss += micro_loss.item()
                sums = {k: sums.get(k, 0.0) + v for k, v in micro_sums.items()}
                tokens += sum(len(r.responses[OWN].input_ids) +
                              len(r.responses[MISMATCHED].input_ids) for r in rows)
            loss, tokens, *summed = d.sum(loss, tokens, *sums.values())
            sums = dict(zip(sums, summed, strict=True))
            grad_norm, lr = optimizer_step(model, optimizer, scheduler, cfg.optim.max_grad_norm,
                                           loss, step + 1, last_saved, d)
            elapsed = time.perf_counter() - started

            done = step + 1
            metrics = {LOSS_TRAIN: loss, KL_MISMATCHED: kl, **sums, OPTIM_LR: lr,
                       OPTIM_GRAD_NORM: grad_norm, PERF_STEP_S: elapsed,
                       PERF_TOKENS_PER_S: tokens / elapsed, **peak_memory(d.device),
                       DATA_EPOCH: step / per_epoch}
            is_last = done == total_steps
            evaluated = bool(data.eval or sampled) and due(done, cfg.train.eval_every, is_last)
            if evaluated:
                metrics.update(evaluate())
            if is_last or done % cfg.train.log_every == 0 or evaluated:
                log.log(done, metrics)
            hooks.stepped(done, metrics)
            progress.set_postfix(loss=f"{loss:.3f}", z0=f"{max(kl, 0.0):.3f}",
                                 up=f"{sums.get(REWARD_DESIRABLE, 0.0):.3f}",
                                 down=f"{sums.get(REWARD_UNDESIRABLE, 0.0):.3f}")
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
    return export_policy(run_dir, whole, tokenizer, cfg, "kto", dist=d)
