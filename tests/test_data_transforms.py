"""What the loader's workers do to each image (``data.transforms``).

Eval: photographs as timm and AutoFormer evaluate them at 224 (resize, center crop of 87.5%, bicubic), small
images resized whole. Training: the crop area, aspect ratio and flips drawn as timm's transform draws them
(KS tests), the same crop, flip and jitter factors as timm's for the same seeds, and jitter factors and
order drawn as torchvision's ``ColorJitter`` draws them."""

from __future__ import annotations

import random
from collections import Counter
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from timm.data import create_transform

from _digits28 import write as write_digits28
from _photos import coordinates, crop_box, photo, photo_folder
from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.device_batches import finish_one
from focusformer_fast.data.image_files import EncodedImage
from focusformer_fast.data.loaders import make_loaders
from focusformer_fast.data.transforms import CropRecipe, Jittered, TrainCrop

pytestmark = pytest.mark.usefixtures("one_thread")
PAPERS = dict(crop_pct=0.875, interpolation="bicubic")  # AutoFormer's and timm's ImageNet eval


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """JPEG photographs, landscape 500x375, portrait 375x500 and 640x427, in train/ and val/."""
    root = tmp_path_factory.mktemp("photos")
    photo_folder(root, per_class=3, sizes=((500, 375), (375, 500), (640, 427)))
    return root


def _timm_eval(paths, size=224, **kwargs):
    transform = create_transform(size, **PAPERS, **kwargs)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def test_photographs_are_evaluated_as_timm_and_autoformer_do(photos):
    splits = load_dataset(str(photos), image_size=224, augment=None)
    files = [splits.test.source.samples[int(k)][0] for k in splits.test.indices]
    want = _timm_eval(files)
    items = torch.stack([splits.test[k][0] for k in range(len(splits.test))])
    torch.testing.assert_close(items, want, atol=1e-6, rtol=0)
    batches = torch.cat([images for images, _ in make_loaders(splits, 4, seed=0).test])  # normalized on the "device"
    torch.testing.assert_close(batches, want, atol=1e-6, rtol=0)
    assert (splits.crop_mode, splits.crop_pct, splits.interpolation) == ("center", 0.875, "bicubic")


def test_small_images_keep_the_whole_image_resized(tmp_path):
    write_digits28(tmp_path, copies=1, per_class=5)
    splits = load_dataset(str(tmp_path), augment=None, image_size=8)
    for k in range(len(splits.test)):
        path = splits.test.source.samples[int(splits.test.indices[k])][0]
        pixels = np.asarray(Image.open(path).resize((8, 8), Image.BICUBIC)) / 255.0
        want = torch.from_numpy((pixels - splits.mean[0]) / splits.std[0]).float()[None]
        torch.testing.assert_close(splits.test[k][0], want, atol=1e-6, rtol=0)
    assert (splits.crop_mode, splits.crop_pct) == ("squash", 1.0)


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
