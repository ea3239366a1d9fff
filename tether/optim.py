"""AdamW with decay on matrices only, and warmup + decay schedules as pure functions.

With `master_weights=True` (train.bf16_weights), `make_optimizer` gives a `MasterAdamW`: the
model's parameters are bf16 (cast by `tether.precision.to_bf16`), and the optimizer holds an
fp32 master copy of each one next to its fp32 AdamW moments. A step converts the bf16 gradients
to fp32 master gradients, runs the same fused AdamW on the masters, and rounds the masters back
into the bf16 parameters, so the update itself loses nothing to bf16; only the forward and
backward run on rounded weights (as they would under autocast, which rounds them at every
matmul instead of once per step).
"""

from __future__ import annotations

import math
import weakref
from itertools import chain

import torch
from torch.optim.adam import adam
from torch.optim.optimizer import _get_fused_kernels_supported_devices, _get_scalar_dtype
from torch.utils.weak import WeakIdKeyDictionary

from tether.config import OptimConfig

# Per-parameter-tensor AdamW state (everything but "step"), fp32 whatever the parameter's dtype.
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
MASTER = "master"  # the optimizer-state key of a parameter's fp32 master copy

# fp32 originals of parameters `tether.precision.to_bf16` rounded: the masters start from them
# (not from the rounded bf16 values) when a MasterAdamW is made over those parameters.
_fp32_originals: WeakIdKeyDictionary = WeakIdKeyDictionary()
# parameter -> (a weak reference to) the MasterAdamW that owns it, for `master_optimizer`
_owners: WeakIdKeyDictionary = WeakIdKeyDictionary()


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig,
                   lr_by_prefix: dict[str, float] | None = None,
                   master_weights: bool = False) -> torch.optim.AdamW:
    """AdamW at cfg.lr, or at lr_by_prefix[p] for the parameters whose name starts with p
    (e.g. {"value.": 1e-4}: a fresh value head next to a pretrained policy). With
    `master_weights`, a MasterAdamW (fp32 masters for bf16 parameters; see the module notes)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def lr_of(name: str) -> float:
        return next((lr for prefix, lr in (lr_by_prefix or {}).items()
                     if name.startswith(prefix)), cfg.lr)

    groups = []
    for lr in dict.fromkeys(lr_of(n) for n, _ in named):
        params = [p for n, p in named if lr_of(n) == lr]
        # Norm gains and biases are not decayed: shrinking them toward 0 is not regularisation.
        groups += [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay,
             "lr": lr},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr},
        ]
    # The fused kernel: the same update as the default (foreach) one, which on 2 CPU cores took
    # 5-10x longer for SmolLM2-135M, up to a sixth of an fp32 SFT step (BENCHMARKS.md). It takes
    # float tensors of mixed dtypes and devices (it groups them itself) on the devices torch
    # has it for (CPU and CUDA among them); on any other device (or a non-float parameter,
    # which AdamW cannot train anyway) fall back to torch's default choice.
    supported = _get_fused_kernels_supported_devices()
    fused = all(p.device.type in supported and p.is_floating_point() for _, p in named)
    kind = MasterAdamW if master_weights else torch.optim.AdamW
    return kind([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                eps=cfg.eps, fused=fused or None)


class MasterAdamW(torch.optim.AdamW):
    """AdamW on fp32 master copies of (bf16) parameters; otherwise a torch AdamW.

    `param_groups` hold the model's own parameters, so schedulers, `zero_grad` and
    checkpoints keyed by parameter name (tether.distributed) see what they see for AdamW.
    `state[p]` holds, besides AdamW's fp32 moments and step, `"master"`: p's fp32 value, the
    one training updates; p itself is always the master rounded to p's dtype. So
    `state_dict()` carries the exact weights, and `load_state_dict` restores the masters in
    fp32 (torch would cast them to the parameters' bf16) and rounds them into the parameters.

    Each step: `master_grads()` (called by tether.trainers.common.clip_and_check, or by
    `step` when nothing called it) converts the parameters' gradients to fp32 gradients of the
    masters (`master.grad`), which is what clipping must scale and measure; `step` runs torch's
    AdamW kernel (fused where possible) on the masters and copies them into the parameters.
    A parameter whose .grad is None is skipped, as torch's AdamW skips it.

    Gradients themselves are bf16 until converted: they accumulate over micro-batches in bf16
    (each micro-batch's gradient is rounded to bf16 under autocast with fp32 weights too, but
    there their sum is fp32), and DDP averages them across processes in bf16.
    """

    def __init__(self, params, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        for p in self._params():
            original = _fp32_originals.pop(p, None)
            master = original if original is not None else p.detach().float().clone()
            self.state[p][MASTER] = master.to(p.device)
            _owners[p] = weakref.ref(self)
        self._grads_ready = False

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def masters(self) -> list[torch.Tensor]:
        return [self.state[p][MASTER] for p in self._params()]

    @torch.no_grad()
    def master_grads(self) -> list[torch.Tensor]:
        """The masters of the parameters that have gradients, each with its .grad the
        parameter's gradient in fp32 (a buffer kept from step to step). Idempotent until
        `zero_grad` or `step`."""
        with_grad = [p for p in self._params() if p.grad is not None]
        masters = [self.state[p][MASTER] for p in with_grad]
        if not self._grads_ready:
            for m in masters:
                if m.grad is None:
                    m.grad = torch.empty_like(m)
            if masters:
                torch._foreach_copy_([m.grad for m in masters], [p.grad for p in with_grad])
            self._grads_ready = True
        return masters

    @torch.no_grad()
    def broadcast_masters(self, src: int = 0) -> None:
        """Every process's masters made rank `src`'s, as DDP makes the parameters at wrap time
        (call under torchrun after making the optimizer; a no-op in one process)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for m in self.masters():
            dist.broadcast(m, src)
        self._round_into_params()

    @torch.no_grad()
    def _round_into_params(self) -> None:
        params = self._params()
        if params:
            torch._foreach_copy_(params, [self.state[p][MASTER] for p in params])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.master_grads()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            for p, state in zip(params, states, strict=True):
                if "step" not in state:  # lazy, as torch's AdamW (where "step" lives: ditto)
                    on_device = group["capturable"] or group["fused"]
                    state["step"] = torch.zeros(
                        (), dtype=_get_scalar_dtype(is_fused=group["fused"]),
                        device=p.device if on_device else "cpu")
                    state["exp_avg"] = torch.zeros_like(state[MASTER])
                    state["exp_avg_sq"] = torch.zeros_like(state[MASTER])
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(state[MASTER])
            masters = [s[MASTER] for s in states]
            beta1, beta2 = group["betas"]
            adam(masters, [m.grad for m in masters], [s["exp_avg"] for s in states],
                 [s["exp_avg_sq"] for s in states],
                 [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
                 [s["step"] for s in states], amsgrad=group["amsgrad"], beta1=beta1,
                 beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                 eps=group["eps"], maximize=group["maximize"], foreach=group["foreach"],
                 capturable=group["capturable"], differentiable=False, fused=group["fused"],
                 decoupled_weight_decay=True)
            torch._foreach_copy_(params, masters)
        self._grads_ready = False
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self._grads_ready = False  # the masters' .grad buffers are refilled on the next use

    def __setstate__(self, state: dict) -> None:
        # torch's Adam reads "step" from every state that is not empty: a master alone (a
        # parameter not stepped yet) stays out of its sight.
        alone = {p: s.pop(MASTER) for p, s in state["state"].items()
                 if MASTER in s and "step" not in s}
        super().__setstate__(state)
        for p, master in alone.items():
            self.state[p][MASTER] = master

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but the masters and moments stay fp32 (torch casts every float state
        tensor to its parameter's dtype), a missing master (a plain AdamW's state) is taken
        from the parameter, and the parameters are set to their (rounded) masters."""
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        param_of = dict(zip(saved_ids, self._params(), strict=True))
        for key, saved in state_dict["state"].items():
            p = param_of[key]
            for name in (MASTER, *_MOMENTS):
                if name in saved:
                    self.state[p][name] = saved[name].to(p.device, torch.float32, copy=True)
        for p in self._params():
            if MASTER not in self.state[p]:
                self.state[p][MASTER] = p.detach().float().clone()
            _owners[p] = weakref.ref(self)
        self._grads_ready = False
        self._round_into_params()


def master_optimizer(params) -> MasterAdamW | None:
    """The MasterAdamW that owns (the first of) `params`, if one does."""
    return next((owner for p in params if p in _owners and (owner := _owners[p]()) is not None),
                None)


def without_masters(optimizer_state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """A MasterAdamW state dict (keyed by parameter name, as tether.distributed writes it)
    split into a torch-AdamW-shaped one and the fp32 masters by name: what a checkpoint stores
    as the optimizer and as the model."""
    masters = {n: s[MASTER].detach().cpu().clone() for n, s in optimizer_state["state"].items()
               if MASTER in s}
    state = {n: {k: v for k, v in s.items() if k != MASTER}
             for n, s in optimizer_state["state"].items()}
    return {**optimizer_state, "state": {n: s for n, s in state.items() if s}}, masters


def with_masters(optimizer_state: dict, weights: dict[str, torch.Tensor]) -> dict:
    """The inverse of `without_masters`: `weights` (fp32, by name) put back as the masters."""
    state = {n: dict(s) for n, s in optimizer_state["state"].items()}
    for name, w in weights.items():
        state.setdefault(name, {})[MASTER] = w
    return {**optimizer_state, "state": state}


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str,
                  final: float = 0.0) -> float:
    """Factor on the peak lr for optimizer step `step` (0-based): a linear warmup to 1, then
    a decay from 1 to `final` at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(progress, 1.0)
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return final + (1.0 - final) * decay


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup_steps=cfg.warmup_steps,
                                              total_steps=total_steps, schedule=cfg.schedule,
                                              final=cfg.final_lr_fraction))
