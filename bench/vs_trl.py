"""tether against TRL on identical work: step time, tokens/s, peak memory, MFU, ratio.

Rows (--rows): sft, rm (pairs), rm-k4 (K=4 rankings), dpo (live reference), dpo-precomputed,
grpo, rloo (generation + scoring + update), and ppo (tether only: no current TRL release has
PPO; its iteration is split by stage). Each row builds both sides in this process on the same
model, data, batch shape, precision and optimizer settings (bench.vs_trl_offline and
bench.vs_trl_online hold the rows), then:

1. checks that the work is identical and prints it: trainable parameters, real (non-padding)
   tokens per step, and the first step's loss on the same batch before any update;
2. times warm-up then measured rounds, the two sides alternating (A B A B ..., the order
   swapped every round) with the matmul peak of each dtype measured in every round;
3. measures peak memory: each side alone in a fresh process (VmHWM after a few steps; on a
   GPU, the most its allocator held).

On a GPU (--device auto finds it) both sides train there, the timing waits for the GPU at
each step's end, and MFU divides by the GPU's bf16 or fp32 matmul peak.

tokens/s counts real tokens, so padding a side computes is its own cost. MFU = model FLOP/s
(6 N + 12 L d T per trained token, 2 N + 4 L d T per token of a no-grad forward, generation
included) over the best matmul of the row's dtype measured in the same run. The ratio is
tether's tokens/s over TRL's, per round (the rounds pair the sides in time), median [min, max].

TRL is an optional extra (`pip install -e ".[bench]"`), never a dependency of tether.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import multiprocessing as mp
import re
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import machine, save_results, spread
from bench.peak import time_interleaved
from tether.errors import UserError

MEMORY_STEPS = 3
FIRST_LOSS_TOLERANCE = 1e-3  # relative; fp32 on both sides agrees far closer


@dataclass
class Side:
    """One framework's side of a row, built and ready to step.

    `step()` runs one optimizer step (online rows: one whole iteration) and returns a record
    with at least "seconds", "tokens" (real tokens the step trained on) and "flops" (model
    FLOPs of the step, for MFU); "loss" where the step has one; online rows add "stages"
    ({stage: seconds}) where the side can split its time."""

    step: Callable[[], dict]
    trainable_params: int
    dtype: str  # "fp32" or "bf16": whose matmul peak MFU divides by
    close: Callable[[], None] = lambda: None
    notes: list[str] = field(default_factory=list)  # what differs and why, printed with the row


@dataclass
class Row:
    name: str
    help: str
    build: Callable[[argparse.Namespace, str], Side]  # (args, "tether" | "trl") -> Side
    sides: tuple[str, ...] = ("tether", "trl")
    compare_loss: bool = True  # False where the two sides' losses are defined differently


def _rows() -> dict[str, Row]:
    from bench import vs_trl_offline, vs_trl_online
    return {row.name: row for row in vs_trl_offline.ROWS + vs_trl_online.ROWS}


class _Closed(BaseException):
    """Raised inside a gated loop to end it (a BaseException, so no `except Exception` in the
    loop swallows it)."""


class Gate:
    """Runs a training loop in a thread, one step at a time: `step()` lets it go and returns
    the seconds until the loop calls `wait()` again (its next gate point).

    This times a framework's real loop rather than a re-creation of it: for a Hugging Face
    Trainer, `trainer_gate(trainer)` puts the gate points at `on_train_begin` and every
    `on_step_end`, so a step holds everything the loop does for it (fetching and collating the
    batch, callbacks, logging, forward, backward, clipping, the optimizer). For tether's
    `train(cfg, hooks)`, a hook its loop calls once per step calls `wait()` (sft, rm, dpo:
    step_started; ppo: iteration).
    The loop must have more steps than `step()` is called (max_steps); `close()` ends it early
    (its thread unwinds from the gate point), freeing what it holds."""

    def __init__(self, loop: Callable[[], object]) -> None:
        self._loop = loop
        self._go = threading.Semaphore(0)
        self._reached = threading.Semaphore(0)
        self._error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Gate:
        """Start the loop and return once it reaches its first gate point (set-up done)."""
        self._thread.start()
        self._reached.acquire()
        self._check()
        return self

    def wait(self) -> None:
        """Called by the loop, in its thread, at each gate point."""
        self._reached.release()
        self._go.acquire()
        if self._closing:
            raise _Closed

    def close(self) -> None:
        if self._thread.is_alive():
            self._closing = True
            self._go.release()
            self._thread.join()

    def _run(self) -> None:
        try:
            self._loop()
        except _Closed:
            return
        except BaseException as error:  # re-raised by the step() that waits for it
            self._error = error
        self._reached.release()

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError("the training loop failed") from self._error
        if not self._thread.is_alive():
            raise RuntimeError("the training loop ran out of steps: raise its max_steps")

    def step(self) -> float:
        started = time.perf_counter()
        self._go.release()
        self._reached.acquire()
        if torch.cuda.is_initialized():  # a GPU runs ahead of the loop: wait for its work
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        self._check()
        return seconds


def on_gpu(args: argparse.Namespace) -> bool:
    """Whether both sides train on the GPU (--device, auto: when there is one)."""
    return args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())


def trainer_gate(trainer) -> Gate:
    """A started Gate around a Hugging Face Trainer's own `train()` (see Gate)."""
    from transformers import TrainerCallback

    gate = Gate(trainer.train)

    class AtStepEnd(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            gate.wait()

        def on_step_end(self, args, state, control, **kwargs):
            gate.wait()

    trainer.add_callback(AtStepEnd())
    return gate.start()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="Model name as tether loads it; 'tiny' (a 1M-parameter random "
                             "Llama) for a quick check. Default: %(default)s.")
    parser.add_argument("--rows", default="sft,rm,rm-k4,dpo,dpo-precomputed,grpo,rloo,ppo",
                        help="Comma-separated rows to run. Default: %(default)s.")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="fp32, or bf16 autocast with fp32 weights (both sides). "
                             "Default: %(default)s.")
    parser.add_argument("--steps", type=int, default=5,
                        help="Measured steps (iterations) per side. Default: %(default)s.")
    parser.add_argument("--warmup", type=int, default=2,
                        help="Unmeasured steps per side first; the first is the identity "
                             "check's. Default: %(default)s.")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="Sequences per step (rm: pairs or rankings; dpo: pairs; grpo/rloo"
                             "/ppo: completions). Default: %(default)s.")
    parser.add_argument("--max-length", type=int, default=128,
                        help="Longest sequence, prompt and response, in tokens. "
                             "Default: %(default)s.")
    parser.add_argument("--group-size", type=int, default=4,
                        help="grpo/rloo: completions per prompt. Default: %(default)s.")
    parser.add_argument("--gen-len", type=int, default=32,
                        help="grpo/rloo/ppo: new tokens per completion. Default: %(default)s.")
    parser.add_argument("--tether-set", action="append", default=[], metavar="KEY=VALUE",
                        help="A config override for tether's side only, after the row's own "
                             "(repeatable), e.g. train.share_prompt=false to measure what "
                             "sharing prompts brings (every row but sft, which has no such "
                             "key).")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="Where both sides train: auto is the GPU when there is one. "
                             "Default: %(default)s.")
    parser.add_argument("--peak-seconds", type=float, default=1.0,
                        help="Seconds of matmul peak measurement per dtype per measured round. "
                             "Default: %(default)s.")


