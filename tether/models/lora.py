"""LoRA adapters through peft, as a config switch (over a 4-bit base: tether.models.quantize)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from tether.models.quantize import (
    import_bitsandbytes_offline,
    is_quantized,
    plain_skeleton,
    plain_value,
)

import_bitsandbytes_offline()  # before peft imports it
from peft import LoraConfig as PeftLoraConfig  # noqa: E402
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

from tether.config import LoraConfig  # noqa: E402


def apply_lora(model: torch.nn.Module, cfg: LoraConfig,
               task_type: str = "CAUSAL_LM") -> torch.nn.Module:
    """Wrap `model` with LoRA adapters. task_type SEQ_CLS also trains the new scalar head in
    full (peft's modules_to_save), since it starts from random."""
    if is_quantized(model):  # freezes the base, and keeps norms and embeddings in fp32
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = cfg.target_modules
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, task_type=task_type,
        target_modules=targets if targets == "all-linear" else
        [t.strip() for t in targets.split(",") if t.strip()])
    return get_peft_model(model, peft_cfg)


def is_lora(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merged_copy(policy: torch.nn.Module, dtype: torch.dtype
                ) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, Callable[[], torch.Tensor]]]]:
    """A plain copy of the policy in `dtype` (no adapter, no quantisation), whose weights are
    the policy's with any LoRA adapter merged in, and for each of the copy's parameters a
    function giving its current value in the policy (what a rollout backend's sync copies in).
    An NF4 base is dequantised: the copy computes what was trained."""
    base = policy.get_base_model() if isinstance(policy, PeftModel) else policy
    adapted = {name: module for name, module in base.named_modules()
               if isinstance(module, LoraLayer)}

    def source(name: str) -> Callable[[], torch.Tensor]:
        owner, _, leaf = name.rpartition(".")
        if owner not in adapted:
            p = base.get_parameter(name)
            return lambda: plain_value(p)
        layer = adapted[owner]
        plain = getattr(layer.get_base_layer(), leaf)
        if leaf != "weight":
            return plain.detach
        return lambda: plain_value(plain) + sum(layer.get_delta_weight(a)
                                                for a in layer.active_adapters)

    if is_quantized(base):
        model = plain_skeleton(base, dtype)
    else:
        model = copy.deepcopy(policy)
        if isinstance(model, PeftModel):
            model = model.merge_and_unload()
        model = model.to(dtype)
    model = model.eval().requires_grad_(False)
    sources = [(p, source(name)) for name, p in model.named_parameters()]
    if is_quantized(base):  # a skeleton holds random weights until now
        with torch.no_grad():
            for target, value in sources:
                target.copy_(value())
    return model, sources
