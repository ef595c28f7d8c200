"""CIFAR-100 in torchvision's layout (``cifar-100-python/`` with ``train``, ``test``, ``meta``), held in memory."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import rand_augment_transform
from torchvision import transforms as T

from focusformer_fast.data.augment import resolve_augment
from focusformer_fast.data.image_files import one_line
from focusformer_fast.data.splits import DataSplits, IndexedSplit, Transform, pick_transforms, split_positions

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class _CifarSource:
    """CIFAR images as uint8 ``[n, 32, 32, 3]`` (HWC) in memory; ``[i]`` gives (PIL image, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.targets = labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), int(self.targets[i])


def _read_cifar_pickle(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"CIFAR-100 file '{path}' is missing; expected train, test and meta in {path.parent}")
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise ValueError(f"CIFAR-100 file '{path}' could not be read ({one_line(exc)})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"CIFAR-100 file '{path}' is malformed: expected a dict, got {type(entry).__name__}")
    return entry


def _read_cifar_part(path: Path, num_classes: int) -> _CifarSource:
    """Read a CIFAR-100 ``train``/``test`` pickle: ``data`` uint8 [n, 3072], ``fine_labels`` [n]."""
    entry = _read_cifar_pickle(path)
    data, labels = entry.get("data"), entry.get("fine_labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise ValueError(f"CIFAR-100 file '{path}' is malformed: 'data' must be a uint8 array [n, 3072]")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or len(data) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"CIFAR-100 file '{path}' is malformed: 'fine_labels' must hold {len(data)} labels in [0, {num_classes})"
        )
    return _CifarSource(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)


def cifar100_splits(
    folder: Path,
    seed: int,
    val_fraction: float,
    augment: str | None,
    image_size: int | None,
    user: tuple[Transform | None, Transform | None],
) -> DataSplits:
    """CIFAR-100 from ``folder`` (``train``, ``test``, ``meta``), val carved from train, at ``image_size``
    (default 32); ``user`` is the caller's (train, eval) transforms, ``None`` for the defaults."""
    augment = resolve_augment("cifar100", augment, None).augment
    meta = _read_cifar_pickle(folder / "meta")
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or not names:
        raise ValueError(
            f"CIFAR-100 file '{folder / 'meta'}' is malformed: 'fine_label_names' must be a non-empty list"
        )
    train_src = _read_cifar_part(folder / "train", len(names))
    test_src = _read_cifar_part(folder / "test", len(names))
    size = image_size or 32

    # The classic CIFAR recipe (pad-by-1/8 random crop + flip), optionally with a timm RandAugment policy.
    ops = [] if size == 32 else [T.Resize(size)]
    ops += [T.RandomCrop(size, padding=size // 8, padding_mode="reflect"), T.RandomHorizontalFlip()]
    if augment not in (None, "basic"):
        hparams = dict(translate_const=int(size * 0.45), img_mean=tuple(round(255 * m) for m in CIFAR100_MEAN))
        ops.append(rand_augment_transform(augment, hparams))
    train_t, eval_t = pick_transforms(augment, T.Compose([*ops, T.PILToTensor()]),
                            create_transform(size, crop_pct=1.0, use_prefetcher=True), user)

    train_idx, val_idx = split_positions(train_src.targets, val_fraction, seed)
    norm = (CIFAR100_MEAN, CIFAR100_STD)
    return DataSplits(
        name="cifar100",
        train=IndexedSplit(train_src, train_idx, train_t, *norm),
        val=IndexedSplit(train_src, val_idx, eval_t, *norm),
        test=IndexedSplit(test_src, np.arange(len(test_src)), eval_t, *norm),
        num_classes=len(names),
        in_chans=3,
        image_size=size,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        native_size=(32, 32),
        label_names=tuple(names),
        augment=augment,
    )
