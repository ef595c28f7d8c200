"""The bundled digits: scikit-learn's 1797 8x8 grayscale images of 10 classes, held in memory.

Test is 270 samples; with the default ``val_fraction=0.1`` train/val are 1374/153 (76.5/8.5/15%).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torchvision import transforms as T

from focusformer_fast.data.augment import resolve_augment
from focusformer_fast.data.splits import (HOLDOUT_TEST_FRACTION, HOLDOUT_TEST_SEED, DataSplits, IndexedSplit, Transform,
                                          pick_transforms, split_positions)


def digits_splits(
    seed: int, val_fraction: float, augment: str | None, user: tuple[Transform | None, Transform | None]
) -> DataSplits:
    """The digits split by :func:`~focusformer_fast.data.datasets.load_dataset`'s rules, 8x8, normalized with
    train's mean/std; ``user`` is the caller's (train, eval) transforms, ``None`` for the defaults."""
    augment = resolve_augment("digits", augment, None).augment
    bunch = load_digits()
    pixels = bunch.images / 16.0  # float64 [1797, 8, 8] in [0, 1]
    labels = bunch.target.astype(np.int64)
    pool, test_idx = split_positions(labels, HOLDOUT_TEST_FRACTION, HOLDOUT_TEST_SEED)
    train_pos, val_pos = split_positions(labels[pool], val_fraction, seed)
    train_idx, val_idx = pool[train_pos], pool[val_pos]
    mean, std = float(pixels[train_idx].mean()), float(pixels[train_idx].std())
    images = torch.from_numpy((pixels - mean) / std).float().unsqueeze(1)  # [1797, 1, 8, 8]
    source = torch.utils.data.TensorDataset(images, torch.from_numpy(labels))

    # Shift by up to one pixel; the border is filled with the normalized background (raw 0).
    train_t, eval_t = pick_transforms(augment, T.RandomCrop(8, padding=1, fill=-mean / std), None, user)
    norm = ((mean,), (std,))
    return DataSplits(
        name="digits",
        train=IndexedSplit(source, train_idx, train_t, *norm),
        val=IndexedSplit(source, val_idx, eval_t, *norm),
        test=IndexedSplit(source, test_idx, eval_t, *norm),
        num_classes=10,
        in_chans=1,
        image_size=8,
        mean=(mean,),
        std=(std,),
        augment=augment,
    )
