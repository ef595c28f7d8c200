"""Which dataset a ``--data`` value names, and loading it: bundled digits, CIFAR-100, image folders.

``load_dataset(spec)`` returns a :class:`DataSplits` of three map-style datasets. Indexing one,
``split[k]``, gives ``(image, label)`` with ``image`` a float32 tensor ``[C, H, W]`` normalized
with ``DataSplits.mean``/``std`` and ``label`` a Python ``int`` in ``[0, num_classes)``. The
loaders (:func:`~focusformer_fast.data.loaders.make_loaders`) take ``split.sample(k)`` instead:
the same image before its last steps, uint8 (:mod:`focusformer_fast.data.transforms`), which the
training device finishes (:mod:`focusformer_fast.data.device_batches`) to the same floats.

How ``train``, ``val`` and ``test`` are drawn is :mod:`focusformer_fast.data.splits`; each source
is a module: :mod:`~focusformer_fast.data.digits`, :mod:`~focusformer_fast.data.cifar`,
:mod:`~focusformer_fast.data.folders`.

Augmentation (``augment="auto"``, :func:`choose_augment`) is chosen by the data so that it keeps
the class: none for the bundled digits, the CIFAR recipe for CIFAR-100, and for an image folder
the :class:`~focusformer_fast.data.transforms.CropRecipe` that
:func:`~focusformer_fast.data.transforms.folder_recipe` picks by the images' channels and size.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from focusformer_fast.data.augment import AugmentChoice, resolve_augment
from focusformer_fast.data.cifar import cifar100_splits
from focusformer_fast.data.digits import digits_splits
from focusformer_fast.data.folders import folder_splits
from focusformer_fast.data.image_files import probe
from focusformer_fast.data.splits import DataSplits, Transform

_CIFAR_DIR = "cifar-100-python"
_EXPECTED = ("expected 'digits', a CIFAR-100 folder (cifar-100-python/), an ImageFolder root with train/ "
             "(and optional val/), or a folder of class folders of images")


def choose_augment(spec: str, augment: str | None = "auto") -> AugmentChoice:
    """The augmentation :func:`load_dataset` applies to ``spec``'s training images for ``augment``, and why.

    ``auto``: none for the bundled digits; the CIFAR recipe for CIFAR-100; for an image folder
    (its images' headers are read, a few files) :func:`~focusformer_fast.data.transforms.folder_recipe`:
    timm's recipe for photographs, no horizontal flip for 1-channel images or images of 32 px or
    less, crops of at least 80% of images of 64 px or less. ``basic`` on an image folder is the
    same choice; a RandAugment string adds that policy to it (no color jitter, as timm). Other
    values are checked and kept. ``ValueError`` (one line) for a value the data does not support.
    """
    kind, root = resolve_spec(spec)
    images = None
    if kind in ("imagefolder", "classfolder") and augment not in (None, "none"):
        images = probe(root / "train" if kind == "imagefolder" else root)
    return resolve_augment(kind, augment, images)


def resolve_spec(spec: str) -> tuple[str, Path | None]:
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
            :class:`~focusformer_fast.data.image_files.ImageFiles`). Eval brings them to ``image_size``
            as :func:`~focusformer_fast.data.transforms.eval_protocol` says: photographs larger
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
            :class:`~focusformer_fast.data.transforms.CropRecipe`); a timm RandAugment string such as
            ``"rand-m9-mstd0.5-inc1"``: ``"basic"`` plus that policy (CIFAR-100, RGB ImageFolder).
        train_transform, eval_transform: replace the default transforms. They receive a PIL
            image (CIFAR-100, ImageFolder) or an already normalized float32 ``[1, 8, 8]``
            tensor (digits) and return a uint8 ``[C, H, W]`` tensor (normalized later, with the
            returned ``mean``/``std``) or an already normalized float32 one.
        cache_dir: ImageFolder only: serve the images from a decoded, pre-resized uint8 cache in
            this directory (:func:`~focusformer_fast.data.cache.open_cache`: written on first use,
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
    kind, root = resolve_spec(spec)
    if cache_dir is not None and kind in ("digits", "cifar100"):
        raise ValueError(f"cache_data={str(cache_dir)!r}: {spec!r} is held in memory already; a cache applies "
                         f"to image folders")
    if kind == "digits":
        if image_size not in (None, 8):
            raise ValueError(f"image_size={image_size} is not available for digits; they are 8x8")
        return digits_splits(seed, val_fraction, augment, user)
    if kind == "cifar100":
        return cifar100_splits(root, seed, val_fraction, augment, image_size, user)
    return folder_splits(root, kind == "classfolder", seed, val_fraction, augment, image_size, user,
                             None if cache_dir is None else Path(cache_dir))
