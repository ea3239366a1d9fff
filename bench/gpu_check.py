"""On a CUDA machine: the GPU paths checked end to end (trainers, NCCL, bf16, vLLM), with figures.

CI and the development machine have no GPU, so this is the script to run where there is one:

  1. the unit tests on the GPU: train.device=auto puts every trainer (sft, rm, dpo, ppo, grpo,
     rloo, LoRA, bf16, resume) and the generation and evaluation code on cuda:0;
  2. with two GPUs or more: tests/distributed on 2 GPUs over NCCL (ddp and fsdp2 against one
     process, PPO's first iterations, resuming on another world size);
  3. SFT on smollm2-135m for --steps steps, fp32 and bf16: tokens/s and peak GPU memory;
  4. generation on smollm2-135m, `hf` against `vllm` (python -m bench generation), when the
     vllm package is installed.

    python -m bench gpu-check            # all of it (about 10 min on one GPU)
    python -m bench gpu-check --parts 3,4

Each part prints one line (pass / fail / skipped, and its figures); the exit status is 1 when
any part failed. Results go to bench/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import machine, save_results

REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run, e.g. 1,3")
    parser.add_argument("--steps", type=int, default=20, help="SFT steps in part 3")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per part")


def _pytest(args: list[str], env: dict[str, str], timeout: int) -> tuple[bool, str]:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *args], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=timeout)
    lines = (result.stdout + result.stderr).strip().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return result.returncode == 0, "; ".join([lines[-1] if lines else "", *failed[:5]])


def unit_tests(args: argparse.Namespace) -> dict:
    ok, summary = _pytest(["tests/unit", "-x", "-m", "not e2e"], {}, args.timeout)
    return {"ok": ok, "summary": summary}


def distributed_tests(args: argparse.Namespace) -> dict:
    if torch.cuda.device_count() < 2:
        return {"ok": None, "summary": f"skipped: {torch.cuda.device_count()} GPU(s), needs 2"}
    ok, summary = _pytest(["tests/distributed"], {"TETHER_TEST_DEVICE": "cuda"}, args.timeout)
    return {"ok": ok, "summary": summary}


def sft_figures(args: argparse.Namespace) -> dict:
    from tether.rundir import read_metrics

    figures: dict = {"ok": True}
    for precision in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "tether", "sft", "model.name=smollm2-135m",
                       "data.train=examples/sft/reviews.jsonl", "data.eval_fraction=0",
                       f"train.max_steps={args.steps}", "train.batch_size=16",
                       "train.micro_batch_size=16", "train.save_every=0", "train.device=cuda",
                       f"train.bf16={precision == 'bf16'}", f"run_dir={tmp}/run"]
            started = time.perf_counter()
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                    timeout=args.timeout)
            if result.returncode != 0:
                return {"ok": False, "summary": f"sft {precision}: {result.stderr[-500:]}"}
            metrics = [m for m in read_metrics(Path(tmp) / "run" / "metrics.jsonl")
                       if "perf/tokens_per_s" in m]
            steady = metrics[len(metrics) // 2:]  # past the first steps' CUDA warm-up
            figures[precision] = {
                "tokens_per_s": sum(m["perf/tokens_per_s"] for m in steady) / len(steady),
                "loss_first": metrics[0]["loss/train"], "loss_last": metrics[-1]["loss/train"],
                "wall_s": time.perf_counter() - started}
    figures["summary"] = ", ".join(
        f"{p} {figures[p]['tokens_per_s']:.0f} tokens/s (loss {figures[p]['loss_first']:.2f} "
        f"-> {figures[p]['loss_last']:.2f})" for p in ("fp32", "bf16"))
    return figures


def generation_figures(args: argparse.Namespace) -> dict:
    result = subprocess.run([sys.executable, "-m", "bench", "generation"], cwd=REPO,
                            capture_output=True, text=True, timeout=args.timeout)
    if result.returncode != 0:
        return {"ok": False, "summary": result.stderr[-500:]}
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return {"ok": True, "summary": " | ".join(lines[-3:])}


PARTS = {"1": ("unit tests on the GPU", unit_tests),
         "2": ("distributed tests on 2 GPUs (NCCL)", distributed_tests),
         "3": ("sft on smollm2-135m", sft_figures),
         "4": ("generation, hf against vllm", generation_figures)}


def run(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        print("gpu-check: this torch sees no CUDA GPU; run it on a machine with one "
              "(and a CUDA build of torch)", file=sys.stderr)
        sys.exit(2)
    print(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch "
          f"{torch.__version__}")
    results, failed = {"machine": machine()}, False
    for key in args.parts.split(","):
        name, part = PARTS[key.strip()]
        started = time.perf_counter()
        try:
            out = part(args)
        except subprocess.TimeoutExpired:
            out = {"ok": False, "summary": f"timed out after {args.timeout} s"}
        out["seconds"] = round(time.perf_counter() - started, 1)
        results[name] = out
        verdict = {True: "pass", False: "FAIL", None: "skipped"}[out["ok"]]
        print(f"{key}. {name}: {verdict} in {out['seconds']} s: {out['summary']}", flush=True)
        failed |= out["ok"] is False
    save_results("gpu_check", results)
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1))
    sys.exit(1 if failed else 0)
