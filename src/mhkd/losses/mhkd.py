"""Losses of multi-head knowledge distillation (Wang et al. 2020) on auxiliary-head logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from mhkd.losses.logits import kd


def ohkd(
    student_head: Tensor,
    teacher_head: Tensor,
    labels: Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """One-head loss ``α·KL(softmax(H_T/τ) ‖ softmax(H_S/τ))·τ² + (1 − α)·CE(y, H_S)``.

    The teacher head's logits are a target: they are detached here, so student gradients
    never reach the teacher heads whatever the caller passes.
    """
    soft = kd(student_head, teacher_head.detach(), temperature)
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_head.float(), labels)


def multi_head_kd(
    student_heads: Sequence[Tensor],
    teacher_heads: Sequence[Tensor],
    labels: Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
    beta: float = 0.5,
) -> Tensor:
    """The heads' part of the MHKD objective, ``β·Σ_j L_OHKD^(j)`` over paired heads.

    The full student objective adds Hinton KD at the final logits (the ``kd`` method).
    """
    if len(student_heads) != len(teacher_heads) or not student_heads:
        raise ValueError(
            f"need the same positive number of student and teacher heads, got "
            f"{len(student_heads)} and {len(teacher_heads)}"
        )
    total = sum(
        ohkd(s, t, labels, temperature, alpha)
        for s, t in zip(student_heads, teacher_heads, strict=True)
    )
    return beta * total


def heads_ce(heads: Sequence[Tensor], labels: Tensor) -> Tensor:
    """Sum over heads of ``CE(y, H)``: what trains the teacher heads on the frozen teacher."""
    return sum(F.cross_entropy(h.float(), labels) for h in heads)
