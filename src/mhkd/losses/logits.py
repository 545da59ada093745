"""Losses on logits: Hinton KD."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: ``KL(softmax(t/τ) ‖ softmax(s/τ)) · τ²``, summed over classes, batch mean.

    The τ² factor keeps the gradient scale independent of τ. The teacher side is a target and
    carries no gradient. Computed in float32 so bf16 autocast does not round the softmax of
    near-equal logits.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    return (
        F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        * temperature**2
    )
