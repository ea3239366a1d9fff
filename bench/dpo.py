"""DPO step throughput: precomputed against live reference log-probs, fp32 and bf16.

One optimizer step of `tether dpo` on B chosen/rejected pairs, built from the trainer's own
pieces (tether.trainers.dpo: response_logps with chosen and rejected in one forward pass,
preference_pairs, dpo_objective), four ways:
- precomputed: reference log-probs looked up in a table (ref.precompute=true, the default);
  the reference model is not in memory during training;
- live: a frozen copy of the model runs a no-grad forward over the same sequences every step
  (ref.precompute=false);
each in fp32 and under bf16 autocast. Sequences are synthetic token ids of exactly --seq-len
tokens, half prompt and half response.

Per round: the matmul peak of each dtype (bench.peak), then one step of each configuration,
the order alternating between rounds. tokens/s counts the policy's tokens (2 B T per step).
MFU counts the work done: 6 N + 12 L d T FLOPs per token for the policy's forward and backward
(see bench.sft), plus 2 N + 4 L d T for a live reference's forward. Peak memory: each
configuration alone in a fresh process (VmHWM); a precomputed run never loads the reference
in that process, as in training, where it is loaded, used and freed before the policy.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from bench import machine, save_results, spread
from bench.peak import time_interleaved
from tether.config import DPOLossConfig, OptimConfig
from tether.data.preferences import EncodedPreference, Preference
from tether.data.tokenize import Encoded
from tether.models.loading import load_causal_lm, load_tokenizer
from tether.optim import make_optimizer
from tether.trainers.dpo import ReferenceLogps, dpo_objective, preference_pairs, response_logps

# name -> (bf16, live reference)
CONFIGS = {"fp32 precomputed": (False, False), "fp32 live": (False, True),
           "bf16 precomputed": (True, False), "bf16 live": (True, True)}
SEED = 0
MEMORY_STEPS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="Model name as tether loads it; 'tiny' for a quick check. "
                             "Default: %(default)s.")
    parser.add_argument("--pairs", type=int, default=4,
                        help="Chosen/rejected pairs per step (2x as many sequences). "
                             "Default: %(default)s.")
    parser.add_argument("--seq-len", type=int, default=128,
                        help="Tokens per sequence. Default: %(default)s.")
    parser.add_argument("--steps", type=int, default=4,
                        help="Measured steps per configuration. Default: %(default)s.")
    parser.add_argument("--warmup", type=int, default=1,
                        help="Unmeasured steps per configuration first. Default: %(default)s.")
    parser.add_argument("--peak-seconds", type=float, default=1.0,
                        help="Seconds of matmul peak measurement per dtype per measured round. "
                             "Default: %(default)s.")


def _prefs(args: argparse.Namespace, vocab_size: int) -> list[EncodedPreference]:
    generator = torch.Generator().manual_seed(SEED)
    prompt = args.seq_len // 2

    def sequence() -> Encoded:
        return Encoded(torch.randint(3, vocab_size, (args.seq_len,), generator=generator).tolist(),
                       [0] * prompt + [1] * (args.seq_len - prompt))

    source = Preference(prompt=[], responses=["chosen", "rejected"], ranks=[0, 1], where="bench")
    return [EncodedPreference([sequence(), sequence()], [0, 1], source)
            for _ in range(args.pairs)]


def _setup(args: argparse.Namespace, live_only: bool | None = None
           ) -> tuple[dict, Callable[[bool, bool], dict]]:
    """Load the policy (and, unless only precomputed steps will run, a reference copy);
    return the model's shape and `step(bf16, live)`."""
    tokenizer = load_tokenizer(args.model)
    policy = load_causal_lm(args.model, seed=SEED).train()
    prefs = _prefs(args, policy.config.vocab_size)
    optim_cfg, loss_cfg = OptimConfig(lr=1e-7), DPOLossConfig()
    optimizer = make_optimizer(policy, optim_cfg)
    pad_id = tokenizer.pad_token_id
    refs: dict[tuple[bool, bool], ReferenceLogps] = {}
    if live_only is not False:
        ref_model = load_causal_lm(args.model, seed=SEED).requires_grad_(False)
        refs.update({(bf16, True): ReferenceLogps(model=ref_model, pad_id=pad_id, bf16=bf16)
                     for bf16 in (False, True)})
    if live_only is not True:
        # Any numbers serve as a table: the cost of the lookup does not depend on them.
        table = {"train": [torch.randn(2) for _ in prefs]}
        refs.update({(bf16, False): ReferenceLogps(table=table) for bf16 in (False, True)})
    arch = {"params": sum(p.numel() for p in policy.parameters()),
            "layers": policy.config.num_hidden_layers, "d_model": policy.config.hidden_size}
    indices = list(range(len(prefs)))

    def step(bf16: bool, live: bool) -> dict:
        started = time.perf_counter()
        flat = [r for p in prefs for r in p.responses]
        logps, num_tokens = response_logps(policy, flat, pad_id, bf16)
        ref_logps = refs[bf16, live]("train", indices, prefs)
        loss, _ = dpo_objective(logps, ref_logps, num_tokens,
                                preference_pairs(prefs, len(prefs)), loss_cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), optim_cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"seconds": time.perf_counter() - started, "tokens": len(flat) * args.seq_len,
                "loss": loss.item()}

    return arch, step


