"""Helpers of the tests that run the commands: tiny train flags, tiny ImageFolders of digit PNGs, and a run's
metrics and record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

# 8 steps of 64 images: a few seconds on one CPU thread
TINY = ["--steps", "8", "--batch-size", "64", "--reward-batch-size", "64", "--specialize-n", "2", "--log-every", "1",
        "--sampler-warmup", "2", "--update-every", "2", "--num-budgets", "2", "--no-progress"]


def digit_pngs(root: Path, per_class: int = 20, classes: int = 3, size: int = 8, mode: str = "L",
               start: int = 0) -> dict[Path, np.ndarray]:
    """Write ``per_class`` PNGs of each of the first ``classes`` digits under ``root/<digit>/`` (8-bit, ``mode``,
    ``size`` square). Returns each file's uint8 pixels [size, size] (as written, before any resize)."""
    bunch = load_digits()
    written = {}
    for c in range(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        images = bunch.images[bunch.target == c][start:start + per_class]
        for k, img in enumerate(images):
            pixels = (img * 255 / 16).round().astype(np.uint8)
            im = Image.fromarray(pixels, "L")
            if size != 8:
                im = im.resize((size, size), Image.NEAREST)
            path = root / str(c) / f"{k}.png"
            im.convert(mode).save(path)
            written[path] = np.asarray(im)
    return written


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run_info(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())
