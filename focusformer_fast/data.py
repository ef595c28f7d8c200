"""Datasets and loaders: bundled digits, CIFAR-100 (torchvision layout), ImageFolder.

``load_dataset(spec)`` returns a :class:`DataSplits` of three map-style datasets, each yielding
``(image, label)`` with ``image`` a float32 tensor ``[C, H, W]`` already normalized with
``DataSplits.mean``/``std`` and ``label`` a Python ``int`` in ``[0, num_classes)``.

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
"""

from __future__ import annotations

import math
import pickle
import warnings
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
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = ["DataSplits", "Loaders", "load_dataset", "make_loaders", "unreadable_files", "report_unreadable"]

Transform = Callable[[Any], torch.Tensor]

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
    normalization already applied to every image.
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


class IndexedSplit(Dataset):
    """The samples ``source[i] for i in indices``, each passed through ``transform``.

    ``source[i]`` returns ``(raw image, label)``: a tensor for digits, a PIL image otherwise.
    ``indices`` (int64 ``[n]``, sorted) are positions in ``source``, so two splits of the same
    source can be checked for overlap.
    """

    def __init__(self, source: Any, indices: np.ndarray, transform: Transform | None) -> None:
        self.source = source
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.indices)
        if not -n <= i < n:
            raise IndexError(f"sample {i} of a split of {n}")  # also ends ``for sample in split``
        i %= n
        for j in range(n):  # an unreadable file is replaced by the next readable one of this split
            try:
                image, label = self.source[int(self.indices[(i + j) % n])]
                break
            except UnreadableImage:
                continue
        else:
            raise ValueError(f"no image of this split can be read ({n} tried)")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label)


class _CifarSource:
    """CIFAR images as uint8 ``[n, 32, 32, 3]`` (HWC) in memory; ``[i]`` gives (PIL image, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.targets = labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), int(self.targets[i])


class UnreadableImage(Exception):
    """An image file that cannot be decoded (raised by :class:`ImageFiles`, skipped by :class:`IndexedSplit`)."""


class ImageFiles:
    """An ImageFolder's files; ``[i]`` gives (PIL image in ``mode``, label) or raises :class:`UnreadableImage`.

    An unreadable file (not an image, truncated) is remembered in ``bad`` (path -> reason), warned
    about once, and appended to ``report_to`` (a text file, one ``path<TAB>reason`` a line) when set.
    """

    def __init__(self, folder: ImageFolder, mode: str) -> None:
        self.samples = folder.samples
        self.targets = folder.targets
        self.classes = folder.classes
        self.mode = mode
        self.bad: dict[str, str] = {}
        self.report_to: Path | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        path, label = self.samples[i]
        try:
            return read_image(path, self.mode), label
        except UnreadableImage as exc:
            if path not in self.bad:
                self.bad[path] = str(exc)
                where = f"; listed in {self.report_to}" if self.report_to else ""
                warnings.warn(f"skipped unreadable image {path} ({exc}){where}", stacklevel=2)
                if self.report_to is not None:
                    with open(self.report_to, "a") as f:
                        f.write(f"{path}\t{exc}\n")
            raise


def read_image(path: str, mode: str) -> Image.Image:
    """Decode the whole file at ``path`` as a PIL image in ``mode`` (``L`` or ``RGB``).

    Raises :class:`UnreadableImage` (one line) if it is not an image or is truncated."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated data
        raise UnreadableImage(_one_line(exc)) from None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


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


def _check_augment(augment: str | None, allow_policy: bool) -> None:
    if augment in (None, "basic"):
        return
    if allow_policy and isinstance(augment, str) and augment.startswith("rand"):
        return
    allowed = "None, 'basic'" + (" or a timm RandAugment string like 'rand-m9-mstd0.5-inc1'" if allow_policy else "")
    raise ValueError(f"augment={augment!r} is not supported here; allowed: {allowed}")


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
    _check_augment(augment, allow_policy=False)
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
    return DataSplits(
        name="digits",
        train=IndexedSplit(source, train_idx, train_t),
        val=IndexedSplit(source, val_idx, eval_t),
        test=IndexedSplit(source, test_idx, eval_t),
        num_classes=10,
        in_chans=1,
        image_size=8,
        mean=(mean,),
        std=(std,),
    )


def _read_cifar_pickle(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"CIFAR-100 file '{path}' is missing; expected train, test and meta in {path.parent}")
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise ValueError(f"CIFAR-100 file '{path}' could not be read ({_one_line(exc)})") from None
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
    _check_augment(augment, allow_policy=True)
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
    train_t, eval_t = _pick(
        augment,
        T.Compose([*ops, T.ToTensor(), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)]),
        create_transform(size, is_training=False, crop_pct=1.0, mean=CIFAR100_MEAN, std=CIFAR100_STD),
        user,
    )

    train_idx, val_idx = _split(train_src.targets, val_fraction, seed)
    return DataSplits(
        name="cifar100",
        train=IndexedSplit(train_src, train_idx, train_t),
        val=IndexedSplit(train_src, val_idx, eval_t),
        test=IndexedSplit(test_src, np.arange(len(test_src)), eval_t),
        num_classes=len(names),
        in_chans=3,
        image_size=size,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        native_size=(32, 32),
        label_names=tuple(names),
    )


