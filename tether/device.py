"""Where the models run: a CUDA GPU when there is one, else the CPU.

Data is prepared on the CPU (tokenising, collating, packing) and moved to the model's device
right before its forward pass; everything after that (losses, advantages, metrics) stays on
the device until a number is logged.
"""

from __future__ import annotations

import contextlib
import os

import torch

from tether.choices import DEVICES
from tether.errors import ConfigError
from tether.metric_names import PERF_PEAK_MEM_GIB


def pick_device(requested: str = "auto") -> torch.device:
    """`auto`: the GPU when CUDA is available, else the CPU. Under torchrun every process
    takes the GPU numbered by its LOCAL_RANK (one process per GPU)."""
    if requested not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got '{requested}'")
    cuda = torch.cuda.is_available()
    if requested == "cuda" and not cuda:
        raise ConfigError("device=cuda, but this torch sees no CUDA GPU (a CPU-only build, or "
                          "no driver); use device=auto or device=cpu")
    if requested == "cpu" or not cuda:
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"process {local_rank} on this machine has no GPU of its own "
                          f"({torch.cuda.device_count()} visible): start at most one process "
                          f"per GPU (torchrun --nproc-per-node)")
    return torch.device("cuda", local_rank)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's (first) parameter: where its inputs must go."""
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's bf16 path: AVX512-BW/VL/DQ,
    AVX512-BF16, AMX or AVX-NE-CONVERT). Elsewhere (an AVX2-only x86 laptop, say) torch
    emulates bf16, 4-8x slower than fp32 (BENCHMARKS.md, "bf16 on a CPU without bf16")."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def slow_bf16(device: torch.device) -> bool:
    """bf16 would be emulated on `device`: a CPU without bf16 instructions."""
    return device.type == "cpu" and not cpu_has_bf16()


def autocast(bf16: bool, device: torch.device | str = "cpu"
             ) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device's type (fp32 weights stay fp32); nothing when off."""
    device_type = device.type if isinstance(device, torch.device) else device
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


def peak_memory(device: torch.device) -> dict[str, float]:
    """{PERF_PEAK_MEM_GIB: the most memory the GPU's allocator has held so far}; nothing on
    the CPU, where a process's peak is its RSS, which torch does not track."""
    if device.type != "cuda":
        return {}
    return {PERF_PEAK_MEM_GIB: torch.cuda.max_memory_allocated(device) / 2**30}

