"""Image folders (``data.folders``): a ``val/`` folder becomes the test split, without one the test split
is held out of ``train/``; class folders that differ between the two, or a folder without images, are
refused."""

import numpy as np
import pytest
import torch

from _color_folders import TEST_COLORS, TRAIN_COLORS, write_image_folder
from focusformer_fast.data.datasets import load_dataset

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _indices(splits):
    return [set(s.indices.tolist()) for s in (splits.train, splits.val, splits.test)]


def _color_of(image: torch.Tensor) -> tuple[int, ...]:
    raw = image.numpy() * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]
    return tuple(int(round(v)) for v in raw.reshape(3, -1).mean(1) * 255)


def test_image_folder_with_val_dir_uses_it_as_test(tmp_path):
    write_image_folder(tmp_path, "train", TRAIN_COLORS)
    write_image_folder(tmp_path, "val", TEST_COLORS)
    splits = load_dataset(str(tmp_path), image_size=16, val_fraction=0.25)
    assert (splits.num_classes, splits.in_chans, splits.image_size) == (2, 3, 16)
    assert len(splits.train) + len(splits.val) == 8 and len(splits.val) == 2 and len(splits.test) == 4
    test = sorted((_color_of(splits.test[k][0]), splits.test[k][1]) for k in range(4))
    assert test == sorted((c, "ab".index(cls)) for cls, cs in TEST_COLORS.items() for c in cs)
    for k in range(len(splits.val)):
        image, label = splits.val[k]
        assert image.shape == (3, 16, 16)
        assert _color_of(image) in TRAIN_COLORS["ab"[label]]
    assert splits.train[0][0].shape == (3, 16, 16)


def test_image_folder_without_val_dir_holds_out_test_from_train(tmp_path):
    write_image_folder(tmp_path, "train", TRAIN_COLORS)
    splits = load_dataset(str(tmp_path), image_size=16, augment=None)
    train, val, test = _indices(splits)
    assert train | val | test == set(range(8)) and len(train) + len(val) + len(test) == 8
    assert test and val


def test_image_folder_with_different_val_classes_is_a_value_error(tmp_path):
    write_image_folder(tmp_path, "train", TRAIN_COLORS)
    write_image_folder(tmp_path, "val", {"a": TEST_COLORS["a"], "c": TEST_COLORS["b"]})
    with pytest.raises(ValueError, match="class folders differ"):
        load_dataset(str(tmp_path))


def test_image_folder_without_images_is_a_value_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="train"):
        load_dataset(str(tmp_path))
