"""Losses on pre-activation maps: activation boundaries (AB), the overhaul of feature
distillation (OFD), and ReviewKD's hierarchical context loss (HCL).

AB and OFD compare the student's (connected) map with the teacher's map *before* its ReLU:
what matters is on which side of the activation boundary each neuron lies. Student first,
teacher second, float32, the teacher's side a constant target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mhkd.losses._common import float32_math, target


@float32_math
def ab(student_feat: Tensor, teacher_feat: Tensor, margin: float = 1.0) -> Tensor:
    """AB (Heo et al. 2019) at one stage, the alternative L2 of the boundary:
    ``Σ (s + m)²·[s > −m ∧ t ≤ 0] + (s − m)²·[s ≤ m ∧ t > 0]`` over every element, divided
    by the batch size. The method weights stages ``2^{i − n + 1}`` and scales by ``3/1000``
    (the benchmark's constants) — see :func:`ab_stages`."""
    s, t = student_feat.float(), target(teacher_feat)
    loss = (s + margin).pow(2) * ((s > -margin) & (t <= 0)) + (s - margin).pow(2) * (
        (s <= margin) & (t > 0)
    )
    return loss.sum() / s.shape[0]


def ab_stages(
    student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], margin: float = 1.0
) -> Tensor:
    """The benchmark's AB over ``n`` stages: stage ``i`` weighted ``2^{i − n + 1}·3/1000``."""
    n = len(student_feats)
    return sum(
        2.0 ** (i - n + 1) * ab(s, t, margin) * 3 / 1000
        for i, (s, t) in enumerate(zip(student_feats, teacher_feats, strict=True))
    )


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """OFD's per-channel margin: the mean of a pre-ReLU response below zero,
    ``E[x | x < 0]`` for ``x ~ N(β, γ²)`` from the teacher BN's affine parameters
    (``−3|γ|`` where that tail holds less than 0.1 % of the mass)."""
    s = bn_weight.detach().double().abs()
    m = bn_bias.detach().double()
    cdf = torch.special.ndtr(-m / s)
    tail = -s * torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf + m
    return torch.where(cdf > 0.001, tail, -3 * s).float()


@float32_math
def ofd(student_feat: Tensor, teacher_feat: Tensor, margin: Tensor) -> Tensor:
    """OFD (Heo et al. 2019) at one stage, the partial L2 against the margin-ReLU'd teacher:
    ``(s − m)²`` where ``s > m ≥ t``, ``(s − t)²`` where ``s > t`` and ``m < t ≤ 0``, and
    ``(s − t)²`` where ``t > 0``; summed over channels and positions, averaged over the batch.
    ``student_feat`` is the connector's output; the teacher's map is average-pooled to its
    spatial size first; ``margin`` has one entry per channel."""
    s = student_feat.float()
    t = target(teacher_feat)
    if t.shape[-2:] != s.shape[-2:]:
        t = F.adaptive_avg_pool2d(t, s.shape[-2:])
    m = margin.to(s).view(1, -1, 1, 1)
    loss = (
        (s - m).pow(2) * ((s > m) & (t <= m))
        + (s - t).pow(2) * ((s > t) & (t > m) & (t <= 0))
        + (s - t).pow(2) * (t > 0)
    )
    return loss.sum() / s.shape[0]


@float32_math
def hcl(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """ReviewKD's hierarchical context loss (Chen et al. 2021): per level, the MSE of the maps
    plus the MSEs of their 4×4, 2×2 and 1×1 average pools (those smaller than the map),
    weighted 1, ½, ¼, ⅛ and divided by the weights' sum; summed over levels."""
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for f_s, f_t in zip(student_feats, teacher_feats, strict=True):
        s, t = f_s.float(), target(f_t)
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= s.shape[2]:
                continue
            weight /= 2
            pooled = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
            loss = loss + F.mse_loss(*pooled) * weight
            weights += weight
        total = total + loss / weights
    return total
