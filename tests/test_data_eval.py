"""The papers' eval protocol at 224 for photographs, today's resize for small images, and the export that says which
(issue 20)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from _digits28 import write as write_digits28
from _photos import photo_folder
from focusformer_fast.models import export
from focusformer_fast.data.datasets import load_dataset
from focusformer_fast.data.loaders import make_loaders
from focusformer_fast.space import SearchSpace
from focusformer_fast.models.supernet import Supernet

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


@pytest.mark.parametrize("kind", ["photographs", "small"])
def test_the_exports_pretrained_cfg_gives_timm_the_eval_transform(tmp_path, photos, kind):
    if kind == "photographs":
        root, size, preset, protocol = photos, 224, "autoformer-t", ("center", 0.875, "bicubic")
    else:
        root, size, preset, protocol = tmp_path / "d28", 8, "digits", ("squash", 1.0, "bicubic")
        write_digits28(root, copies=1, per_class=5)
    splits = load_dataset(str(root), image_size=size, augment=None)
    space = dataclasses.replace(SearchSpace.preset(preset), in_chans=splits.in_chans, num_classes=splits.num_classes)
    d = export.save(Supernet(space).extract(space.smallest()), tmp_path / "m", space=space, data=splits)
    model = timm.create_model(f"local-dir:{d}", pretrained=True)
    assert tuple(model.pretrained_cfg[k] for k in ("crop_mode", "crop_pct", "interpolation")) == protocol
    transform = create_transform(**resolve_data_config(model=model))
    for k in range(len(splits.test)):
        path = splits.test.source.samples[int(splits.test.indices[k])][0]
        image = Image.open(path).convert("RGB" if splits.in_chans == 3 else "L")
        torch.testing.assert_close(transform(image), splits.test[k][0], atol=1e-6, rtol=0)
