"""Reward model training: Bradley-Terry on pairs and K-way rankings.

load -> (resume) -> for each optimizer step: score every response of a batch of prompts once,
take all of each prompt's pairs, backward, clip, step, log, evaluate (with train.keep_best:
keep the best evaluation's weights, stop when patience runs out), checkpoint ->
(keep_best: back to the best weights) -> fit the normalisation on reference responses ->
final evaluation -> export final/.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tether.config import RMConfig
from tether.data.order import batch_indices
from tether.data.packing import Microbatches, group_tokens
from tether.data.preferences import EncodedPreference, load_preference_data, parse_responses
from tether.data.records import LoadStats, load_records
from tether.device import autocast, peak_memory
from tether.distributed import setup
from tether.eval.health import at_chance, reward_model_warnings
from tether.eval.rm import evaluate_preferences, format_table
from tether.files import atomic_write_text
from tether.losses.reward import bradley_terry_loss, pairwise_accuracy, plackett_luce_loss
from tether.metric_names import (
    DATA_EPOCH,
    EVAL_LOSS,
    EVAL_PAIRS,
    EVAL_PROMPTS,
    HEALTH_RM_AT_CHANCE,
    LOSS_TRAIN,
    OPTIM_GRAD_NORM,
    OPTIM_LR,
    PERF_SEQUENCES_PER_S,
    PERF_STEP_S,
    PERF_TOKENS_PER_S,
    REWARD_ACCURACY,
    REWARD_MEAN,
    REWARD_NORM_BIAS,
    REWARD_NORM_GAIN,
    REWARD_STD,
)
from tether.models.lora import apply_lora, is_lora
from tether.models.reward import RewardModel
from tether.precision import check_settings, master_model, maybe_compile, to_bf16
from tether.rundir import prepare_run_dir
from tether.trainers.best import BestEvaluation
from tether.trainers.common import (
    Hooks,
    StopRequests,
    due,
    final_texts,
    optimizer_step,
    plan_steps,
    print_data_stats,
    print_header,
    restore_weights,
    save_training_state,
    save_when_due,
    start_or_resume,
)


def rewards_grid(raw: torch.Tensor, prefs: list[EncodedPreference]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scatter the flat rewards of `prefs` (their responses in order) into [B, K] rewards,
    ranks and mask, keeping the graph (an index gather, not in-place writes); on raw's
    device."""
    k = max(len(p.responses) for p in prefs)
    index = torch.full((len(prefs), k), raw.shape[0], dtype=torch.long)
    ranks = torch.zeros(len(prefs), k, dtype=torch.long)
    mask = torch.zeros(len(prefs), k)
    offset = 0
    for b, pref in enumerate(prefs):
        n = len(pref.responses)
        index[b, :n] = torch.arange(offset, offset + n)
        ranks[b, :n] = torch.tensor(pref.ranks)
        mask[b, :n] = 1
        offset += n
    return torch.cat([raw, raw.new_zeros(1)])[index.to(raw.device)], ranks.to(raw.device), \
        mask.to(raw.device)


