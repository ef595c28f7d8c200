"""Tests for focusformer_fast.data: splits, normalization, file layouts, errors, loaders."""

import itertools
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from focusformer_fast.data.options import LoaderOptions
from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.loaders import make_loaders

REPO = Path(__file__).resolve().parents[1]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
CIFAR100_MEAN = np.array([0.5071, 0.4865, 0.4409])
CIFAR100_STD = np.array([0.2673, 0.2564, 0.2762])


@pytest.fixture(scope="module")
def raw_digits():
    bunch = load_digits()
    return bunch.images / 16.0, bunch.target


def _indices(splits):
    return [set(s.indices.tolist()) for s in (splits.train, splits.val, splits.test)]


# ---------------------------------------------------------------- digits


def test_digits_splits_partition_all_1797_images():
    splits = load_dataset("digits", seed=0)
    train, val, test = _indices(splits)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(1797))
    assert len(splits.test) == math.ceil(0.15 * 1797)
    assert len(splits.val) == math.ceil(0.1 * (1797 - len(splits.test)))
    assert (splits.num_classes, splits.in_chans, splits.image_size, splits.name) == (10, 1, 8, "digits")


def test_digits_val_fraction_sets_val_size():
    splits = load_dataset("digits", val_fraction=0.25)
    assert len(splits.val) == math.ceil(0.25 * (len(splits.train) + len(splits.val)))


def test_digits_split_depends_only_on_seed_and_test_is_fixed():
    a, b, c = (load_dataset("digits", seed=s) for s in (7, 7, 8))
    assert _indices(a) == _indices(b)
    assert _indices(a)[1] != _indices(c)[1]
    assert _indices(a)[0] != _indices(c)[0]
    assert _indices(a)[2] == _indices(c)[2]


def test_digits_split_is_identical_in_a_fresh_process():
    code = (
        "import json; from focusformer_fast.data.datasets import load_dataset; s = load_dataset('digits', seed=5); "
        "print(json.dumps([x.indices.tolist() for x in (s.train, s.val, s.test)]))"
    )
    env = {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    here = load_dataset("digits", seed=5)
    assert json.loads(out.stdout) == [x.indices.tolist() for x in (here.train, here.val, here.test)]


def test_digits_samples_are_the_raw_images_normalized_by_train_stats(raw_digits):
    pixels, target = raw_digits
    splits = load_dataset("digits", seed=1, augment=None)
    train_pixels = pixels[splits.train.indices]
    mean, std = train_pixels.mean(), train_pixels.std()
    assert splits.mean[0] == pytest.approx(mean) and splits.std[0] == pytest.approx(std)
    for split in (splits.train, splits.val, splits.test):
        for k in (0, len(split) // 2, len(split) - 1):
            image, label = split[k]
            i = split.indices[k]
            assert image.shape == (1, 8, 8) and image.dtype == torch.float32
            assert isinstance(label, int) and label == target[i]
            np.testing.assert_allclose(image[0].numpy(), (pixels[i] - mean) / std, atol=1e-5)


def test_digits_train_split_has_zero_mean_unit_std_and_all_classes():
    splits = load_dataset("digits", seed=2, augment=None)
    images = torch.stack([splits.train[k][0] for k in range(len(splits.train))]).double()
    labels = {splits.train[k][1] for k in range(len(splits.train))}
    assert images.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert images.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    assert labels == set(range(10))


def test_digits_splits_are_stratified(raw_digits):
    _, target = raw_digits
    splits = load_dataset("digits", seed=3)
    for split in (splits.val, splits.test):
        counts = np.bincount(target[split.indices], minlength=10)
        expected = len(split) * np.bincount(target, minlength=10) / len(target)
        assert np.all(np.abs(counts - expected) <= 1.5)


def test_digits_basic_augment_shifts_train_only(raw_digits):
    pixels, _ = raw_digits
    splits = load_dataset("digits", seed=0, augment="basic")
    mean, std = splits.mean[0], splits.std[0]
    padded = np.pad(pixels, ((0, 0), (1, 1), (1, 1)))  # background is raw 0
    torch.manual_seed(0)
    shifted = 0
    for k in range(40):
        image = splits.train[k][0][0].numpy()
        p = padded[splits.train.indices[k]]
        crops = [(p[dy : dy + 8, dx : dx + 8] - mean) / std for dy in range(3) for dx in range(3)]
        matches = [np.allclose(image, c, atol=1e-5) for c in crops]
        assert any(matches)
        shifted += not matches[4]
    assert shifted > 0
    for split in (splits.val, splits.test):  # evaluation is never augmented
        for k in range(20):
            np.testing.assert_allclose(split[k][0][0].numpy(), (pixels[split.indices[k]] - mean) / std, atol=1e-5)


def test_digits_rejects_other_image_sizes_and_policies():
    with pytest.raises(ValueError, match="8x8"):
        load_dataset("digits", image_size=32)
    with pytest.raises(ValueError, match="augment"):
        load_dataset("digits", augment="rand-m9-mstd0.5")


def test_caller_transforms_replace_the_defaults(raw_digits):
    pixels, _ = raw_digits
    splits = load_dataset("digits", train_transform=lambda x: x * 0 + 7, eval_transform=lambda x: -x)
    mean, std = splits.mean[0], splits.std[0]
    assert torch.all(splits.train[0][0] == 7)
    for split in (splits.val, splits.test):
        np.testing.assert_allclose(split[0][0][0].numpy(), -(pixels[split.indices[0]] - mean) / std, atol=1e-5)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_val_fraction_out_of_range_is_rejected(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=fraction)


# ---------------------------------------------------------------- CIFAR-100

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


# ---------------------------------------------------------------- ImageFolder

TRAIN_COLORS = {"a": [(200, 10, 10), (190, 20, 10), (180, 30, 10), (170, 40, 10)],
                "b": [(10, 200, 10), (10, 190, 20), (10, 180, 30), (10, 170, 40)]}
TEST_COLORS = {"a": [(250, 0, 0), (240, 0, 0)], "b": [(0, 250, 0), (0, 240, 0)]}


def _write_image_folder(root: Path, split: str, colors: dict) -> None:
    for cls, cls_colors in colors.items():
        (root / split / cls).mkdir(parents=True)
        for k, color in enumerate(cls_colors):
            Image.new("RGB", (12, 10), color).save(root / split / cls / f"{k}.png")


def _color_of(image: torch.Tensor) -> tuple[int, ...]:
    raw = image.numpy() * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]
    return tuple(int(round(v)) for v in raw.reshape(3, -1).mean(1) * 255)


def test_image_folder_with_val_dir_uses_it_as_test(tmp_path):
    _write_image_folder(tmp_path, "train", TRAIN_COLORS)
    _write_image_folder(tmp_path, "val", TEST_COLORS)
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


@pytest.mark.parametrize("name", ["digits", "imagefolder"])
def test_iterating_a_split_yields_each_sample_once_and_ends(tmp_path, name):
    if name == "imagefolder":
        _write_image_folder(tmp_path, "train", TRAIN_COLORS)
    splits = load_dataset("digits" if name == "digits" else str(tmp_path), image_size=None if name == "digits" else 16)
    samples = list(itertools.islice(splits.val, len(splits.val) + 1))  # a split that never ends gives one more
    assert len(samples) == len(splits.val)
    assert torch.equal(samples[-1][0], splits.val[-1][0])
    with pytest.raises(IndexError):
        splits.val[len(splits.val)]


def test_image_folder_without_val_dir_holds_out_test_from_train(tmp_path):
    _write_image_folder(tmp_path, "train", TRAIN_COLORS)
    splits = load_dataset(str(tmp_path), image_size=16, augment=None)
    train, val, test = _indices(splits)
    assert train | val | test == set(range(8)) and len(train) + len(val) + len(test) == 8
    assert test and val


def test_image_folder_with_different_val_classes_is_a_value_error(tmp_path):
    _write_image_folder(tmp_path, "train", TRAIN_COLORS)
    _write_image_folder(tmp_path, "val", {"a": TEST_COLORS["a"], "c": TEST_COLORS["b"]})
    with pytest.raises(ValueError, match="class folders differ"):
        load_dataset(str(tmp_path))


def test_image_folder_without_images_is_a_value_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="train"):
        load_dataset(str(tmp_path))


