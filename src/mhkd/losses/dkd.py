"""Decoupled knowledge distillation (Zhao et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mhkd.losses._common import float32_math, target

#: Added to the target class's logit to drop it from the non-target softmax: finite, so
#: ``0 · log 0`` terms stay 0 instead of NaN, and far below any real logit.
_DROP = -1e9


@float32_math
def dkd_parts(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """The two parts of KD, each ``· τ²`` and averaged over the batch.

    TCKD: KL between the binary (target, all non-target) distributions of teacher and student.
    NCKD: KL between the distributions over the non-target classes alone (the softmax
    renormalised without the target class). Log-probabilities come from log-sum-exp, so no
    probability is rounded to 0 before its log is taken.
    """
    z_s = student_logits.float() / temperature
    z_t = target(teacher_logits) / temperature
    labels = labels.reshape(-1, 1)
    gt = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, labels, True)
    batch = z_s.shape[0]

    def binary_log_probs(z: Tensor) -> Tensor:
        log_all = torch.logsumexp(z, dim=1, keepdim=True)
        log_gt = z.gather(1, labels) - log_all
        log_other = torch.logsumexp(z.masked_fill(gt, _DROP), dim=1, keepdim=True) - log_all
        return torch.cat([log_gt, log_other], dim=1)

    log_bs, log_bt = binary_log_probs(z_s), binary_log_probs(z_t)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum() / batch
    log_ns = F.log_softmax(z_s.masked_fill(gt, _DROP), dim=1)
    log_nt = F.log_softmax(z_t.masked_fill(gt, _DROP), dim=1)
    nckd = F.kl_div(log_ns, log_nt, reduction="sum", log_target=True) / batch
    return tckd * temperature**2, nckd * temperature**2


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """DKD: ``α · TCKD + β · NCKD`` (see :func:`dkd_parts`). The warm-up is the method's."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, temperature)
    return alpha * tckd + beta * nckd
