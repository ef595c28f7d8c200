"""CIFAR-100 in torchvision's layout (``data.cifar``), from fake pickles: val comes out of the train files,
train images are augmented and resized, and a truncated, missing or malformed file is a one-line error naming
it."""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from focusformer_fast.data.datasets import load_dataset

CIFAR100_MEAN = np.array([0.5071, 0.4865, 0.4409])
CIFAR100_STD = np.array([0.2673, 0.2564, 0.2762])


N_TRAIN, N_TEST = 40, 10


def _write_cifar(root: Path) -> Path:
    """Fake cifar-100-python/: train image i is filled with value i, test image j with 200 + j."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, values in (("train", range(N_TRAIN)), ("test", range(200, 200 + N_TEST))):
        data = np.repeat(np.array(values, dtype=np.uint8)[:, None], 3072, axis=1)
        labels = [v % 4 for v in values]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, f)
    return folder


def _cifar_pixel_value(image: torch.Tensor) -> float:
    """Undo CIFAR normalization of a constant image: its value in 0..255."""
    raw = image.numpy() * CIFAR100_STD[:, None, None] + CIFAR100_MEAN[:, None, None]
    assert np.ptp(raw) < 1e-4
    return float(raw.mean() * 255)


@pytest.mark.parametrize("point_at_inner_dir", [False, True])
def test_cifar100_loads_and_val_comes_from_train_files(tmp_path, point_at_inner_dir):
    folder = _write_cifar(tmp_path)
    splits = load_dataset(str(folder if point_at_inner_dir else tmp_path), seed=0, val_fraction=0.2)
    assert (splits.name, splits.num_classes, splits.in_chans, splits.image_size) == ("cifar100", 100, 3, 32)
    assert len(splits.train) + len(splits.val) == N_TRAIN and len(splits.test) == N_TEST
    assert len(splits.val) == math.ceil(0.2 * N_TRAIN)
    val_values = []
    for k in range(len(splits.val)):
        image, label = splits.val[k]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        value = _cifar_pixel_value(image)
        assert value == pytest.approx(round(value), abs=0.01) and round(value) < N_TRAIN
        assert label == round(value) % 4
        val_values.append(round(value))
    # Pad-crop and flip keep a constant image constant, so train images decode too.
    train_values = [round(_cifar_pixel_value(splits.train[k][0])) for k in range(len(splits.train))]
    assert sorted(train_values + val_values) == list(range(N_TRAIN))
    test_values = sorted(round(_cifar_pixel_value(splits.test[k][0])) for k in range(N_TEST))
    assert test_values == list(range(200, 200 + N_TEST))


def test_cifar100_augmented_train_and_image_size(tmp_path):
    _write_cifar(tmp_path)
    splits = load_dataset(str(tmp_path), image_size=48, augment="rand-m9-mstd0.5-inc1")
    assert splits.train[0][0].shape == (3, 48, 48)
    assert splits.test[0][0].shape == (3, 48, 48)


def test_cifar100_truncated_pickle_names_the_file(tmp_path):
    folder = _write_cifar(tmp_path)
    blob = (folder / "train").read_bytes()
    (folder / "train").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError) as err:
        load_dataset(str(tmp_path))
    message = str(err.value)
    assert str(folder / "train") in message and "\n" not in message


def test_cifar100_missing_meta_names_the_file(tmp_path):
    folder = _write_cifar(tmp_path)
    (folder / "meta").unlink()
    with pytest.raises(ValueError, match="meta") as err:
        load_dataset(str(folder))
    assert str(folder / "meta") in str(err.value)


def test_cifar100_wrong_data_shape_is_malformed(tmp_path):
    folder = _write_cifar(tmp_path)
    with open(folder / "test", "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "fine_labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="malformed") as err:
        load_dataset(str(folder))
    assert str(folder / "test") in str(err.value)