# ---------------------------------------------------------------- bad paths


def test_missing_path_is_a_one_line_value_error(tmp_path):
    path = str(tmp_path / "nope")
    with pytest.raises(ValueError) as err:
        load_dataset(path)
    message = str(err.value)
    assert path in message and "\n" not in message and "digits" in message


def test_directory_of_unknown_layout_is_a_value_error(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError) as err:
        load_dataset(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "ImageFolder" in str(err.value)


# ---------------------------------------------------------------- loaders


def _epoch_labels(loader) -> list[int]:
    return [y for _, labels in loader for y in labels.tolist()]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, augment=None)


def test_train_loader_order_is_reproducible_per_seed_and_epoch(digits):
    a, b, c = (make_loaders(digits, 64, seed=s) for s in (0, 0, 1))
    first = _epoch_labels(a.train)
    assert first == _epoch_labels(b.train)
    assert first != _epoch_labels(c.train)
    a.set_epoch(3)
    fresh = make_loaders(digits, 64, seed=0)
    fresh.set_epoch(3)
    third = _epoch_labels(a.train)
    assert third == _epoch_labels(fresh.train) and third != first


def test_train_loader_covers_train_split_once_per_epoch(digits, raw_digits):
    _, target = raw_digits
    loaders = make_loaders(digits, 100, seed=0, drop_last=False)
    assert sorted(_epoch_labels(loaders.train)) == sorted(target[digits.train.indices].tolist())
    dropped = make_loaders(digits, 100, seed=0)
    sizes = [len(labels) for _, labels in dropped.train]
    assert sizes == [100] * (len(digits.train) // 100)


def test_eval_loaders_keep_order_and_every_sample(digits, raw_digits):
    _, target = raw_digits
    loaders = make_loaders(digits, 64, seed=0)
    assert _epoch_labels(loaders.val) == target[digits.val.indices].tolist()
    assert _epoch_labels(loaders.test) == target[digits.test.indices].tolist()
    images, _ = next(iter(loaders.val))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32


def test_augmented_batches_reproducible_with_workers():
    splits = load_dataset("digits", seed=0, augment="basic")
    a, b = (make_loaders(splits, 128, seed=4, options=LoaderOptions(num_workers=2)) for _ in range(2))
    for (xa, ya), (xb, yb) in zip(a.train, b.train):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_distributed_train_order_follows_distributed_sampler(digits, tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loaders = make_loaders(digits, 1, seed=9, distributed=True, drop_last=False)
        loaders.set_epoch(2)
        order = torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(9 + 2)).tolist()
        labels = load_digits().target
        assert _epoch_labels(loaders.train) == labels[digits.train.indices[order]].tolist()
        assert _epoch_labels(loaders.val) == labels[digits.val.indices].tolist()
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_without_process_group_is_a_value_error(digits):
    with pytest.raises(ValueError, match="process group"):
        make_loaders(digits, 8, seed=0, distributed=True)
