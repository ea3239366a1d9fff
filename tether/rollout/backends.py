"""The generation backends by name: `make_generator` builds the one a config asks for."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from tether.choices import BACKENDS
from tether.errors import UserError
from tether.rollout.base import Generator
from tether.rollout.generate import HFGenerator
from tether.rollout.vllm import VLLMGenerator


def make_generator(backend: str, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                   model_path: str = "", **kw) -> Generator:
    """The generation backend by name: 'hf' (Hugging Face generate, any device) or 'vllm'
    (a CUDA GPU; built from `model_path`, the policy's starting weights)."""
    if backend == "hf":
        return HFGenerator(model, tokenizer, **kw)
    if backend == "vllm":
        return VLLMGenerator(model, tokenizer, model_path=model_path, **kw)
    raise UserError(f"unknown generation backend {backend!r}; choose one of "
                    f"{', '.join(BACKENDS)}")
