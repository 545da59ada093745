"""One-shot channel importance for the plain prune-and-fine-tune baselines.

``magnitude``: the filters' L2 norm. ``taylor`` (Molchanov et al. 2017): the first-order change
of the loss when a channel is removed, ``|Σ (∂L/∂Y)·Y|`` per channel and batch — the same
quantity as the cascade's straight-through score gradient, taken at the dense model.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mhkd.data.batch import Batch
from mhkd.prune.groups import ChannelGroup, PruneError
from mhkd.prune.masks import MaskedNet, magnitude_scores, normalize_per_group

BASELINES = ("magnitude", "taylor")


def taylor_scores(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Iterable[Batch], limit: int = 10
) -> list[Tensor]:
    """Per channel, ``|Σ_{b,h,w} (∂L/∂Y)·Y|`` summed over up to ``limit`` batches (eval mode)."""
    device = next(model.parameters()).device
    ones = [torch.ones(g.size, device=device) for g in groups]
    masked = MaskedNet(copy.deepcopy(model), groups, 1.0, ones, frozen=True).eval()
    totals = [torch.zeros(g.size, device=device) for g in groups]
    for batch in itertools.islice(batches, limit):
        masked.zero_grad(set_to_none=True)
        F.cross_entropy(masked(batch.images), batch.labels).backward()
        for total, score in zip(totals, masked.scores, strict=True):
            total += score.grad.abs()
    return normalize_per_group([t.cpu() for t in totals])


def baseline_scores(
    kind: str,
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable[Batch],
    limit: int = 10,
) -> list[Tensor]:
    """Channel importance of ``model`` by the baseline ``kind`` (magnitude or taylor)."""
    if kind == "magnitude":
        return magnitude_scores(model, groups)
    if kind == "taylor":
        return taylor_scores(model, groups, batches, limit)
    raise PruneError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")
