"""What the loader's workers do to each image: augmentation that keeps the class, eval resizing, uint8 out.

Every pipeline here ends in a uint8 tensor ``[C, H, W]`` (or a :class:`Jittered` one); the float
conversion, color jitter and normalization happen on the device, batched
(:mod:`focusformer_fast.data.device_batches`).

Augmentation of an image folder is a :class:`CropRecipe`, written ``crop<S>[-flip][-jitter<J>][+<policy>]``:
timm's random-resized crop of ``S``-100% of the image's area (aspect ratio 3/4-4/3), a horizontal
flip with probability 0.5 when ``-flip``, torchvision's color jitter of strength ``J`` (brightness,
contrast and saturation factors uniform in ``[1 - J, 1 + J]``, in random order) when ``-jitter``,
and a timm RandAugment ``policy`` (e.g. ``rand-m9-mstd0.5-inc1``). timm's ImageNet recipe is
``crop0.08-flip-jitter0.4``. :func:`folder_recipe` picks one by the images (``--augment auto``).

Evaluation (:func:`eval_protocol`): photographs larger than the input as timm and AutoFormer
evaluate ImageNet (shorter side to ``size / 0.875``, bicubic, then a center crop); small images
resized whole to the input (bicubic, no crop: timm's ``squash`` at ``crop_pct`` 1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import rand_augment_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torch import Tensor
from torchvision import transforms as T

from focusformer_fast.data.image_files import EncodedImage, as_pil

SMALL_SIDE = 64
"""Images whose shorter side is at most this many pixels are small: icons, glyphs, CIFAR, MNIST."""
FLIP_SIDE = 32
"""Images this small, or with one channel, get no horizontal flip: they may be glyphs that a flip changes."""
SMALL_SCALE = 0.8
"""Least area of a small image a random crop keeps (timm's 8% can cut the object out of a 28x28 digit)."""
EVAL_CROP_PCT = 0.875  # timm's and AutoFormer's ImageNet eval: resize to 256, center crop 224
RATIO = (3 / 4, 4 / 3)
_RECIPE = re.compile(r"crop(?P<scale>[0-9.]+)(?P<flip>-flip)?(?:-jitter(?P<jitter>[0-9.]+))?"
                     r"(?:\+(?P<policy>rand-.*))?$")


@dataclass(frozen=True)
class CropRecipe:
    """Random-resized crop of ``scale``-100% of the area, optional flip, color jitter and RandAugment ``policy``."""

    scale: float
    flip: bool = False
    jitter: float = 0.0
    policy: str | None = None

    def __str__(self) -> str:
        text = f"crop{self.scale:g}" + ("-flip" if self.flip else "")
        text += f"-jitter{self.jitter:g}" if self.jitter else ""
        return text + (f"+{self.policy}" if self.policy else "")

    @classmethod
    def parse(cls, text: str) -> CropRecipe | None:
        """The recipe ``text`` writes, or None if it is not one; ``ValueError`` for a value out of range."""
        m = _RECIPE.match(text)
        if m is None:
            return None
        try:
            scale, jitter = float(m["scale"]), float(m["jitter"] or 0)
        except ValueError:
            return None
        if not 0 < scale <= 1 or not 0 <= jitter < 1:
            raise ValueError(f"augment={text!r}: the crop's least area must be in (0, 1] and the jitter in [0, 1)")
        return cls(scale, bool(m["flip"]), jitter, m["policy"])


def folder_recipe(in_chans: int, native: tuple[int, int], policy: str | None = None) -> tuple[CropRecipe, str]:
    """The augmentation that keeps the class of an image folder's images, and why, in words.

    ``native``: the images' (width, height); ``in_chans``: 1 or 3. Photographs (RGB, shorter side
    above :data:`SMALL_SIDE`) get timm's recipe; small images crops of at least
    :data:`SMALL_SCALE` of their area and no color jitter; 1-channel images or images of
    :data:`FLIP_SIDE` px or less no flip. With a RandAugment ``policy``, no color jitter (as timm).
    """
    w, h = native
    small = min(w, h) <= SMALL_SIDE
    flip = in_chans == 3 and min(w, h) > FLIP_SIDE
    jitter = 0.4 if in_chans == 3 and not small and policy is None else 0.0
    recipe = CropRecipe(SMALL_SCALE if small else 0.08, flip, jitter, policy)
    kind = f"{'1-channel' if in_chans == 1 else 'RGB'} images of {w}x{h} px"
    if in_chans == 3 and not small and policy is None:
        return recipe, f"{kind} (photographs): timm's ImageNet recipe, random-resized crops of 8-100% of the " \
                       f"area, horizontal flips, color jitter 0.4"
    parts = [f"random-resized crops of {100 * recipe.scale:g}-100% of the area"
             + (f" (a smaller crop can cut the object out of images of {SMALL_SIDE} px or less)" if small else "")]
    parts.append("horizontal flips" if flip else
                 f"no horizontal flip ({'1-channel images' if in_chans == 1 else f'images of {FLIP_SIDE} px or less'}"
                 f" may be glyphs such as digits, which a flip changes)")
    parts.append(f"RandAugment {policy} instead of color jitter" if policy else
                 "color jitter 0.4" if jitter else "no color jitter")
    return recipe, f"{kind}: " + ", ".join(parts)


@dataclass(frozen=True)
class EvalProtocol:
    """How eval brings an image to the input: timm's ``crop_mode`` (``center`` or ``squash``),
    ``crop_pct`` and ``interpolation`` (what an export's ``pretrained_cfg`` records)."""

    crop_mode: str
    crop_pct: float
    interpolation: str = "bicubic"


def eval_protocol(native: tuple[int, int], size: int) -> EvalProtocol:
    """Photographs larger than the input: the papers' center crop; small images: resized whole."""
    if min(native) > max(SMALL_SIDE, size):
        return EvalProtocol("center", EVAL_CROP_PCT)
    return EvalProtocol("squash", 1.0)


def scale_size(size: int, protocol: EvalProtocol) -> int:
    """The shorter side eval resizes an image to before its center crop (256 at 224)."""
    return math.floor(size / protocol.crop_pct)


class Jittered(NamedTuple):
    """An image and the color jitter to apply to it on the device (collated: a batch of them)."""

    pixels: Tensor  # uint8 [C, H, W]
    factors: Tensor  # float32 [3]: brightness, contrast, saturation factors
    order: Tensor  # int64 [3]: the order they apply in (0 brightness, 1 contrast, 2 saturation)


def _size_of(image: Any) -> tuple[int, int]:
    if isinstance(image, np.ndarray):
        return image.shape[1], image.shape[0]
    return image.size


def _crop_pixels(image: Any, box: tuple[int, int, int, int], reduce: int) -> Tensor:
    """uint8 ``[C, h, w]`` pixels of ``box`` (left, top, right, bottom, in full-size pixels) of ``image``, decoded up
    to ``reduce`` times smaller (a JPEG file's DCT scaling); the box is rounded outwards at the reduced size."""
    left, top, right, bottom = box
    if isinstance(image, np.ndarray):
        return torch.from_numpy(image[top:bottom, left:right]).permute(2, 0, 1)
    if isinstance(image, EncodedImage):
        pixels, k = image.pixels(reduce)
        if k > 1:
            h, w = pixels.shape[1:]
            left, top, right, bottom = left // k, top // k, min(-(-right // k), w), min(-(-bottom // k), h)
        return pixels[:, top:bottom, left:right]
    pixels = np.array(image.crop(box))
    return torch.from_numpy(pixels[..., None] if pixels.ndim == 2 else pixels).permute(2, 0, 1)


class TrainCrop:
    """A :class:`CropRecipe` on one image: uint8 ``[C, size, size]``, or :class:`Jittered` with color jitter.

    The crop box, flip and jitter factors are drawn exactly as timm's transform draws them
    (``RandomResizedCropAndInterpolation.get_params`` from ``random``, then ``torch.rand(1) < 0.5``,
    then ``ColorJitter.get_params`` from torch), so the augmentation's distribution is timm's. The
    box is cut from the image decoded as small as the crop allows (a JPEG is decoded at 1/2, 1/4 or
    1/8 of its size when the box still covers ``size`` pixels each way there) and resized with
    antialiasing by torch's uint8 kernels (within 1 level of PIL's). Takes an :class:`EncodedImage`,
    a PIL image or an HWC uint8 array.
    """

    def __init__(self, size: int, recipe: CropRecipe, interpolation: str = "bilinear",
                 mean: tuple[float, ...] = (0.5,)) -> None:
        self.size, self.recipe, self.interpolation = size, recipe, interpolation
        self.jitter = T.ColorJitter(recipe.jitter, recipe.jitter, recipe.jitter) if recipe.jitter else None
        self.policy = None
        if recipe.policy:
            fill = tuple(round(255 * m) for m in mean)
            self.policy = rand_augment_transform(recipe.policy, dict(translate_const=int(size * 0.45), img_mean=fill))

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A random crop box (left, top, right, bottom) of a ``width`` x ``height`` image, drawn as timm draws it."""
        shape_only = torch.empty(1).expand(height, width)  # get_params reads the size only
        top, left, h, w = RandomResizedCropAndInterpolation.get_params(shape_only, (self.recipe.scale, 1.0), RATIO)
        return left, top, left + w, top + h

    def __call__(self, image: Any) -> Tensor | Jittered:
        box = self.box(*_size_of(image))
        fits = min(box[2] - box[0], box[3] - box[1]) // self.size
        reduce = next((k for k in (8, 4, 2) if fits >= k), 1)
        crop = _crop_pixels(image, box, reduce)[None]
        # channels-last in: torch's fast uint8 kernel (it writes a contiguous [C, H, W])
        out = F.interpolate(crop.contiguous(memory_format=torch.channels_last), size=(self.size, self.size),
                            mode=self.interpolation, antialias=True)[0].contiguous()
        if self.recipe.flip and torch.rand(1) < 0.5:
            out = out.flip(-1)
        if self.policy is not None:
            out = T.functional.pil_to_tensor(self.policy(T.functional.to_pil_image(out))).contiguous()
        if self.jitter is None:
            return out
        j = self.jitter
        order, b, c, s, _ = j.get_params(j.brightness, j.contrast, j.saturation, j.hue)
        return Jittered(out, torch.tensor([b, c, s], dtype=torch.float32),
                        torch.tensor([k for k in order.tolist() if k < 3], dtype=torch.int64))


class _Squash:
    """Resize the whole image to ``size x size`` (bicubic) unless it already is; never crops."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), Image.BICUBIC)


class EvalResize:
    """An :class:`EvalProtocol` on one image (any of :class:`TrainCrop`'s inputs): uint8 ``[C, size, size]``.

    ``center`` is timm's own eval transform (``create_transform(size, crop_pct=..., interpolation=...)``)
    without its float conversion and normalization, which the device does identically.
    """

    def __init__(self, size: int, protocol: EvalProtocol) -> None:
        if protocol.crop_mode == "center":
            self.transform = create_transform(size, crop_pct=protocol.crop_pct, interpolation=protocol.interpolation,
                                              use_prefetcher=True)
        else:
            self.transform = T.Compose([_Squash(size), T.PILToTensor()])

    def __call__(self, image: Any) -> Tensor:
        return self.transform(as_pil(image))
