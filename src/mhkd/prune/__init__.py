"""Cascaded channel pruning with hierarchical self-distillation (Miles & Mikolajczyk 2020).

>>> import mhkd.prune
>>> result = mhkd.prune.prune("runs/teacher/checkpoints/best.pt", "digits", keep=0.4)
>>> result.model        # physically smaller network; result.summary has sizes and latency
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
from mhkd.prune.run import PruneConfig, PruneResult, prune

__all__ = [
    "Cascade",
    "ChannelGroup",
    "MaskedNet",
    "ModelLayout",
    "PruneConfig",
    "PruneError",
    "PruneResult",
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
    "prune",
    "ste_mask",
    "taylor_scores",
]
