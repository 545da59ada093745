"""Low-label training: a seeded, class-balanced subset of a training split."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import numpy as np
import torch

from mhkd.data.base import DataError, DataSplits
from mhkd.data.files import StreamingSplits

S = TypeVar("S", DataSplits, StreamingSplits)

_SALT = 0x5B5E7  # keeps the subset's streams apart from other (seed, …)-seeded ones


def subset_per_class(splits: S, n: int, seed: int = 0) -> S:
    """``splits`` with ``n`` training samples of every class; the test split is unchanged.

    Class ``c`` keeps the first ``n`` of a permutation of its samples drawn from (seed, c)
    alone: the subset depends only on the seed and the data, so every method run at one seed
    trains on the same images, and at one seed the subset for ``n`` lies inside the one for
    any larger ``n``. Samples keep their original order. Normalisation statistics stay the full
    split's: they use no labels, and a teacher trained on the full split then sees its inputs
    normalised as in its own training.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"train_per_class must be a positive integer, got {n!r}")
    if splits.train_per_class is not None:
        raise DataError(
            f"{splits.name}: the training split is already a subset of "
            f"{splits.train_per_class} per class"
        )
    labels = splits.train.labels
    sizes = torch.bincount(labels, minlength=splits.num_classes)
    smallest = int(sizes.argmin())
    if n > sizes[smallest]:
        name = f" ({splits.classes[smallest]})" if splits.classes else ""
        raise DataError(
            f"{splits.name}: train_per_class={n} exceeds the {int(sizes[smallest])} training "
            f"images of class {smallest}{name}"
        )
    chosen = []
    for c in range(splits.num_classes):
        members = torch.nonzero(labels == c).flatten().numpy()
        rng = np.random.default_rng([_SALT, seed, c])
        chosen.append(members[rng.permutation(len(members))[:n]])
    keep = torch.from_numpy(np.sort(np.concatenate(chosen)))
    return dataclasses.replace(
        splits, train=splits.train.select(keep), train_per_class=n, subset_seed=seed
    )
