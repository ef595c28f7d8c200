"""Image folders (``train/`` + optional ``val/``, or class folders): 1- or 3-channel files read lazily,
unreadable ones skipped and reported, optionally served from the image cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.datasets import ImageFolder

from focusformer_fast.data.augment import resolve_augment
from focusformer_fast.data.cache import CacheSpec, ImageCache, open_cache
from focusformer_fast.data.image_files import ImageFiles, UnreadableImage, as_pil, one_line, probe, read_image
from focusformer_fast.data.splits import (HOLDOUT_TEST_FRACTION, HOLDOUT_TEST_SEED, DataSplits, IndexedSplit, Transform,
                                          pick_transforms, split_positions)
from focusformer_fast.data.transforms import SMALL_SIDE, CropRecipe, EvalResize, TrainCrop, eval_protocol, scale_size


class _PilInput:
    """A caller's transform, given PIL images whatever the source holds."""

    def __init__(self, transform: Transform) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> Any:
        return self.transform(as_pil(image))


def _image_folder(folder: Path) -> ImageFolder:
    try:
        return ImageFolder(str(folder))
    except OSError as exc:
        raise ValueError(f"ImageFolder '{folder}' has no usable class folders/images ({one_line(exc)})") from None


_GRAY_MEAN, _GRAY_STD = (0.449,), (0.226,)  # timm's single-channel ImageNet statistics


class CachedFiles(ImageFiles):
    """An ImageFolder's files served from an :class:`~focusformer_fast.data.cache.ImageCache`:
    ``[i]`` gives (HWC uint8 pixels, label); a file that could not be read is reported as from the files."""

    def __init__(self, files: ImageFiles, cache: ImageCache) -> None:
        self.__dict__.update(files.__dict__)
        self.cache = cache

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[i]
        try:
            return self.cache[i], label
        except UnreadableImage as exc:
            self._record(path, str(exc))
            raise


def _cached(files: ImageFiles, cache_dir: Path | None, name: str, spec: CacheSpec) -> ImageFiles:
    if cache_dir is None:
        return files
    return CachedFiles(files, open_cache(cache_dir / name, [p for p, _ in files.samples], spec))


def folder_splits(
    root: Path,
    plain: bool,
    seed: int,
    val_fraction: float,
    augment: str | None,
    image_size: int | None,
    user: tuple[Transform | None, Transform | None],
    cache_dir: Path | None,
) -> DataSplits:
    """An image folder: ``root/train`` (+ ``root/val`` as test) or, ``plain``, ``root``'s class folders (test
    held out); images at ``image_size`` (default 224), served from ``cache_dir`` when given."""
    train_dir = root if plain else root / "train"
    folder = _image_folder(train_dir)
    if len(folder.classes) < 2:
        raise ValueError(f"ImageFolder '{train_dir}' has {len(folder.classes)} class folder(s) "
                         f"({', '.join(folder.classes)}); a classifier needs at least 2")
    mode, native = probe(train_dir)
    augment = resolve_augment("imagefolder", augment, (mode, native)).augment
    size = image_size or 224
    in_chans = 1 if mode == "L" else 3
    rgb = (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
    mean, std = (_GRAY_MEAN, _GRAY_STD) if in_chans == 1 else rgb
    protocol = eval_protocol(native, size)
    # small images: train resamples as eval does (bicubic); photographs as timm trains (bilinear)
    interpolation = "bicubic" if min(native) <= SMALL_SIDE else "bilinear"
    train_default = TrainCrop(size, CropRecipe.parse(augment), interpolation, mean) if augment else None
    user = tuple(None if t is None else _PilInput(t) for t in user)
    train_t, eval_t = pick_transforms(augment, train_default, EvalResize(size, protocol), user)

    spec = CacheSpec(mode, scale_size(size, protocol) if protocol.crop_mode == "center" else None)
    train_src = _cached(ImageFiles(folder, mode), cache_dir, "images" if plain else "train", spec)
    labels = np.asarray(train_src.targets, dtype=np.int64)
    if not plain and (root / "val").is_dir():
        test_files = ImageFiles(_image_folder(root / "val"), mode)
        if test_files.classes != train_src.classes:
            raise ValueError(f"ImageFolder '{root / 'val'}' class folders differ from those in '{root / 'train'}'")
        test_src = _cached(test_files, cache_dir, "val", spec)
        pool, test_idx = np.arange(len(labels)), np.arange(len(test_src))
    else:
        test_src = train_src
        pool, test_idx = split_positions(labels, HOLDOUT_TEST_FRACTION, HOLDOUT_TEST_SEED)
    train_pos, val_pos = split_positions(labels[pool], val_fraction, seed)
    return DataSplits(
        name="imagefolder",
        train=IndexedSplit(train_src, pool[train_pos], train_t, mean, std),
        val=IndexedSplit(train_src, pool[val_pos], eval_t, mean, std),
        test=IndexedSplit(test_src, test_idx, eval_t, mean, std),
        num_classes=len(train_src.classes),
        in_chans=in_chans,
        image_size=size,
        mean=mean,
        std=std,
        native_size=native,
        label_names=tuple(train_src.classes),
        augment=augment,
        crop_mode=protocol.crop_mode,
        crop_pct=protocol.crop_pct,
        interpolation=protocol.interpolation,
    )


def _image_sources(splits: DataSplits) -> list[ImageFiles]:
    found: dict[int, ImageFiles] = {}
    for split in (splits.train, splits.val, splits.test):
        source = getattr(split, "source", None)
        if isinstance(source, ImageFiles):
            found[id(source)] = source
    return list(found.values())


def unreadable_files(splits: DataSplits) -> dict[str, str]:
    """Decode every image file of ``splits``: the ones that fail (path -> reason). Empty for digits/CIFAR-100."""
    bad = {}
    for source in _image_sources(splits):
        for path, _ in source.samples:
            try:
                read_image(path, source.mode)
            except UnreadableImage as exc:
                bad[path] = str(exc)
    return bad


def report_unreadable(splits: DataSplits, path: Path) -> None:
    """From now on, append each unreadable file met while loading ``splits`` to the text file ``path``."""
    for source in _image_sources(splits):
        source.report_to = path
