"""Joining a torchrun (``env://``) process group: which rank this process is, of how many, on which device."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .cli import UsageError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: global ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def on(self) -> bool:
        """True inside a multi-process job."""
        return self.world > 1


def init_distributed(device: str | None) -> tuple[Ranks, bool]:
    """Join the torchrun/env:// process group if WORLD_SIZE > 1 (nccl on CUDA, gloo otherwise).

    Returns the ranks and whether the group was created here (then the caller destroys it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), False
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    created = not dist.is_initialized()
    if created:
        use_cuda = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Ranks(rank, world, local), created


def pick_device(device: str | None, ranks: Ranks) -> torch.device:
    """A run's device: ``device`` (``cpu``, ``cuda``, ``cuda:N``), else this rank's CUDA GPU when there is one, else CPU."""
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device={want!r} is not available: no CUDA GPU visible")
        return torch.device(want if ":" in want else f"cuda:{ranks.local_rank}")
    return torch.device("cpu")
