"""QLoRA against LoRA: the base's memory, the step time, and the loss curve on one batch.

The same model and batch (answers-task demonstrations: real text, whose loss shows what 4-bit
weights cost), LoRA adapters (rank 16, all linear layers) trained two ways: over the
fp32 base under bf16 autocast (`model.lora.enabled=true train.bf16=true`), and over the base
in NF4 (`model.lora.qlora=true`). Printed for each: the bytes the base's weights take (what
QLoRA is for), the model's whole footprint, the median step time, peak GPU memory on CUDA,
and the loss after each of --steps AdamW steps, so the cost of 4-bit weights to the
objective is seen beside what they save. Needs bitsandbytes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench import machine, save_results
from bench.precision import sft_loss
from tether.config import LoraConfig, OptimConfig
from tether.data.collate import collate
from tether.data.tokenize import encode_example
from tether.device import pick_device
from tether.models.loading import load_causal_lm, load_tokenizer
from tether.models.lora import apply_lora
from tether.optim import make_optimizer
from tether.tasks.registry import load_task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="smollm2-135m, tiny, or random:smollm2-1.7b on a GPU")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--device", default="auto")


def frozen_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters not trained (the base), NF4 storage counted as stored."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)


def measure(name: str, qlora: bool, batch: dict, steps: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    base = load_causal_lm(name, seed=0, nf4_on=device if qlora else None)
    model = apply_lora(base.to(device), LoraConfig(enabled=True, qlora=qlora))
    optimizer = make_optimizer(model, OptimConfig(lr=1e-4))
    batch = {k: v.to(device) for k, v in batch.items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    model.train()
    for _ in range(steps):
        start = time.perf_counter()
        loss = sft_loss(model, batch, bf16=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())  # .item() waits for the GPU
        times.append(time.perf_counter() - start)
    out = {"base_weight_mb": frozen_bytes(model) / 2**20,
           "footprint_mb": model.get_memory_footprint() / 2**20,
           "step_s": statistics.median(times[1:] or times), "losses": losses}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def demonstrations(model: str, n: int, max_length: int) -> dict:
    """A batch of n answers-task demonstrations, the loss on the responses only."""
    tokenizer = load_tokenizer(model)
    rows = load_task("answers").make_demonstrations(n, seed=0)
    return collate([encode_example(tokenizer, [{"role": "user", "content": r["prompt"]}],
                                   r["completion"], chat_template=True, max_length=max_length,
                                   truncation="prompt_left") for r in rows],
                   tokenizer.pad_token_id)


def run(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    batch = demonstrations(args.model, args.batch, args.seq_len)
    results = {kind: measure(args.model, kind == "qlora", batch, args.steps, device)
               for kind in ("lora", "qlora")}
    lora, qlora = results["lora"], results["qlora"]
    tokens = int(batch["attention_mask"].sum())
    print(f"{args.model} on {device}, {args.batch} demonstrations ({tokens} tokens), "
          f"{args.steps} steps")
    for kind, r in results.items():
        peak = f", peak GPU {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else ""
        print(f"  {kind:5s}: base weights {r['base_weight_mb']:7.1f} MB, footprint "
              f"{r['footprint_mb']:7.1f} MB, step {r['step_s']:.3f} s{peak}; loss "
              + " ".join(f"{x:.3f}" for x in r["losses"]))
    print(f"  qlora / lora: base weights {qlora['base_weight_mb'] / lora['base_weight_mb']:.2f}x,"
          f" step time {qlora['step_s'] / lora['step_s']:.2f}x, final loss gap "
          f"{qlora['losses'][-1] - lora['losses'][-1]:+.4f}")
    save_results("qlora", {"machine": machine(), "args": vars(args), "results": results})
