"""Datasets: bundled digits, CIFAR-100 (torchvision layout), ImageFolder; the package's data API.

``load_dataset(spec)`` returns a :class:`DataSplits` of three map-style datasets. Indexing one,
``split[k]``, gives ``(image, label)`` with ``image`` a float32 tensor ``[C, H, W]`` normalized
with ``DataSplits.mean``/``std`` and ``label`` a Python ``int`` in ``[0, num_classes)``. The
loaders (:func:`make_loaders`) take ``split.sample(k)`` instead: the same image before its last
steps, uint8 (:mod:`focusformer_fast.image_transforms`), which the training device finishes
(:mod:`focusformer_fast.device_batches`) to the same floats.

Splits (the search and the sampler's reward only ever see ``val``; ``test`` is for reporting):

* ``val`` is carved out of the training files: ``val_fraction`` of them (rounded up),
  stratified by class when every class can appear on both sides, chosen by ``seed``.
  It uses the eval transform (no augmentation) although its files are training files.
* ``test`` is the dataset's own held-out files where it has them (CIFAR-100 ``test``,
  ImageFolder ``val/``). Otherwise (digits, ImageFolder without ``val/``, class folders) it is a fixed,
  seed-independent, stratified 15% of all samples, so every seed reports on the same test set.

Digits (``spec="digits"``, scikit-learn's bundled 1797 8x8 images, 10 classes): test is 270
samples; with the default ``val_fraction=0.1`` train/val are 1374/153 (76.5/8.5/15%).

Splits are made with scikit-learn's ``train_test_split`` and an integer ``random_state``
(numpy's legacy ``RandomState``), so a seed gives the same indices in every process and on
every machine.

Augmentation (``augment="auto"``, :func:`choose_augment`) is chosen by the data so that it keeps
the class: none for the bundled digits, the CIFAR recipe for CIFAR-100, and for an image folder
the :class:`~focusformer_fast.image_transforms.CropRecipe` that
:func:`~focusformer_fast.image_transforms.folder_recipe` picks by the images' channels and size.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.auto_augment import rand_augment_transform
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .device_batches import finish_one
from .image_cache import CacheSpec, ImageCache, open_cache
from .image_files import ImageFiles, UnreadableImage, as_pil, one_line, probe, read_image
from .image_transforms import (SMALL_SIDE, CropRecipe, EvalResize, TrainCrop, eval_protocol, folder_recipe,
                               scale_size)
from .data_options import LoaderOptions
from .loaders import Loaders, make_loaders

__all__ = ["AugmentChoice", "DataSplits", "LoaderOptions", "Loaders", "choose_augment", "load_dataset",
           "make_loaders", "unreadable_files", "report_unreadable"]

Transform = Callable[[Any], Any]

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_HOLDOUT_TEST_FRACTION = 0.15
_HOLDOUT_TEST_SEED = 0
_CIFAR_DIR = "cifar-100-python"
_EXPECTED = ("expected 'digits', a CIFAR-100 folder (cifar-100-python/), an ImageFolder root with train/ "
             "(and optional val/), or a folder of class folders of images")


@dataclass(frozen=True)
class DataSplits:
    """A dataset split three ways, with what a model needs to know about its input.

    ``train``/``val``/``test`` yield ``(image float32 [in_chans, image_size, image_size], int label)``.
    ``mean``/``std`` (one per channel, in units of [0, 1] pixel intensity) are the
    normalization applied to every image. ``augment`` is the training augmentation in force
    (``--augment`` resolved); ``crop_mode``, ``crop_pct`` and ``interpolation`` describe the eval
    transform in timm's terms (what an export's ``pretrained_cfg`` records).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: tuple[int, int] | None = None  # (width, height) of the files before resizing, where known
    label_names: tuple[str, ...] | None = None  # class names by label; None: the labels are their own names
    augment: str | None = None
    crop_mode: str = "center"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"


