"""Data-parallel scaling on this machine: tokens/s on 1 process against 2 under torchrun.

`--command sft` (the default) or `grpo` (online: each process samples, scores and runs the
no-grad passes over half of the prompts, then takes half of every minibatch). Three runs of
the same config (same global batch, same steps), each in its own processes:
  1 process, 1 thread        the baseline a second process is compared with;
  1 process, 2 threads       what one process gets from the whole machine;
  2 processes x 1 thread     torchrun, DDP over gloo, each process half of every batch.
Reported: the median tokens/s over the steps after the first, and the scaling efficiency,
tokens/s(2 processes) / (2 x tokens/s(1 process, 1 thread)). On a 2-core machine the second
process has only the second core, so this measures the cost of the gradient all-reduce and of
sharing memory bandwidth, not a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import machine, save_results
from tether.metric_names import PERF_STEP_S, PERF_TOKENS_PER_S, PERF_TRAIN_S
from tether.rundir import read_metrics
from tether.tasks.sentiment import make_prompts

REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp2"])
    parser.add_argument("--command", default="sft", choices=["sft", "grpo"],
                        help="sft, or grpo (--batch prompts x 4 samples of 32 tokens)")


def tokens_per_s(processes: int, threads: int, args: argparse.Namespace,
                 run_dir: Path) -> tuple[float, float]:
    """(median tokens/s after the first step, peak RSS of the largest process in MB)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={processes}"] if processes > 1 else [sys.executable]
    # A wrapper process reports the largest peak RSS among the processes it waited for.
    rss = [sys.executable, "-c", "import resource, subprocess, sys; "
           "subprocess.run(sys.argv[1:], check=True); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"]
    common = [f"run_dir={run_dir}", f"model.name={args.model}", f"train.max_steps={args.steps}",
              "train.save_every=0", "train.eval_every=0", f"train.strategy={args.strategy}"]
    if args.command == "sft":
        command = ["sft", *common, f"data.train={REPO / 'examples/sft/reviews.jsonl'}",
                   "data.eval_fraction=0", f"train.batch_size={args.batch}",
                   f"train.micro_batch_size={args.batch // 2}"]
    else:
        prompts = run_dir.parent / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n"
                                   for p in make_prompts(args.batch * args.steps, 0)))
        samples = args.batch * 4
        command = ["ppo", *common, "algo=grpo", f"rollout.prompts={prompts}",
                   "reward.gold=sentiment", f"rollout.batch_size={args.batch}",
                   "rollout.group_size=4", "rollout.max_new_tokens=32",
                   f"ppo.minibatch_size={samples}", f"ppo.micro_batch_size={samples // 2}"]
    out = subprocess.run([*rss, *launcher, "-m", "tether", *command], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    metrics = read_metrics(run_dir / "metrics.jsonl")
    if args.command == "sft":
        steps = [m[PERF_TOKENS_PER_S] for m in metrics if PERF_TOKENS_PER_S in m][1:]
    else:  # every token of every sample, prompt and response, per second of the iteration
        steps = [m[PERF_TOKENS_PER_S] * m[PERF_TRAIN_S] / m[PERF_STEP_S]
                 for m in metrics if PERF_STEP_S in m][1:]
    peak_mb = int(out.stdout.strip().splitlines()[-1]) / 1024
    return statistics.median(steps), peak_mb


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        one, one_mb = tokens_per_s(1, 1, args, Path(tmp) / "one")
        one_two_threads, _ = tokens_per_s(1, 2, args, Path(tmp) / "one-2t")
        two, two_mb = tokens_per_s(2, 1, args, Path(tmp) / "two")
    figures = {"command": args.command, "model": args.model, "strategy": args.strategy,
               "batch": args.batch,
               "tokens_per_s_1proc_1thread": round(one, 1),
               "tokens_per_s_1proc_2threads": round(one_two_threads, 1),
               "tokens_per_s_2proc_1thread": round(two, 1),
               "scaling_efficiency": round(two / (2 * one), 3),
               "peak_rss_mb_1proc": round(one_mb), "peak_rss_mb_per_proc_2proc": round(two_mb),
               "speedup_over_1proc_2threads": round(two / one_two_threads, 3),
               "machine": machine()}
    print(f"{args.command} {args.model}, global batch {args.batch}, {args.strategy}:\n"
          f"  1 process, 1 thread:      {one:8.1f} tokens/s\n"
          f"  1 process, 2 threads:     {one_two_threads:8.1f} tokens/s\n"
          f"  2 processes, 1 thread:    {two:8.1f} tokens/s\n"
          f"  scaling efficiency {figures['scaling_efficiency']:.2f} (2 processes against "
          f"twice 1 process); {figures['speedup_over_1proc_2threads']:.2f}x one process using "
          f"both cores\n  peak memory per process: {one_mb:.0f} MB on 1 process, "
          f"{two_mb:.0f} MB on each of 2")
    save_results(f"scaling-{args.command}-{args.strategy}", figures)
