"""A dataset split three ways (:class:`DataSplits`), one split's samples (:class:`IndexedSplit`), and
how the splits are drawn.

The search and the sampler's reward only ever see ``val``; ``test`` is for reporting:

* ``val`` is carved out of the training files: ``val_fraction`` of them (rounded up),
  stratified by class when every class can appear on both sides, chosen by ``seed``.
  It uses the eval transform (no augmentation) although its files are training files.
* ``test`` is the dataset's own held-out files where it has them (CIFAR-100 ``test``,
  ImageFolder ``val/``). Otherwise (digits, ImageFolder without ``val/``, class folders) it is a fixed,
  seed-independent, stratified 15% of all samples, so every seed reports on the same test set.

Splits are made with scikit-learn's ``train_test_split`` and an integer ``random_state``
(numpy's legacy ``RandomState``), so a seed gives the same indices in every process and on
every machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from focusformer_fast.data.device_batches import finish_one
from focusformer_fast.data.image_files import UnreadableImage

Transform = Callable[[Any], Any]
HOLDOUT_TEST_FRACTION = 0.15
HOLDOUT_TEST_SEED = 0


@dataclass(frozen=True)
class DataSplits:
    """A dataset split three ways, with what a model needs to know about its input.

    ``train``/``val``/``test`` yield ``(image float32 [in_chans, image_size, image_size], int label)``.
    ``mean``/``std`` (one per channel, in units of [0, 1] pixel intensity) are the
    normalization applied to every image. ``augment`` is the training augmentation in force
    (``--augment`` resolved); ``crop_mode``, ``crop_pct`` and ``interpolation`` describe the eval
    transform in timm's terms (what an export's ``pretrained_cfg`` records).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: tuple[int, int] | None = None  # (width, height) of the files before resizing, where known
    label_names: tuple[str, ...] | None = None  # class names by label; None: the labels are their own names
    augment: str | None = None
    crop_mode: str = "center"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"


class IndexedSplit(Dataset):
    """The samples ``source[i] for i in indices``, each passed through ``transform``.

    ``source[i]`` returns ``(raw image, label)``: a tensor for digits, a PIL image for CIFAR-100, an
    :class:`~focusformer_fast.data.image_files.EncodedImage` (or a cached HWC uint8 array) for an image folder.
    ``indices`` (int64 ``[n]``, sorted) are positions in ``source``, so two splits of the same
    source can be checked for overlap. ``sample(k)`` is the transform's output (uint8 pixels,
    possibly :class:`~focusformer_fast.data.transforms.Jittered`, or an already normalized float
    tensor); ``[k]`` is it finished on the CPU with ``mean``/``std``, as the loaders finish it on the device.
    """

    def __init__(self, source: Any, indices: np.ndarray, transform: Transform | None,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.source = source
        self.indices = indices
        self.transform = transform
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, i: int) -> tuple[Any, int]:
        n = len(self.indices)
        if not -n <= i < n:
            raise IndexError(f"sample {i} of a split of {n}")  # also ends ``for sample in split``
        i %= n
        for j in range(n):  # an unreadable file is replaced by the next readable one of this split
            try:
                image, label = self.source[int(self.indices[(i + j) % n])]
                if self.transform is not None:
                    image = self.transform(image)
                return image, int(label)
            except UnreadableImage:
                continue
        raise ValueError(f"no image of this split can be read ({n} tried)")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.sample(i)
        return finish_one(image, self.mean, self.std), label


def split_positions(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into sorted (kept, held), ``ceil(fraction * n)`` held.

    Stratified by ``labels`` when every class has at least two samples and both sides are
    large enough to hold one of each class; otherwise a plain seeded shuffle split.
    """
    n = len(labels)
    n_held = math.ceil(fraction * n)
    if not 0 < n_held < n:
        raise ValueError(
            f"cannot hold out fraction {fraction} of {n} samples: both sides must be non-empty"
        )
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 and len(counts) <= min(n_held, n - n_held) else None
    kept, held = train_test_split(
        np.arange(n), test_size=n_held, random_state=seed, stratify=stratify
    )
    return np.sort(kept), np.sort(held)


def pick_transforms(
    augment: str | None,
    train_default: Transform | None,
    eval_default: Transform | None,
    user: tuple[Transform | None, Transform | None],
) -> tuple[Transform | None, Transform | None]:
    """(train, eval) transforms: the caller's where given; without augmentation train = eval."""
    eval_t = user[1] if user[1] is not None else eval_default
    if user[0] is not None:
        return user[0], eval_t
    return (eval_t if augment is None else train_default), eval_t
