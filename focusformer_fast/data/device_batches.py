"""The last steps of the input pipeline, batched on the training device: float, color jitter, normalize.

The loader's workers send uint8 batches (4x less to copy than float32, as timm's prefetcher does);
:func:`finish` turns them into the normalized float32 batches a model takes, on whatever device
they are, with torchvision's arithmetic (``ToTensor``'s ``/ 255``, then ``Normalize``), so the
result equals what the same images normalized on the CPU would be. :class:`DeviceLoader` does it
for every batch of a DataLoader; on CUDA it copies and finishes the next batch on a side stream
while the current one is used, as ``timm.data.PrefetchLoader`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from focusformer_fast.data.transforms import Jittered

Batch = tuple[Tensor, Tensor]


_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@functools.cache
def _luma(device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(_LUMA, dtype=dtype, device=device).view(1, 3, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """torchvision's ``rgb_to_grayscale`` of ``x [B, 3, H, W]``: ``[B, 1, H, W]``."""
    return (x * _luma(x.device, x.dtype)).sum(dim=1, keepdim=True)


def color_jitter(images: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """torchvision's ``ColorJitter`` (no hue) of each image with its own factors and order, batched.

    Args:
        images: float ``[B, C, H, W]`` in [0, 1], C = 1 or 3 (1 channel: saturation does nothing).
        factors: float ``[B, 3]``: brightness, contrast, saturation factors (1 leaves an image as is).
        order: int ``[B, 3]``: the order each image's adjustments apply in (0 brightness, 1 contrast, 2 saturation).

    Returns ``[B, C, H, W]`` in [0, 1], equal within float rounding to ``adjust_brightness``,
    ``adjust_contrast`` and ``adjust_saturation`` of ``torchvision.transforms.functional`` applied
    to each image in its order: at each of the 3 steps every image gets every adjustment, with
    factor 1 (none) for those not its own at that step. About 40 kernels a batch.
    """
    x = images
    rgb = x.shape[1] == 3
    ops = torch.arange(3, device=order.device)
    # step_factors[b, step, op]: the factor of adjustment op at that step of image b
    step_factors = torch.where(order[:, :, None] == ops, factors[:, None, :].to(x.dtype), 1.0)
    for step in range(order.shape[1]):
        f = step_factors[:, step, :, None, None, None]  # [B, 3, 1, 1, 1]: brightness, contrast, saturation
        x = (x * f[:, 0]).clamp_(0.0, 1.0)  # a blend with black
        mean = (_gray(x) if rgb else x).mean(dim=(-3, -2, -1), keepdim=True)
        x = torch.lerp(mean.expand_as(x), x, f[:, 1]).clamp_(0.0, 1.0)
        if rgb:
            x = torch.lerp(_gray(x).expand_as(x), x, f[:, 2]).clamp_(0.0, 1.0)
    return x


def finish(images: Tensor | Jittered, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Normalized float32 ``[B, C, H, W]`` (contiguous) from a batch the workers made, on the batch's device.

    uint8 batches (any strides) are scaled to [0, 1], color-jittered when they come as
    :class:`Jittered`, then normalized with ``mean``/``std`` (one per channel); float batches are
    already normalized and are returned as they are.
    """
    pixels = images.pixels if isinstance(images, Jittered) else images
    if pixels.dtype != torch.uint8:
        return pixels
    x = pixels.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
    if isinstance(images, Jittered):
        x = color_jitter(x, images.factors, images.order)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub_(m).div_(s)


def _to(images: Tensor | Jittered, device: torch.device) -> Tensor | Jittered:
    if isinstance(images, Jittered):
        return Jittered(*(t.to(device, non_blocking=True) for t in images))
    return images.to(device, non_blocking=True)


class DeviceLoader:
    """A DataLoader whose batches arrive on ``device`` finished: ``(float32 [B, C, H, W], int64 [B])``.

    ``len``, ``sampler``, ``generator`` and ``dataset`` are the DataLoader's. On CUDA the next batch
    is copied and finished on a side stream while the caller works on the current one (batches
    must be used on the stream current when the iterator advances, as with timm's PrefetchLoader).
    """

    def __init__(self, loader: DataLoader, device: torch.device, mean: Sequence[float], std: Sequence[float]) -> None:
        self.loader, self.device = loader, torch.device(device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.stream = None
        self._stats: tuple[Tensor, Tensor] | None = None  # mean, std on the device, made on first use

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self):
        return self.loader.sampler

    @property
    def generator(self) -> torch.Generator | None:
        return self.loader.generator

    @property
    def dataset(self):
        return self.loader.dataset

    def _ready(self, batch) -> Batch:
        images, labels = batch
        if self._stats is None:
            self._stats = tuple(torch.tensor(v, dtype=torch.float32, device=self.device) for v in (self.mean, self.std))
        return finish(_to(images, self.device), *self._stats), labels.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[Batch]:
        if self.device.type != "cuda":
            yield from map(self._ready, self.loader)
            return
        if self.stream is None:  # one stream for the loader's life: the allocator pools blocks per stream
            self.stream = torch.cuda.Stream(device=self.device)
        pending = None
        for batch in self.loader:
            consumer = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(consumer)  # blocks the consumer released may be reused below
            with torch.cuda.stream(self.stream):
                ready = self._ready(batch)
            if pending is not None:
                yield pending
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            pending = ready
        if pending is not None:
            yield pending


def finish_one(image: Tensor | Jittered, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """:func:`finish` of one image (``[C, H, W]``, or a :class:`Jittered` one): float32 ``[C, H, W]``."""
    batch = Jittered(*(t[None] for t in image)) if isinstance(image, Jittered) else image[None]
    return finish(batch, mean, std)[0]
