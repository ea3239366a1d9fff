"""Data parallelism under `torchrun`: the process group, model wrapping, sharded batches, and
the reductions that make N processes compute what one process would.

    torchrun --nproc-per-node 2 -m tether sft --config C.yaml train.strategy=fsdp2

Every trainer keeps its one loop; this module gives it a `Dist` and a few verbs:

- `setup(strategy, device)`: joins the group torchrun started, or returns a single-process
  `Dist` that does nothing at all. Each process takes the GPU of its LOCAL_RANK when CUDA is
  available (NCCL between them), else the CPU (gloo); `train.device` can insist on either.
- `wrap(model)`: DistributedDataParallel (`ddp`, every rank holds the whole model) or FSDP2
  (`fsdp2`, `torch.distributed.fsdp.fully_shard` on every transformer block and the root:
  parameters, gradients and optimizer state sharded across ranks).
- `shard(batch)`: this rank's contiguous slice of the global batch. `train.batch_size` is the
  global batch, so one config means the same optimisation on any number of processes.
- `backward(loss)`: the losses are normalised by whole-batch counts (tokens, pairs, groups)
  that every rank computes itself, so the global loss is the SUM of the ranks' losses. DDP and
  FSDP2 average gradients over ranks; scaling each rank's loss by the world size turns that
  average back into the sum. Token-level means thus weight every token equally, whatever rank
  it landed on (the all-reduce of sums and counts, never a mean of means).
- `sum(...)`: metrics summed across ranks before logging; only rank 0 (`main`) writes logs,
  checkpoints and the final model.

Checkpoints hold whole (unsharded) tensors and the optimizer state keyed by parameter name, so
a run resumes on any number of processes and under either strategy: a checkpoint written by 2
`fsdp2` processes continues on 1 process, or on 4 `ddp` ones.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from tether.choices import STRATEGIES
from tether.device import pick_device
from tether.errors import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    strategy: str = "ddp"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def processes(self) -> str:
        """"1 process on cpu", or "2 processes, fsdp2, on cuda": for the line each trainer
        starts with."""
        who = "1 process" if self.world == 1 else f"{self.world} processes, {self.strategy},"
        return f"{who} on {self.device.type}"

    @property
    def sharded(self) -> bool:
        return self.world > 1 and self.strategy == "fsdp2"

    # -- data ---------------------------------------------------------------------------------

    def shard(self, items: Sequence) -> Sequence:
        """This rank's slice of a global batch (whose size the config checks divides)."""
        if self.world == 1:
            return items
        if len(items) % self.world:
            raise ConfigError(f"a batch of {len(items)} does not split over {self.world} "
                              f"processes; make the batch size a multiple of the world size")
        n = len(items) // self.world
        return items[self.rank * n:(self.rank + 1) * n]

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks (float64, so counts stay exact)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, *values: float) -> list[float]:
        """Each value's maximum over the ranks (e.g. the most micro-batches any rank has)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """1-D tensors of any length from every rank, concatenated in rank order."""
        if self.world == 1:
            return tensor
        t = tensor.detach().to(self.device, torch.float32).flatten()
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device)
                 for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([t.numel()], device=self.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.cat([t, t.new_zeros(longest - t.numel())])
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes, strict=True)]).cpu()

    def all_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor of the same shape, concatenated along dim 0 in rank order."""
        if self.world == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def all_objects(self, obj: object) -> list:
        """Every rank's (picklable) object, in rank order."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            # NCCL's barrier wants to know the GPU, or it guesses (and warns)
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -- the model ----------------------------------------------------------------------------

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this process's device (before `wrap`, and for frozen models)."""
        return model.to(self.device)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP or FSDP2 around a model already on this process's device."""
        if self.world == 1:
            return model
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            cuda = self.device.type == "cuda"
            return DistributedDataParallel(model, device_ids=[self.device.index] if cuda
                                           else None)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        blocks = _transformer_blocks(model)
        if not blocks:
            raise ConfigError(f"train.strategy=fsdp2: found no transformer blocks in "
                              f"{type(model).__name__} to shard")
        mesh = init_device_mesh(self.device.type, (self.world,))
        for block in blocks:
            fully_shard(block, mesh=mesh)
        # The root too reshards after every forward (FSDP2 keeps it whole by default, until
        # the backward): after a no-grad evaluation it would otherwise stay whole, and its
        # parameters would no longer be the ones the optimizer holds.
        fully_shard(model, mesh=mesh, reshard_after_forward=True)
        return model

    @contextlib.contextmanager
    def gathered(self, model: torch.nn.Module) -> Iterator[None]:
        """Under fsdp2, the root's own parameters (embeddings, output head, final norm) whole
        for calls into a submodule that bypass the root's forward: generation, a reference
        pass through the policy with its adapter off. The blocks gather theirs as they run.
        Every rank must make the same calls inside. Elsewhere it does nothing."""
        if not self.sharded:
            yield
            return
        # FSDP2 takes the first module to run a forward for the root; when that is a block
        # (generation before any training pass), every block becomes a root of its own. Settle
        # the root first (what its first forward would do; torch has no public call for it).
        model._get_fsdp_state()._lazy_init()
        model.unshard()
        try:
            yield
        finally:
            model.reshard()

    @contextlib.contextmanager
    def whole(self, model: torch.nn.Module) -> Iterator[None]:
        """Under fsdp2, every parameter gathered whole for the duration (one all-gather, the
        whole model in every process meanwhile), so the forwards inside make no collective
        calls and each rank may run its own: generation, where ranks sample different prompts
        for different numbers of steps. Elsewhere it does nothing."""
        if not self.sharded:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        model._get_fsdp_state()._lazy_init()  # as in `gathered`
        modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
        model.set_reshard_after_forward(False)  # recursive: the blocks stay whole too
        for module in modules:
            module.unshard()
        try:
            yield
        finally:
            for module in modules:
                module.reshard()
            model.set_reshard_after_forward(True)  # what `wrap` set: every module reshards

    def backward(self, loss: torch.Tensor) -> None:
        # DDP and FSDP2 average gradients over ranks; the loss is a sum over ranks.
        (loss * self.world).backward()

    def clip_grad_norm(self, parameters: list[torch.nn.Parameter], max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor, sharded like the gradients
            norm = norm.full_tensor()
        return norm.item()

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Whole tensors of the trained parameters (collective under fsdp2; every rank gets
        them)."""
        out = {}
        for name, p in unwrap(model).named_parameters():
            if p.requires_grad:
                full = p.full_tensor() if hasattr(p, "full_tensor") else p
                out[name] = full.detach().cpu().clone()
        return out

    def load_trainable_state(self, model: torch.nn.Module,
                             state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.tensor import distribute_tensor

        params = dict(unwrap(model).named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, "
                               f"unexpected {extra[:3]} (was it written with another model or "
                               f"LoRA setting?)")
        with torch.no_grad():
            for name, tensor in state.items():
                p = params[name]
                if hasattr(p, "device_mesh"):  # an FSDP2 shard: keep this rank's part
                    tensor = distribute_tensor(tensor.to(self.device, p.dtype), p.device_mesh,
                                               p.placements)
                p.copy_(tensor)

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's whole state keyed by parameter name, whatever the strategy and
        world size (collective under fsdp2), so that any of them can resume from it."""
        if not self.sharded:
            return _names_for_indices(_param_names(model, optimizer), optimizer.state_dict())
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict) -> None:
        by_index = all(isinstance(p, int) for g in state["param_groups"] for p in g["params"])
        if not self.sharded:
            optimizer.load_state_dict(
                state if by_index else _indices_for_names(_param_names(model, optimizer), state))
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            model, optimizer,
            _names_for_indices(_param_names(model, optimizer), state) if by_index else state,
            options=StateDictOptions(full_state_dict=True))

    def full_model(self, model: torch.nn.Module, rebuild: Callable[[], torch.nn.Module],
                   part: str = "") -> torch.nn.Module | None:
        """The trained model (or its submodule named `part`), whole, on rank 0 (None
        elsewhere): to save or evaluate alone. Under fsdp2 its shards are gathered (collective)
        into a fresh copy from `rebuild`."""
        if not self.sharded:
            return unwrap(model).get_submodule(part) if self.main else None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        state = get_model_state_dict(model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        if not self.main:
            return None
        if part:
            state = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
        whole = rebuild()
        whole.load_state_dict(state)
        return whole


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters, in its order (what torch numbers 0, 1, ...)."""
    name_of = {id(p): n for n, p in unwrap(model).named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _names_for_indices(names: list[str], state: dict) -> dict:
    """An optimizer state_dict with parameters numbered 0, 1, ... keyed by their names."""
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                             for g in state["param_groups"]]}


def _indices_for_names(names: list[str], state: dict) -> dict:
    index = {name: i for i, name in enumerate(names)}
    missing = {n for g in state["param_groups"] for n in g["params"]} - set(index)
    if missing or len(index) != sum(len(g["params"]) for g in state["param_groups"]):
        raise ConfigError(f"the checkpoint's optimizer state does not match the model's "
                          f"trained parameters (e.g. {sorted(missing)[:2]}): was it written "
                          f"for another model or LoRA setting?")
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                             for g in state["param_groups"]]}


def _transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face model (decoder layers, encoder layers)."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and \
                len({type(m) for m in module}) == 1:
            return list(module)
    return []


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return getattr(model, "module", model) if type(model).__name__ == \
        "DistributedDataParallel" else model


def setup(strategy: str = "ddp", device: str = "auto") -> Dist:
    """Join the process group `torchrun` describes in the environment; one process otherwise.
    `device` as tether.device.pick_device takes it; the backend follows: NCCL between GPUs,
    gloo between CPU processes."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got "
                          f"'{strategy}'")
    where = pick_device(device)
    if where.type == "cuda":
        torch.cuda.set_device(where)  # before anything allocates on the default GPU 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(strategy=strategy, device=where)
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        dist.init_process_group(backend(where), device_id=where if where.type == "cuda"
                                else None)
    return Dist(rank=rank, world=world, strategy=strategy, device=where)


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"

