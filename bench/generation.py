"""Generation throughput of the rollout backends on the same prompts: `hf`, `static` and, on a
GPU with the vllm package, `vllm`.

For each batch size (--batches: sequences per call, each a different prompt of the sentiment
task), every backend samples responses of up to --max-new-tokens at temperature 1 from the
same policy (`smollm2-135m`), with the same seeds. Printed per backend and batch: tokens
generated per second, time to first token (a call asking for one token), and the weight sync
PPO runs after every update (`sync` then the copy it triggers). The backends take turns within
each batch size, so a busy machine slows them alike; the ratio to hf is the figure to read.

    python -m bench generation                          # batches 1,16,64,256
    python -m bench generation --batches 16 --max-new-tokens 64 --min-new-tokens 64

`--min-new-tokens 64` keeps EOS from ending responses early, so every backend generates the
same number of tokens (the issue's "16 x 64 tokens").
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import machine, save_results
from tether.errors import UserError
from tether.models.loading import load_causal_lm, load_tokenizer, resolve
from tether.rollout.backends import make_generator
from tether.rollout.base import SamplingParams
from tether.tasks.sentiment import make_prompts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batches", default="1,16,64,256",
                        help="comma-separated sequences per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--min-new-tokens", type=int, default=0,
                        help="suppress EOS until this many tokens (equal work per backend)")
    parser.add_argument("--backends", default="hf,static:fp32,static:bf16,vllm",
                        help="comma-separated backends, static as static:DTYPE (fp32: the "
                             "CPU trainer's precision, static's default there; bf16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per figure (best)")


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(call) -> tuple[float, object]:
    _synchronize()
    started = time.perf_counter()
    out = call()
    _synchronize()
    return time.perf_counter() - started, out


def measure(generator, prompts, params: SamplingParams, repeats: int) -> dict:
    """tokens/s (the best of `repeats` calls) and time to first token for one batch."""
    generator.generate(prompts[:2], 1, params, seed=0)  # warm-up (kernels, allocator)
    best = None
    for seed in range(1, repeats + 1):
        seconds, out = _timed(lambda s=seed: generator.generate(prompts, 1, params, seed=s))
        tokens = sum(len(g.response_ids) for samples in out for g in samples)
        best = max(best or 0.0, tokens / seconds)
    first = SamplingParams(temperature=params.temperature, max_new_tokens=1)
    ttft = min(_timed(lambda: generator.generate(prompts, 1, first, seed=0))[0]
               for _ in range(repeats))
    return {"tokens_per_s": round(best, 1), "first_token_s": round(ttft, 3)}


def sync_seconds(generator, model) -> float:
    """sync() and the weight copy it leads to (static copies lazily, in the next generate: the
    one-token generate measured here minus the same call without a sync)."""
    one = SamplingParams(max_new_tokens=1)
    plain = _timed(lambda: generator.generate([[1, 2, 3]], 1, one, seed=0))[0]
    seconds = _timed(lambda: (generator.sync(model),
                              generator.generate([[1, 2, 3]], 1, one, seed=0)))[0]
    return round(max(seconds - plain, 0.0), 4)


def run(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model)
    batches = [int(b) for b in args.batches.split(",")]
    texts = make_prompts(max(batches), seed=0)
    prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    gpu = torch.cuda.is_available()
    model = load_causal_lm(args.model)
    if gpu:
        model = model.to("cuda")
    if args.min_new_tokens:
        if args.min_new_tokens < args.max_new_tokens:
            raise SystemExit("--min-new-tokens: only equal to --max-new-tokens is supported")
        model.get_output_embeddings().register_forward_hook(
            lambda module, a, out: out.index_fill_(-1, torch.tensor(
                [tokenizer.eos_token_id], device=out.device), float("-inf")))
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)

    generators = {}
    for label in args.backends.split(","):
        name, _, dtype = label.partition(":")
        try:
            generators[label] = make_generator(
                name, model, tokenizer, bf16=gpu, dtype=dtype or "auto",
                model_path=str(resolve(args.model)) if name == "vllm" else "")
        except UserError as e:
            print(f"{label}: not measured: {e}")
    figures: dict = {"model": args.model, "max_new_tokens": args.max_new_tokens,
                     "min_new_tokens": args.min_new_tokens,
                     "device": "cuda" if gpu else "cpu", "batches": {}}
    for batch in batches:
        row = {name: measure(g, prompts[:batch], params, args.repeats)
               for name, g in generators.items()}
        for name, m in row.items():
            if "hf" in row and name != "hf":
                m["over_hf"] = round(m["tokens_per_s"] / row["hf"]["tokens_per_s"], 2)
            print(f"batch {batch:4d}  {name:11s} {m['tokens_per_s']:9.1f} tokens/s  first token "
                  f"{m['first_token_s']:.3f} s" + (f"  {m['over_hf']}x hf" if "over_hf" in m
                                                   else ""), flush=True)
        figures["batches"][batch] = row
    figures["sync_s"] = {name: sync_seconds(g, model) for name, g in generators.items()}
    print("weight sync: " + ", ".join(f"{k} {v} s" for k, v in figures["sync_s"].items()))
    save_results("generation", {**figures, "machine": machine()})
