"""Loaders that feed a GPU (issue 20): uint8 out of the workers, finished on the device, GPU defaults."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
from torchvision.transforms import functional as TF

from _newcomer import TINY
from _photos import photo_folder
from focusformer_fast import train
from focusformer_fast.data.options import LoaderOptions
from focusformer_fast.data.datasets import load_dataset
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


def test_loader_defaults_for_a_gpu_and_for_a_cpu(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert LoaderOptions().resolved("cuda") == {"num_workers": 15, "pin_memory": True}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks on the node share its cores
    assert LoaderOptions().resolved("cuda:1") == {"num_workers": 3, "pin_memory": True}
    assert LoaderOptions().resolved("cpu") == {"num_workers": 0, "pin_memory": False}
    assert LoaderOptions(num_workers=2, pin_memory=False).resolved("cuda") == {"num_workers": 2, "pin_memory": False}
    assert LoaderOptions(pin_memory=True).resolved("cpu")["pin_memory"] is False  # it serves CUDA copies only
    loaders = make_loaders(load_dataset("digits"), 8, seed=0, options=LoaderOptions(num_workers=1))
    assert loaders.train.loader.persistent_workers and loaders.train.loader.num_workers == 1


def test_train_records_the_loader_choices_and_checks_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TINY, "--output", str(out)]) == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert (config["num_workers"], config["pin_memory"], config["cache_data"]) == (0, False, None)
    assert train.main([*TINY, "--num-workers", "-1", "--output", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.strip().endswith("error: --num-workers=-1 must be >= 0")
