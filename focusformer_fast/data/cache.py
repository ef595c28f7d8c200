"""A decoded, pre-resized uint8 copy of an image folder's files, memory-mapped: no JPEG decoding per step.

A cache directory holds

* ``pixels.u8``: every image's HWC uint8 pixels, back to back;
* ``index.npy``: int64 ``[n, 5]``, per image its byte offset, height, width, channels and the
  CRC-32 of its pixels (all zero for a file that could not be read);
* ``manifest.json``: the format, what the cache holds (:class:`CacheSpec`), every source file's
  path, size and modification time, the pixel file's size, the index's SHA-256, and the files
  that could not be read (with why). It is written last: a cache without one is incomplete.

:func:`open_cache` uses a cache only when its manifest matches the files as they are now and its
own files are whole; a stale cache (a file added, removed or changed, other settings) or a damaged
one is rebuilt, with a warning, and a directory holding anything else is refused. Each image read
is checked against its CRC-32: a mismatch raises :class:`CorruptCache` and the image is never used.
The pixels are mapped, not read: the page cache shares them between the loader's workers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from focusformer_fast.data.image_files import UnreadableImage, read_image
from focusformer_fast.utils.atomic_files import atomic_write, write_json_atomic
from focusformer_fast.utils.cli import say

FORMAT_VERSION = 1
KIND = "focusformer_fast image cache"
MANIFEST, INDEX, PIXELS, LOCK = "manifest.json", "index.npy", "pixels.u8", ".lock"
_OURS = {MANIFEST, INDEX, PIXELS, LOCK}


class CorruptCache(ValueError):
    """A cached image does not match its checksum (one line naming the cache, the image and what to do)."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds: images in PIL ``mode``; each with a shorter side above ``short_side`` resized
    (bicubic, torchvision's ``Resize(short_side)``, as eval resizes) to it, the others as they are."""

    mode: str
    short_side: int | None


def _stamp(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


class _Decoded(Dataset):
    """File ``i`` decoded and resized as ``spec`` says: HWC uint8, or the reason it cannot be read."""

    def __init__(self, paths: list[str], spec: CacheSpec) -> None:
        self.paths, self.spec = paths, spec
        self.resize = T.Resize(spec.short_side, interpolation=T.InterpolationMode.BICUBIC) if spec.short_side else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray | str:
        try:
            image = read_image(self.paths[i], self.spec.mode)
        except UnreadableImage as exc:
            return str(exc)
        if self.resize is not None and min(image.size) > self.spec.short_side:
            image = self.resize(image)
        pixels = np.array(image)
        return pixels[..., None] if pixels.ndim == 2 else pixels


class ImageCache:
    """The cached images of a list of files: ``[i]`` is file ``i``'s HWC uint8 pixels, checked.

    Raises :class:`~focusformer_fast.data.image_files.UnreadableImage` for a file that could not be read
    when the cache was built and :class:`CorruptCache` for an image whose checksum fails.
    """

    def __init__(self, directory: Path, index: np.ndarray, unreadable: dict[int, str]) -> None:
        self.directory, self.index, self.unreadable = directory, index, unreadable
        self._pixels: np.ndarray | None = None  # mapped on first read, in each process

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}

    def __getitem__(self, i: int) -> np.ndarray:
        offset, h, w, c, crc = (int(v) for v in self.index[i])
        if i in self.unreadable:
            raise UnreadableImage(self.unreadable[i])
        if self._pixels is None:
            self._pixels = np.memmap(self.directory / PIXELS, dtype=np.uint8, mode="c")
        pixels = self._pixels[offset:offset + h * w * c]
        if zlib.crc32(pixels) != crc:
            raise CorruptCache(f"image cache {str(self.directory)!r} is corrupt: image {i} does not match its "
                               f"checksum; delete the directory to rebuild it")
        return pixels.reshape(h, w, c)


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("kind") == KIND else None


def _problem(directory: Path, manifest: dict[str, Any] | None, paths: list[str], spec: CacheSpec) -> str | None:
    """Why the cache in ``directory`` cannot serve ``paths`` as ``spec`` says; None when it can."""
    if manifest is None:
        return "its manifest is missing or unreadable"
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"it has format_version={manifest.get('format_version')}, this version reads {FORMAT_VERSION}"
    if manifest.get("spec") != asdict(spec):
        return f"it holds {manifest.get('spec')}, this run needs {asdict(spec)}"
    files = manifest.get("files", [])
    if [f[0] for f in files] != paths:
        return f"it lists {len(files)} files, the folder now has {len(paths)} (added, removed or renamed)"
    changed = 0
    for path, *stamp in files:
        try:
            changed += _stamp(path) != stamp
        except OSError:
            changed += 1
    if changed:
        return f"{changed} of its {len(files)} files changed since it was written"
    try:
        if (directory / PIXELS).stat().st_size != manifest.get("pixels_bytes"):
            return f"{PIXELS} does not have the size its manifest records"
        if hashlib.sha256((directory / INDEX).read_bytes()).hexdigest() != manifest.get("index_sha256"):
            return f"{INDEX} does not match its checksum"
    except OSError as exc:
        return f"{exc.filename} cannot be read ({exc.strerror})"
    return None


def _build(directory: Path, paths: list[str], spec: CacheSpec, workers: int) -> None:
    (directory / MANIFEST).unlink(missing_ok=True)  # incomplete until the new manifest is written
    stamps = [_stamp(p) for p in paths]  # before decoding: a file changed meanwhile shows as stale next time
    index = np.zeros((len(paths), 5), dtype=np.int64)
    unreadable: dict[int, str] = {}

    def write_pixels(f) -> None:
        from tqdm import tqdm

        offset = 0
        decoded = DataLoader(_Decoded(paths, spec), batch_size=None, num_workers=workers, collate_fn=lambda x: x)
        for i, item in enumerate(tqdm(decoded, total=len(paths), desc="image cache", unit="img",
                                      disable=not sys.stderr.isatty())):
            if isinstance(item, str):
                unreadable[i] = item
                continue
            h, w, c = item.shape
            f.write(item.tobytes())
            index[i] = (offset, h, w, c, zlib.crc32(item))
            offset += item.nbytes

    atomic_write(directory / PIXELS, write_pixels)
    atomic_write(directory / INDEX, lambda f: np.save(f, index))
    write_json_atomic(directory / MANIFEST, {
        "format_version": FORMAT_VERSION, "kind": KIND, "spec": asdict(spec),
        "files": [[p, *s] for p, s in zip(paths, stamps)], "pixels_bytes": (directory / PIXELS).stat().st_size,
        "index_sha256": hashlib.sha256((directory / INDEX).read_bytes()).hexdigest(),
        "unreadable": {str(i): why for i, why in unreadable.items()}}, indent=None)


def _check_ours(directory: Path) -> None:
    foreign = [p.name for p in directory.iterdir()
               if p.name not in _OURS and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if foreign:
        raise ValueError(f"cache_data directory '{directory}' holds files that are not an image cache "
                         f"({', '.join(sorted(foreign)[:3])}); give an empty or new directory")


def open_cache(directory: str | os.PathLike, paths: list[str], spec: CacheSpec) -> ImageCache:
    """The cache of ``paths`` in ``directory``: used when valid, else (re)built there first.

    Concurrent callers (the ranks of one node) take turns on a lock file: one builds, the others
    then find it valid. Building decodes with this process's cores less one for more than 1000 files.
    ``ValueError`` (one line) when ``directory`` holds other files.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _check_ours(directory)
    with open(directory / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = _read_manifest(directory)
        problem = _problem(directory, manifest, paths, spec)
        if problem is not None:
            if manifest is None and not (directory / PIXELS).exists():
                say("note", f"writing an image cache of {len(paths)} images to {directory}")
            else:
                warnings.warn(f"image cache '{directory}' is not used: {problem}; rebuilding it", stacklevel=2)
            workers = len(os.sched_getaffinity(0)) - 1 if len(paths) > 1000 else 0
            _build(directory, paths, spec, workers)
            manifest = _read_manifest(directory)
        index = np.load(directory / INDEX)
    return ImageCache(directory, index, {int(i): why for i, why in manifest["unreadable"].items()})