def train(cfg: RMConfig, hooks: Hooks | None = None, progress_bar: bool = True) -> Path:
    """Train a reward model as configured; return the final/ directory. Under torchrun, every
    process runs this; each takes its slice of every batch of prompts. `hooks`: see
    common.Hooks; `progress_bar`: False draws none of its progress bars (rank 0 draws them)."""
    hooks = hooks or Hooks()
    torch.manual_seed(cfg.train.seed)
    d = setup(cfg.train.strategy, cfg.train.device)
    bars = d.main and progress_bar
    masters = check_settings(cfg.model, cfg.train, d.device)  # before any model loads

    # 1. Backbone with a fresh scalar head, then the preferences encoded for it.
    def build() -> RewardModel:
        built = RewardModel.build(cfg.model.name, cfg.reward.backbone, seed=cfg.train.seed,
                                  chat_template=cfg.data.chat_template,
                                  max_length=cfg.data.max_length, truncation=cfg.data.truncation,
                                  hub_kernels=cfg.model.hub_kernels,
                                  attention=cfg.model.attention,
                                  pooling=cfg.reward.pooling)
        if cfg.model.lora.enabled:
            built.model = apply_lora(built.model, cfg.model.lora, task_type="SEQ_CLS")
        return built

    rm = build().to(d.device)
    if masters:
        to_bf16(rm.model)
    data = load_preference_data(cfg.data, rm.tokenizer, cfg.train.seed, encode=rm.encode)
    print_data_stats(data.stats, d)
    # An encoder reads padded rows whatever the budget (see RewardModel.collate): the budget
    # then only groups prompts into micro-batches by their real tokens, padding on top.
    share = cfg.train.share_prompt and rm.kind == "policy"
    tokens = [group_tokens([e.input_ids for e in p.responses], share) for p in data.train]
    batches = Microbatches(cfg.train.micro_batch_size, cfg.train.max_tokens_per_microbatch,
                           tokens, d, unit="prompt with its responses")
    run_dir, checkpoint = prepare_run_dir(cfg.run_dir, cfg.resume, write=d.main)
    if cfg.model.gradient_checkpointing:
        rm.model.gradient_checkpointing_enable()

    batch_size, micro = cfg.train.batch_size, cfg.train.micro_batch_size
    per_epoch, total_steps = plan_steps(cfg.train, len(data.train), cfg.data.train)
    pairs = sum(len(p.source.pairs()) for p in data.train)
    print_header(f"reward model ({rm.kind} backbone {cfg.model.name})", rm.model,
                 f"{len(data.train)} prompts with {pairs} pairs for training, "
                 f"{len(data.eval)} held out; {total_steps} steps of {batch_size} prompts "
                 f"({total_steps / per_epoch:.3g} epochs"
                 f"{', auto' if not (cfg.train.epochs or cfg.train.max_steps) else ''}; "
                 f"{d.processes}; {batches})", d)
    model = maybe_compile(rm.model, cfg.train.compile)  # trained; the forward goes through rm
    if d.world > 1:
        rm.parallel = d.wrap(rm.scorer())

    # 2. Optimizer and schedule, restored with everything else on resume.
    optimizer, scheduler, start_step, log = start_or_resume(
        run_dir, checkpoint, model, cfg.optim, total_steps, num_examples=len(data.train),
        data_source=cfg.data.train, master_weights=masters, dist=d,
        lr_by_prefix={n: cfg.reward.head_lr for n in rm.head_names(model)}
        if cfg.reward.head_lr else None, config=cfg)

    def evaluate(progress: bool = False) -> tuple[dict[str, float], dict]:
        # every rank evaluates the whole (small) held-out set: FSDP2 needs all in each forward
        return evaluate_preferences(rm, data.eval, batch_size=2 * micro, bf16=cfg.train.bf16,
                                    seed=cfg.train.seed, progress=progress and bars)

    # 3. The loop.
    if cfg.reward.loss == "plackett_luce":
        objective = partial(plackett_luce_loss, center_coef=cfg.reward.center_coef)
    else:
        objective = partial(bradley_terry_loss, margin=cfg.reward.margin,
                            center_coef=cfg.reward.center_coef,
                            label_smoothing=cfg.reward.label_smoothing)
    best = BestEvaluation(run_dir, EVAL_LOSS, start_step, write=d.main) \
        if cfg.train.keep_best else None

    def save_best(where: Path, step: int) -> Path:
        return save_training_state(where, step, model, optimizer, scheduler,
                                   num_examples=len(data.train), steps_per_epoch=per_epoch,
                                   keep=1, dist=d)

    model.train()
    last_saved = checkpoint
    last_step = start_step
    hooks.started(model)
    progress = tqdm(total=total_steps, initial=start_step, desc="rm", unit="step",
                    dynamic_ncols=True, disable=not bars)
    with StopRequests() as stop:
        for step in range(start_step, total_steps):
            if best is not None and best.patience_spent(cfg.train.patience):
                break  # a resumed run that had already stopped early
            hooks.step_started(step + 1)
            started = time.perf_counter()
            indices = batch_indices(len(data.train), batch_size, step, cfg.train.seed)
            prefs = [data.train[i] for i in indices]
            # Whole-batch counts, so that microbatches and ranks add up to one big batch.
            num_groups, num_responses = len(prefs), sum(len(p.responses) for p in prefs)
            loss, correct, total_pairs, rewards_seen = 0.0, 0.0, 0.0, []
            for part in batches(indices):
                micro_prefs = [data.train[i] for i in part]
                hooks.micro_batch(micro_prefs, batches.packed)
                with autocast(cfg.train.bf16, d.device):
                    raw = rm.raw_scores(rm.collate(
                        [e for p in micro_prefs for e in p.responses],
                        [len(p.responses) for p in micro_prefs] if cfg.train.share_prompt else None,
                        batches.packed))
                rewards, ranks, mask = rewards_grid(raw, micro_prefs)
                micro_loss = objective(rewards, ranks, mask, num_groups=num_groups,
                                       num_responses=num_responses)
                d.backward(micro_loss)
                loss += micro_loss.item()
                c, n = pairwise_accuracy(rewards.detach(), ranks, mask)
                correct, total_pairs = correct + c.item(), total_pairs + n.item()
                rewards_seen.append(raw.detach())
            loss, correct, total_pairs = d.sum(loss, correct, total_pairs)
            grad_norm, lr = optimizer_step(model, optimizer, scheduler, cfg.optim.max_grad_norm,
                                           loss, step + 1, last_saved, d)
            elapsed = time.perf_counter() - started

            done = step + 1
            seen = d.gather(torch.cat(rewards_seen))
            metrics = {LOSS_TRAIN: loss, REWARD_ACCURACY: correct / max(total_pairs, 1),
                       REWARD_MEAN: seen.mean().item(), REWARD_STD: seen.std().item(),
                       OPTIM_LR: lr, OPTIM_GRAD_NORM: grad_norm, PERF_STEP_S: elapsed,
                       PERF_SEQUENCES_PER_S: num_responses / elapsed,
                       PERF_TOKENS_PER_S: sum(tokens[i] for i in indices) / elapsed,
                       **peak_memory(d.device), DATA_EPOCH: step / per_epoch}
            is_last = done == total_steps
            # The last step's evaluation is logged once, the final one after normalisation
            # (of the weights kept); keep_best needs it here too, to compare with the others.
            if data.eval and due(done, cfg.train.eval_every, is_last) and (
                    best is not None or not is_last):
                held_out = evaluate()[0]
                if not is_last:
                    metrics.update(held_out)
                if best is not None:
                    best.offer(done, held_out[EVAL_LOSS], partial(save_best, step=done))
                    if best.patience_spent(cfg.train.patience):
                        is_last = True
                        if d.main:
                            progress.write(
                                f"stopping early at step {done}: no lower held-out loss in "
                                f"{cfg.train.patience} evaluations since step {best.step}")
            last_step = done
            if is_last or done % cfg.train.log_every == 0:
                log.log(done, metrics)
            hooks.stepped(done, metrics)
            progress.set_postfix(loss=f"{loss:.3f}", acc=f"{metrics[REWARD_ACCURACY]:.2f}")
            progress.update(1)
            last_saved = save_when_due(stop, run_dir, done, is_last, model, optimizer,
                                       scheduler, cfg.train, num_examples=len(data.train),
                                       steps_per_epoch=per_epoch, last_saved=last_saved, dist=d)
    progress.close()
    if best is not None and best.step is not None and best.step != last_step:
        restore_weights(best.checkpoint, model, optimizer, d)
        if d.main:
            print(f"keeping step {best.step}'s weights: held-out loss {best.value:.4f}, the "
                  f"lowest of {len(best.evaluations)} evaluations (step {last_step}: "
                  f"{best.evaluations[-1][1]:.4f})")

    # 4. Normalise on reference responses: by default the training set's, i.e. the SFT
    # policy's own samples, so a policy that merely matches SFT scores 0.
    reference = _reference_encodings(cfg, rm, data)
    rm.fit_normalization(rm.raw_scores_of(reference, 2 * micro, cfg.train.bf16,
                                          progress="rm: normalising" if bars else ""),
                         cfg.reward.normalize)
    if d.main:
        print(f"normalisation ({cfg.reward.normalize}) on {len(reference)} reference "
              f"responses: reward = {rm.gain:.4f} * raw + {rm.bias:.4f}")

    # 5. Final evaluation and export.
    if data.eval:
        final_metrics, details = evaluate(progress=True)
        warnings = reward_model_warnings(final_metrics)
        log.log(last_step, {**final_metrics, REWARD_NORM_GAIN: rm.gain,
                            REWARD_NORM_BIAS: rm.bias, HEALTH_RM_AT_CHANCE: float(
                                at_chance(final_metrics) is not None)})
        if d.main:
            kept = {"kept_step": best.step} if best is not None else {}
            atomic_write_text(run_dir / "eval.json", json.dumps(
                {"metrics": final_metrics, **kept, **details}, indent=1))
            print(f"held-out evaluation: {int(final_metrics[EVAL_PAIRS])} pairs over "
                  f"{int(final_metrics[EVAL_PROMPTS])} prompts\n"
                  f"{format_table(final_metrics)}")
            for text in warnings:
                print(f"warning: {text}", flush=True)
    log.close()
    final = run_dir / "final"
    if rm.parallel is None:
        whole = master_model(model, optimizer, lambda: build().model, dist=d)
    else:
        whole = master_model(rm.parallel, optimizer,
                             lambda: rm.scorer(build().model), dist=d)
    if d.main:
        rm.model = whole.model if rm.parallel is not None else whole
        rm.parallel = None
        adapter = is_lora(rm.model) and not cfg.model.lora.merge_on_save
        rm.save(final, cfg.model.lora.merge_on_save, final_texts("rm", cfg, run_dir, adapter))
        print(f"final reward model: {final}")
    d.barrier()
    return final


def _reference_encodings(cfg: RMConfig, rm: RewardModel, data) -> list:
    if not cfg.reward.reference:
        return [e for p in data.train for e in p.responses]
    stats = LoadStats()
    encoded = []
    for prompt, responses in load_records(cfg.reward.reference, parse_responses,
                                          cfg.data.skip_bad_rows, stats):
        encoded += [e for e in (rm.encode(prompt, r) for r in responses) if e is not None]
    return encoded