def _peak_memory(args: argparse.Namespace, row_name: str, side: str) -> int:
    """Peak memory in bytes of this fresh process after building one side and MEMORY_STEPS
    steps: on a GPU the most its allocator held, else the process's peak RSS."""
    built = _rows()[row_name].build(args, side)
    for _ in range(MEMORY_STEPS):
        built.step()
    if on_gpu(args):
        peak = torch.cuda.max_memory_allocated()
        built.close()
        return peak
    status = Path("/proc/self/status").read_text()
    built.close()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def _check_identical(row: Row, sides: dict[str, Side], first: dict[str, dict]) -> dict:
    check = {name: {"trainable_params": side.trainable_params, "tokens": first[name]["tokens"],
                    "loss": first[name].get("loss")} for name, side in sides.items()}
    problems = []
    if len(sides) == 2:
        a, b = check.values()
        if a["trainable_params"] != b["trainable_params"]:
            problems.append("trainable parameters differ")
        if a["tokens"] != b["tokens"]:
            problems.append("tokens per step differ")
        if row.compare_loss and a["loss"] is not None and b["loss"] is not None:
            gap = abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-8)
            check["first_loss_relative_gap"] = gap
            if gap > FIRST_LOSS_TOLERANCE:
                problems.append(f"first-step losses differ by {gap:.1e} (relative)")
    for name, c in check.items():
        if isinstance(c, dict):
            loss = "-" if c["loss"] is None else f"{c['loss']:.6f}"
            print(f"  identity {name:<7}: trainable params {c['trainable_params']:,}, "
                  f"tokens/step {c['tokens']:,}, first-step loss {loss}")
    for problem in problems:
        print(f"  WARNING: not identical work: {problem}")
    check["problems"] = problems
    return check


