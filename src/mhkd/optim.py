"""The one optimiser factory: SGD and its learning-rate schedule from a run's settings.

Every step that trains (distillation, pruning's cascade, pre-training stages) takes its
optimiser from here, so the momentum, weight decay and schedule rules are written once.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mhkd.config import OptimConfig, ScheduleConfig

Scheduler = torch.optim.lr_scheduler.LRScheduler


def sgd(
    params: Iterable[nn.Parameter], optim: OptimConfig, schedule: ScheduleConfig
) -> tuple[torch.optim.SGD, Scheduler]:
    """SGD over ``params`` and its per-epoch schedule: cosine to zero over the run's epochs, or
    ×gamma at each milestone."""
    optimizer = torch.optim.SGD(
        list(params), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
        nesterov=optim.nesterov,
    )  # fmt: skip
    if schedule.kind == "cosine":
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, schedule.epochs)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, schedule.resolved_milestones(), schedule.gamma
    )
    return optimizer, scheduler
