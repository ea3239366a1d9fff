"""Measured matmul peak (FLOP/s) of this machine for fp32 and bf16: the denominator of MFU.

A datasheet peak says little about a shared 2-core VM (clocks, neighbours, what oneDNN does
with this CPU), so the peak is measured: the best throughput of square matmuls (1024..2048)
seen in a few seconds. Benchmarks call `measure_peak` in the same run, interleaved with what
they divide by it, so both see the same machine.

It is the peak of torch's own path, the one training takes: fp32 matmuls go to MKL, which on
this AMD CPU reached ~210 GFLOP/s where oneDNN's fp32 kernels reached ~400; bf16 goes to
oneDNN (AVX512-BF16, ~950).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from bench import machine, save_results, spread

SIZES = (1024, 1536, 2048)
GPU_SIZES = (4096, 8192)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def measure_peak(dtype: torch.dtype, seconds: float = 2.0, device: str = "cpu") -> float:
    """Best FLOP/s of an n x n by n x n matmul in `dtype`, n in SIZES (GPU_SIZES on a GPU,
    whose small matmuls are launch-bound), in about `seconds`."""
    gpu = torch.device(device).type == "cuda"
    sizes, repeats = (GPU_SIZES, 20) if gpu else (SIZES, 1)
    best = 0.0
    for n in sizes:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        out = torch.empty(n, n, dtype=dtype, device=device)
        torch.mm(a, b, out=out)  # untimed: the first call picks and builds the kernel
        deadline = time.perf_counter() + seconds / len(sizes)
        while True:
            if gpu:
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(repeats):  # a GPU runs ahead of the clock: time a run of them
                torch.mm(a, b, out=out)
            if gpu:
                torch.cuda.synchronize()
            now = time.perf_counter()
            best = max(best, repeats * 2 * n**3 / (now - started))
            if now > deadline:
                break
    return best


def time_interleaved(steps: dict[str, Callable[[], dict]], *, warmup: int, rounds: int,
                     peak_seconds: float, device: str = "cpu"
                     ) -> tuple[dict[str, list[dict]], dict[str, list[float]]]:
    """Per round: the matmul peak of each dtype, then one step of each configuration, in an
    order that alternates between rounds, so the noise of a shared machine falls on all alike.
    Each step returns a record with its "seconds". Returns (the measured rounds' records per
    configuration, peak FLOP/s samples per dtype); the first `warmup` rounds are not kept."""
    records: dict[str, list[dict]] = {name: [] for name in steps}
    peaks: dict[str, list[float]] = {name: [] for name in DTYPES}
    total = warmup + rounds
    for round_ in range(total):
        measured = round_ >= warmup
        if measured:
            for name, dtype in DTYPES.items():
                peaks[name].append(measure_peak(dtype, peak_seconds, device))
        line = []
        for name in list(steps) if round_ % 2 == 0 else list(steps)[::-1]:
            record = steps[name]()
            line.append(f"{name} {record['seconds']:.2f} s")
            if measured:
                records[name].append(record)
        if measured:
            line += [f"peak {name} {peaks[name][-1] / 1e9:.0f} GFLOP/s" for name in DTYPES]
        print(f"{'step' if measured else 'warm-up'} {round_ + 1}/{total}: {', '.join(line)}",
              flush=True)
    return records, peaks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3,
                        help="Rounds of fp32 then bf16 (interleaved). Default: %(default)s.")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="Seconds per dtype per round. Default: %(default)s.")


def run(args: argparse.Namespace) -> None:
    samples = {name: [] for name in DTYPES}
    for _ in range(args.rounds):
        for name, dtype in DTYPES.items():
            samples[name].append(measure_peak(dtype, args.seconds))
    print(f"{'dtype':<6} {'best GFLOP/s':>13} {'median':>8} {'min':>8}")
    for name, values in samples.items():
        s = spread(values)
        print(f"{name:<6} {s['max'] / 1e9:>13.1f} {s['median'] / 1e9:>8.1f} {s['min'] / 1e9:>8.1f}")
    print(f"bf16 / fp32 best: {max(samples['bf16']) / max(samples['fp32']):.2f}x")
    path = save_results("peak", {"machine": machine(), "sizes": SIZES, "flops": samples,
                                 "best_flops": {k: max(v) for k, v in samples.items()}})
    print(f"results: {path}")
