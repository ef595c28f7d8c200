"""The data layer's command-line options, light enough to import before any image library.

:class:`LoaderOptions` (workers, pinned memory, the image cache) are fields of the trainer's and
the fine-tuner's configs and their flags; :data:`AUGMENT_HELP` is ``--augment``'s help text.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch

AUGMENT_HELP = (
    "training augmentation: auto (default: chosen by the data so it keeps the class: none for the bundled digits, "
    "the CIFAR recipe for CIFAR-100; for an image folder timm's recipe for RGB photographs (crop0.08-flip-jitter0.4), "
    "no horizontal flip for 1-channel images or images of 32 px or less, random-resized crops of at least 80%% of "
    "the area and no color jitter for images of 64 px or less; the run's first note says what it picked and why), "
    "none, basic (the same choice for an image folder), a crop recipe crop<S>[-flip][-jitter<J>], or a timm "
    "RandAugment string like rand-m9-mstd0.5-inc1")


def _option(default: Any, help_text: str, kind: type) -> Any:
    return field(default=default, metadata={"help": help_text, "type": kind})


@dataclass
class LoaderOptions:
    """How batches are loaded; these names are also the commands' config fields and flags.

    ``metadata["help"]`` of each field is its flag's help text, ``metadata["type"]`` its value's type.
    ``None`` means: chosen for the device (:meth:`resolved`), and recorded as chosen.
    """

    num_workers: int | None = _option(
        None, "DataLoader worker processes per rank (default: auto, on CUDA the cores per local rank less one, "
              "on CPU 0)", int)
    pin_memory: bool | None = _option(None, "page-locked batches, copied to the GPU while it works (default: on "
                                            "with CUDA; never on CPU)", bool)
    cache_data: str | None = _option(
        None, "DIR: keep an image folder's images decoded and pre-resized in DIR (written on first use, verified "
              "and memory-mapped after, rebuilt when stale): no JPEG decoding per step (default: none)", str)

    @classmethod
    def of(cls, obj: Any) -> LoaderOptions:
        """The loader options held by ``obj`` (any object with these fields, e.g. a train config)."""
        return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field out of range."""
        if self.num_workers is not None and not self.num_workers >= 0:
            raise ValueError(f"num_workers={self.num_workers!r} must be >= 0")

    def resolved(self, device: torch.device | str) -> dict[str, Any]:
        """``num_workers`` and ``pin_memory`` as chosen for ``device`` (a dict of the two fields); memory is
        pinned only for a CUDA device, where it serves."""
        cuda = torch.device(device).type == "cuda"
        return {"num_workers": auto_workers(cuda) if self.num_workers is None else self.num_workers,
                "pin_memory": cuda and self.pin_memory is not False}


def auto_workers(cuda: bool) -> int:
    """Worker processes per rank: on CUDA this process's cores shared by the node's ranks
    (``LOCAL_WORLD_SIZE``, set by torchrun), less one for the rank itself; 0 on CPU."""
    if not cuda:
        return 0
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, len(os.sched_getaffinity(0)) // max(1, ranks) - 1)