def _max_rss(args: argparse.Namespace, bf16: bool, live: bool) -> int:
    _, step = _setup(args, live_only=live)
    for _ in range(MEMORY_STEPS):
        step(bf16, live)
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def run(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    started, before = time.perf_counter(), machine()
    arch, step = _setup(args)
    records, peaks = time_interleaved(
        {name: (lambda c=c: step(*c)) for name, c in CONFIGS.items()},
        warmup=args.warmup, rounds=args.steps, peak_seconds=args.peak_seconds)

    print("peak memory: each configuration alone in a fresh process ...", flush=True)
    rss = {}
    for name, (bf16, live) in CONFIGS.items():
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            rss[name] = pool.submit(_max_rss, args, bf16, live).result()

    n, layers, d, t = arch["params"], arch["layers"], arch["d_model"], args.seq_len
    results = {}
    for name, (bf16, live) in CONFIGS.items():
        per_token = 6 * n + 12 * layers * d * t + (2 * n + 4 * layers * d * t if live else 0)
        seconds = [r["seconds"] for r in records[name]]
        tokens_per_s = statistics.median(r["tokens"] / r["seconds"] for r in records[name])
        peak = max(peaks["bf16" if bf16 else "fp32"])
        results[name] = {"step_s": spread(seconds), "tokens_per_s": tokens_per_s,
                         "achieved_flops": tokens_per_s * per_token, "peak_flops": peak,
                         "mfu": tokens_per_s * per_token / peak, "max_rss_bytes": rss[name],
                         "loss": records[name][-1]["loss"]}

    print(f"\nDPO step, {args.model} ({n / 1e6:.1f}M parameters), {args.pairs} pairs = "
          f"{2 * args.pairs} sequences x {t} tokens; {args.steps} measured steps after "
          f"{args.warmup} warm-up, interleaved")
    print(f"{'config':<18}{'step s: median [min, max]':>28}{'tokens/s':>10}{'RSS peak MiB':>14}"
          f"{'GFLOP/s':>9}{'matmul peak':>13}{'MFU':>7}")
    for name, r in results.items():
        s = r["step_s"]
        print(f"{name:<18}{s['median']:>12.2f} [{s['min']:6.2f}, {s['max']:6.2f}]"
              f"{r['tokens_per_s']:>10.0f}{r['max_rss_bytes'] / 2**20:>14.0f}"
              f"{r['achieved_flops'] / 1e9:>9.1f}{r['peak_flops'] / 1e9:>13.1f}{r['mfu']:>7.1%}")
    for dtype in ("fp32", "bf16"):
        pre, live = results[f"{dtype} precomputed"], results[f"{dtype} live"]
        speed = pre["tokens_per_s"] / live["tokens_per_s"]
        memory = pre["max_rss_bytes"] / live["max_rss_bytes"]
        print(f"{dtype}: precomputed / live: {speed:.2f}x tokens/s, {memory:.2f}x peak memory")
    bf16_speedup = (results["bf16 precomputed"]["tokens_per_s"]
                    / results["fp32 precomputed"]["tokens_per_s"])
    print(f"bf16 / fp32 (precomputed): {bf16_speedup:.2f}x tokens/s; load average (1 min) "
          f"{before['load_average_1m']:.1f} before, {machine()['load_average_1m']:.1f} after; "
          f"{time.perf_counter() - started:.0f} s in all")
    path = save_results("dpo", {"args": vars(args), "machine": before, "model": arch,
                                "peak_flops": peaks, "configs": results,
                                "steps": records})
    print(f"results: {path}")
