"""Data sets that need no files: scikit-learn's real handwritten digits and a synthetic set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mhkd.data.base import DataSplits, ImageSet, make_splits

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def _to_uint8(images: Tensor) -> Tensor:
    return images.round().clamp(0, 255).to(torch.uint8)


def load_digits(root: Path, download: bool, image_size: int = 32) -> DataSplits:
    """The 1797 8×8 digits (values 0..16) as RGB upsampled to ``image_size`` (default 32, the
    zoo's input), with a fixed stratified split. 16 keeps every detail at a quarter of the cost.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
    big = F.interpolate(small, size=(image_size,) * 2, mode="bilinear", align_corners=False)
    images = _to_uint8(big).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return make_splits(
        "digits",
        ImageSet(images[train_idx], labels[train_idx]),
        ImageSet(images[test_idx], labels[test_idx]),
        10,
    )


def load_synthetic(
    root: Path,
    download: bool,
    num_train: int = 1024,
    num_test: int = 256,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
) -> DataSplits:
    """Smooth per-class prototype images plus pixel noise, so a small CNN learns it in a few
    epochs even under crop/flip augmentation; tests use it to assert that training learns."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    prototypes = 40.0 + 175.0 * F.interpolate(
        coarse, size=(image_size, image_size), mode="bilinear", align_corners=False
    )

    def sample(n: int) -> ImageSet:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        noise = 30.0 * torch.randn(n, 3, image_size, image_size, generator=g)
        return ImageSet(_to_uint8(prototypes[labels] + noise), labels)

    train = sample(num_train)
    return make_splits("synthetic", train, sample(num_test), num_classes)
