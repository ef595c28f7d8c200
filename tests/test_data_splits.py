"""A dataset split three ways (``data.splits``), on the bundled digits: the splits partition the images,
are stratified and depend only on the seed (in a fresh process too), and the test split stays fixed;
caller transforms replace the defaults; iterating a split yields each sample once and ends."""

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from _color_folders import TRAIN_COLORS, write_image_folder
from focusformer_fast.data.datasets import load_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw_digits():
    bunch = load_digits()
    return bunch.images / 16.0, bunch.target


def _indices(splits):
    return [set(s.indices.tolist()) for s in (splits.train, splits.val, splits.test)]


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


def test_digits_splits_are_stratified(raw_digits):
    _, target = raw_digits
    splits = load_dataset("digits", seed=3)
    for split in (splits.val, splits.test):
        counts = np.bincount(target[split.indices], minlength=10)
        expected = len(split) * np.bincount(target, minlength=10) / len(target)
        assert np.all(np.abs(counts - expected) <= 1.5)


def test_caller_transforms_replace_the_defaults(raw_digits):
    pixels, _ = raw_digits
    splits = load_dataset("digits", train_transform=lambda x: x * 0 + 7, eval_transform=lambda x: -x)
    mean, std = splits.mean[0], splits.std[0]
    assert torch.all(splits.train[0][0] == 7)
    for split in (splits.val, splits.test):
        np.testing.assert_allclose(split[0][0][0].numpy(), -(pixels[split.indices[0]] - mean) / std, atol=1e-5)


@pytest.mark.parametrize("name", ["digits", "imagefolder"])
def test_iterating_a_split_yields_each_sample_once_and_ends(tmp_path, name):
    if name == "imagefolder":
        write_image_folder(tmp_path, "train", TRAIN_COLORS)
    splits = load_dataset("digits" if name == "digits" else str(tmp_path), image_size=None if name == "digits" else 16)
    samples = list(itertools.islice(splits.val, len(splits.val) + 1))  # a split that never ends gives one more
    assert len(samples) == len(splits.val)
    assert torch.equal(samples[-1][0], splits.val[-1][0])
    with pytest.raises(IndexError):
        splits.val[len(splits.val)]