def _image_folder(folder: Path) -> ImageFolder:
    try:
        return ImageFolder(str(folder))
    except OSError as exc:
        raise ValueError(f"ImageFolder '{folder}' has no usable class folders/images ({_one_line(exc)})") from None


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_GRAY_MEAN, _GRAY_STD = (0.449,), (0.226,)  # timm's single-channel ImageNet statistics


def _probe(folder: ImageFolder, where: Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode ``L`` or ``RGB``, (width, height)) of the first readable image: the data's channels and size."""
    for path, _ in folder.samples[:100]:
        try:
            with Image.open(path) as im:
                return ("L" if im.mode in _GRAY_MODES else "RGB"), im.size
        except (OSError, ValueError, SyntaxError):
            continue
    raise ValueError(f"none of the first {min(100, len(folder.samples))} images under '{where}' can be read")


class _ToSize:
    """Resize a PIL image to ``size x size`` (bicubic) unless it already is; never crops."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), Image.BICUBIC)


def _folder_transforms(size: int, at_size: bool, mode: str, augment: str | None,
                       mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Transform, Transform]:
    """(train, eval) for ImageFolder data. Eval: resize only images not at ``size``, no crop. Train
    ``basic``: images at size get a reflect-padded random crop + flip; others timm's random-resized crop."""
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    eval_t = T.Compose([_ToSize(size), *finish])
    policy = augment not in (None, "basic")
    if policy and mode == "L":
        raise ValueError(f"augment={augment!r}: RandAugment policies need RGB images; these are 1-channel")
    if at_size:
        ops = [T.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"), T.RandomHorizontalFlip()]
        if policy:
            ops.append(rand_augment_transform(augment, dict(translate_const=int(size * 0.45),
                                                            img_mean=tuple(round(255 * m) for m in mean))))
        train_t = T.Compose([_ToSize(size), *ops, *finish])
    else:
        train_t = create_transform(size, is_training=True, auto_augment=augment if policy else None,
                                   mean=mean, std=std)
    return train_t, eval_t


def _load_imagefolder(
    root: Path,
    plain: bool,
    seed: int,
    val_fraction: float,
    augment: str | None,
    image_size: int | None,
    user: tuple[Transform | None, Transform | None],
) -> DataSplits:
    _check_augment(augment, allow_policy=True)
    train_dir = root if plain else root / "train"
    folder = _image_folder(train_dir)
    if len(folder.classes) < 2:
        raise ValueError(f"ImageFolder '{train_dir}' has {len(folder.classes)} class folder(s) "
                         f"({', '.join(folder.classes)}); a classifier needs at least 2")
    mode, native = _probe(folder, train_dir)
    size = image_size or 224
    in_chans = 1 if mode == "L" else 3
    rgb = (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
    mean, std = (_GRAY_MEAN, _GRAY_STD) if in_chans == 1 else rgb
    train_t, eval_t = _pick(augment, *_folder_transforms(size, native == (size, size), mode, augment, mean, std), user)

    train_src = ImageFiles(folder, mode)
    labels = np.asarray(train_src.targets, dtype=np.int64)
    if not plain and (root / "val").is_dir():
        test_src = ImageFiles(_image_folder(root / "val"), mode)
        if test_src.classes != train_src.classes:
            raise ValueError(f"ImageFolder '{root / 'val'}' class folders differ from those in '{root / 'train'}'")
        pool, test_idx = np.arange(len(labels)), np.arange(len(test_src))
    else:
        test_src = train_src
        pool, test_idx = _split(labels, _HOLDOUT_TEST_FRACTION, _HOLDOUT_TEST_SEED)
    train_pos, val_pos = _split(labels[pool], val_fraction, seed)
    return DataSplits(
        name="imagefolder",
        train=IndexedSplit(train_src, pool[train_pos], train_t),
        val=IndexedSplit(train_src, pool[val_pos], eval_t),
        test=IndexedSplit(test_src, test_idx, eval_t),
        num_classes=len(train_src.classes),
        in_chans=in_chans,
        image_size=size,
        mean=mean,
        std=std,
        native_size=native,
        label_names=tuple(train_src.classes),
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
) -> DataSplits:
    """Load a dataset and split it into train / val (from train, seeded) / test.

    Args:
        spec: ``"digits"`` (bundled, offline); a CIFAR-100 folder in torchvision layout (the
            ``cifar-100-python/`` directory holding ``train``, ``test``, ``meta``, or its
            parent); an ImageFolder root with ``train/<class>/*`` and optionally
            ``val/<class>/*`` (used as the test split); or a folder of ``<class>/*`` image folders
            (test held out as for digits). ImageFolder images are read as 1-channel when the first
            one is grayscale, else RGB; images already ``image_size`` square are neither resized nor
            cropped, others are resized to it; an unreadable file is skipped (see :class:`ImageFiles`).
        seed: chooses which training samples form ``val``.
        val_fraction: fraction of the training samples held out as ``val``, in (0, 1).
        image_size: side in pixels of the images the splits yield; default 32 for CIFAR-100,
            224 for ImageFolder; digits are always 8.
        augment: training augmentation. ``None``: none (train uses the eval transform);
            ``"basic"``: random shifts of up to 1 px (digits), random crop after padding by
            ``image_size // 8`` px (4 at 32) + flip (CIFAR-100), timm's random-resized-crop + flip
            + color jitter (ImageFolder);
            a timm RandAugment string such as ``"rand-m9-mstd0.5-inc1"``: ``"basic"`` plus that
            policy (CIFAR-100, ImageFolder).
        train_transform, eval_transform: replace the default transforms. They receive a PIL
            image (CIFAR-100, ImageFolder) or an already normalized float32 ``[1, 8, 8]``
            tensor (digits) and must return a float32 ``[C, H, W]`` tensor, normalized with the
            returned ``mean``/``std`` for the PIL datasets.

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
    if kind == "digits":
        if image_size not in (None, 8):
            raise ValueError(f"image_size={image_size} is not available for digits; they are 8x8")
        return _load_digits(seed, val_fraction, augment, user)
    if kind == "cifar100":
        return _load_cifar100(root, seed, val_fraction, augment, image_size, user)
    return _load_imagefolder(root, kind == "classfolder", seed, val_fraction, augment, image_size, user)


class _Shard(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``range(n)``: disjoint, unpadded eval shards."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


@dataclass(frozen=True)
class Loaders:
    """Train/val/test DataLoaders from :func:`make_loaders`.

    Call :meth:`set_epoch` before each training epoch: the shuffle order (and the worker
    augmentation seeds) then depend only on ``(seed, epoch)``, so a resumed run replays the
    same order as an uninterrupted one.
    """

    train: DataLoader
    val: DataLoader
    test: DataLoader
    seed: int

    def set_epoch(self, epoch: int) -> None:
        """Reseed the training order for ``epoch`` (0-based), as DistributedSampler does: seed + epoch."""
        self.train.generator.manual_seed(self.seed + epoch)
        if isinstance(self.train.sampler, DistributedSampler):
            self.train.sampler.set_epoch(epoch)


def make_loaders(
    splits: DataSplits,
    batch_size: int,
    *,
    seed: int,
    num_workers: int = 0,
    distributed: bool = False,
    drop_last: bool = True,
) -> Loaders:
    """DataLoaders over ``splits``; batches are ``(images float32 [B, C, H, W], labels int64 [B])``.

    The train loader shuffles with a ``torch.Generator`` seeded with ``seed + epoch`` (see
    :meth:`Loaders.set_epoch`) and drops the last incomplete batch when ``drop_last``. With
    ``distributed`` (an initialized ``torch.distributed`` process group is required), train uses
    ``DistributedSampler(seed=seed)`` and ``batch_size`` is per rank; val/test give each rank a
    disjoint, unpadded shard, so summing correct counts and sample counts over ranks gives the
    exact accuracy. Val/test keep every sample, in order.

    With ``num_workers == 0`` random augmentation draws from torch's global RNG (seed it with
    ``torch.manual_seed``); worker processes are seeded from the loader's generator.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    generator = torch.Generator().manual_seed(seed)  # train order and train worker seeds
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ValueError("distributed=True needs an initialized torch.distributed process group")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        train_sampler: Sampler[int] = DistributedSampler(splits.train, shuffle=True, seed=seed, drop_last=drop_last)
        val_sampler: Sampler[int] | None = _Shard(len(splits.val), rank, world)
        test_sampler: Sampler[int] | None = _Shard(len(splits.test), rank, world)
    else:
        train_sampler = RandomSampler(splits.train, generator=generator)
        val_sampler = test_sampler = None

    def loader(dataset: Dataset, sampler: Sampler[int] | None, drop: bool, gen: torch.Generator) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop, generator=gen
        )

    # Val/test get their own generators so evaluating never shifts the training stream.
    return Loaders(
        train=loader(splits.train, train_sampler, drop_last, generator),
        val=loader(splits.val, val_sampler, False, torch.Generator().manual_seed(seed)),
        test=loader(splits.test, test_sampler, False, torch.Generator().manual_seed(seed)),
        seed=seed,
    )
