"""DataLoaders over a :class:`~focusformer_fast.data.splits.DataSplits` that keep a GPU fed, and their options.

The workers decode and crop (uint8 out); the batches are finished (float, color jitter,
normalization) on the training device (:mod:`focusformer_fast.data.device_batches`). On CUDA the
defaults are timm's: worker processes (a share of this machine's cores per local rank), pinned
memory, persistent workers, the next batch copied while the current one trains. On CPU the
default is no worker process: the training step uses the cores.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from focusformer_fast.data.device_batches import DeviceLoader
from focusformer_fast.data.options import LoaderOptions

__all__ = ["Loaders", "make_loaders"]


class _Shard(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``range(n)``: disjoint, unpadded eval shards."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


class _WorkerView(Dataset):
    """What a worker makes of sample ``i`` of a split: its uint8 pixels (or Jittered), not normalized."""

    def __init__(self, split: Any) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.split.sample(i)


def _ignore_stop_signals(worker_id: int) -> None:
    """A worker process ignores SIGTERM and SIGINT. A scheduler (SLURM at preemption or ``scancel``) and
    Ctrl-C in a terminal signal the whole process group; the main process decides when to stop (after
    the step, with a checkpoint), and a worker killed by the signal would end the run with a traceback
    instead. Workers still exit with the main process, however it ends."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass(frozen=True)
class Loaders:
    """Train/val/test loaders from :func:`make_loaders`, each a
    :class:`~focusformer_fast.data.device_batches.DeviceLoader`.

    Call :meth:`set_epoch` before each training epoch: the shuffle order (and the worker
    augmentation seeds) then depend only on ``(seed, epoch)``, so a resumed run replays the
    same order as an uninterrupted one.
    """

    train: DeviceLoader
    val: DeviceLoader
    test: DeviceLoader
    seed: int

    def set_epoch(self, epoch: int) -> None:
        """Reseed the training order for ``epoch`` (0-based), as DistributedSampler does: seed + epoch."""
        self.train.generator.manual_seed(self.seed + epoch)
        if isinstance(self.train.sampler, DistributedSampler):
            self.train.sampler.set_epoch(epoch)


def make_loaders(
    splits: Any,
    batch_size: int,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    options: LoaderOptions | None = None,
    distributed: bool = False,
    drop_last: bool = True,
) -> Loaders:
    """Loaders over ``splits`` (a DataSplits); batches are ``(images float32 [B, C, H, W], labels int64 [B])``
    on ``device``, normalized with ``splits.mean``/``std``.

    The train loader shuffles with a ``torch.Generator`` seeded with ``seed + epoch`` (see
    :meth:`Loaders.set_epoch`) and drops the last incomplete batch when ``drop_last``. With
    ``distributed`` (an initialized ``torch.distributed`` process group is required), train uses
    ``DistributedSampler(seed=seed)`` and ``batch_size`` is per rank; val/test give each rank a
    disjoint, unpadded shard, so summing correct counts and sample counts over ranks gives the
    exact accuracy. Val/test keep every sample, in order. ``options``: workers and pinned memory
    (default: :class:`LoaderOptions`, chosen for ``device``).

    Without worker processes random augmentation draws from the global RNGs (``random`` and
    torch's: seed them); worker processes are seeded from the loader's generator.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    options = options or LoaderOptions()
    options.check()
    chosen = options.resolved(device)
    workers = chosen["num_workers"]
    generator = torch.Generator().manual_seed(seed)  # train order and train worker seeds
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ValueError("distributed=True needs an initialized torch.distributed process group")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        train_sampler: Sampler[int] = DistributedSampler(splits.train, shuffle=True, seed=seed, drop_last=drop_last)
        val_sampler: Sampler[int] | None = _Shard(len(splits.val), rank, world)
        test_sampler: Sampler[int] | None = _Shard(len(splits.test), rank, world)
    else:
        train_sampler = RandomSampler(splits.train, generator=generator)
        val_sampler = test_sampler = None

    def loader(split: Any, sampler: Sampler[int] | None, drop: bool, gen: torch.Generator) -> DeviceLoader:
        batches = DataLoader(_WorkerView(split), batch_size=batch_size, sampler=sampler, num_workers=workers,
                             drop_last=drop, generator=gen, pin_memory=chosen["pin_memory"],
                             persistent_workers=workers > 0, worker_init_fn=_ignore_stop_signals)
        return DeviceLoader(batches, device, splits.mean, splits.std)

    # Val/test get their own generators so evaluating never shifts the training stream.
    return Loaders(
        train=loader(splits.train, train_sampler, drop_last, generator),
        val=loader(splits.val, val_sampler, False, torch.Generator().manual_seed(seed)),
        test=loader(splits.test, test_sampler, False, torch.Generator().manual_seed(seed)),
        seed=seed,
    )
