"""PPO / GRPO / RLOO iteration time split by stage: generation, scoring, log-probs, training.

Runs the real loop (tether.trainers.ppo) for a few iterations on the sentiment task's prompts
with the gold scorer as the reward, in a temporary run directory, and reports the median of
each stage's time over the iterations after the first (warm-up), with tokens/s of generation
(response tokens sampled per second) and of training (prompt + response tokens through the
policy's forward and backward passes, all epochs, per second of the update phase).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench import machine, save_results, spread
from tether.config import PPOConfig, load_config
from tether.metric_names import (
    PERF_GENERATE_S,
    PERF_GENERATE_TOKENS_PER_S,
    PERF_PREPARE_S,
    PERF_SCORE_S,
    PERF_STEP_S,
    PERF_TOKENS_PER_S,
    PERF_TRAIN_S,
)
from tether.rundir import read_metrics
from tether.tasks.sentiment import make_prompts
from tether.trainers.ppo import train

STAGES = {"generate": PERF_GENERATE_S, "score": PERF_SCORE_S,
          "log-probs + values": PERF_PREPARE_S, "train": PERF_TRAIN_S,
          "whole iteration": PERF_STEP_S}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="Policy; 'tiny' for a quick check. Default: %(default)s.")
    parser.add_argument("--algo", default="ppo", choices=["ppo", "grpo", "rloo"])
    parser.add_argument("--iterations", type=int, default=4,
                        help="Iterations to run; the first is not counted. Default: %(default)s.")
    parser.add_argument("--prompts", type=int, default=16, help="Prompts per iteration.")
    parser.add_argument("--group-size", type=int, default=1,
                        help="Samples per prompt (grpo/rloo: at least 2). Default: %(default)s.")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast (default: on)")


def run(args: argparse.Namespace) -> None:
    if args.iterations < 2:
        raise SystemExit("--iterations must be at least 2 (the first is warm-up)")
    samples = args.prompts * args.group_size
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n"
                                   for p in make_prompts(args.prompts * args.iterations, 0)))
        cfg = load_config(PPOConfig, None, [
            f"run_dir={tmp}/run", f"model.name={args.model}", f"algo={args.algo}",
            f"rollout.prompts={prompts}", f"rollout.batch_size={args.prompts}",
            f"rollout.group_size={args.group_size}",
            f"rollout.max_new_tokens={args.max_new_tokens}", f"ppo.minibatch_size={samples // 2}",
            f"ppo.micro_batch_size={samples // 2}", f"train.max_steps={args.iterations}",
            f"train.bf16={str(args.bf16).lower()}", "train.save_every=0", "reward.gold=sentiment"])
        train(cfg)
        metrics = read_metrics(Path(tmp) / "run" / "metrics.jsonl")[1:]

    stages = {name: spread([m[key] for m in metrics]) for name, key in STAGES.items()}
    gen = statistics.median(m[PERF_GENERATE_TOKENS_PER_S] for m in metrics)
    trn = statistics.median(m[PERF_TOKENS_PER_S] for m in metrics)
    total = stages["whole iteration"]["median"]
    print(f"\n{args.algo} iteration, {args.model}, {args.prompts} prompts x {args.group_size} "
          f"samples x up to {args.max_new_tokens} new tokens, "
          f"{'bf16' if args.bf16 else 'fp32'}; median of {len(metrics)} iterations after 1 "
          f"warm-up")
    print(f"{'stage':<20}{'s: median [min, max]':>26}{'share':>8}")
    for name, s in stages.items():
        print(f"{name:<20}{s['median']:>10.2f} [{s['min']:6.2f}, {s['max']:6.2f}]"
              f"{s['median'] / total:>8.0%}")
    print(f"generation {gen:.0f} response tokens/s; training {trn:.0f} tokens/s")
    path = save_results(f"ppo-{args.algo}", {"args": vars(args), "machine": machine(),
                                             "stages": stages, "generate_tokens_per_s": gen,
                                             "train_tokens_per_s": trn, "metrics": metrics})
    print(f"results: {path}")
