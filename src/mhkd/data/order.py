"""Which samples each rank reads in each epoch, shared by the resident and streaming loaders.

Shuffling draws from a generator seeded by (seed, epoch) alone, so any epoch, on any rank,
can be replayed exactly after a resume. With ``world_size`` ranks every rank computes the same
global order and takes its own slice of each global batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch) only, well mixed across nearby pairs."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def rank_slots(
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
