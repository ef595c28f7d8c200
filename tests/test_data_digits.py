"""The bundled digits (``data.digits``): each sample is its raw image normalized by the train split's
statistics; the train split has zero mean, unit std and every class; ``basic`` augmentation shifts train
images by at most a pixel and never touches val or test images."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from focusformer_fast.data.datasets import load_dataset


@pytest.fixture(scope="module")
def raw_digits():
    bunch = load_digits()
    return bunch.images / 16.0, bunch.target


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
