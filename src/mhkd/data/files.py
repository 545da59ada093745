"""Image trees on disk as file lists: all a streamed data set keeps in memory.

A split is ``<split>/<class>/<image>``; classes are the folder names sorted, and files are
sorted within each class, so every run and every rank numbers the samples alike. Paths are
kept relative to the split as one numpy bytes array: forked loader workers share it without
the reference-count writes that slowly copy a Python list of strings into every worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from mhkd.data.base import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def class_folders(dataset: str, split_dir: Path) -> list[str]:
    """The class folder names of one split, sorted."""
    if not split_dir.is_dir():
        raise DataError(f"{dataset}: {split_dir} is not a folder; expected one subfolder per class")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{dataset}: {split_dir} holds no class folders")
    return classes


def same_classes(dataset: str, train_dir: Path, test_dir: Path) -> list[str]:
    """The classes of the training split, checked to be exactly those of the test split."""
    classes = class_folders(dataset, train_dir)
    test_classes = class_folders(dataset, test_dir)
    if test_classes != classes:
        raise DataError(
            f"{dataset}: class folders differ between {train_dir} and {test_dir}: "
            f"{sorted(set(classes) ^ set(test_classes))}"
        )
    return classes


def list_images(dataset: str, folder: Path) -> list[str]:
    """Sorted names of the images in ``folder`` by extension; hidden files (``._x.jpg``) skipped."""
    names = sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.name.lower().endswith(EXTENSIONS)
        and not entry.name.startswith(".")
        and entry.is_file()
    )
    if not names:
        raise DataError(f"{dataset}: {folder} holds no {'/'.join(EXTENSIONS)} images")
    return names


@dataclass
class FileSet:
    """One split as files: paths relative to ``root`` (numpy bytes) and int64 labels."""

    root: Path
    files: np.ndarray
    labels: Tensor

    def __post_init__(self) -> None:
        if self.files.dtype.kind != "S" or self.files.shape != tuple(self.labels.shape):
            raise ValueError(
                f"files must be a bytes array as long as labels, got {self.files.dtype} "
                f"{self.files.shape} and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        return self.root / os.fsdecode(bytes(self.files[index]))

    def select(self, indices: Tensor) -> FileSet:
        """The samples at ``indices``, in that order."""
        return FileSet(self.root, self.files[indices.numpy()], self.labels[indices])


def scan_split(dataset: str, split_dir: Path, classes: list[str]) -> FileSet:
    """Every image of ``split_dir`` with its class's position in ``classes`` as label."""
    files: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        names = list_images(dataset, split_dir / name)
        files.extend(os.fsencode(os.path.join(name, f)) for f in names)
        labels.extend([label] * len(names))
    return FileSet(split_dir, np.array(files, dtype=np.bytes_), torch.tensor(labels))


def eval_resize(image_size: int) -> int:
    """The shorter side evaluation resizes to before its centre crop: 256 for a 224 crop."""
    return round(image_size * 256 / 224)


def check_sizes(name: str, image_size: int, resize_size: int) -> None:
    if not 0 < image_size <= resize_size:
        raise DataError(
            f"{name}: need 0 < image_size <= resize_size, got image_size={image_size}, "
            f"resize_size={resize_size}"
        )


@dataclass
class StreamingSplits:
    """A data set's train and test splits as file lists, decoded batch by batch by workers.

    Training images are random-resized crops of ``image_size``; test images are resized to a
    shorter side of ``resize_size``, then centre-cropped to ``image_size``. ``skip_bad`` drops
    unreadable images (counted by the loader) instead of failing on the first one. The
    properties match :class:`~mhkd.data.base.DataSplits`'.
    """

    name: str
    train: FileSet
    test: FileSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    image_size: int = 224
    resize_size: int = 256
    skip_bad: bool = False
    train_per_class: int | None = None
    subset_seed: int | None = None

    resident: ClassVar[bool] = False  # only file lists live in memory

    def __post_init__(self) -> None:
        check_sizes(self.name, self.image_size, self.resize_size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """C×H×W of one training image as the model receives it."""
        return (3, self.image_size, self.image_size)

    @property
    def num_train(self) -> int:
        return len(self.train)


def streaming_splits(
    name: str,
    train_dir: Path,
    test_dir: Path,
    image_size: int,
    resize_size: int | None,
    skip_bad: bool,
) -> StreamingSplits:
    """Scan two class-folder trees into streaming splits, normalised with ImageNet's statistics.

    Computing a tree's own statistics would mean decoding all of it before the first step;
    ImageNet's are what pretrained torchvision and timm networks expect.
    """
    resize_size = eval_resize(image_size) if resize_size is None else resize_size
    check_sizes(name, image_size, resize_size)  # before a scan that may take a while
    classes = same_classes(name, train_dir, test_dir)
    return StreamingSplits(
        name,
        scan_split(name, train_dir, classes),
        scan_split(name, test_dir, classes),
        len(classes),
        IMAGENET_MEAN,
        IMAGENET_STD,
        tuple(classes),
        image_size,
        resize_size,
        skip_bad,
    )
