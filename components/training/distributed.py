"""One code path for one process and for ``torchrun --nproc_per_node N`` (issue 4: "the same code path under
torchrun --nproc_per_node 2 (gloo on CPU)").

    from components.training.distributed import init_distributed, shard, all_reduce_sum
    dist_env = init_distributed("auto")      # reads RANK / WORLD_SIZE / LOCAL_RANK that torchrun sets
    mine = shard(global_indices, dist_env)    # this rank's share of a global micro-batch
    total = all_reduce_sum(torch.tensor(count), dist_env)
    model = wrap_ddp(model, dist_env)         # DistributedDataParallel when world > 1, else the model itself
    ...
    close_distributed(dist_env)

Choices:

- **Backend**: gloo on CPU, nccl on CUDA (one GPU per local rank).
- **Global batch**: the trainer draws the *global* micro-batch (the same indices on every rank, from the same seeded
  sampler) and each rank keeps ``indices[rank::world]``; the loss is a sum over tokens divided by the global token
  count of the whole optimizer step, times ``world`` (DDP averages gradients), so N processes compute the gradient
  of exactly the batch one process would (up to float summation order).
- **DDP with find_unused_parameters=True**: batches are single-task, so the other task's projector and plugin get
  no gradient in a step; every rank runs the same task in a step, so such parameters are unused on all ranks and
  DDP leaves their gradients untouched (None). The trainer also drops any gradient outside the step task's
  trainable set before the optimizer step, so this holds whatever DDP does.
- **Rank 0 only** saves checkpoints and artifacts and reports metrics; other ranks wait at a barrier.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False  # this module started the process group (and closes it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """ "auto": CUDA (this local rank's GPU) when available, else CPU; or an explicit "cpu" / "cuda" / "cuda:1"."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistEnv:
    """A :class:`DistEnv` from torchrun's environment; starts the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistEnv(device=dev)
    started = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        started = True
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=dev, initialized=started)


def close_distributed(env: DistEnv) -> None:
    if env.initialized and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(items: Sequence[T], env: DistEnv) -> list[T]:
    """This rank's share of a global list: ``items[rank::world]``."""
    if env.world > len(items):
        raise ValueError(f"a global micro-batch of {len(items)} cannot feed {env.world} ranks: raise batch_size")
    return list(items[env.rank :: env.world])


def all_reduce_sum(value: Tensor, env: DistEnv) -> Tensor:
    """Sum over ranks (the tensor itself with one process); reduced on the rank's device (nccl needs CUDA
    tensors), returned on the input's device."""
    if not env.distributed:
        return value
    reduced = value.to(env.device, copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(value.device)


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` with one process)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """``DistributedDataParallel`` over the parameters that require grad now (the stage's), or the model itself."""
    if not env.distributed:
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