class IndexedSplit(Dataset):
    """The samples ``source[i] for i in indices``, each passed through ``transform``.

    ``source[i]`` returns ``(raw image, label)``: a tensor for digits, a PIL image for CIFAR-100, an
    :class:`~focusformer_fast.image_files.EncodedImage` (or a cached HWC uint8 array) for an image folder.
    ``indices`` (int64 ``[n]``, sorted) are positions in ``source``, so two splits of the same
    source can be checked for overlap. ``sample(k)`` is the transform's output (uint8 pixels,
    possibly :class:`~focusformer_fast.image_transforms.Jittered`, or an already normalized float
    tensor); ``[k]`` is it finished on the CPU with ``mean``/``std``, as the loaders finish it on the device.
    """

    def __init__(self, source: Any, indices: np.ndarray, transform: Transform | None,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.source = source
        self.indices = indices
        self.transform = transform
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, i: int) -> tuple[Any, int]:
        n = len(self.indices)
        if not -n <= i < n:
            raise IndexError(f"sample {i} of a split of {n}")  # also ends ``for sample in split``
        i %= n
        for j in range(n):  # an unreadable file is replaced by the next readable one of this split
            try:
                image, label = self.source[int(self.indices[(i + j) % n])]
                if self.transform is not None:
                    image = self.transform(image)
                return image, int(label)
            except UnreadableImage:
                continue
        raise ValueError(f"no image of this split can be read ({n} tried)")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.sample(i)
        return finish_one(image, self.mean, self.std), label


class _PilInput:
    """A caller's transform, given PIL images whatever the source holds."""

    def __init__(self, transform: Transform) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> Any:
        return self.transform(as_pil(image))


class _CifarSource:
    """CIFAR images as uint8 ``[n, 32, 32, 3]`` (HWC) in memory; ``[i]`` gives (PIL image, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.targets = labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), int(self.targets[i])


def _split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into sorted (kept, held), ``ceil(fraction * n)`` held.

    Stratified by ``labels`` when every class has at least two samples and both sides are
    large enough to hold one of each class; otherwise a plain seeded shuffle split.
    """
    n = len(labels)
    n_held = math.ceil(fraction * n)
    if not 0 < n_held < n:
        raise ValueError(
            f"cannot hold out fraction {fraction} of {n} samples: both sides must be non-empty"
        )
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 and len(counts) <= min(n_held, n - n_held) else None
    kept, held = train_test_split(
        np.arange(n), test_size=n_held, random_state=seed, stratify=stratify
    )
    return np.sort(kept), np.sort(held)


@dataclass(frozen=True)
class AugmentChoice:
    """The training augmentation in force (a valid ``augment`` value, ``None`` for none) and why, in words."""

    augment: str | None
    reason: str

    @property
    def note(self) -> str:
        return f"augmentation {self.augment or 'none'}: {self.reason}"


_DIGITS_REASON = "the bundled 8x8 digits (their 1-px shifts cost ~30 points of val accuracy at 600 steps)"
_CIFAR_REASON = "CIFAR-100 photographs: the CIFAR recipe, random crops after padding by 1/8 and horizontal flips"
_POLICY_HINT = "a timm RandAugment string like 'rand-m9-mstd0.5-inc1'"


def _unsupported(augment: str, kind: str, allowed: str) -> ValueError:
    return ValueError(f"augment={augment!r} is not supported for {kind} data; allowed: auto, none, {allowed}")


def _resolve_augment(kind: str, augment: str | None, images: tuple[str, tuple[int, int]] | None) -> AugmentChoice:
    """:func:`choose_augment` once the data is known: ``images`` is the folder's (mode, (width, height))."""
    if augment is None or augment == "none":
        return AugmentChoice(None, "none asked for")
    if not isinstance(augment, str):
        raise _unsupported(augment, kind, "basic")
    if kind == "digits":
        if augment not in ("auto", "basic"):
            raise _unsupported(augment, "the bundled digits", "basic (1-px shifts)")
        return AugmentChoice(None, _DIGITS_REASON) if augment == "auto" else AugmentChoice("basic", "asked for")
    policy = augment if augment.startswith("rand") else None
    if kind == "cifar100":
        if augment not in ("auto", "basic") and policy is None:
            raise _unsupported(augment, "CIFAR-100", f"basic, or {_POLICY_HINT}")
        reason = _CIFAR_REASON + (f", then RandAugment {policy}" if policy else "")
        return AugmentChoice("basic" if augment == "auto" else augment, reason)
    recipe, reason = CropRecipe.parse(augment), "asked for"
    if recipe is None and augment not in ("auto", "basic") and policy is None:
        raise _unsupported(augment, "image folder", f"basic, a crop recipe like 'crop0.08-flip-jitter0.4', or "
                                                    f"{_POLICY_HINT}")
    mode, native = images
    if recipe is None:
        recipe, reason = folder_recipe(1 if mode == "L" else 3, native, policy)
    if recipe.policy and mode == "L":
        raise ValueError(f"augment={augment!r}: RandAugment policies need RGB images; these are 1-channel")
    return AugmentChoice(str(recipe), reason)


