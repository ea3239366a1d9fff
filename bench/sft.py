"""SFT training throughput, fp32 against bf16 autocast: step time, tokens/s, peak memory, MFU.

Each step is what `tether sft` does per optimizer step (one microbatch): collate, forward
(tether.models.logprobs), masked NLL (tether.losses.sft), backward, gradient clipping, AdamW
(tether.optim). Batches are synthetic token ids of exactly --seq-len tokens (the default: fixed
shapes, so every step does the same work), or real examples with --data, encoded and padded
per batch by tether.data as in training.

Timing runs in this process, interleaved so that the noise of a shared machine falls on all
configurations alike: per round, the matmul peak of each dtype (bench.peak), then one step of
each configuration, the order alternating between rounds. Peak memory is measured afterwards,
each configuration alone in a fresh process (its peak RSS, VmHWM). Timing is not split into
one process per configuration: with the other configuration's 4-5 GB process stepping in
between, bf16 steps took ~30% longer here (2.5 -> 3.3 s, more of it in the kernel) than
alone or interleaved within one process.

Model FLOPs per token = 6 N + 12 L d T (the PaLM paper's count, appendix B): 6 N for the
forward (2 N) and backward (4 N) matmuls of the N parameters, 12 L d T for attention scores
and weighted values over T positions in L layers of width d, causal masking not discounted.
N counts a tied embedding once, as the LM head matmul it doubles as (the lookup is free).
Padding positions count as tokens: they are computed. MFU = achieved model FLOP/s / measured
matmul peak of the same dtype (bf16 for autocast, although parts of it still run in fp32).

Also reported: the share of each step's CPU time spent in the kernel (sys %). On CPU that is
mostly page faults: large tensors come from mmap and go back to the OS when freed, so every
step faults in (and the kernel zeroes) a few GB afresh.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import re
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from bench import machine, machine_busy_seconds, save_results, spread
from bench.peak import time_interleaved
from tether.config import DataConfig, OptimConfig
from tether.data.collate import collate
from tether.data.order import batch_indices
from tether.data.sft import load_sft_data
from tether.data.tokenize import Encoded
from tether.losses.sft import masked_nll
from tether.models.loading import load_causal_lm, load_tokenizer
from tether.models.logprobs import forward_logits, token_logprobs
from tether.optim import make_optimizer

CONFIGS = {"fp32": False, "bf16": True}  # name (also the dtype of its peak) -> bf16 autocast
SEED = 0
# Peak memory settles by the 4th step: the first allocates the AdamW moments, and the
# allocator's retained heap grows for two or three more (fp32: 4592, 4847, 4928, 4929 MiB).
MEMORY_STEPS = 4
# Another program on the 2 cores does far worse than halve the speed (OpenMP threads wait at
# barriers for a descheduled partner): 5 s steps took 20-48 s, 0.06 s tiny ones 5 s. A step is
# "busy" when other work used more than this share of the machine's CPU meanwhile (quiet
# steps: 0-4%; one other busy program: ~50%).
BUSY_OTHERS_SHARE = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="Model name as tether loads it; 'tiny' (a 1M-parameter random "
                             "Llama) for a quick check. Default: %(default)s.")
    parser.add_argument("--steps", type=int, default=8,
                        help="Measured steps per configuration. Default: %(default)s.")
    parser.add_argument("--warmup", type=int, default=2,
                        help="Unmeasured steps per configuration first (kernel selection, "
                             "optimizer state allocation). Default: %(default)s.")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="Sequences per step. Default: %(default)s.")
    parser.add_argument("--seq-len", type=int, default=128,
                        help="Tokens per synthetic sequence; with --data, the max_length real "
                             "examples are truncated to. Default: %(default)s.")
    parser.add_argument("--data", default="",
                        help="Train on real examples from this file (e.g. "
                             "examples/sft/reviews.jsonl) instead of synthetic ones.")
    parser.add_argument("--peak-seconds", type=float, default=1.0,
                        help="Seconds of matmul peak measurement per dtype per measured round. "
                             "Default: %(default)s.")


def model_flops_per_token(params: int, layers: int, d_model: int, seq_len: int) -> int:
    return 6 * params + 12 * layers * d_model * seq_len


def _examples(tokenizer, vocab_size: int, args: argparse.Namespace) -> list[Encoded]:
    if args.data:
        cfg = DataConfig(train=args.data, eval_fraction=0.0, max_length=args.seq_len)
        return load_sft_data(cfg, tokenizer, SEED).train
    generator = torch.Generator().manual_seed(SEED)
    prompt = args.seq_len // 2  # the loss mask does not change the work, only looks realistic
    return [Encoded(torch.randint(vocab_size, (args.seq_len,), generator=generator).tolist(),
                    [0] * prompt + [1] * (args.seq_len - prompt))
            for _ in range(args.batch_size)]


def _setup(args: argparse.Namespace) -> tuple[dict, Callable[[bool], dict]]:
    """Load the model; return its shape and `step(bf16)`, one optimizer step in either config.

    Both configurations step the same model and optimizer: the work of a step does not depend
    on the weights' values, and one copy in memory keeps the process the size of a real run."""
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, seed=SEED)
    model.train()
    examples = _examples(tokenizer, model.config.vocab_size, args)
    optim_cfg = OptimConfig()
    optimizer = make_optimizer(model, optim_cfg)
    arch = {"params": sum(p.numel() for p in model.parameters()),
            "layers": model.config.num_hidden_layers, "d_model": model.config.hidden_size}
    counter = itertools.count()

    def step(bf16: bool) -> dict:
        order = batch_indices(len(examples), args.batch_size, next(counter), SEED)
        chosen = [examples[i] for i in order]
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        busy_before = machine_busy_seconds()
        started = time.perf_counter()
        batch = collate(chosen, tokenizer.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward_logits(model, batch["input_ids"], batch["attention_mask"])
        loss = masked_nll(token_logprobs(logits, batch["input_ids"]), batch["loss_mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        busy = machine_busy_seconds() - busy_before
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        user, kernel = cpu.ru_utime - cpu_before.ru_utime, cpu.ru_stime - cpu_before.ru_stime
        return {"seconds": seconds, "shape": list(batch["input_ids"].shape),
                "sys_share": kernel / (user + kernel),
                "others_share": max(0.0, busy - user - kernel) / (seconds * os.cpu_count()),
                "loss": loss.item()}

    return arch, step


def _max_rss_of_steps(args: argparse.Namespace, bf16: bool) -> int:
    """Peak RSS in bytes of this (fresh) process after loading and MEMORY_STEPS steps.

    VmHWM rather than ru_maxrss: Linux carries ru_maxrss across exec, so a process spawned by
    a parent holding a loaded model would report at least the parent's size."""
    _, step = _setup(args)
    for _ in range(MEMORY_STEPS):
        step(bf16)
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def _peak_memory(args: argparse.Namespace) -> dict[str, int]:
    """Each configuration alone in a fresh (spawned, not forked) process, one at a time."""
    rss = {}
    for name, bf16 in CONFIGS.items():
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            rss[name] = pool.submit(_max_rss_of_steps, args, bf16).result()
    return rss


def run(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    before = machine()
    started = time.perf_counter()
    arch, step = _setup(args)
    steps, peaks = time_interleaved(
        {name: (lambda bf16=bf16: step(bf16)) for name, bf16 in CONFIGS.items()},
        warmup=args.warmup, rounds=args.steps, peak_seconds=args.peak_seconds)
    print("peak memory: each configuration alone in a fresh process ...", flush=True)
    rss = _peak_memory(args)

    def flops_per_token(width: float) -> float:
        return model_flops_per_token(arch["params"], arch["layers"], arch["d_model"], width)

    best_peak = {name: max(values) for name, values in peaks.items()}
    results = {}
    for name, records in steps.items():
        seconds = [r["seconds"] for r in records]
        tokens = [r["shape"][0] * r["shape"][1] for r in records]
        flops = [n * flops_per_token(r["shape"][1]) for n, r in zip(tokens, records, strict=True)]
        achieved = statistics.median(f / s for f, s in zip(flops, seconds, strict=True))
        results[name] = {
            "step_s": spread(seconds),
            "tokens_per_s": statistics.median(n / s for n, s in zip(tokens, seconds, strict=True)),
            "achieved_flops": achieved, "peak_flops": best_peak[name],
            "mfu": achieved / best_peak[name], "max_rss_bytes": rss[name],
            "sys_share": statistics.median(r["sys_share"] for r in records),
            "busy_steps": sum(r["others_share"] > BUSY_OTHERS_SHARE for r in records),
            "steps": records}
    # The rounds pair the configurations in time, so a per-round ratio cancels slow drift.
    paired = spread([f["seconds"] / b["seconds"]
                     for f, b in zip(steps["fp32"], steps["bf16"], strict=True)])
    speedup = results["fp32"]["step_s"]["median"] / results["bf16"]["step_s"]["median"]

    shape = (f"{args.batch_size} x {args.seq_len} synthetic tokens" if not args.data else
             f"{args.batch_size} examples of {args.data} (max_length {args.seq_len})")
    print(f"\nSFT step, {args.model} ({arch['params'] / 1e6:.1f}M parameters, "
          f"{arch['layers']} layers, d_model {arch['d_model']}), batch {shape}; "
          f"{args.steps} measured steps after {args.warmup} warm-up, interleaved")
    width = statistics.median(r["shape"][1] for r in steps["fp32"])
    print(f"model FLOPs/token = 6 N + 12 L d T = {flops_per_token(width) / 1e9:.3f} GFLOP at "
          f"T = {width:g}{' (median padded width)' if args.data else ''}; "
          f"matmul peak = best square matmul of the dtype in this run")
    print(f"{'config':<7}{'step s: median [min, max]':>28}{'tokens/s':>10}{'RSS peak MiB':>14}"
          f"{'sys %':>7}{'busy':>6}{'GFLOP/s':>9}{'matmul peak':>13}{'MFU':>7}")
    for name, r in results.items():
        s, busy = r["step_s"], f"{r['busy_steps']}/{args.steps}"
        print(f"{name:<7}{s['median']:>12.2f} [{s['min']:6.2f}, {s['max']:6.2f}]"
              f"{r['tokens_per_s']:>10.0f}{r['max_rss_bytes'] / 2**20:>14.0f}"
              f"{r['sys_share']:>7.0%}{busy:>6}{r['achieved_flops'] / 1e9:>9.1f}"
              f"{r['peak_flops'] / 1e9:>13.1f}{r['mfu']:>7.1%}")
    print(f"RSS peak: a fresh process per configuration, {MEMORY_STEPS} steps (fp32 weights + "
          f"gradients + AdamW moments alone: 16 B/param = {16 * arch['params'] / 2**20:.0f} MiB)\n"
          f"sys %: median share of a step's CPU time spent in the kernel; busy: steps during "
          f"which other work used over {BUSY_OTHERS_SHARE:.0%} of the machine's CPU")
    print(f"bf16 / fp32 speed: {speedup:.2f}x (ratio of median step times); per-round ratios "
          f"median {paired['median']:.2f}x [{paired['min']:.2f}, {paired['max']:.2f}]")
    after = machine()
    print(f"load average (1 min) {before['load_average_1m']:.1f} before, "
          f"{after['load_average_1m']:.1f} after; {time.perf_counter() - started:.0f} s in all")
    noisy = [name for name, r in results.items() if 2 * r["busy_steps"] >= args.steps]
    if noisy:
        print(f"WARNING: other work shared the CPU in half or more of the {' and '.join(noisy)} "
              f"steps, so even the medians are unreliable; rerun on a quiet machine")

    path = save_results("sft", {
        "args": vars(args), "machine": before,
        "load_average_1m_after": after["load_average_1m"], "noisy": noisy, "model": arch,
        "flops_per_token": "6 * params + 12 * layers * d_model * seq_len",
        "peak_flops": {"best": best_peak, "samples": peaks}, "configs": results,
        "bf16_speedup": {"median_steps": speedup, "per_round": paired}})
    print(f"results: {path}")
