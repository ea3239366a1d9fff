"""LoRA adapters through peft, as a config switch."""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from tether.config import LoraConfig


def apply_lora(model: torch.nn.Module, cfg: LoraConfig,
               task_type: str = "CAUSAL_LM") -> torch.nn.Module:
    """Wrap `model` with LoRA adapters. task_type SEQ_CLS also trains the new scalar head in
    full (peft's modules_to_save), since it starts from random."""
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
