"""SFT training throughput, fp32 against bf16 autocast: step time, tokens/s, peak memory, MFU.

Each step is what `tether sft` does per optimizer step (one microbatch): collate, forward
(tether.models.logprobs), masked NLL (tether.losses.sft), backward, gradient clipping, AdamW
(tether.optim). Batches are synthetic token ids of exactly --seq-len tokens (the default: fixed
shapes, so every step does the same work), or real examples with --data, encoded and padded
per batch by tether.data as in training.

Each configuration trains in its own process, so that its peak RSS (ru_maxrss) is its own,
and the parent runs them in turn: per round, matmul peak (fp32, bf16), then one step of each
configuration (order alternating), so that the noise of a shared machine falls on all alike.

Model FLOPs per token = 6 N + 12 L d T (the PaLM paper's count, appendix B): 6 N for the
forward (2 N) and backward (4 N) matmuls of the N parameters, 12 L d T for attention scores
and weighted values over T positions in L layers of width d, causal masking not discounted.
N counts a tied embedding once, as the LM head matmul it doubles as (the lookup is free).
Padding positions count as tokens: they are computed. MFU = achieved model FLOP/s / measured
matmul peak of the same dtype (bf16 for autocast, although parts of it still run in fp32).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch

from bench import machine, save_results, spread
from bench.peak import DTYPES, measure_peak
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


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _examples(tokenizer, vocab_size: int, args: argparse.Namespace) -> list[Encoded]:
    if args.data:
        cfg = DataConfig(train=args.data, eval_fraction=0.0, max_length=args.seq_len)
        return load_sft_data(cfg, tokenizer, SEED).train
    generator = torch.Generator().manual_seed(SEED)
    prompt = args.seq_len // 2  # the loss mask does not change the work, only looks realistic
    return [Encoded(torch.randint(vocab_size, (args.seq_len,), generator=generator).tolist(),
                    [0] * prompt + [1] * (args.seq_len - prompt))
            for _ in range(args.batch_size)]


def _worker(conn, args: argparse.Namespace, bf16: bool) -> None:
    """One configuration in its own process: load, then one training step per True received."""
    torch.manual_seed(SEED)
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, seed=SEED)
    model.train()
    examples = _examples(tokenizer, model.config.vocab_size, args)
    optim_cfg = OptimConfig()
    optimizer = make_optimizer(model, optim_cfg)
    conn.send({"params": sum(p.numel() for p in model.parameters()),
               "layers": model.config.num_hidden_layers, "d_model": model.config.hidden_size,
               "max_rss_after_load": _max_rss_bytes()})
    step = 0
    while conn.recv():
        chosen = [examples[i] for i in batch_indices(len(examples), args.batch_size, step, SEED)]
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
        conn.send({"seconds": seconds, "shape": list(batch["input_ids"].shape),
                   "loss": loss.item()})
        step += 1
    conn.send(_max_rss_bytes())


def _train_interleaved(args: argparse.Namespace) -> tuple[dict, dict, dict, dict]:
    """Run the configurations' workers and the peak in turn; return (info, steps, peaks, rss)."""
    # spawn, not fork: a fresh process whose ru_maxrss starts from nothing.
    context = mp.get_context("spawn")
    workers = {}
    try:
        for name, bf16 in CONFIGS.items():
            conn, child_conn = context.Pipe()
            process = context.Process(target=_worker, args=(child_conn, args, bf16), daemon=True)
            process.start()
            workers[name] = (process, conn)
        info = {name: conn.recv() for name, (_, conn) in workers.items()}
        steps = {name: [] for name in CONFIGS}
        peaks = {name: [] for name in DTYPES}
        for round_ in range(args.warmup + args.steps):
            measured = round_ >= args.warmup
            if measured:
                for dtype_name, dtype in DTYPES.items():
                    peaks[dtype_name].append(measure_peak(dtype, args.peak_seconds))
            order = list(CONFIGS) if round_ % 2 == 0 else list(CONFIGS)[::-1]
            line = []
            for name in order:
                conn = workers[name][1]
                conn.send(True)
                result = conn.recv()
                line.append(f"{name} {result['seconds']:.2f} s")
                if measured:
                    steps[name].append(result)
            if measured:
                line += [f"peak {n} {peaks[n][-1] / 1e9:.0f} GFLOP/s" for n in DTYPES]
            print(f"{'step' if measured else 'warm-up'} {round_ + 1}/{args.warmup + args.steps}"
                  f": {', '.join(line)}", flush=True)
        rss = {}
        for name, (process, conn) in workers.items():
            conn.send(False)
            rss[name] = conn.recv()
            process.join()
        return info, steps, peaks, rss
    finally:
        for process, _ in workers.values():
            if process.is_alive():
                process.kill()


def run(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    before = machine()
    started = time.perf_counter()
    info, steps, peaks, rss = _train_interleaved(args)
    arch = info["fp32"]  # the same model in every configuration

    def flops_per_token(width: float) -> float:
        return model_flops_per_token(arch["params"], arch["layers"], arch["d_model"], width)

    best_peak = {name: max(values) for name, values in peaks.items()}
    results = {}
    for name, records in steps.items():
        tokens = [r["shape"][0] * r["shape"][1] for r in records]
        achieved = statistics.median(n * flops_per_token(r["shape"][1]) / r["seconds"]
                                     for n, r in zip(tokens, records))
        results[name] = {
            "step_s": spread([r["seconds"] for r in records]),
            "tokens_per_s": statistics.median(n / r["seconds"] for n, r in zip(tokens, records)),
            "achieved_flops": achieved, "peak_flops": best_peak[name],
            "mfu": achieved / best_peak[name], "max_rss_bytes": rss[name],
            "max_rss_after_load_bytes": info[name]["max_rss_after_load"], "steps": records}
    # The rounds pair the configurations in time, so a per-round ratio cancels slow drift.
    paired = spread([f["seconds"] / b["seconds"] for f, b in zip(steps["fp32"], steps["bf16"])])
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
          f"{'after load':>12}{'GFLOP/s':>9}{'matmul peak':>13}{'MFU':>7}")
    for name, r in results.items():
        s = r["step_s"]
        print(f"{name:<7}{s['median']:>12.2f} [{s['min']:6.2f}, {s['max']:6.2f}]"
              f"{r['tokens_per_s']:>10.0f}{r['max_rss_bytes'] / 2**20:>14.0f}"
              f"{r['max_rss_after_load_bytes'] / 2**20:>12.0f}{r['achieved_flops'] / 1e9:>9.1f}"
              f"{r['peak_flops'] / 1e9:>13.1f}{r['mfu']:>7.1%}")
    print(f"bf16 / fp32 speed: {speedup:.2f}x (ratio of median step times); per-round ratios "
          f"median {paired['median']:.2f}x [{paired['min']:.2f}, {paired['max']:.2f}]")
    after = machine()
    print(f"load average (1 min) {before['load_average_1m']:.1f} before, "
          f"{after['load_average_1m']:.1f} after; {time.perf_counter() - started:.0f} s in all")

    path = save_results("sft", {
        "args": vars(args), "machine": before,
        "load_average_1m_after": after["load_average_1m"], "model": arch,
        "flops_per_token": "6 * params + 12 * layers * d_model * seq_len",
        "peak_flops": {"best": best_peak, "samples": peaks}, "configs": results,
        "bf16_speedup": {"median_steps": speedup, "per_round": paired}})
    print(f"results: {path}")
