"""Joining a torchrun (``env://``) process group: which rank this process is, of how many, on which device;
and DDP's once-per-process warning kept to rank 0."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from focusformer_fast.utils.cli import Interrupted, UsageError


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


def _attempt_store(world: int) -> dist.Store | None:
    """torchrun's shared store, its keys prefixed by this restart attempt; None outside torchrun's agent store.

    Under ``torchrun --max-restarts`` with the c10d rendezvous (``--standalone`` included), workers
    join the process group through a store the agent keeps across restarts (``TORCHELASTIC_USE_AGENT_STORE``),
    and ``init_process_group`` writes its keys there without an attempt prefix: restarted workers
    read the dead workers' addresses. Measured (torch 2.14.1, 2 gloo ranks, one killed with -9):
    6 of 8 restarts failed (5 "Gloo connectFullMesh failed ... Connection refused", 1 hung in
    ``init_process_group``). One prefix per attempt (``TORCHELASTIC_RESTART_COUNT``) gives each
    attempt fresh keys.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from torch.distributed.constants import default_pg_timeout

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=default_pg_timeout)
    return dist.PrefixStore(f"focusformer_fast/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


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
        backend = "nccl" if use_cuda else "gloo"
        store = _attempt_store(world)
        if store is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    return Ranks(rank, world, local), created


@contextlib.contextmanager
def process_group(device: str | None) -> Iterator[Ranks]:
    """``with process_group(device) as ranks:`` joins the torchrun group (:func:`init_distributed`) and leaves
    the group it created at the end: after a barrier when the body finished (or every rank stopped for a
    signal, :class:`~focusformer_fast.utils.cli.Interrupted`), at once when it raised anything else."""
    ranks, created = init_distributed(device)
    try:
        yield ranks
    except Interrupted:
        if created:
            _leave(finished=True)
        raise
    except BaseException:
        if created:
            _leave(finished=False)
        raise
    if created:
        _leave(finished=True)


def _leave(finished: bool) -> None:
    """Leave the process group: after a barrier when every rank ``finished`` the run.

    gloo destroys a collective's work object on its own thread once the work is done, after the
    caller's ``wait`` returned; when that work holds a tensor Python already let go of (an accuracy's
    count tensor), the thread needs the GIL to free it. A rank that exits right after its last
    collective (rank 1 after the final table, while rank 0 writes the results) can then be
    finalizing the interpreter at that moment, and the thread aborts the process ("terminate called
    without an active exception", exit -6: 7 of 79 two-rank runs here, seen in gdb in gloo's
    ``runLoop``). So the run's objects still holding collectives (a DDP model in a reference cycle
    keeps its reducer's last work) are collected first, and a barrier holds every rank until all
    are done, with the GIL free for those threads. After an exception the other ranks may never
    come, so there is no barrier.
    """
    gc.collect()
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def pick_device(device: str | None, ranks: Ranks) -> torch.device:
    """A run's device: ``device`` (``cpu``, ``cuda``, ``cuda:N``), else this rank's CUDA GPU when there is one, else CPU."""
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device={want!r} is not available: no CUDA GPU visible")
        return torch.device(want if ":" in want else f"cuda:{ranks.local_rank}")
    return torch.device("cpu")


class OneRankWarnings:
    """On ranks > 0, drops DDP's "find_unused_parameters=True ... did not find any unused parameters" warning.

    c10 prints it straight to file descriptor 2, once per process, from the forward pass; rank 0
    keeps it, so a torchrun prints it once. :meth:`around` captures fd 2 during a forward, passes
    every other line through, and stops capturing once the warning was seen.
    """

    MARK = b"did not find any unused parameters"

    def __init__(self, active: bool) -> None:
        self.active = active
        self.buffer = tempfile.TemporaryFile() if active else None

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        if not self.active:
            yield
            return
        sys.stderr.flush()
        self.buffer.seek(0)
        self.buffer.truncate()
        saved = os.dup(2)
        os.dup2(self.buffer.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            self.buffer.seek(0)
            text = self.buffer.read()
            if self.MARK in text:
                self.active = False
                self.buffer.close()
                text = b"".join(ln for ln in text.splitlines(keepends=True) if self.MARK not in ln)
            if text:
                os.write(2, text)
