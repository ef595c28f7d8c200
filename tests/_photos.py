"""Test photographs made offline: scikit-learn's two sample JPEGs (427x640 photos of a temple and a
flower) cropped to 4:3 and resized, and images whose pixels say where they are (for crop boxes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images


def photo(k: int, size: tuple[int, int] = (500, 375)) -> Image.Image:
    """Sample photo ``k % 2``, center-cropped to the aspect of ``size`` (width, height) and resized to it."""
    im = Image.fromarray(load_sample_images().images[k % 2])
    w, h = im.size
    aspect = size[0] / size[1]
    cw, ch = (round(h * aspect), h) if w / h > aspect else (w, round(w / aspect))
    box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
    return im.crop(box).resize(size, Image.BICUBIC)


def photo_folder(root: Path, per_class: int = 2, sizes=((500, 375), (375, 500)), quality: int = 90) -> list[Path]:
    """``root/{train,val}/{a,b}/*.jpg``: photos of the given sizes (cycled). Returns the files."""
    written = []
    for split in ("train", "val"):
        for c, cls in enumerate("ab"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                path = root / split / cls / f"{k}.jpg"
                photo(c + k, sizes[k % len(sizes)]).save(path, quality=quality)
                written.append(path)
    return written


def coordinates(width: int, height: int) -> Image.Image:
    """An RGB image whose red channel is the column (0 at the left, 255 at the right), green the row."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8))


def crop_box(pixels: np.ndarray, width: int, height: int) -> tuple[float, float, bool]:
    """(area fraction, aspect ratio, flipped) of the box of a :func:`coordinates` image that ``pixels``
    (uint8 ``[3, H, W]``) shows, read from the coordinates at its edges."""
    r, g = pixels[0].astype(float), pixels[1].astype(float)
    left, right = r[:, 0].mean() / 255 * (width - 1), r[:, -1].mean() / 255 * (width - 1)
    top, bottom = g[0].mean() / 255 * (height - 1), g[-1].mean() / 255 * (height - 1)
    w, h = abs(right - left) + 1, bottom - top + 1
    return w * h / (width * height), w / h, right < left
