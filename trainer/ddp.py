"""DDP building blocks that the step engine and the trainer use: a process's Rank, the
process group's device and backend, DDP wrappers and the few collectives a job needs.

Nothing here starts a process or builds a Trainer (that is `trainer.distributed`, which
imports the trainer): this module is the bottom layer, so imports flow one way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from trainer.spec import TrainSpec

# A rank that waits longer than this on a collective gives up. A peer that dies closes its
# sockets and is noticed at once; this is for one that hangs. Generous, because rank 0 alone
# evaluates, samples and checkpoints (and its database writes may wait out a restart) while
# the others wait at the next step's collective.
TIMEOUT = timedelta(minutes=10)
# All of a network's gradient in one bucket where it fits: one all-reduce per optimizer step.
BUCKET_MB = 256


@dataclass(frozen=True)
class Rank:
    """This process's place in a job: rank r of `world` (0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def writes(self) -> bool:
        """Rank 0 alone evaluates and writes metrics, samples, checkpoints and warnings."""
        return self.rank == 0


def backend_for(spec: TrainSpec, device: torch.device) -> str:
    if spec.distributed.backend != "auto":
        return spec.distributed.backend
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, rank: Rank) -> torch.device:
    """Each rank its own GPU (rank r on the r-th visible device); CPU ranks share the CPU."""
    if device.type != "cuda" or not rank.distributed:
        return device
    base = device.index or 0
    index = base + rank.rank
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"distributed.world_size: {rank.world} ranks from cuda:{base} need "
            f"{base + rank.world} visible CUDA devices; this process sees "
            f"{torch.cuda.device_count()}"
        )
    return torch.device("cuda", index)


def wrap(module: nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP over one network. Buffers (batch-norm statistics, spectral-norm vectors) are not
    broadcast on every forward: each rank updates them the same way, or keeps its own."""
    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=BUCKET_MB,
        forward_sync_buffers=False,
    )


def no_sync(
    ddp: dict[str, DistributedDataParallel] | None, nets: tuple[str, ...], sync: bool
) -> contextlib.ExitStack[bool | None]:
    """DDP's no_sync for the wrappers of `nets`, unless this backward is to sync them (or
    there are no wrappers: a job of one rank)."""
    stack = contextlib.ExitStack()
    if ddp is not None and not sync:
        for net in nets:
            stack.enter_context(ddp[net].no_sync())
    return stack


class AllReduceCounter:
    """A DDP communication hook that counts gradient all-reduces, then does the default one."""

    def __init__(self) -> None:
        self.calls = 0

    def attach(self, ddp: DistributedDataParallel) -> AllReduceCounter:
        ddp.register_comm_hook(None, self._hook)
        return self

    # Unannotated on purpose: DDP compares the annotations with the real classes, and this
    # module's are strings (postponed evaluation).
    def _hook(self, state, bucket):  # type: ignore[no-untyped-def]
        self.calls += 1
        return default_hooks.allreduce_hook(state, bucket)


def average_(tensors: list[torch.Tensor]) -> None:
    """Average tensors over the ranks, in place, with one all-reduce."""
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any (stop together, at the same step)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
