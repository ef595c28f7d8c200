"""Tiny ImageFolders of solid-colour PNGs (12x10), two classes ``a`` (red) and ``b`` (green)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

TRAIN_COLORS = {"a": [(200, 10, 10), (190, 20, 10), (180, 30, 10), (170, 40, 10)],
                "b": [(10, 200, 10), (10, 190, 20), (10, 180, 30), (10, 170, 40)]}
TEST_COLORS = {"a": [(250, 0, 0), (240, 0, 0)], "b": [(0, 250, 0), (0, 240, 0)]}


def write_image_folder(root: Path, split: str, colors: dict) -> None:
    for cls, cls_colors in colors.items():
        (root / split / cls).mkdir(parents=True)
        for k, color in enumerate(cls_colors):
            Image.new("RGB", (12, 10), color).save(root / split / cls / f"{k}.png")
