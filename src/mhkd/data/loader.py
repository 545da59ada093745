"""A loader whose whole uint8 data set lives on the training device, and ``make_loaders``.

Shuffling and augmentation draw from a generator seeded by (seed, epoch) alone (see
:mod:`.order`), so any epoch, on any rank, can be replayed exactly after a resume.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from mhkd.data.augment import apply_views, normalize, random_views
from mhkd.data.base import DataSplits, check_trainable
from mhkd.data.batch import Batch, Loader
from mhkd.data.files import StreamingSplits
from mhkd.data.order import epoch_generator, rank_slots
from mhkd.data.stream import StreamLoader


class DeviceLoader:
    """Batches of normalised float32 images from a uint8 data set resident on ``device``.

    ``batch_size`` is per rank. ``augment`` (crop/flip) and ``drop_last`` default to ``train``.
    Call ``set_epoch`` before each epoch; iterating twice in one epoch repeats it exactly.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        augment: bool | None = None,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}"
            )
        if len(labels) != len(images) or len(images) == 0:
            raise ValueError(
                f"need as many labels as images (>0), got {len(labels)} and {len(images)}"
            )
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.augment = train if augment is None else augment
        self.seed = seed
        self.epoch = 0
        self.channels_last = channels_last
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device)
        slots = rank_slots(
            len(images),
            batch_size,
            rank,
            world_size,
            train,
            train if drop_last is None else drop_last,
        )
        self._sizes = [len(s) for s in slots]
        self._slots = torch.cat(slots).to(self.device) if slots else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[Batch]:
        if self._slots is None:
            return
        n = len(self.images)
        g = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        order = order.to(self.device)
        views = random_views(n, g, self.device) if self.augment else None
        for slots in self._slots.split(self._sizes):
            indices = order[slots]
            images = self.images[indices]
            batch_views = None
            if views is not None:
                batch_views = views[slots]
                images = apply_views(images, batch_views)
            yield Batch(
                normalize(images, self._mean, self._std, self.channels_last),
                self.labels[indices],
                indices,
                batch_views,
            )


def make_loaders(
    splits: DataSplits | StreamingSplits,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
    eval_batch_size: int | None = None,
    augment: bool = True,
    workers: int | None = None,
) -> tuple[Loader, Loader]:
    """The usual pair: augmented, shuffled training batches and plain sharded test batches.

    Resident splits give :class:`DeviceLoader`s; streaming splits give
    :class:`~mhkd.data.stream.StreamLoader`s decoding with ``workers`` processes (default
    :func:`~mhkd.data.stream.default_workers`), which resident splits ignore.
    """
    check_trainable(splits)
    common: dict[str, Any] = dict(
        mean=splits.mean,
        std=splits.std,
        device=device,
        seed=seed,
        rank=rank,
        world_size=world_size,
        channels_last=channels_last,
    )
    test_batch_size = eval_batch_size or batch_size
    if isinstance(splits, StreamingSplits):
        common.update(
            image_size=splits.image_size,
            resize_size=splits.resize_size,
            workers=workers,
            skip_bad=splits.skip_bad,
        )
        return (
            StreamLoader(splits.train, batch_size, train=True, augment=augment, **common),
            StreamLoader(splits.test, test_batch_size, train=False, **common),
        )
    train = DeviceLoader(
        splits.train.images, splits.train.labels, batch_size, train=True, augment=augment, **common
    )
    test = DeviceLoader(
        splits.test.images, splits.test.labels, test_batch_size, train=False, **common
    )
    return train, test
