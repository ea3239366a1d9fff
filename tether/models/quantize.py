"""QLoRA: a policy's frozen base weights in 4-bit NF4 (bitsandbytes), LoRA adapters over them.

`model.lora.qlora=true` loads every linear layer of the base but the output head as NF4 with
double quantisation (Dettmers et al., 2023), computing in bf16; the adapters, norms and
embeddings stay in the trainer's precision. bitsandbytes is an optional package: without it
the option is a one-line error. bitsandbytes 0.50 also runs NF4 on a CPU, where the tests use
it; the memory it saves matters on a GPU.

The quantised weights are never trained or written out: checkpoints hold the adapters only
(they are the trained parameters), and `tether.models.lora.merged_copy` builds an unquantised
model whose weights are the dequantised base plus each adapter's delta: exactly the function
that was trained. final/ and the static rollout backend's copy are made that way.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from tether.errors import ConfigError


def check_qlora(model_cfg, train_cfg, device: torch.device) -> None:
    """ConfigError, before anything loads, for a QLoRA setting that cannot run here."""
    if not model_cfg.lora.qlora:
        return
    if not model_cfg.lora.enabled:
        raise ConfigError("model.lora.qlora=true trains LoRA adapters over a 4-bit base: set "
                          "model.lora.enabled=true as well")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.lora.qlora=true needs the bitsandbytes package, which is not "
                          "installed: pip install bitsandbytes (or set model.lora.qlora=false)")
    if train_cfg.strategy == "fsdp2":
        raise ConfigError("model.lora.qlora=true does not run with train.strategy=fsdp2 (its "
                          "4-bit weights cannot be sharded here); use train.strategy=ddp")
    if device.type not in ("cuda", "cpu", "xpu"):
        raise ConfigError(f"model.lora.qlora=true: bitsandbytes has no 4-bit kernels for "
                          f"{device.type}; use a CUDA GPU (or the CPU, slowly)")


def import_bitsandbytes_offline() -> None:
    """Import bitsandbytes, if installed, without the kernel it fetches from the Hugging Face
    Hub at import on a CPU with bf16 instructions (network access and remote code, which
    tether runs only when asked: model.hub_kernels); its built-in CPU code serves instead.
    Called before peft or transformers import it (peft does whenever it is installed)."""
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    saved = sys.modules.get("kernels")
    sys.modules["kernels"] = None  # `from kernels import get_kernel` fails: no fetch
    quiet = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warning about the missing kernel
    try:
        import bitsandbytes  # noqa: F401
    finally:
        quiet.setLevel(level)
        if saved is None:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = saved


def nf4_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_nf4(source: str | Path | torch.nn.Module, device: torch.device,
             options: dict) -> torch.nn.Module:
    """A causal LM with NF4 linear layers on `device`, from a model directory (or hub id), or
    from a model built in-process (written to a temporary directory and read back, the one
    way transformers quantises)."""
    from transformers import AutoModelForCausalLM

    import_bitsandbytes_offline()
    tmp = None
    if isinstance(source, torch.nn.Module):
        from safetensors.torch import save_model

        # written by hand: save_pretrained writes nothing on a torchrun rank other than 0
        tmp = tempfile.mkdtemp(prefix="tether-nf4-")
        source.config.save_pretrained(tmp)
        save_model(source, str(Path(tmp) / "model.safetensors"))
        source = tmp
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, quantization_config=nf4_config(), device_map={"": str(device)},
            dtype=torch.float32, **options)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    for module in model.modules():
        # On a CPU with bf16 instructions, an eval-mode forward repacks the weight in place
        # for an inference kernel that later training forwards then also take, and that
        # kernel has no backward: the adapters below it would get wrong gradients, silently
        # (bitsandbytes 0.50). Training needs the standard layout throughout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def is_quantized(model: torch.nn.Module) -> bool:
    return any(type(p).__name__ == "Params4bit" for p in model.parameters())


def plain_value(p: torch.Tensor) -> torch.Tensor:
    """A parameter's value as a plain tensor: NF4 weights dequantised, others detached."""
    if type(p).__name__ == "Params4bit":
        from bitsandbytes.functional import dequantize_4bit

        return dequantize_4bit(p.data, p.quant_state).to(torch.float32)
    return p.detach()


def plain_skeleton(base: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """An unquantised model of `base`'s architecture (random weights), on its device."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(base.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    device = next(base.parameters()).device
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model
