"""Losses between the stage feature maps of the CRD benchmark's remaining baselines: NST, VID,
KDSVD, FSP and factor transfer (FT).

Every function takes the student's side first and the teacher's second, computes in float32 and
treats the teacher's tensors as constant targets (no gradient reaches them). Where two maps of
different spatial size meet, the larger is average-pooled to the smaller (as the benchmark does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mhkd.losses._common import constant, float32_math, target
from mhkd.losses.features import match_spatial


# ---- NST: neuron selectivity transfer ---------------------------------------------------------
def _poly_mmd_term(a: Tensor, b: Tensor) -> Tensor:
    """``mean_{n,i,j} (a_{n,i} · b_{n,j})²``: the mean degree-2 polynomial kernel over channel
    pairs of ``(B, C, HW)`` maps."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


@float32_math
def nst(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """NST (Huang & Wang 2017) at one stage: the squared MMD, under the kernel
    ``k(x, y) = (xᵀy)²``, between the student's and the teacher's channels, each channel's map
    L2-normalised over positions. Channel counts may differ. Sum over stages for the method."""
    s, t = match_spatial(student_feat.float(), target(teacher_feat))
    s = F.normalize(s.flatten(2), dim=2)
    t = F.normalize(t.flatten(2), dim=2)
    return _poly_mmd_term(t, t) + _poly_mmd_term(s, s) - 2 * _poly_mmd_term(s, t)


# ---- VID: variational information distillation ----------------------------------------------
def vid_variance(log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-channel variance ``softplus(log_scale) + eps`` of VID's Gaussian."""
    return F.softplus(log_scale.float()) + eps


def vid_log_scale_init(channels: int, init_var: float = 5.0, eps: float = 1e-5) -> Tensor:
    """The ``log_scale`` whose variance is ``init_var``: ``log(exp(init_var − eps) − 1)``."""
    return torch.full((channels,), math.log(math.expm1(init_var - eps)))


@float32_math
def vid(pred_mean: Tensor, teacher_feat: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """VID (Ahn et al. 2019) at one stage: the Gaussian negative log-likelihood (without the
    constant) of the teacher's map under the student's predicted mean and a learned
    per-channel variance, ``mean(½((μ − t)²/σ² + log σ²))``.

    ``pred_mean`` is the student's regressed map, of the teacher's channels and of the spatial
    size the two maps were pooled to (:func:`match_spatial` before the regressor).
    """
    t = target(teacher_feat)
    if pred_mean.shape != t.shape:
        raise ValueError(
            f"vid compares maps of one shape; got {tuple(pred_mean.shape)} and {tuple(t.shape)}"
        )
    var = vid_variance(log_scale, eps).view(1, -1, 1, 1)
    return (0.5 * ((pred_mean.float() - t).pow(2) / var + var.log())).mean()


# ---- KDSVD: self-supervised KD with singular value decomposition -----------------------------
def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class _FiniteGrad(torch.autograd.Function):
    """Identity whose backward zeroes non-finite gradient entries.

    The SVD's backward divides by ``s_i² − s_j²``: two (nearly) equal singular values make it
    inf or NaN, which the reference code passes on to the weights (a run dies some epochs
    later). Zeroing those entries is what the reference's ``removenan`` does to the forward.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        return _finite(grad)


def _right_singular(feat: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Top-``n`` right singular vectors ``(B, C, n)`` and values ``(B, n)`` of the
    ``(HW, C)`` matrix of each sample, each L2-normalised (non-finite entries zeroed)."""
    x = feat.float().flatten(2).transpose(1, 2)
    if x.requires_grad:
        x = _FiniteGrad.apply(x)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = _finite(vh.transpose(1, 2))[:, :, :n]
    return F.normalize(v, dim=1), F.normalize(_finite(s)[:, :n], dim=1)


def _align(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For each teacher vector, the student vector of largest |cosine|, sign-matched."""
    cosine = v_s.transpose(1, 2) @ v_t
    best = cosine.abs().amax(dim=1, keepdim=True)
    mask = torch.where(cosine.abs() == best, cosine.sign(), torch.zeros_like(cosine))
    return v_s @ mask


@float32_math
def kdsvd(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], k: int = 1) -> Tensor:
    """KDSVD (Lee et al. 2018) over a sequence of stages.

    Each stage's map is decomposed; the student's top ``k + 3`` right singular vectors are
    aligned to the teacher's top ``k``, both scaled by the teacher's normalised singular
    values; between consecutive stages an RBF ``exp(−(v_i − v_{i−1})²/8)`` over all channel
    pairs is compared, ``Σ (rbf_s − rbf_t)² / B`` summed over stage pairs. Student and teacher
    maps of a stage need the same channel count.
    """
    if len(student_feats) != len(teacher_feats):
        raise ValueError("kdsvd needs as many student stages as teacher stages")
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    prev = None
    for f_s, f_t in zip(student_feats, teacher_feats, strict=True):
        if f_s.shape[1] != f_t.shape[1]:
            raise ValueError(
                f"kdsvd needs equal channel counts at each stage; got student {f_s.shape[1]} "
                f"and teacher {f_t.shape[1]}"
            )
        v_t, s_t = _right_singular(constant(f_t), k)
        v_s, _ = _right_singular(f_s, k + 3)
        scale = s_t.unsqueeze(1)
        v_s, v_t = _align(v_s, v_t) * scale, v_t * scale
        if prev is not None:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - prev[0].unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - prev[1].unsqueeze(1)).pow(2) / 8)
            total = total + _finite((rbf_s - rbf_t.detach()).pow(2)).sum()
        prev = (v_s, v_t)
    return total / student_feats[0].shape[0]


# ---- FSP: flow of solution procedure ---------------------------------------------------------
def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """``(B, C_top, C_bottom)`` Gram matrix ``mean_hw top_i · bottom_j`` of two maps, the larger
    average-pooled to the smaller's size first."""
    bottom, top = match_spatial(bottom.float(), top.float())
    return torch.bmm(top.flatten(2), bottom.flatten(2).transpose(1, 2)) / bottom[0, 0].numel()


@float32_math
def fsp(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """FSP (Yim et al. 2017): ``Σ_i mean((G_s,i − G_t,i)²)`` over consecutive map pairs
    ``(f_i, f_{i+1})``; student and teacher maps need equal channel counts."""
    s_c = [f.shape[1] for f in student_feats]
    t_c = [f.shape[1] for f in teacher_feats]
    if s_c != t_c:
        raise ValueError(f"fsp needs equal channel counts; got student {s_c}, teacher {t_c}")
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for i in range(len(student_feats) - 1):
        g_s = fsp_matrix(student_feats[i], student_feats[i + 1])
        g_t = fsp_matrix(constant(teacher_feats[i]), constant(teacher_feats[i + 1]))
        total = total + (g_s - g_t).pow(2).mean()
    return total


# ---- FT: factor transfer ---------------------------------------------------------------------
def factor(feat: Tensor) -> Tensor:
    """A factor map as the loss sees it: ``normalize(mean_c f²)`` flattened to ``(B, HW)``."""
    return F.normalize(feat.float().pow(2).mean(dim=1).flatten(1), dim=1)


@float32_math
def factor_transfer(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """FT (Kim et al. 2018): ``mean |φ(F_s) − φ(F_t)|`` between the translator's and the
    paraphraser's factors (:func:`factor`), the larger map pooled to the smaller first."""
    s, t = match_spatial(student_factor.float(), target(teacher_factor))
    return (factor(s) - factor(t)).abs().mean()
