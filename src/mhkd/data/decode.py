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


def open_rgb(path: Path) -> Image.Image:
    """The fully decoded image as RGB. Raises what Pillow raises for a bad file, including
    ``DecompressionBombError`` for images over twice ``Image.MAX_IMAGE_PIXELS``."""
    with Image.open(path) as image:
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
