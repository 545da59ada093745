"""A user's own images: ``root/train/<class>/*.png|jpg|jpeg`` and ``root/test/<class>/...``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mhkd.data.base import DataError, DataSplits, ImageSet, make_splits

EXTENSIONS = (".png", ".jpg", ".jpeg")


def _classes(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(
            f"imagefolder: {split_dir} is not a folder; expected one subfolder per class"
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {split_dir} holds no class folders")
    return classes


def _load_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"imagefolder: cannot read {path}: {exc}") from exc
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _read_split(split_dir: Path, classes: list[str], size: int) -> ImageSet:
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
        if not files:
            raise DataError(f"imagefolder: {folder} holds no {'/'.join(EXTENSIONS)} images")
        images.extend(_load_image(f, size) for f in files)
        labels.extend([label] * len(files))
    stacked = np.stack(images).transpose(0, 3, 1, 2)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(stacked)), torch.tensor(labels))


def load_imagefolder(root: Path, download: bool, image_size: int = 32) -> DataSplits:
    """Classes are the train subfolders sorted by name; the test split must have the same."""
    classes = _classes(root / "train")
    test_classes = _classes(root / "test")
    if test_classes != classes:
        raise DataError(
            f"imagefolder: class folders differ between {root / 'train'} and {root / 'test'}: "
            f"{sorted(set(classes) ^ set(test_classes))}"
        )
    return make_splits(
        "imagefolder",
        _read_split(root / "train", classes, image_size),
        _read_split(root / "test", classes, image_size),
        len(classes),
    )
