"""Cascaded channel pruning with hierarchical self-distillation (Miles & Mikolajczyk 2020).

The pieces: channel groups, masks and scores, the cascade of teaching assistants, export to a
physically smaller network. The two-stage run is :mod:`mhkd.pipelines.prune`.
"""

from mhkd.prune.baselines import baseline_scores, taylor_scores
from mhkd.prune.cascade import (
    Cascade,
    cascade_keeps,
    cascade_loss,
    cascade_score_grads,
    hint_loss,
)
from mhkd.prune.export import export, latency_ms
from mhkd.prune.groups import ChannelGroup, ModelLayout, PruneError, find_layout
from mhkd.prune.masks import MaskedNet, global_masks, magnitude_scores, ste_mask

__all__ = [
    "Cascade",
    "ChannelGroup",
    "MaskedNet",
    "ModelLayout",
    "PruneError",
    "baseline_scores",
    "cascade_keeps",
    "cascade_loss",
    "cascade_score_grads",
    "export",
    "find_layout",
    "global_masks",
    "hint_loss",
    "latency_ms",
    "magnitude_scores",
    "ste_mask",
    "taylor_scores",
]