def choose_augment(spec: str, augment: str | None = "auto") -> AugmentChoice:
    """The augmentation :func:`load_dataset` applies to ``spec``'s training images for ``augment``, and why.

    ``auto``: none for the bundled digits; the CIFAR recipe for CIFAR-100; for an image folder
    (its images' headers are read, a few files) :func:`~focusformer_fast.image_transforms.folder_recipe`:
    timm's recipe for photographs, no horizontal flip for 1-channel images or images of 32 px or
    less, crops of at least 80% of images of 64 px or less. ``basic`` on an image folder is the
    same choice; a RandAugment string adds that policy to it (no color jitter, as timm). Other
    values are checked and kept. ``ValueError`` (one line) for a value the data does not support.
    """
    kind, root = _resolve(spec)
    images = None
    if kind in ("imagefolder", "classfolder") and augment not in (None, "none"):
        images = probe(root / "train" if kind == "imagefolder" else root)
    return _resolve_augment(kind, augment, images)


def _resolve(spec: str) -> tuple[str, Path | None]:
    """Map a data spec to ('digits'|'cifar100'|'imagefolder'|'classfolder', folder; None for digits).

    ``imagefolder``: a root with ``train/`` (and optional ``val/``) of class folders; ``classfolder``:
    the class folders themselves (torchvision's ImageFolder layout).
    """
    if spec == "digits":
        return "digits", None
    path = Path(spec).expanduser()
    if not path.exists():
        raise ValueError(f"data path '{spec}' does not exist; {_EXPECTED}")
    if path.is_dir():
        if path.name == _CIFAR_DIR:
            return "cifar100", path
        if (path / _CIFAR_DIR).is_dir():
            return "cifar100", path / _CIFAR_DIR
        if (path / "train").is_dir():
            return "imagefolder", path
        if any(sub.is_dir() and any(f.suffix.lower() in IMG_EXTENSIONS for f in sub.iterdir())
               for sub in path.iterdir()):
            return "classfolder", path
    raise ValueError(f"data path '{spec}' is not a dataset; {_EXPECTED}")


def _pick(
    augment: str | None,
    train_default: Transform | None,
    eval_default: Transform | None,
    user: tuple[Transform | None, Transform | None],
) -> tuple[Transform | None, Transform | None]:
    """(train, eval) transforms: the caller's where given; without augmentation train = eval."""
    eval_t = user[1] if user[1] is not None else eval_default
    if user[0] is not None:
        return user[0], eval_t
    return (eval_t if augment is None else train_default), eval_t


def _load_digits(
    seed: int, val_fraction: float, augment: str | None, user: tuple[Transform | None, Transform | None]
) -> DataSplits:
    augment = _resolve_augment("digits", augment, None).augment
    bunch = load_digits()
    pixels = bunch.images / 16.0  # float64 [1797, 8, 8] in [0, 1]
    labels = bunch.target.astype(np.int64)
    pool, test_idx = _split(labels, _HOLDOUT_TEST_FRACTION, _HOLDOUT_TEST_SEED)
    train_pos, val_pos = _split(labels[pool], val_fraction, seed)
    train_idx, val_idx = pool[train_pos], pool[val_pos]
    mean, std = float(pixels[train_idx].mean()), float(pixels[train_idx].std())
    images = torch.from_numpy((pixels - mean) / std).float().unsqueeze(1)  # [1797, 1, 8, 8]
    source = torch.utils.data.TensorDataset(images, torch.from_numpy(labels))

    # Shift by up to one pixel; the border is filled with the normalized background (raw 0).
    train_t, eval_t = _pick(augment, T.RandomCrop(8, padding=1, fill=-mean / std), None, user)
    norm = ((mean,), (std,))
    return DataSplits(
        name="digits",
        train=IndexedSplit(source, train_idx, train_t, *norm),
        val=IndexedSplit(source, val_idx, eval_t, *norm),
        test=IndexedSplit(source, test_idx, eval_t, *norm),
        num_classes=10,
        in_chans=1,
        image_size=8,
        mean=(mean,),
        std=(std,),
        augment=augment,
    )


