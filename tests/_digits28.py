"""A 28x28 grayscale ImageFolder of handwritten digits, the size and kind of MNIST, made offline.

scikit-learn's 1797 digits (8x8, 17 gray levels) are upsampled to 20x20 (bicubic) and centered in a
28x28 black frame, as MNIST's digits are. Each digit also gets ``copies - 1`` lightly jittered copies
(a random affine: rotation within +-8 degrees, scale 0.9-1.1, shift within +-2 px), so a few thousand
images exist. The split is made per source digit (stratified, fixed seed) before copying: no digit
has a copy on both sides. ``train/`` holds the training digits, ``val/`` the held-out ones (which
focusformer_fast uses as its test split and never chooses on).

    python tests/_digits28.py OUT [--copies 3] [--test-fraction 0.2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def _digit28(pixels: np.ndarray) -> Image.Image:
    """An 8x8 digit (0..16) as a 28x28 ``L`` image: 20x20 bicubic in the middle of a black frame."""
    small = Image.fromarray((pixels * 255 / 16).round().astype(np.uint8), "L").resize((20, 20), Image.BICUBIC)
    frame = Image.new("L", (28, 28), 0)
    frame.paste(small, (4, 4))
    return frame


def _jittered(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(-8, 8)
    scale = rng.uniform(0.9, 1.1)
    dx, dy = rng.integers(-2, 3, size=2)
    return image.rotate(angle, Image.BILINEAR, translate=(int(dx), int(dy))).resize(
        (round(28 * scale),) * 2, Image.BILINEAR).crop(_centered_box(round(28 * scale)))


def _centered_box(side: int) -> tuple[int, int, int, int]:
    """The 28x28 box at the middle of a ``side`` square (it reaches outside when side < 28: black)."""
    off = (side - 28) // 2
    return off, off, off + 28, off + 28


def write(root: str | Path, copies: int = 3, test_fraction: float = 0.2, seed: int = 0,
          per_class: int | None = None) -> dict[str, int]:
    """Write ``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png``; returns the image counts.

    ``per_class``: use only the first that many source digits of each class (small test data).
    """
    bunch = load_digits()
    keep = np.arange(len(bunch.target))
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(bunch.target == c)[:per_class] for c in range(10)])
    train_idx, test_idx = train_test_split(keep, test_size=test_fraction, random_state=seed,
                                           stratify=bunch.target[keep])
    rng = np.random.default_rng(seed)
    counts = {}
    for split, indices in (("train", train_idx), ("val", test_idx)):
        n = 0
        for k in sorted(indices):
            label = int(bunch.target[k])
            folder = Path(root) / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            base = _digit28(bunch.images[k])
            for c in range(copies):
                (base if c == 0 else _jittered(base, rng)).save(folder / f"{k}-{c}.png")
                n += 1
        counts[split] = n
    return counts


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--test-fraction", type=float, default=0.2)
    a = p.parse_args()
    print(write(a.out, a.copies, a.test_fraction))
