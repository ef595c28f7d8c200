"""Augmentation that keeps the class (issue 20): the choice by the data, timm's distribution, jitter on the device."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from timm.data import create_transform
from torchvision.transforms import functional as TF

from _digits28 import write as write_digits28
from _newcomer import TINY
from _photos import coordinates, crop_box, photo
from focusformer_fast import train
from focusformer_fast.data.datasets import choose_augment, load_dataset
from focusformer_fast.data.device_batches import color_jitter, finish_one
from focusformer_fast.data.image_files import EncodedImage
from focusformer_fast.data.transforms import CropRecipe, Jittered, TrainCrop

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


def test_train_command_says_and_records_the_choice(tmp_path, capsys):
    write_digits28(tmp_path / "d28", copies=1, per_class=12)
    out = tmp_path / "run"
    assert train.main([*TINY, "--batch-size", "32", "--data", str(tmp_path / "d28"), "--output", str(out)]) == 0
    first = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note:")][0]
    assert first.startswith("note: augmentation crop0.8: 1-channel images of 28x28 px")
    assert "no horizontal flip" in first
    assert json.loads((out / "run.json").read_text())["config"]["augment"] == "crop0.8"


def test_help_says_how_auto_chooses(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "no horizontal flip for 1-channel images or images of 32 px or less" in text


# ---------------------------------------------------------------- timm's distribution


def _boxes(transform, path: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    random.seed(seed)
    torch.manual_seed(seed)
    w, h = Image.open(path).size
    boxes = [crop_box(np.asarray(transform(path)), w, h) for _ in range(n)]
    area, aspect, flipped = (np.array(v) for v in zip(*boxes))
    return area, aspect, flipped


@pytest.mark.parametrize("suffix, size, draws", [(".png", (250, 188), 1500), (".jpg", (640, 480), 800)])
def test_crop_and_flip_distribution_is_timms(tmp_path, suffix, size, draws):
    """Crop area, aspect ratio and flip rate of our crops against timm's transform on the same file (KS tests).

    The JPEG is large enough that most crops are decoded at 1/2 to 1/8 size (PIL's draft)."""
    path = str(tmp_path / f"coords{suffix}")
    coordinates(*size).save(path, quality=95)
    ours = TrainCrop(64, CropRecipe(0.08, flip=True))
    timm_t = create_transform(64, is_training=True, color_jitter=0.0, use_prefetcher=True)
    reductions = []
    decode = EncodedImage.decode

    def spy(self, reduce=1):
        image, k = decode(self, reduce)
        reductions.append(k)
        return image, k

    with mock.patch.object(EncodedImage, "decode", spy):
        a = _boxes(lambda p: ours(EncodedImage(p, "RGB")), path, draws, seed=1)
    b = _boxes(lambda p: timm_t(Image.open(p).convert("RGB")), path, draws, seed=2)
    assert stats.ks_2samp(a[0], b[0]).pvalue > 1e-3  # area
    assert stats.ks_2samp(np.log(a[1]), np.log(b[1])).pvalue > 1e-3  # aspect ratio
    assert a[0].min() < 0.1 and a[0].max() > 0.9 and 0.7 < a[1].min() and a[1].max() < 1.4  # 8-100%, 3/4-4/3
    for flipped in (a[2], b[2]):
        assert stats.binomtest(int(flipped.sum()), len(flipped), 0.5).pvalue > 1e-3
    if suffix == ".jpg":
        assert Counter(reductions)[1] < 0.5 * len(reductions) and max(reductions) == 4


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_same_seeds_draw_the_same_augmentation_as_timm(tmp_path, suffix):
    """Same seeds, same crop, flip and jitter factors as timm's CPU transform: the outputs match to rounding
    (PIL rounds each jitter step to uint8; our jitter runs in float on the device)."""
    path = tmp_path / f"photo{suffix}"
    photo(0, (250, 188)).save(path)
    ours = TrainCrop(96, CropRecipe.parse("crop0.08-flip-jitter0.4"))
    timm_t = create_transform(96, is_training=True)  # bilinear crops, flip 0.5, color jitter 0.4, normalized
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    def draw(transform, image, seed):
        random.seed(seed)
        torch.manual_seed(seed)
        return transform(image)

    for seed in range(20):
        got = finish_one(draw(ours, EncodedImage(str(path), "RGB"), seed), mean, std)
        want = draw(timm_t, Image.open(path).convert("RGB"), seed)
        diff = (got - want).abs()
        assert diff.mean() < 0.05 and diff.max() < 0.15, (seed, diff.mean(), diff.max())  # <= ~8 levels of 255
        other = draw(timm_t, Image.open(path).convert("RGB"), seed + 100)
        assert (got - other).abs().mean() > 0.2  # another draw is far: the bound above tells draws apart


@pytest.mark.parametrize("mode, saved", [("RGB", "RGB"), ("L", "L"), ("L", "RGB"), ("RGB", "CMYK")])
def test_decoded_pixels_are_pils(tmp_path, mode, saved):
    path = tmp_path / "photo.jpg"
    photo(1, (120, 90)).convert(saved).save(path, quality=90)
    pixels, k = EncodedImage(str(path), mode).pixels()
    want = np.array(Image.open(path).convert(mode))
    assert k == 1 and torch.equal(pixels, torch.from_numpy(want.reshape(90, 120, -1)).permute(2, 0, 1))


# ---------------------------------------------------------------- color jitter on the device


@pytest.mark.parametrize("channels", [3, 1])
def test_batched_color_jitter_equals_torchvision(channels):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, channels, 9, 7, generator=g)
    factors = 0.6 + 0.8 * torch.rand(12, 3, generator=g)
    orders = list(itertools.permutations(range(3)))
    order = torch.tensor([orders[k % 6] for k in range(12)])
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for k in range(12):
        want = images[k]
        for op in order[k].tolist():
            want = ops[op](want, float(factors[k, op]))
        torch.testing.assert_close(color_jitter(images, factors, order)[k], want, atol=1e-6, rtol=0)


def test_jitter_factors_and_order_follow_torchvision():
    crop = TrainCrop(4, CropRecipe.parse("crop0.08-flip-jitter0.4"))
    tiny = np.full((8, 8, 3), 100, np.uint8)
    torch.manual_seed(0)
    draws = [crop(tiny) for _ in range(1200)]
    assert all(isinstance(d, Jittered) and d.pixels.dtype == torch.uint8 for d in draws)
    factors = torch.stack([d.factors for d in draws]).numpy()
    for column in factors.T:  # brightness, contrast, saturation: uniform in [0.6, 1.4]
        assert stats.kstest(column, stats.uniform(0.6, 0.8).cdf).pvalue > 1e-3
    counts = Counter(tuple(d.order.tolist()) for d in draws)
    assert len(counts) == 6 and stats.chisquare(list(counts.values())).pvalue > 1e-3