def _read_cifar_pickle(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"CIFAR-100 file '{path}' is missing; expected train, test and meta in {path.parent}")
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise ValueError(f"CIFAR-100 file '{path}' could not be read ({one_line(exc)})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"CIFAR-100 file '{path}' is malformed: expected a dict, got {type(entry).__name__}")
    return entry


def _read_cifar_part(path: Path, num_classes: int) -> _CifarSource:
    """Read a CIFAR-100 ``train``/``test`` pickle: ``data`` uint8 [n, 3072], ``fine_labels`` [n]."""
    entry = _read_cifar_pickle(path)
    data, labels = entry.get("data"), entry.get("fine_labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise ValueError(f"CIFAR-100 file '{path}' is malformed: 'data' must be a uint8 array [n, 3072]")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or len(data) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"CIFAR-100 file '{path}' is malformed: 'fine_labels' must hold {len(data)} labels in [0, {num_classes})"
        )
    return _CifarSource(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)


def _load_cifar100(
    folder: Path,
    seed: int,
    val_fraction: float,
    augment: str | None,
    image_size: int | None,
    user: tuple[Transform | None, Transform | None],
) -> DataSplits:
    augment = _resolve_augment("cifar100", augment, None).augment
    meta = _read_cifar_pickle(folder / "meta")
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or not names:
        raise ValueError(
            f"CIFAR-100 file '{folder / 'meta'}' is malformed: 'fine_label_names' must be a non-empty list"
        )
    train_src = _read_cifar_part(folder / "train", len(names))
    test_src = _read_cifar_part(folder / "test", len(names))
    size = image_size or 32

    # The classic CIFAR recipe (pad-by-1/8 random crop + flip), optionally with a timm RandAugment policy.
    ops = [] if size == 32 else [T.Resize(size)]
    ops += [T.RandomCrop(size, padding=size // 8, padding_mode="reflect"), T.RandomHorizontalFlip()]
    if augment not in (None, "basic"):
        hparams = dict(translate_const=int(size * 0.45), img_mean=tuple(round(255 * m) for m in CIFAR100_MEAN))
        ops.append(rand_augment_transform(augment, hparams))
    train_t, eval_t = _pick(augment, T.Compose([*ops, T.PILToTensor()]),
                            create_transform(size, crop_pct=1.0, use_prefetcher=True), user)

    train_idx, val_idx = _split(train_src.targets, val_fraction, seed)
    norm = (CIFAR100_MEAN, CIFAR100_STD)
    return DataSplits(
        name="cifar100",
        train=IndexedSplit(train_src, train_idx, train_t, *norm),
        val=IndexedSplit(train_src, val_idx, eval_t, *norm),
        test=IndexedSplit(test_src, np.arange(len(test_src)), eval_t, *norm),
        num_classes=len(names),
        in_chans=3,
        image_size=size,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        native_size=(32, 32),
        label_names=tuple(names),
        augment=augment,
    )


def _image_folder(folder: Path) -> ImageFolder:
    try:
        return ImageFolder(str(folder))
    except OSError as exc:
        raise ValueError(f"ImageFolder '{folder}' has no usable class folders/images ({one_line(exc)})") from None


_GRAY_MEAN, _GRAY_STD = (0.449,), (0.226,)  # timm's single-channel ImageNet statistics


class CachedFiles(ImageFiles):
    """An ImageFolder's files served from an :class:`~focusformer_fast.image_cache.ImageCache`:
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


def _load_imagefolder(
    root: Path,
    plain: bool,
    seed: int,
    val_fraction: float,
    augment: str | None,
    image_size: int | None,
    user: tuple[Transform | None, Transform | None],
    cache_dir: Path | None,
) -> DataSplits:
    train_dir = root if plain else root / "train"
    folder = _image_folder(train_dir)
    if len(folder.classes) < 2:
        raise ValueError(f"ImageFolder '{train_dir}' has {len(folder.classes)} class folder(s) "
                         f"({', '.join(folder.classes)}); a classifier needs at least 2")
    mode, native = probe(train_dir)
    augment = _resolve_augment("imagefolder", augment, (mode, native)).augment
    size = image_size or 224
    in_chans = 1 if mode == "L" else 3
    rgb = (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
    mean, std = (_GRAY_MEAN, _GRAY_STD) if in_chans == 1 else rgb
    protocol = eval_protocol(native, size)
    # small images: train resamples as eval does (bicubic); photographs as timm trains (bilinear)
    interpolation = "bicubic" if min(native) <= SMALL_SIDE else "bilinear"
    train_default = TrainCrop(size, CropRecipe.parse(augment), interpolation, mean) if augment else None
    user = tuple(None if t is None else _PilInput(t) for t in user)
    train_t, eval_t = _pick(augment, train_default, EvalResize(size, protocol), user)

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
        pool, test_idx = _split(labels, _HOLDOUT_TEST_FRACTION, _HOLDOUT_TEST_SEED)
    train_pos, val_pos = _split(labels[pool], val_fraction, seed)
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


def load_dataset(
    spec: str = "digits",
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    image_size: int | None = None,
    augment: str | None = "basic",
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    cache_dir: str | Path | None = None,
) -> DataSplits:
    """Load a dataset and split it into train / val (from train, seeded) / test.

    Args:
        spec: ``"digits"`` (bundled, offline); a CIFAR-100 folder in torchvision layout (the
            ``cifar-100-python/`` directory holding ``train``, ``test``, ``meta``, or its
            parent); an ImageFolder root with ``train/<class>/*`` and optionally
            ``val/<class>/*`` (used as the test split); or a folder of ``<class>/*`` image folders
            (test held out as for digits). ImageFolder images are read as 1-channel when the first
            one is grayscale, else RGB; an unreadable file is skipped (see
            :class:`~focusformer_fast.image_files.ImageFiles`). Eval brings them to ``image_size``
            as :func:`~focusformer_fast.image_transforms.eval_protocol` says: photographs larger
            than the input by timm's resize-and-center-crop (crop_pct 0.875, bicubic), small
            images resized whole (bicubic; not at all when already at size).
        seed: chooses which training samples form ``val``.
        val_fraction: fraction of the training samples held out as ``val``, in (0, 1).
        image_size: side in pixels of the images the splits yield; default 32 for CIFAR-100,
            224 for ImageFolder; digits are always 8.
        augment: training augmentation (:func:`choose_augment`). ``None`` or ``"none"``: none
            (train uses the eval transform); ``"auto"``: chosen by the data;
            ``"basic"``: random shifts of up to 1 px (digits), random crop after padding by
            ``image_size // 8`` px (4 at 32) + flip (CIFAR-100), what ``auto`` picks (ImageFolder);
            a crop recipe such as ``"crop0.08-flip-jitter0.4"`` (ImageFolder;
            :class:`~focusformer_fast.image_transforms.CropRecipe`); a timm RandAugment string such as
            ``"rand-m9-mstd0.5-inc1"``: ``"basic"`` plus that policy (CIFAR-100, RGB ImageFolder).
        train_transform, eval_transform: replace the default transforms. They receive a PIL
            image (CIFAR-100, ImageFolder) or an already normalized float32 ``[1, 8, 8]``
            tensor (digits) and return a uint8 ``[C, H, W]`` tensor (normalized later, with the
            returned ``mean``/``std``) or an already normalized float32 one.
        cache_dir: ImageFolder only: serve the images from a decoded, pre-resized uint8 cache in
            this directory (:func:`~focusformer_fast.image_cache.open_cache`: written on first use,
            rebuilt when stale, checked on every read).

    Returns:
        The :class:`DataSplits`.

    Raises:
        ValueError: (one line) the path is missing or is not one of the layouts above, a
            CIFAR-100 file is missing or malformed, an ImageFolder has no images, or an
            argument is out of range.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if image_size is not None and image_size <= 0:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    user = (train_transform, eval_transform)
    kind, root = _resolve(spec)
    if cache_dir is not None and kind in ("digits", "cifar100"):
        raise ValueError(f"cache_data={str(cache_dir)!r}: {spec!r} is held in memory already; a cache applies "
                         f"to image folders")
    if kind == "digits":
        if image_size not in (None, 8):
            raise ValueError(f"image_size={image_size} is not available for digits; they are 8x8")
        return _load_digits(seed, val_fraction, augment, user)
    if kind == "cifar100":
        return _load_cifar100(root, seed, val_fraction, augment, image_size, user)
    return _load_imagefolder(root, kind == "classfolder", seed, val_fraction, augment, image_size, user,
                             None if cache_dir is None else Path(cache_dir))
