"""Data parallelism under torchrun: DDP (Li et al. 2020) and FSDP2 (`fully_shard`).

    torchrun --nproc_per_node 2 -m lmstack.cli train --config cfg.toml --set parallel=ddp

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is one process and nothing
here does anything. Each rank reads its own share of the batches (the loader deals windows
round-robin by rank), so the global batch is world_size x batch_size x grad_accum. DDP keeps a
full replica per rank and all-reduces (averages) gradients; FSDP2 shards parameters, gradients
and optimizer state over the ranks and gathers each layer's weights only while it runs. Only
rank 0 logs and writes checkpoints. Backend: gloo on CPU, nccl on CUDA.

Under FSDP every forward pass is a collective (each layer all-gathers its weights), so whatever
runs the model — training, validation, samples, gathering a checkpoint — must run on every rank
in the same order, or the job hangs. Checkpoints hold full (unsharded) weights and optimizer
state keyed by parameter name (torch.distributed.checkpoint.state_dict), the same format in one
process, under DDP and under FSDP, so a run can resume with a different number of processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule

from lmstack.errors import ConfigError


@dataclass
class Dist:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # setup() created the process group, so teardown() ends it

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and saves."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' is CUDA (this rank's GPU) when present, else CPU."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available; use device=cpu")
    return torch.device(name)


def setup(device: str = "auto") -> Dist:
    """Join the torchrun job if there is one; return this process's place in it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev, owns)


def wrap(model: torch.nn.Module, d: Dist, mode: str) -> torch.nn.Module:
    """Wrap the model for data parallelism: mode 'ddp' or 'fsdp'; unchanged in one process."""
    if not d.enabled:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda"
                                       else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard each transformer block on its own (gathered only while it runs), then the root.
        for block in getattr(model, "layers", []):
            fully_shard(block)
        fully_shard(model)
        return model
    raise ConfigError(f"parallel={mode!r} is unknown; use 'ddp' or 'fsdp'")


def is_sharded(model: torch.nn.Module) -> bool:
    """True for an FSDP2 model, whose every forward is a collective all ranks must join."""
    return isinstance(model, FSDPModule)


def reshard(model: torch.nn.Module) -> None:
    """Free FSDP's gathered weights after a forward without backward (validation, samples).

    FSDP2 keeps the root's weights gathered after a forward, expecting the backward; with none
    coming they stay gathered, and the module's parameters are then plain tensors that the
    optimizer (holding the shards) and the state-dict gathering do not know."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextlib.contextmanager
def grad_sync(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP) inside when `sync` is False.

    Gradient accumulation needs the reduction only after the last micro-batch."""
    if sync:
        yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights on CPU, on rank 0 (empty elsewhere). Collective under FSDP."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Unsharded optimizer state keyed by parameter name, on rank 0. Collective under FSDP."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict) -> None:
    """Load `full_optimizer_state` output (every rank passes the whole dict; each keeps its shard)."""
    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))


def gather_objects(obj: Any, d: Dist) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-item list in one process)."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank if `flag` is true on any: ranks must agree to stop or save together."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Element-wise sum of Python numbers over ranks (float64, so token counts stay exact)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def all_mean(value: float, d: Dist) -> float:
    """Average a Python number over ranks (for logging the global loss)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t.item()) / d.world_size


def teardown(d: Dist) -> None:
    """Leave the process group."""
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()
