"""A user's own images: ``root/train/<class>/*.png|jpg|jpeg`` and ``root/test/<class>/...``.

Small trees of small images are read whole into memory, resized to ``image_size`` (default 32),
and train like CIFAR. Large trees, or trees of photos, are streamed (see :mod:`.stream`):
random-resized crops of ``image_size`` (default 224) for training, resize and centre crop for
testing. ``streaming=None`` chooses by :func:`should_stream`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mhkd.data.base import DataError, DataSplits, ImageSet, make_splits
from mhkd.data.decode import open_rgb
from mhkd.data.files import StreamingSplits, list_images, same_classes, streaming_splits

log = logging.getLogger(__name__)

STREAM_MIN_FILES = 100_000  # more training images than this are streamed (≥ 300 MB at 32×32)
STREAM_MIN_SIDE = 64  # so are photos: a first image per class with a shorter side above this
RESIDENT_SIZE = 32
STREAMING_SIZE = 224


def _load_image(path: Path, size: int) -> np.ndarray:
    try:
        rgb = open_rgb(path)
    except Exception as exc:  # whatever a bad file makes Pillow raise, named with the file
        raise DataError(f"imagefolder: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _read_split(split_dir: Path, classes: list[str], size: int, skip_bad: bool) -> ImageSet:
    images, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        for file in list_images("imagefolder", split_dir / name):
            try:
                images.append(_load_image(split_dir / name / file, size))
            except DataError as exc:
                if not skip_bad:
                    raise
                skipped.append(str(exc))
                continue
            labels.append(label)
    if skipped:
        log.warning("imagefolder: skipped %d unreadable images in %s", len(skipped), split_dir)
        for message in skipped:
            log.warning("skipping: %s", message)
    if not images:
        raise DataError(f"imagefolder: no readable image in {split_dir}")
    stacked = np.stack(images).transpose(0, 3, 1, 2)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(stacked)), torch.tensor(labels))


def should_stream(train_dir: Path, classes: list[str]) -> bool:
    """Stream a tree of more than ``STREAM_MIN_FILES`` training images, or one whose first
    image in some class folder has a shorter side above ``STREAM_MIN_SIDE`` pixels (read from
    the headers only); read smaller trees of small images whole."""
    count = 0
    for name in classes:
        files = list_images("imagefolder", train_dir / name)
        count += len(files)
        if count > STREAM_MIN_FILES:
            return True
        try:
            with Image.open(train_dir / name / files[0]) as image:
                if min(image.size) > STREAM_MIN_SIDE:
                    return True
        except Exception:  # unreadable: let the chosen path report it with its own rules
            pass
    return False


def load_imagefolder(
    root: Path,
    download: bool,
    image_size: int | None = None,
    streaming: bool | None = None,
    skip_bad: bool = False,
) -> DataSplits | StreamingSplits:
    """Classes are the train subfolders sorted by name; the test split must have the same.

    ``image_size`` defaults to 32 when read whole and 224 when streamed. ``skip_bad`` drops
    unreadable images with a logged warning instead of failing on the first one.
    """
    classes = same_classes("imagefolder", root / "train", root / "test")
    if streaming is None:
        streaming = should_stream(root / "train", classes)
    if streaming:
        size = STREAMING_SIZE if image_size is None else image_size
        return streaming_splits("imagefolder", root / "train", root / "test", size, None, skip_bad)
    size = RESIDENT_SIZE if image_size is None else image_size
    return make_splits(
        "imagefolder",
        _read_split(root / "train", classes, size, skip_bad),
        _read_split(root / "test", classes, size, skip_bad),
        len(classes),
        tuple(classes),
    )
