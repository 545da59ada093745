"""Decode one image file and crop it as the ImageNet recipes do, on a loader worker.

Training: a random crop covering ``scale`` of the area with aspect ratio in ``ratio``,
resized to a square, flipped with probability 1/2 (RandomResizedCrop + horizontal flip).
Evaluation: the shorter side resized, then a centre square cropped. Every random draw comes
from a generator seeded by (seed, epoch, sample index), so a sample's crop does not depend on
which worker decodes it, how many there are, or on which rank.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10
_SALT = 0x5EED_C409  # keeps these streams apart from other (seed, epoch)-seeded ones


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample's augmentation in one epoch."""
    return np.random.default_rng([_SALT, seed, epoch, index])


#: Single-channel modes wider than 8 bits (a 16-bit PNG opens as ``I;16`` or ``I``).
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: Modes with an alpha channel (``PA`` and a palette with transparency become ``RGBA``).
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def open_rgb(path: Path) -> Image.Image:
    """The fully decoded image as RGB (see :func:`to_rgb`). Raises what Pillow raises for a bad
    file, including ``DecompressionBombError`` for images over twice ``Image.MAX_IMAGE_PIXELS``,
    and ``ValueError`` for pixel values without an 8-bit meaning."""
    with Image.open(path) as image:
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB with the meaning of its values kept, every mode explicitly.

    Pillow's own ``convert("RGB")`` clips 16-bit grey at 255 (a 16-bit PNG turns almost all
    white); here 16-bit values are scaled, ``round(v * 255 / 65535)``. A palette is looked up,
    its transparency kept as alpha; alpha (RGBA, LA, PA, palette transparency) is composited
    over black, so a transparent pixel is dark whatever colour it stores. Floating-point images
    (mode F) have no defined range and are refused.
    """
    if image.mode in WIDE_MODES:
        values = np.asarray(image).astype(np.int64)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(f"{image.mode} pixel values span {low}..{high}, not 0..65535")
        grey = ((values * 255 + 65535 // 2) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no defined 8-bit range")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) of a random-resized crop.

    Up to ten tries draw an area fraction uniformly from ``scale`` and an aspect ratio
    log-uniformly from ``ratio``; the first crop that fits gets a uniform position. If none
    fits, the whole image is taken, trimmed to the nearest allowed aspect ratio, centred.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(_CROP_ATTEMPTS):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_view(
    image: Image.Image,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
) -> np.ndarray:
    """A random-resized, randomly flipped ``size``² crop as H×W×3 uint8."""
    left, top, w, h = crop_box(image.width, image.height, rng, scale, ratio)
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def eval_view(image: Image.Image, resize: int, size: int) -> np.ndarray:
    """The shorter side resized to ``resize`` (the longer one scaled and truncated), then the
    centre ``size``² crop, as H×W×3 uint8."""
    width, height = image.size
    if width <= height:
        new = (resize, int(resize * height / width))
    else:
        new = (int(resize * width / height), resize)
    if new != image.size:
        image = image.resize(new, Image.Resampling.BILINEAR)
    left = round((new[0] - size) / 2)
    top = round((new[1] - size) / 2)
    return np.asarray(image.crop((left, top, left + size, top + size)))
