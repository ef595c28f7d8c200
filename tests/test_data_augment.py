"""Which training augmentation a dataset gets (``data.augment``, through ``data.datasets.choose_augment``):
chosen by the images' channels and size, none for the bundled digits, one-line errors for values the data
does not support (RandAugment on 1-channel images however it is asked for), and small grayscale digits keep
their class under the choice (no flip, no crop that loses the stroke)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _photos import photo
from focusformer_fast.data.datasets import choose_augment, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _folder(root: Path, mode: str, size: tuple[int, int], per_class: int = 2) -> Path:
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        for k in range(per_class):
            photo(k, size).convert(mode).save(root / "train" / cls / f"{k}.png")
    return root


@pytest.mark.parametrize("mode, size, recipe, says", [
    ("L", (28, 28), "crop0.8", "no horizontal flip (1-channel images"),
    ("RGB", (32, 32), "crop0.8", "no horizontal flip (images of 32 px or less"),
    ("RGB", (48, 48), "crop0.8-flip", "crops of 80-100% of the area"),
    ("RGB", (500, 375), "crop0.08-flip-jitter0.4", "timm's ImageNet recipe"),
    ("L", (500, 375), "crop0.08", "no horizontal flip (1-channel images"),
])
def test_auto_augmentation_is_chosen_by_channels_and_size(tmp_path, mode, size, recipe, says):
    choice = choose_augment(str(_folder(tmp_path, mode, size)), "auto")
    assert choice.augment == recipe and says in choice.reason
    assert choose_augment(str(tmp_path), "basic").augment == recipe  # basic: the same choice
    assert choose_augment(str(tmp_path), "none").augment is None


def test_auto_augmentation_of_known_datasets():
    assert choose_augment("digits").augment is None


def test_bad_augment_values_are_one_line_errors(tmp_path):
    root = str(_folder(tmp_path, "L", (28, 28)))
    for value, says in (("crop2", "least area"), ("sideways", "allowed: auto, none, basic"),
                        ("rand-m9-mstd0.5", "need RGB images")):
        with pytest.raises(ValueError, match=says) as err:
            choose_augment(root, value)
        assert "\n" not in str(err.value)


def test_a_randaugment_policy_is_refused_for_1_channel_images_however_it_is_asked_for(tmp_path):
    root = str(_folder(tmp_path, "L", (28, 28)))
    for value in ("rand-m9-mstd0.5", "crop0.8+rand-m9-mstd0.5", "crop0.8-flip+rand-m9-mstd0.5"):
        with pytest.raises(ValueError, match="need RGB images"):
            choose_augment(root, value)
    assert choose_augment(root, "crop0.8-flip").augment == "crop0.8-flip"


def test_small_grayscale_digits_keep_their_class(tmp_path):
    """No flip and no crop that loses the stroke: a digit-like bar at the left stays whole and at the left."""
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 3:9] = 255  # a bar in the left quarter, like the stem of a '1' drawn off-center
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(image).save(tmp_path / "train" / cls / f"{k}.png")
    splits = load_dataset(str(tmp_path), image_size=28, augment="basic", val_fraction=0.3)  # basic: auto's choice
    random.seed(0)
    torch.manual_seed(0)
    for _ in range(300):
        out = (splits.train[0][0][0] * splits.std[0] + splits.mean[0]) * 255
        mass = out.sum()
        centroid = (out.sum(0) * torch.arange(28)).sum() / mass
        assert centroid < 10  # a flip would put it near 22
        assert mass > 0.7 * image.sum()  # a crop of 8% of the area would lose most of the bar, or all of it
