"""What every data set loader returns, and the error a CLI user sees when loading fails."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


class DataError(Exception):
    """A data set cannot be loaded; the message is one line, fit to show a CLI user as is."""


@dataclass
class ImageSet:
    """A whole split in memory: uint8 images N×3×H×W and int64 labels N."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 N×3×H×W, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 of shape ({len(self.images)},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices: Tensor) -> ImageSet:
        """The samples at ``indices``, in that order."""
        return ImageSet(self.images[indices], self.labels[indices])


@dataclass
class DataSplits:
    """A data set's train and test splits, whole in memory, with the per-channel statistics
    used to normalise.

    ``classes`` names the classes where the files do (image folders). ``train_per_class`` and
    ``subset_seed`` record a low-label subset of the training split (see :mod:`.subset`).
    The properties describe the splits in the same terms as a streamed data set's, so a loop
    can size models and banks without touching tensors.
    """

    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None
    train_per_class: int | None = None
    subset_seed: int | None = None

    resident: ClassVar[bool] = True  # tensors in memory, moved whole to the training device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """C×H×W of one training image as the model receives it."""
        c, h, w = self.train.images.shape[1:]
        return (c, h, w)

    @property
    def num_train(self) -> int:
        return len(self.train)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images in [0, 1] units.

    Counting the 256 pixel values per channel avoids a float copy of the whole data set.
    """
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        means.append(float(mean) / 255.0)
        stds.append(float(var.sqrt()) / 255.0)
    return tuple(means), tuple(stds)


CHANNELS = ("red", "green", "blue")


def check_trainable(splits: DataSplits) -> None:
    """Refuse splits a run would train on silently wrong: a constant channel (normalising
    divides by its std of 0, and the loss becomes NaN) or test images of another size than the
    training images (the model would see inputs it was never shaped for)."""
    for c, std in enumerate(splits.std):
        if not std > 0 or not math.isfinite(std):
            colour = f" ({CHANNELS[c]})" if len(splits.std) == 3 else ""
            raise DataError(
                f"{splits.name}: channel {c}{colour} of the training images has std {std}; a "
                "constant channel cannot be normalised (give the images some variation in it)"
            )
    if getattr(splits, "resident", False):
        train, test = tuple(splits.train.images.shape[1:]), tuple(splits.test.images.shape[1:])
        if train != test:
            raise DataError(
                f"{splits.name}: training images are {'×'.join(map(str, train))} but test images "
                f"{'×'.join(map(str, test))}; both splits must have one size"
            )


def make_splits(
    name: str,
    train: ImageSet,
    test: ImageSet,
    num_classes: int,
    classes: tuple[str, ...] | None = None,
) -> DataSplits:
    """Bundle two splits, checking labels fit ``num_classes`` (corrupt files show up here)."""
    for split, images in (("train", train), ("test", test)):
        if len(images) == 0:
            raise DataError(f"{name}: the {split} split is empty")
        low, high = int(images.labels.min()), int(images.labels.max())
        if low < 0 or high >= num_classes:
            raise DataError(
                f"{name}: {split} labels span {low}..{high}, expected 0..{num_classes - 1}"
            )
    mean, std = channel_stats(train.images)
    return DataSplits(name, train, test, num_classes, mean, std, classes)
