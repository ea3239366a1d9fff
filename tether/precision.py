"""bf16 weights with fp32 master weights (train.bf16_weights), and torch.compile (train.compile).

`train.bf16` alone is autocast: fp32 weights, each cast to bf16 again at every matmul of every
forward (extra kernels and memory traffic: on an H200, SFT of SmolLM2-135M ran slower under it
than in fp32). `train.bf16_weights` casts the weights once: the models hold bf16 parameters,
and the optimizer (tether.optim.MasterAdamW) holds the fp32 master copy of each trained one,
with AdamW's moments in fp32; autocast stays on, so norms, softmax and the losses still run in
fp32. The update is fp32; what is bf16 besides the matmuls: the weights a forward reads (the
rounded masters), the gradients (accumulated over micro-batches in bf16, and averaged in bf16
by DDP before the optimizer sees them) and the residual stream between blocks (as in any bf16
Hugging Face model; autocast keeps it fp32).

What a trainer calls, in this order (`masters = master_weights(cfg.train)` first of all):

    model = d.place(build())
    if masters:
        to_bf16(model)                 # before d.wrap: DDP fixes its buckets' dtypes
        to_bf16(ref_model)             # and every frozen model the loop runs (ref, reward)
    model = maybe_compile(model, cfg.train.compile)
    model = d.wrap(model)
    optimizer, scheduler, start_step, log = start_or_resume(..., master_weights=masters)
    ...                                # clip_and_check finds the masters by itself
    whole = master_model(model, optimizer, build, dist=d)   # fp32 masters, or full_model
    if d.main:
        save_final(whole, ...)

Checkpoints (tether.trainers.common) store the fp32 masters as the model's weights and AdamW's
state as a plain AdamW's: the same files either way, so a run resumes exactly with or without
bf16_weights.

Under fsdp2, bf16_weights is refused: FSDP2 has this built in, as a MixedPrecisionPolicy
(`fully_shard(..., mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16,
reduce_dtype=torch.float32))` in Dist.wrap: fp32 shards the plain AdamW updates, gathered in
bf16 for the forward, gradients reduced in fp32), not wired here yet.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable

import torch

from tether.config import ModelConfig, TrainConfig
from tether.device import slow_bf16
from tether.distributed import Dist, unwrap
from tether.errors import ConfigError
from tether.models.quantize import check_qlora
from tether.optim import MASTER, MasterAdamW, _fp32_originals

SINGLE = Dist()


def check_settings(model: ModelConfig, train: TrainConfig, device: torch.device) -> bool:
    """Every fast-path setting checked against this machine before any model loads (a
    one-line ConfigError for what cannot run here); whether the trained weights are bf16 with
    fp32 masters (see master_weights)."""
    if model.attention == "flex_attention" and device.type != "cuda":
        raise ConfigError("model.attention=flex_attention trains on a CUDA GPU only (PyTorch "
                          "has no FlexAttention backward on the CPU); use model.attention=sdpa "
                          "here")
    check_qlora(model, train, device)
    problem = train.compile and compile_unavailable(device.type)
    if problem:
        raise ConfigError(f"train.compile=true: {problem}; set train.compile=false")
    if train.bf16 and slow_bf16(device) and os.environ.get("RANK", "0") == "0":
        print("warning: train.bf16=true on a CPU without bf16 instructions: torch emulates "
              "bf16 here, several times slower than fp32 (train.bf16=false)", flush=True)
    return master_weights(train)


def master_weights(train: TrainConfig) -> bool:
    """Whether the trained model holds bf16 weights with fp32 masters in the optimizer
    (train.bf16 and train.bf16_weights). ConfigError for a combination that cannot run: call
    it before loading anything."""
    if not train.bf16_weights:
        return False
    if not train.bf16:
        raise ConfigError("train.bf16_weights=true needs train.bf16=true (bf16 weights are "
                          "run under bf16 autocast); set both, or neither")
    if train.strategy == "fsdp2":
        raise ConfigError("train.bf16_weights=true does not run with train.strategy=fsdp2; use "
                          "train.strategy=ddp, or train.bf16=true alone")
    return True


@torch.no_grad()
def to_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """`model`'s floating-point parameters cast to bf16 in place (the same Parameter objects,
    so names, LoRA wrapping and optimizer groups are unchanged); buffers (e.g. rotary
    frequencies) stay as they are. The fp32 values of the trained (requires_grad) parameters
    are kept for the MasterAdamW made over them next, whose masters start from them. Call it
    before DDP wraps the model and before the optimizer is made."""
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.bfloat16:
            if p.requires_grad:
                _fp32_originals[p] = p.detach().float().clone()
            p.data = p.data.to(torch.bfloat16)
    return model


@torch.no_grad()
def master_model(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 rebuild: Callable[[], torch.nn.Module] | None = None, part: str = "",
                 dist: Dist = SINGLE) -> torch.nn.Module | None:
    """The trained model (or its submodule named `part`), whole, on rank 0 (None elsewhere):
    what save_final writes. Trained with bf16 weights (a MasterAdamW), it is fp32 with the
    optimizer's master weights, not the rounded bf16 ones: with `rebuild` (the trainer's
    `build`, as for Dist.full_model), a fresh model with the masters copied into its trained
    parameters and its frozen ones (a LoRA base) exactly as loaded; without it, `model`
    itself turned to fp32 in place (its frozen parameters from their bf16 values), so for the
    end of a run. Otherwise what Dist.full_model gives."""
    if not isinstance(optimizer, MasterAdamW):
        return dist.full_model(model, rebuild, part)
    if not dist.main:
        return None
    trained = unwrap(model)
    prefix = f"{part}." if part else ""
    masters = {name[len(prefix):]: optimizer.state[p][MASTER]
               for name, p in trained.named_parameters()
               if name.startswith(prefix) and p in optimizer.state
               and MASTER in optimizer.state[p]}
    target = rebuild() if rebuild is not None else trained.get_submodule(part)
    params = dict(target.named_parameters())
    missing = sorted(set(masters) - set(params))
    if missing:
        raise RuntimeError(f"the rebuilt model has no parameters {missing[:3]} (was it built "
                           f"with another model or LoRA setting?)")
    for name, p in params.items():
        if name in masters:
            p.data = masters[name].detach().to(p.device, torch.float32, copy=True)
        elif p.is_floating_point() and rebuild is None:
            p.data = p.data.float()
    return target


# -- torch.compile ------------------------------------------------------------------------------


def maybe_compile(model: torch.nn.Module, enabled: bool,
                  backend: str = "inductor") -> torch.nn.Module:
    """`model` compiled in place (`Module.compile`: the same module, so parameter names,
    checkpoints, LoRA and DDP wrapping are unchanged; it compiles at its first call, and again
    when shapes change until it has made them dynamic) when `enabled`; as it is otherwise.
    ConfigError naming train.compile when torch.compile cannot run here. `backend`: for tests
    ("aot_eager" traces the same graphs without generating code)."""
    if not enabled:
        return model
    device = next(model.parameters()).device.type
    problem = compile_unavailable(device, backend)
    if problem:
        raise ConfigError(f"train.compile=true: {problem}; set train.compile=false")
    model.compile(backend=backend)
    return model


@functools.cache
def compile_unavailable(device_type: str, backend: str = "inductor") -> str | None:
    """Why torch.compile cannot run on `device_type` with `backend` here, or None. Probed once
    per (device, backend), and cheaply: what inductor needs is looked for, nothing compiled."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported by this Python and torch"
    if backend != "inductor":
        return None
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "inductor needs triton for CUDA, not installed"
    if device_type == "cpu":
        from torch._inductor import config
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()  # runs `g++ --version` (or what torch is configured to use)
        except Exception:  # torch's InvalidCxxCompiler, or whatever the search met
            wanted = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) \
                else (config.cpp.cxx,)
            names = [c for c in wanted if c] or ["g++"]
            found = [c for c in names if shutil.which(c)]
            return (f"inductor on the CPU needs a working C++ compiler ({', '.join(names)}"
                    f"{': found but failing' if found else ': not found'})")
        return None
    return None
