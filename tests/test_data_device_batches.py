"""The last steps of the input pipeline, on the training device (``data.device_batches``): the workers send
uint8 batches, and what the device makes of them (float, color jitter, normalization) equals torchvision's CPU
transforms of the same pixels; on a GPU the batches arrive finished. The batched color jitter equals
torchvision's, image by image."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torchvision.transforms import functional as TF

from _photos import photo_folder
from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.device_batches import color_jitter
from focusformer_fast.data.loaders import make_loaders
from focusformer_fast.data.transforms import Jittered

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    photo_folder(root, per_class=4, sizes=((200, 150), (150, 200)))
    return root


def _reference(images, mean, std):
    """torchvision's float conversion, color jitter (in each image's order) and normalization, image by image."""
    pixels = images.pixels if isinstance(images, Jittered) else images
    out = []
    for k, chw in enumerate(pixels):
        x = chw.float() / 255
        if isinstance(images, Jittered):
            ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
            for op in images.order[k].tolist():
                x = ops[op](x, float(images.factors[k, op]))
        out.append(TF.normalize(x, list(mean), list(std)))
    return torch.stack(out)


@pytest.mark.parametrize("augment", [None, "crop0.08-flip-jitter0.4"])
def test_uint8_batches_finished_on_the_device_equal_cpu_normalized_ones(photos, augment):
    """The workers' batches are uint8; what the device makes of them equals torchvision's CPU normalization
    (and color jitter) of the same pixels. CPU stands in for the device."""
    splits = load_dataset(str(photos), image_size=64, augment=augment)
    def epoch(loader_of):
        loaders = make_loaders(splits, 4, seed=3, device="cpu")
        random.seed(0)  # the augmentation's draws (no worker processes)
        torch.manual_seed(0)
        loaders.set_epoch(1)
        return list(loader_of(loaders))

    finished, sent = epoch(lambda loaders: loaders.train), epoch(lambda loaders: loaders.train.loader)
    for (images, labels), (pixels, raw_labels) in zip(finished, sent, strict=True):
        sent = pixels.pixels if isinstance(pixels, Jittered) else pixels
        assert sent.dtype == torch.uint8 and sent.shape == (4, 3, 64, 64)
        assert isinstance(pixels, Jittered) == (augment is not None)
        assert images.dtype == torch.float32 and images.shape == (4, 3, 64, 64) and images.is_contiguous()
        torch.testing.assert_close(images, _reference(pixels, splits.mean, splits.std), atol=1e-6, rtol=0)
        assert torch.equal(labels, raw_labels)


@pytest.mark.gpu
def test_batches_arrive_on_the_gpu_finished(photos):
    splits = load_dataset(str(photos), image_size=64, augment=None)
    on_gpu = make_loaders(splits, 4, seed=0, device="cuda")
    on_cpu = make_loaders(splits, 4, seed=0, device="cpu")
    assert on_gpu.val.loader.pin_memory and on_gpu.val.loader.num_workers >= 1
    for (a, la), (b, lb) in zip(on_gpu.val, on_cpu.val):
        assert a.is_cuda and la.is_cuda
        torch.testing.assert_close(a.cpu(), b, atol=1e-6, rtol=0)
        assert torch.equal(la.cpu(), lb)


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
