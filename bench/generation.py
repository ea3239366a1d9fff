"""Generation throughput of the rollout backends on the same batch: `hf` against `vllm`.

The same prompts (the sentiment task's), --n samples each of exactly up to --max-new-tokens,
temperature 1, from `smollm2-135m`: tokens generated per second by Hugging Face `generate`
(on the GPU when there is one) and by vLLM colocated in this process, plus the time vLLM takes
to take in new policy weights (`sync`, what PPO does after every update). vLLM needs a CUDA GPU
and the vllm package; without them only `hf` is measured and the reason is printed.

    python -m bench generation --prompts 64 --n 4 --max-new-tokens 64
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
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)


def throughput(generator, prompts, n: int, params: SamplingParams) -> float:
    generator.generate(prompts[:2], 1, params, seed=0)  # warm-up (CUDA kernels, caches)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = generator.generate(prompts, n, params, seed=1)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    tokens = sum(len(g.response_ids) for samples in out for g in samples)
    return tokens / (time.perf_counter() - started)


def run(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model)
    texts = make_prompts(args.prompts, seed=0)
    prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    gpu = torch.cuda.is_available()
    model = load_causal_lm(args.model)
    if gpu:
        model = model.to("cuda")
    figures = {"model": args.model, "prompts": args.prompts, "n": args.n,
               "max_new_tokens": args.max_new_tokens, "device": "cuda" if gpu else "cpu",
               "hf_tokens_per_s": round(throughput(make_generator(
                   "hf", model, tokenizer, bf16=gpu), prompts, args.n, params), 1)}
    print(f"hf:   {figures['hf_tokens_per_s']:10.1f} tokens/s ({figures['device']})")
    try:
        vllm = make_generator("vllm", model, tokenizer, bf16=True,
                              model_path=str(resolve(args.model)))
    except UserError as e:
        print(f"vllm: not measured: {e}")
    else:
        figures["vllm_tokens_per_s"] = round(throughput(vllm, prompts, args.n, params), 1)
        started = time.perf_counter()
        vllm.sync(model)
        figures["vllm_sync_s"] = round(time.perf_counter() - started, 3)
        figures["vllm_over_hf"] = round(figures["vllm_tokens_per_s"]
                                        / figures["hf_tokens_per_s"], 2)
        print(f"vllm: {figures['vllm_tokens_per_s']:10.1f} tokens/s, "
              f"{figures['vllm_over_hf']}x hf; weight sync {figures['vllm_sync_s']} s")
    save_results("generation", {**figures, "machine": machine()})
