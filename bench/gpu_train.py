"""GPU training throughput at real model shapes: tokens/s, peak memory, MFU of sft, rm, dpo.

The models are `random:smollm2-135m` and `random:smollm2-1.7b`: the real architectures at
random init with the SmolLM2 tokenizer (tether.models.loading), so no weights travel to the GPU
machine and speed is measured at sizes users train. Each row runs the real command (`python
-m tether sft|rm|dpo`) in a fresh process on synthetic data written here (prompts of 32-96
words, responses of 48-240: the lengths vary, so padding matters), and reads what the trainer
logs per step: the tokens its model read per second (`perf/tokens_per_s`) and the peak GPU
memory (`perf/peak_mem_gib`). The first steps (CUDA warm-up, compilation) are dropped.

Settings per row:
- `plain`: fp32, `micro_batch_size` padded rows, the whole LM head at once: the defaults;
- `fast`: bf16 weights with fp32 master weights, padding-free packing up to
  --tokens tokens per micro-batch under FlexAttention, the LM head in chunks (sft and dpo: a
  reward model's head is a scalar): what the README recommends on a GPU; `fast-sdpa`: the
  same with sdpa's dense mask over each packed row;
- `compile`: `fast` plus torch.compile (only with --compile: its first steps take minutes).

MFU = model FLOP/s over the bf16 matmul peak measured in the same run (bench.peak):
6 N + 12 L d S per trained token (S: the mean sequence length; N: the parameters the matmuls
use, a tied embedding once as the LM head, none of it for a reward model's scalar head). DPO's
reference log-probs are precomputed before the first step (its default), so not counted.

    python -m bench gpu-train                          # both shapes, sft rm dpo, plain and fast
    python -m bench gpu-train --shapes smollm2-135m --stages sft --steps 12
    python -m bench gpu-train --device cpu --shapes tiny --steps 3     # the harness, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import machine, save_results
from bench.peak import measure_peak

REPO = Path(__file__).resolve().parents[1]
_PHRASE = ("the film was warm and slow but the cast never lost the thread of a story that "
           "kept turning on small moments light music rain city night friends old letters "
           "quiet humour sharp dialogue long takes")
WORDS = _PHRASE.split()
# Sequences (sft) or prompts (rm, dpo) per optimizer step.
STAGES = {"sft": 64, "rm": 32, "dpo": 32}
SETTINGS = {
    "plain": ["train.bf16=false", "train.bf16_weights=false", "train.logits_chunk=0"],
    "fast": ["train.bf16=true", "train.bf16_weights=true", "train.logits_chunk=4096",
             "model.attention=flex_attention"],
    # The same with sdpa's dense mask over each packed row: what flex saves.
    "fast-sdpa": ["train.bf16=true", "train.bf16_weights=true", "train.logits_chunk=4096",
                  "model.attention=sdpa"],
}
WARMUP_STEPS = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", default="smollm2-135m,smollm2-1.7b",
                        help="random:<shape> models (or 'tiny'). Default: %(default)s.")
    parser.add_argument("--stages", default="sft,rm,dpo", help="Default: %(default)s.")
    parser.add_argument("--settings", default="plain,fast",
                        help="plain, fast, fast-sdpa (see above). Default: %(default)s.")
    parser.add_argument("--compile", action="store_true", help="add the compile setting")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per row")
    parser.add_argument("--tokens", type=int, default=16384,
                        help="tokens per packed micro-batch in `fast`. Default: %(default)s.")
    parser.add_argument("--max-length", type=int, default=1024,
                        help="longest prompt + response in tokens. Default: %(default)s.")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to try the harness")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per row")


def _text(r: random.Random, low: int, high: int) -> str:
    return " ".join(r.choice(WORDS) for _ in range(r.randint(low, high)))


def write_data(folder: Path, rows: int, seed: int = 0) -> dict[str, Path]:
    """Synthetic demonstrations and preference pairs (what each stage reads)."""
    r = random.Random(seed)
    sft = [{"prompt": _text(r, 32, 96), "completion": _text(r, 48, 240)} for _ in range(rows)]
    pairs = [{"prompt": _text(r, 32, 96), "chosen": _text(r, 48, 240),
              "rejected": _text(r, 48, 240)} for _ in range(rows)]
    paths = {"sft": folder / "sft.jsonl", "pairs": folder / "pairs.jsonl"}
    for name, data in (("sft", sft), ("pairs", pairs)):
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in data))
    return paths


def mean_seq_len(model: str, path: Path) -> float:
    """Mean tokens of prompt + response over a data file (the S of the attention FLOPs)."""
    from tether.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    lengths = []
    for line in path.read_text().splitlines()[:256]:
        row = json.loads(line)
        for response in (row.get("completion"), row.get("chosen"), row.get("rejected")):
            if response:
                lengths.append(len(tokenizer(row["prompt"] + response).input_ids))
    return statistics.mean(lengths)


def flops_per_token(model: str, stage: str, seq_len: float) -> float:
    """Model FLOPs per token of one training step (see the module docstring)."""
    from transformers import LlamaForCausalLM

    from tether.models.loading import random_config
    from tether.models.tiny import tiny_llama

    with torch.device("meta"):  # the shape alone; nothing is allocated
        lm = tiny_llama() if model == "tiny" else LlamaForCausalLM(random_config(model))
    config = lm.config
    n = sum(p.numel() for p in lm.parameters())  # a tied embedding counts once
    if stage == "rm":
        n -= config.vocab_size * config.hidden_size  # a scalar head instead of the LM head
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return 6 * n + attention


def command(stage: str, model: str, setting: str, args: argparse.Namespace,
            data: dict[str, Path], run_dir: Path) -> list[str]:
    batch = STAGES[stage]
    micro = 8 if stage == "sft" else 4
    options = [f"model.name={model}", f"data.train={data['sft' if stage == 'sft' else 'pairs']}",
               "data.eval_fraction=0", f"data.max_length={args.max_length}",
               f"train.max_steps={args.steps}",
               f"train.batch_size={batch}", f"train.micro_batch_size={micro}",
               "train.save_every=0", "train.eval_every=0", f"train.device={args.device}",
               f"run_dir={run_dir}", *SETTINGS["fast" if setting == "compile" else setting]]
    if stage == "rm":  # a scalar head: no logits over the vocabulary to chunk
        options = [o for o in options if not o.startswith("train.logits_chunk=")]
    if setting != "plain":
        options.append(f"train.max_tokens_per_microbatch={args.tokens}")
    if setting == "compile":
        options.append("train.compile=true")
    return [sys.executable, "-m", "tether", stage, *options]


def run_row(stage: str, model: str, setting: str, args: argparse.Namespace,
            data: dict[str, Path]) -> dict:
    from tether.metric_names import LOSS_TRAIN, PERF_PEAK_MEM_GIB, PERF_TOKENS_PER_S
    from tether.rundir import read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = subprocess.run(command(stage, model, setting, args, data, Path(tmp) / "run"),
                                cwd=REPO, capture_output=True, text=True, timeout=args.timeout,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if result.returncode != 0:
            return {"ok": False, "error": (result.stderr or result.stdout)[-800:]}
        metrics = [m for m in read_metrics(Path(tmp) / "run" / "metrics.jsonl")
                   if PERF_TOKENS_PER_S in m]
    steady = metrics[WARMUP_STEPS:] or metrics[-1:]
    return {"ok": True, "wall_s": round(time.perf_counter() - started, 1),
            "tokens_per_s": statistics.median(m[PERF_TOKENS_PER_S] for m in steady),
            "peak_mem_gib": max((m.get(PERF_PEAK_MEM_GIB, 0.0) for m in metrics), default=0),
            "loss_first": metrics[0][LOSS_TRAIN], "loss_last": metrics[-1][LOSS_TRAIN]}


def run(args: argparse.Namespace) -> None:
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        print("gpu-train: this torch sees no CUDA GPU; use --device cpu to try the harness",
              file=sys.stderr)
        sys.exit(2)
    settings = args.settings.split(",") + (["compile"] if args.compile else [])
    peak = measure_peak(torch.bfloat16, 2.0, args.device)
    print(f"bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s")
    results: dict = {"machine": machine(), "peak_bf16_flops": peak, "rows": []}
    if gpu:
        results["gpu"] = torch.cuda.get_device_name(0)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp), rows=max(STAGES.values()) * (args.steps + 1))
        for shape in args.shapes.split(","):
            model = shape if shape == "tiny" else f"random:{shape}"
            for stage in args.stages.split(","):
                for setting in settings:
                    row = {"model": model, "stage": stage, "setting": setting,
                           **run_row(stage, model, setting, args, data)}
                    if row["ok"]:
                        seq_len = mean_seq_len(model, data["sft" if stage == "sft" else "pairs"])
                        flops = flops_per_token(model, stage, seq_len)
                        row["mfu"] = row["tokens_per_s"] * flops / peak
                        print(f"{model:<22} {stage:<4} {setting:<8} "
                              f"{row['tokens_per_s']:>10,.0f} tokens/s  "
                              f"MFU {row['mfu']:6.1%}  peak {row['peak_mem_gib']:6.1f} GiB  "
                              f"loss {row['loss_first']:.2f} -> {row['loss_last']:.2f}  "
                              f"({row['wall_s']} s)", flush=True)
                    else:
                        failed = True
                        print(f"{model:<22} {stage:<4} {setting:<8} FAILED: {row['error']}",
                              flush=True)
                    results["rows"].append(row)
    _print_ratios(results["rows"])
    print(f"results: {save_results('gpu_train', results)}")
    sys.exit(1 if failed else 0)


def _print_ratios(rows: list[dict]) -> None:
    by_key = {(r["model"], r["stage"], r["setting"]): r for r in rows if r["ok"]}
    for (model, stage, setting), row in by_key.items():
        plain = by_key.get((model, stage, "plain"))
        if setting != "plain" and plain:
            print(f"{model} {stage}: {setting} / plain = "
                  f"{row['tokens_per_s'] / plain['tokens_per_s']:.2f}x tokens/s, "
                  f"{row['peak_mem_gib'] / max(plain['peak_mem_gib'], 1e-9):.2f}x memory")
