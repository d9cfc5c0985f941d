"""Data-parallel training under ``torchrun``: joining the process group and agreeing across ranks.

``torchrun --nproc_per_node=N`` starts N copies of the same program with ``WORLD_SIZE``, ``RANK``
and ``LOCAL_RANK`` set. :func:`_setup_distributed` turns those variables into a :class:`_Dist`
record and a device; the helpers below are the few collectives the training loop needs besides
the gradient all-reduce that DistributedDataParallel does itself. With ``WORLD_SIZE`` unset (or
1) everything here is a no-op, so the loop has a single code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from gptlab.utils import get_device

__all__: list[str] = []  # internal to gptlab.train and gptlab.checkpoint


@dataclass(frozen=True)
class _Dist:
    """Where this process sits in a torchrun job (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel or torch.compile wrapper."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _setup_distributed(device_pref: str) -> tuple[_Dist, torch.device]:
    """Join the torchrun process group if ``WORLD_SIZE`` > 1; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist(), get_device(None if device_pref == "auto" else device_pref)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref.startswith("cuda:"):
        raise ValueError("under torchrun set device = 'cuda' (each process takes cuda:LOCAL_RANK)")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return _Dist(rank, local_rank, world_size, owns), device


def _mean_over_ranks(value: torch.Tensor, d: _Dist) -> torch.Tensor:
    """The mean of ``value`` over all ranks (``value`` itself with one process)."""
    if d.world_size > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # gloo has no AVG
        value /= d.world_size
    return value


def _max_over_ranks(value: int, d: _Dist, device: torch.device) -> int:
    """The largest of ``value`` over all ranks (``value`` itself with one process).

    The loop stops on a signal by this: a signal may reach one process and not another, but
    all ranks must stop at the same step, because saving a checkpoint is a collective (every
    rank hands in its RNG state).
    """
    if d.world_size <= 1:
        return value
    t = torch.tensor([value], device=device)  # NCCL only reduces CUDA tensors
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
