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


def make_generator(backend: str, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                   model_path: str = "", *, bf16: bool = False,
                   dtype: torch.dtype | None = None, compile: bool = False, **kw) -> Generator:
    """The generation backend by name: 'hf' (Hugging Face generate, any device), 'static'
    (tether's static-cache decode loop on a copy of the policy in `dtype`, any device) or
    'vllm' (a CUDA GPU; built from `model_path`, the policy's starting weights). `bf16`: hf
    generates under bf16 autocast; static holds a bf16 copy unless `dtype` says otherwise."""
    if backend == "hf":
        return HFGenerator(model, tokenizer, bf16=bf16)
    if backend == "static":
        return StaticGenerator(model, tokenizer, compile=compile,
                               dtype=dtype or (torch.bfloat16 if bf16 else torch.float32))
    if backend == "vllm":
        return VLLMGenerator(model, tokenizer, model_path=model_path, bf16=bf16, **kw)
    raise UserError(f"unknown generation backend {backend!r}; choose one of "
                    f"{', '.join(BACKENDS)}")