def _run_row(row: Row, args: argparse.Namespace) -> dict:
    print(f"\n== {row.name}: {row.help}", flush=True)
    sides = {name: row.build(args, name) for name in row.sides}
    for name, side in sides.items():
        for note in side.notes:
            print(f"  note ({name}): {note}")
    first = {name: side.step() for name, side in sides.items()}
    identity = _check_identical(row, sides, first)
    steps, peaks = time_interleaved({name: side.step for name, side in sides.items()},
                                    warmup=max(0, args.warmup - 1), rounds=args.steps,
                                    peak_seconds=args.peak_seconds, device=args.device)
    for side in sides.values():
        side.close()
    del sides
    # Hand the freed heap back to the system before the memory runs: a fresh process of a
    # large row (TRL's rm-k4 passed 15 GB) must fit beside this one.
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss = {}
    for name in row.sides:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            rss[name] = pool.submit(_peak_memory, args, row.name, name).result()
    dtype = args.precision
    best_peak = max(peaks[dtype])
    result = {"identity": identity, "sides": {}}
    for name, records in steps.items():
        seconds = [r["seconds"] for r in records]
        result["sides"][name] = {
            "step_s": spread(seconds),
            "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in records),
            "mfu": statistics.median(r["flops"] / r["seconds"] for r in records) / best_peak,
            "max_rss_bytes": rss[name], "steps": records}
        stages = [r["stages"] for r in records if r.get("stages")]
        if stages:
            result["sides"][name]["stages_s"] = {
                stage: statistics.median(s[stage] for s in stages) for stage in stages[0]}
    if len(row.sides) == 2:
        tether, trl = (steps[name] for name in row.sides)
        result["ratio_tokens_per_s"] = spread(
            [(a["tokens"] / a["seconds"]) / (b["tokens"] / b["seconds"])
             for a, b in zip(tether, trl, strict=True)])
        result["memory_ratio"] = rss["tether"] / rss["trl"]
    result["peak_flops"] = {"dtype": dtype, "best": best_peak, "samples": peaks[dtype]}
    return result


def _print_table(results: dict, args: argparse.Namespace, header: bool = True) -> None:
    if header:
        print(f"\n{args.model}, {args.precision}, batch {args.batch_size}, max length "
              f"{args.max_length}; {args.steps} measured steps after {args.warmup} warm-up, "
              f"alternating")
    print(f"{'row':<16}{'side':<8}{'step s: median [min, max]':>28}{'tokens/s':>10}"
          f"{'peak MiB':>14}{'MFU':>7}   tether/TRL tokens/s")
    for row, r in results.items():
        for i, (name, s) in enumerate(r["sides"].items()):
            t = s["step_s"]
            ratio = ""
            if i == 0 and "ratio_tokens_per_s" in r:
                q = r["ratio_tokens_per_s"]
                ratio = (f"   {q['median']:.2f}x [{q['min']:.2f}, {q['max']:.2f}], "
                         f"memory {r['memory_ratio']:.2f}x")
            print(f"{row if i == 0 else '':<16}{name:<8}{t['median']:>12.3f} "
                  f"[{t['min']:6.3f}, {t['max']:6.3f}]{s['tokens_per_s']:>10.0f}"
                  f"{s['max_rss_bytes'] / 2**20:>14.0f}{s['mfu']:>7.1%}{ratio}")
            if "stages_s" in s:
                split = ", ".join(f"{k} {v:.3f} s" for k, v in s["stages_s"].items())
                print(f"{'':<24}stages: {split}")


def run(args: argparse.Namespace) -> None:
    try:
        import trl
    except ImportError:
        raise SystemExit('TRL is not installed: pip install -e ".[bench]"') from None
    rows = _rows()
    chosen = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in rows]
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(rows)}")
    if args.steps < 1 or args.warmup < 1:
        raise SystemExit("--steps and --warmup must be at least 1")
    args.device = "cuda" if on_gpu(args) else "cpu"
    before = machine()
    started = time.perf_counter()
    results: dict = {}
    name = f"vs_trl_{args.model}_{args.precision}" + "".join(
        f"_{re.sub(r'[^A-Za-z0-9.=_-]', '', o)}" for o in args.tether_set)
    for row in chosen:
        try:
            results[row] = _run_row(rows[row], args)
        except UserError as error:  # a bad --tether-set, say
            raise SystemExit(f"python -m bench vs-trl: {row}: {error}") from None
        _print_table({row: results[row]}, args, header=False)  # each row as it ends
        after = machine()
        # Saved after every row: a long run cut short keeps what it measured.
        path = save_results(name, {
            "args": vars(args), "machine": before, "trl": trl.__version__,
            "load_average_1m_after": after["load_average_1m"], "rows": results})
    _print_table(results, args)
    print(f"load average (1 min) {before['load_average_1m']:.1f} before, "
          f"{after['load_average_1m']:.1f} after; {time.perf_counter() - started:.0f} s in all")
    print(f"results: {path}")
