"""A loader whose whole uint8 data set lives on the training device.

Shuffling and augmentation draw from a generator seeded by (seed, epoch) alone, so any epoch,
on any rank, can be replayed exactly after a resume. With ``world_size`` ranks every rank
computes the same global order and takes its own slice of each global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from mhkd.data.augment import apply_views, normalize, random_views
from mhkd.data.base import DataSplits
from mhkd.data.batch import Batch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch) only, well mixed across nearby pairs."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _rank_slots(
    n: int, batch_size: int, rank: int, world_size: int, train: bool, drop_last: bool
) -> list[Tensor]:
    """Positions in the epoch's order that this rank reads, one tensor per batch.

    Training splits each global batch of ``batch_size * world_size`` between the ranks; a
    kept final partial batch is split evenly, wrapping to the order's start so that every rank
    runs the same number of equal steps. Evaluation gives each rank a disjoint contiguous shard.
    """
    if train:
        per_step = batch_size * world_size
        steps = n // per_step
        batches = [
            torch.arange(
                step * per_step + rank * batch_size, step * per_step + (rank + 1) * batch_size
            )
            for step in range(steps)
        ]
        remainder = n - steps * per_step
        if remainder and not drop_last:
            share = -(-remainder // world_size)
            start = steps * per_step + rank * share
            batches.append(torch.arange(start, start + share) % n)
        return batches
    shard = torch.tensor_split(torch.arange(n), world_size)[rank]
    batches = list(shard.split(batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


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
        slots = _rank_slots(
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
    splits: DataSplits,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
    eval_batch_size: int | None = None,
    augment: bool = True,
) -> tuple[DeviceLoader, DeviceLoader]:
    """The usual pair: augmented, shuffled training batches and plain sharded test batches."""
    common = dict(
        mean=splits.mean,
        std=splits.std,
        device=device,
        seed=seed,
        rank=rank,
        world_size=world_size,
        channels_last=channels_last,
    )
    train = DeviceLoader(
        splits.train.images, splits.train.labels, batch_size, train=True, augment=augment, **common
    )
    test = DeviceLoader(
        splits.test.images, splits.test.labels, eval_batch_size or batch_size, train=False, **common
    )
    return train, test
