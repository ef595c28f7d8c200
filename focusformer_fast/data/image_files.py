"""Image files read lazily: the header first, the pixels only when a transform asks, at the size it needs.

An :class:`EncodedImage` is a file not decoded yet. Its ``size`` reads the header only; ``decode(reduce)``
decodes it, letting the JPEG decoder scale the image down by 2, 4 or 8 in the DCT (PIL's
``Image.draft``, several times cheaper than a full decode) when the caller can use an image that
much smaller. :class:`ImageFiles` is an ImageFolder's files as such images. A file that cannot be
read raises :class:`UnreadableImage` (one line) and is reported once.
"""

from __future__ import annotations

import os
import statistics
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

try:  # ~20% faster than PIL's JPEG decoding; deprecated since torchvision 0.29 in favour of TorchCodec
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
except ImportError:
    decode_jpeg = None
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_PIL_ERRORS = (OSError, ValueError, SyntaxError)  # PIL: UnidentifiedImageError, truncated data
_PROBES = 16
_TV_MODES = {"RGB": ImageReadMode.RGB, "L": ImageReadMode.GRAY} if decode_jpeg is not None else {}


class UnreadableImage(Exception):
    """An image file that cannot be decoded (the message is one line: the PIL error)."""


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class EncodedImage:
    """The file at ``path``, to be decoded in PIL ``mode`` (``L`` or ``RGB``).

    ``on_error(path, reason)``, when given, is told of a file that cannot be read before
    :class:`UnreadableImage` is raised.
    """

    def __init__(self, path: str, mode: str, on_error=None) -> None:
        self.path, self.mode, self.on_error = path, mode, on_error
        self._image: Image.Image | None = None

    def _fail(self, exc: BaseException):
        reason = one_line(exc)
        if self.on_error is not None:
            self.on_error(self.path, reason)
        raise UnreadableImage(reason) from None

    @property
    def header(self) -> Image.Image:
        """The opened, not yet decoded PIL image (its ``size`` is known)."""
        if self._image is None:
            try:
                self._image = Image.open(self.path)
            except _PIL_ERRORS as exc:
                self._fail(exc)
        return self._image

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, from the header."""
        return self.header.size

    def decode(self, reduce: int = 1) -> tuple[Image.Image, int]:
        """(the image in ``mode``, the factor ``k`` it was shrunk by: its size is ``ceil(size / k)``).

        ``reduce`` (1, 2, 4 or 8): the largest factor the caller accepts; a JPEG is decoded at
        ``1/reduce`` of its size in the DCT, other formats at full size (``k`` = 1).
        """
        im = self.header
        k = 1
        try:
            if reduce > 1:
                w, h = im.size
                drafted = im.draft(None, (w // reduce, h // reduce))  # PIL picks the factor `reduce` for this size
                if drafted is not None:
                    k = round(w / drafted[1][2])
            im.load()  # closes the file
        except _PIL_ERRORS as exc:
            im.close()
            self._fail(exc)
        finally:
            self._image = None
        return (im if im.mode == self.mode else im.convert(self.mode)), k


    def pixels(self, reduce: int = 1) -> tuple[torch.Tensor, int]:
        """(uint8 ``[C, H, W]``, the factor ``k`` it was shrunk by), as :meth:`decode`. A JPEG already in ``mode``
        decoded at full size goes through torchvision's decoder when it has one (libjpeg-turbo, as PIL's, with
        the same pixels, straight into a tensor)."""
        if reduce == 1 and self.header.format == "JPEG" and self.header.mode == self.mode in _TV_MODES:
            try:
                with warnings.catch_warnings():  # its deprecation, once per image; PIL takes over when it is gone
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pixels = decode_jpeg(read_file(self.path), mode=_TV_MODES[self.mode])
                self.header.close()
                self._image = None
                return pixels, 1
            except RuntimeError:  # not something torchvision decodes: PIL's decoder decides
                pass
        image, k = self.decode(reduce)
        array = np.array(image)
        return torch.from_numpy(array[..., None] if array.ndim == 2 else array).permute(2, 0, 1), k


def read_image(path: str, mode: str) -> Image.Image:
    """Decode the whole file at ``path`` as a PIL image in ``mode``; :class:`UnreadableImage` if it cannot be."""
    return EncodedImage(path, mode).decode()[0]


def as_pil(image) -> Image.Image:
    """A PIL image of an :class:`EncodedImage` (decoded at full size), an HWC uint8 array, or a PIL image."""
    if isinstance(image, EncodedImage):
        return image.decode()[0]
    if isinstance(image, np.ndarray):
        return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return image


class ImageFiles:
    """An ImageFolder's files; ``[i]`` gives (:class:`EncodedImage` in ``mode``, label).

    A file that cannot be read is remembered in ``bad`` (path -> reason), warned about once, and
    appended to ``report_to`` (a text file, one ``path<TAB>reason`` a line) when that is set.
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

    def __getitem__(self, i: int) -> tuple[EncodedImage, int]:
        path, label = self.samples[i]
        return EncodedImage(path, self.mode, self._record), label

    def _record(self, path: str, reason: str) -> None:
        if path in self.bad:
            return
        self.bad[path] = reason
        where = f"; listed in {self.report_to}" if self.report_to else ""
        warnings.warn(f"skipped unreadable image {path} ({reason}){where}", stacklevel=3)
        if self.report_to is not None:
            with open(self.report_to, "a") as f:
                f.write(f"{path}\t{reason}\n")


def probe(root: Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode ``L`` or ``RGB``, (median width, median height)) of an ImageFolder's images, from headers only.

    ``root`` holds class folders. The first image of up to 16 class folders spread evenly over them
    (in ImageFolder's sorted order) is read; the mode is the first readable one's (the very first
    image of the folder when it can be read), the size the median over the readable ones.
    """
    try:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    except OSError as exc:
        raise ValueError(f"ImageFolder '{root}' cannot be listed ({one_line(exc)})") from None
    spread = sorted({round(k * (len(classes) - 1) / (_PROBES - 1)) for k in range(_PROBES)}) if classes else []
    paths = [p for p in (_first_image(root / classes[k]) for k in spread) if p is not None]
    if not paths:
        raise ValueError(f"ImageFolder '{root}' has no usable class folders/images (expected <class>/<image> "
                         f"files with one of the extensions {', '.join(IMG_EXTENSIONS)})")
    headers = [h for h in map(_header, paths) if h is not None]
    if not headers:
        raise ValueError(f"none of the {len(paths)} images probed under '{root}' (the first of each of "
                         f"{len(paths)} class folders) can be read")
    mode = "L" if headers[0][0] in GRAY_MODES else "RGB"
    width = int(statistics.median(w for _, (w, _) in headers))
    return mode, (width, int(statistics.median(h for _, (_, h) in headers)))


def _first_image(folder: Path) -> str | None:
    names = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))
    return str(folder / names[0]) if names else None


def _header(path: str) -> tuple[str, tuple[int, int]] | None:
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except _PIL_ERRORS:
        return None
