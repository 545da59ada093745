"""Losses on intermediate feature maps: FitNet hints, attention transfer, similarity preserving.

Every function takes the student's tensor first and the teacher's second, returns a scalar
and computes in float32 (so bf16 autocast does not round the comparison). The teacher's
tensor is a constant target: no gradient reaches it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mhkd.losses._common import constant, float32_math, target


@float32_math
def fitnet(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNet hint loss (Romero et al. 2015): mean squared error over every element.

    ``student_feat`` is the student's map *after* the trainable regressor, so both maps have
    the teacher's shape ``(B, C, H, W)``.
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"fitnet compares maps of one shape; got student {tuple(student_feat.shape)} and "
            f"teacher {tuple(teacher_feat.shape)} (regress the student map first)"
        )
    return F.mse_loss(student_feat.float(), target(teacher_feat))


class _ChannelSquareMean(torch.autograd.Function):
    """``mean_c f²`` accumulated in float32 from any input dtype, with a one-pass backward
    (``2·f·g / C``): attention transfer's cost is mostly these passes over the largest maps."""

    @staticmethod
    def forward(ctx, feat: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(feat)
        if feat.is_contiguous(memory_format=torch.channels_last) and not feat.is_contiguous():
            out = torch.linalg.vector_norm(feat, 2, dim=1, dtype=torch.float32).square_()
        else:
            out = feat.float().square().sum(dim=1)
        return out.div_(feat.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (feat,) = ctx.saved_tensors
        return feat * (grad * (2.0 / feat.shape[1])).unsqueeze(1).to(feat.dtype)


def attention_map(feat: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention ``normalize(mean_c |f|^p)``, flattened to ``(B, H·W)`` (unit L2 rows)."""
    a = _ChannelSquareMean.apply(feat) if p == 2 else feat.float().abs().pow(p).mean(dim=1)
    return F.normalize(a.flatten(1), dim=1)


def match_spatial(student_feat: Tensor, teacher_feat: Tensor) -> tuple[Tensor, Tensor]:
    """Bring two maps to one spatial size by adaptive average pooling of the larger one."""
    s_size, t_size = tuple(student_feat.shape[-2:]), tuple(teacher_feat.shape[-2:])
    if s_size == t_size:
        return student_feat, teacher_feat
    if s_size[0] * s_size[1] > t_size[0] * t_size[1]:
        return F.adaptive_avg_pool2d(student_feat, t_size), teacher_feat
    return student_feat, F.adaptive_avg_pool2d(teacher_feat, s_size)


@float32_math
def at(student_feat: Tensor, teacher_feat: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017) at one stage.

    ``mean((a(f_s) − a(f_t))²)`` over batch and positions, with ``a`` the L2-normalised
    ``p``-th power channel mean; the larger map is first average-pooled to the smaller one's
    spatial size (as the CRD benchmark does, on the features before the attention map).
    Channel counts may differ. Sum this over stages for the method's loss.
    """
    s, t = student_feat, constant(teacher_feat)
    if s.shape[-2:] != t.shape[-2:]:
        s, t = match_spatial(s.float(), t.float())
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


def similarity_matrix(feat: Tensor) -> Tensor:
    """Batch Gram matrix ``F·Fᵀ`` of flattened features with each row L2-normalised."""
    flat = feat.float().flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


@float32_math
def sp(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori 2019): ``‖G_t − G_s‖²_F / b²``.

    Shapes beyond the batch dimension may differ between the two networks.
    """
    if student_feat.shape[0] != teacher_feat.shape[0]:
        raise ValueError("sp needs the same batch for student and teacher")
    b = student_feat.shape[0]
    diff = similarity_matrix(target(teacher_feat)) - similarity_matrix(student_feat)
    return diff.pow(2).sum() / (b * b)
