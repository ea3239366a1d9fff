"""The generation backends by name: `make_generator` builds the one a config asks for."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from tether.choices import BACKENDS
from tether.errors import UserError
from tether.rollout.base import Generator
from tether.rollout.generate import HFGenerator
from tether.rollout.static import StaticGenerator
from tether.rollout.vllm import VLLMGenerator


def resolve_backend(backend: str, model: torch.nn.Module) -> str:
    """The backend 'auto' stands for: static where it was measured to win (the CPU: 1.9x hf's
    tokens/s in fp32, 2.7x in bf16 at 16 x 64 tokens, BENCHMARKS.md) and can run (not on an
    FSDP2 shard of the policy, whose weights are DTensors); hf elsewhere, until static is
    measured on a GPU. Other names stand for themselves."""
    if backend != "auto":
        return backend
    parameters = list(model.parameters())
    on_cpu = parameters[0].device.type == "cpu"
    return "static" if on_cpu and not any(map(_is_shard, parameters)) else "hf"


def _is_shard(parameter: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(parameter, DTensor)


def make_generator(backend: str, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                   model_path: str = "", *, bf16: bool = False,
                   dtype: str = "auto", compile: bool = False, **kw) -> Generator:
    """The generation backend by name: 'hf' (Hugging Face generate, any device), 'static'
    (tether's static-cache decode loop on a copy of the policy in `dtype`, any device), 'vllm'
    (a CUDA GPU; built from `model_path`, the policy's starting weights) or 'auto'
    (resolve_backend). `bf16`: hf generates under bf16 autocast; static's copy is in `dtype`
    (a name of choices.GENERATION_DTYPES), where 'auto' is bf16 with `bf16`, else fp32: the
    trainer's precision, in which static draws hf's tokens."""
    backend = resolve_backend(backend, model)
    if backend == "hf":
        return HFGenerator(model, tokenizer, bf16=bf16)
    if backend == "static":
        if dtype == "auto":
            dtype = "bf16" if bf16 else "fp32"
        return StaticGenerator(model, tokenizer, compile=compile,
                               dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
    if backend == "vllm":
        return VLLMGenerator(model, tokenizer, model_path=model_path, bf16=bf16, **kw)
    raise UserError(f"unknown generation backend {backend!r}; choose one of "
                    f"{', '.join(BACKENDS)}")
