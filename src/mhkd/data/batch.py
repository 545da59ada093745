"""The unit that flows from a loader to the training loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

from torch import Tensor


class Batch(NamedTuple):
    """One mini-batch on the training device.

    ``indices`` are the samples' positions in their data set (CRD's memory bank and the teacher
    cache key on them). ``views`` identifies the augmentation each sample received (crop offset
    and flip, see :mod:`mhkd.data.augment`), or is ``None`` when no augmentation ran.
    """

    images: Tensor
    labels: Tensor
    indices: Tensor
    views: Tensor | None = None


class Loader(Protocol):
    """What the training loop iterates: resident and streaming loaders alike."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...
