"""The pre-resized uint8 image cache (``data.cache``): the same pixels as the files, written once, crops from it
drawn as timm's, verified, never used stale or corrupt, and a directory of other files never taken for one."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from timm.data import create_transform

from _photos import coordinates, crop_box, photo, photo_folder
from focusformer_fast.data.cache import CorruptCache
from focusformer_fast.data.datasets import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    photo_folder(root, per_class=2, sizes=((500, 375), (375, 500)))
    return root


def _load(root, cache, size=224, augment=None):
    return load_dataset(str(root), image_size=size, augment=augment, cache_dir=str(cache))


def _files(split):
    return [split.source.samples[int(k)][0] for k in split.indices]


def test_cache_gives_the_papers_eval_pixels_and_is_written_once(photos, tmp_path, capsys):
    cache = tmp_path / "cache"
    splits = _load(photos, cache)
    assert "writing an image cache of 4 images" in capsys.readouterr().err
    transform = create_transform(224, crop_pct=0.875, interpolation="bicubic")
    want = torch.stack([transform(Image.open(p).convert("RGB")) for p in _files(splits.test)])
    for again in range(2):
        got = torch.stack([splits.test[k][0] for k in range(len(splits.test))])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        stamp = (cache / "val" / "pixels.u8").stat().st_mtime_ns
        splits = _load(photos, cache)
        assert capsys.readouterr().err == "" and (cache / "val" / "pixels.u8").stat().st_mtime_ns == stamp
    assert (cache / "train" / "index.npy").is_file() and len(np.load(cache / "train" / "index.npy")) == 4


def test_crops_from_the_cache_keep_timms_distribution(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "coords" / "train" / cls).mkdir(parents=True)
        coordinates(500, 375).save(tmp_path / "coords" / "train" / cls / "0.png")
        coordinates(500, 375).save(tmp_path / "coords" / "train" / cls / "1.png")
    splits = _load(tmp_path / "coords", tmp_path / "cache", size=64, augment="crop0.08-flip")
    held = np.load(tmp_path / "cache" / "train" / "index.npy")
    assert held[:, 1:4].tolist() == [[73, 97, 3]] * 4  # shorter side 375 -> floor(64 / 0.875) = 73
    random.seed(0)
    torch.manual_seed(0)
    ours = [crop_box(splits.train.sample(0)[0].numpy(), 500, 375) for _ in range(500)]
    timm_t = create_transform(64, is_training=True, color_jitter=0.0, use_prefetcher=True)
    image = coordinates(500, 375)
    theirs = [crop_box(timm_t(image).numpy(), 500, 375) for _ in range(500)]
    for a, b in ((np.array(x), np.array(y)) for x, y in zip(zip(*ours), zip(*theirs))):
        assert stats.ks_2samp(a.astype(float), b.astype(float)).pvalue > 1e-3  # area, aspect, flips


def test_a_stale_cache_is_rebuilt_with_a_warning(photos, tmp_path):
    cache = tmp_path / "cache"
    _load(photos, cache)
    changed = photos / "val" / "a" / "0.jpg"
    photo(1, (500, 375)).transpose(Image.FLIP_LEFT_RIGHT).save(changed, quality=90)
    os.utime(changed, ns=(1, 1))  # whatever the clock's resolution
    with pytest.warns(UserWarning, match=r"image cache .*val.* is not used: 1 of its 4 files changed.*rebuilding"):
        splits = _load(photos, cache)
    k = _files(splits.test).index(str(changed))
    transform = create_transform(224, crop_pct=0.875, interpolation="bicubic")
    torch.testing.assert_close(splits.test[k][0], transform(Image.open(changed).convert("RGB")), atol=1e-6, rtol=0)
    photo(0).save(photos / "val" / "b" / "9.jpg")
    with pytest.warns(UserWarning, match="lists 4 files, the folder now has 5"):
        _load(photos, cache)


@pytest.mark.parametrize("damage, says", [
    ("truncate pixels", "pixels.u8 does not have the size its manifest records"),
    ("index", "index.npy does not match its checksum"),
    ("manifest", "manifest is missing or unreadable"),
])
def test_a_damaged_cache_is_rebuilt_with_a_warning(photos, tmp_path, damage, says):
    cache = tmp_path / "cache"
    want = [x for x, _ in _load(photos, cache).test]
    target = {"truncate pixels": "pixels.u8", "index": "index.npy", "manifest": "manifest.json"}[damage]
    path = cache / "val" / target
    blob = bytearray(path.read_bytes())
    if damage == "truncate pixels":
        blob = blob[:-10]
    else:
        blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match=says):
        splits = _load(photos, cache)
    for got, expected in zip((x for x, _ in splits.test), want, strict=True):
        assert torch.equal(got, expected)


def test_a_corrupt_image_in_the_cache_is_refused_when_read(photos, tmp_path):
    cache = tmp_path / "cache"
    _load(photos, cache)
    offset, h, w, c, _ = np.load(cache / "val" / "index.npy")[2]
    with open(cache / "val" / "pixels.u8", "r+b") as f:  # same size, same index: only the pixels differ
        f.seek(int(offset) + h * w * c // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    splits = _load(photos, cache)
    assert splits.test[0][0].shape == (3, 224, 224)  # the others still serve
    with pytest.raises(CorruptCache, match=r"'.*val' is corrupt: image 2 does not match its checksum; delete"):
        splits.test[2]


def test_a_directory_of_other_files_is_refused(photos, tmp_path):
    (tmp_path / "mine" / "train").mkdir(parents=True)
    (tmp_path / "mine" / "train" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds files that are not an image cache") as err:
        _load(photos, tmp_path / "mine")
    assert "\n" not in str(err.value) and (tmp_path / "mine" / "train" / "notes.txt").read_text() == "keep me"
