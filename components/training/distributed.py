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
- **FSDP** (``strategy="fsdp"``, issue 20): torch's own FSDP2, :func:`torch.distributed.fsdp.fully_shard`, on every
  repeated block the model names in Hugging Face's ``_no_split_modules`` (decoder and vision layers), then on the
  whole model; each parameter is a DTensor sharded over the ranks (parameters, gradients and AdamW's moments: 1/N
  per rank). It shards per parameter, so frozen base weights and trainable adapters live side by side and the
  stage table can change what trains between stages (FSDP1's flat parameters need ``use_orig_params`` for that).
  Sharding is in place and stays for the model's lifetime: :func:`full_tensors` gathers what a stage saves (every
  rank calls it), :func:`load_into` scatters saved tensors back, and a rank that saves or evaluates alone builds a
  plain model from the gathered tensors (components.training.base / recipe). Checkpoints hold the full optimizer
  state by parameter name (:func:`optimizer_state`, torch.distributed.checkpoint's state-dict API). A bf16/fp16
  base shards in float32 and computes in its dtype (``MixedPrecisionPolicy``): FSDP's master weights, in place of
  components.training.precision's in-place upcast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")
#: ``train.distributed``: how several processes share a stage ("none": one process; torchrun then is an error).
STRATEGIES = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False  # this module started the process group (and closes it)
    strategy: str = "ddp"  # "ddp" or "fsdp" (see the module docstring); one process ignores it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """FSDP over several processes: parameters are DTensors between :func:`shard_model` and the model's end."""
        return self.distributed and self.strategy == "fsdp"


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


def world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str = "auto", timeout_s: float = 600.0, strategy: str = "ddp") -> DistEnv:
    """A :class:`DistEnv` from torchrun's environment; starts the process group when WORLD_SIZE > 1. Every
    collective waits at most ``timeout_s`` for the other ranks, then fails on each rank that waits."""
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    world = world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistEnv(device=dev, strategy=strategy)
    started = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        started = True
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=dev, initialized=started, strategy=strategy)


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


def wrap_model(model: nn.Module, env: DistEnv) -> nn.Module:
    """What the training step calls: DDP around ``model`` (``strategy="ddp"``), the sharded model itself (FSDP:
    :func:`shard_model` first), or ``model`` with one process."""
    if env.sharded:
        return shard_model(model, env)
    return wrap_ddp(model, env)


@contextlib.contextmanager
def no_sync(wrapped: nn.Module, env: DistEnv) -> Iterator[None]:
    """Accumulate this micro-batch's gradients locally (no reduction until the step's last micro-batch)."""
    if isinstance(wrapped, DistributedDataParallel):
        with wrapped.no_sync():
            yield
        return
    from torch.distributed.fsdp import FSDPModule

    if env.sharded and isinstance(wrapped, FSDPModule):
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
        return
    yield


def shard_model(model: nn.Module, env: DistEnv) -> nn.Module:
    """FSDP2 over ``env``'s ranks, in place (see the module docstring); a model sharded before is returned as it
    is, so the stages of one recipe share one sharding. Call after the stage's trainable tensors took their dtype
    and before the optimizer is built (the parameters become new DTensor objects)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if not env.sharded or isinstance(model, FSDPModule):
        return model
    mesh = init_device_mesh(env.device.type, (env.world,))
    # a bf16/fp16 base: FSDP's own master weights: every shard in float32 (what AdamW steps; 4 bytes / N per
    # parameter, no more than a bf16 replica from 2 ranks on), gathered in the base's dtype for compute, gradients
    # reduced in float32. Then every stage finds float32 parameters, and nothing is cast in place under FSDP
    low = _low_precision(model)
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32) if low else MixedPrecisionPolicy()
    if low:
        model.float()
    blocks = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or ())}
    for module in list(model.modules())[1:]:  # the repeated blocks first (each all-gathers on its own), then the rest
        if type(module).__name__ in blocks and not isinstance(module, FSDPModule):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _low_precision(model: nn.Module) -> torch.dtype | None:
    """bfloat16 or float16 when most of the model's floating-point parameters have it, else None."""
    counts: dict[torch.dtype, int] = {}
    for param in model.parameters():
        if param.is_floating_point():
            counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    dtype = max(counts, key=lambda d: counts[d]) if counts else torch.float32
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def full_tensors(model: nn.Module, names: Iterable[str]) -> dict[str, Tensor]:
    """The named parameters as whole tensors: a sharded parameter is gathered (a collective: under FSDP every rank
    calls this at the same point, in the same order), any other is detached as it is."""
    from torch.distributed.tensor import DTensor

    wanted = set(names)
    out: dict[str, Tensor] = {}
    for name, param in model.named_parameters():
        if name in wanted:
            out[name] = param.full_tensor().detach() if isinstance(param, DTensor) else param.detach()
    return out


@torch.no_grad()
def load_into(param: Tensor, value: Tensor) -> None:
    """Copy a whole saved tensor into a parameter; a sharded one keeps its shard (``distribute_tensor``: every rank
    calls this for the same parameters in the same order, as for :func:`full_tensors`)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        local = value.to(param.to_local().device, param.dtype)
        param.copy_(distribute_tensor(local, param.device_mesh, param.placements))
    else:
        param.copy_(value.to(param.device, param.dtype))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv) -> dict[str, Any]:
    """What a checkpoint stores of the optimizer: its ``state_dict()``, or under FSDP the whole state by parameter
    name gathered from the shards (every rank calls it; rank 0 receives it)."""
    if not env.sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_optimizer_state_dict(model, optimizer, options=options))


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any], env: DistEnv
) -> None:
    """Undo :func:`optimizer_state` (every rank calls it, each with the checkpoint's state)."""
    if not env.sharded:
        optimizer.load_state_dict(dict(state))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, dict(state), options=StateDictOptions(full_state_dict=True))
