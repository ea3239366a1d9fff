"""Reward-model step on K-way rankings: each response encoded once, against pairs expanded.

One optimizer step on B prompts with K ranked responses each, two ways with the same
comparisons and the same loss value:
- rankings: tether's way, the B*K responses scored once and all C(K, 2) pairs of a prompt
  taken from those scores (tether.trainers.rm);
- pairs: the ranking expanded to C(K, 2) chosen/rejected rows, the usual pairwise data
  pipeline, which scores 2*C(K, 2) sequences per prompt (12 for K = 4, against 4).
Sequences are synthetic token ids of exactly --seq-len tokens, so every sequence costs the same.
Steps alternate between the two, after warm-up; the median ratio of step times is reported
next to the ratio of sequences scored.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from bench import machine, save_results, spread
from tether.config import OptimConfig
from tether.data.tokenize import Encoded
from tether.losses.reward import bradley_terry_loss
from tether.models.reward import RewardModel
from tether.optim import make_optimizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="backbone (tiny: quick mode)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (B)")
    parser.add_argument("-k", type=int, default=4, help="responses per prompt (K)")
    parser.add_argument("--seq-len", type=int, default=96, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=4, help="measured steps of each")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    rm = RewardModel.build(args.model, max_length=args.seq_len)
    optimizer = make_optimizer(rm.model, OptimConfig(lr=1e-6))
    vocab = rm.tokenizer.vocab_size
    k, b = args.k, args.prompts
    # [B, K] sequences; rank = position, so response 0 is the best of each prompt.
    sequences = [[Encoded(torch.randint(3, vocab, (args.seq_len,)).tolist(),
                          [0] * (args.seq_len // 2) + [1] * (args.seq_len - args.seq_len // 2))
                  for _ in range(k)] for _ in range(b)]
    pairs = list(itertools.combinations(range(k), 2))

    def rankings_step() -> tuple[float, int]:
        flat = [e for row in sequences for e in row]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            raw = rm.raw_scores(rm.collate(flat))
        ranks = torch.arange(k).repeat(b, 1)
        loss = bradley_terry_loss(raw.view(b, k), ranks, torch.ones(b, k))
        return _finish(loss), len(flat)

    def pairs_step() -> tuple[float, int]:
        flat = [e for row in sequences for i, j in pairs for e in (row[i], row[j])]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            raw = rm.raw_scores(rm.collate(flat))
        rows = b * len(pairs)
        loss = bradley_terry_loss(raw.view(rows, 2), torch.tensor([[0, 1]]).repeat(rows, 1),
                                  torch.ones(rows, 2))
        return _finish(loss), len(flat)

    def _finish(loss: torch.Tensor) -> float:
        loss.backward()
        optimizer.zero_grad(set_to_none=True)  # no step: both measure the same weights
        return loss.item()

    ways = {"rankings": rankings_step, "pairs": pairs_step}
    times: dict[str, list[float]] = {name: [] for name in ways}
    losses, counts = {}, {}
    for round_ in range(args.warmup + args.steps):
        order = list(ways) if round_ % 2 == 0 else list(ways)[::-1]
        for name in order:
            started = time.perf_counter()
            losses[name], counts[name] = ways[name]()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - started)

    ratio_time = statistics.median(times["pairs"]) / statistics.median(times["rankings"])
    print(f"reward-model step, {args.model}, B={b} prompts x K={k} responses x "
          f"{args.seq_len} tokens{' (bf16)' if args.bf16 else ''}; {args.steps} steps each, "
          f"interleaved")
    print(f"{'way':<10}{'sequences':>10}{'loss':>9}{'step s: median [min, max]':>30}")
    for name in ways:
        s = spread(times[name])
        print(f"{name:<10}{counts[name]:>10}{losses[name]:>9.4f}"
              f"{s['median']:>14.2f} [{s['min']:6.2f}, {s['max']:6.2f}]")
    print(f"pairs / rankings: {counts['pairs'] / counts['rankings']:.1f}x the sequences "
          f"(2*C(K,2)/K), {ratio_time:.2f}x the step time; the loss is the same "
          f"({losses['rankings']:.6f} vs {losses['pairs']:.6f})")
    path = save_results("rm", {"args": vars(args), "machine": machine(), "times": times,
                               "sequences": counts, "losses": losses,
                               "time_ratio_pairs_over_rankings": ratio_time})
    print(f"results: {path}")
