"""Losses on relations between the samples of a batch: CC, RKD, PKT.

Inputs are ``(B, D)`` embeddings (penultimate features); student first, teacher second. The
student and teacher dimensions may differ, since only batch-by-batch relations are compared.
Computed in float32; the teacher's side is a constant target with no gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mhkd.losses._common import float32_math, target


def _check_batch(student_emb: Tensor, teacher_emb: Tensor, name: str) -> None:
    if student_emb.dim() != 2 or teacher_emb.dim() != 2:
        raise ValueError(f"{name} takes (batch, dim) embeddings")
    if student_emb.shape[0] != teacher_emb.shape[0]:
        raise ValueError(f"{name} needs the same batch for student and teacher")


# ---- CC: correlation congruence ------------------------------------------------------------
def correlation_matrix(emb: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Batch correlation ``k(x_i, x_j)`` by the Gaussian RBF kernel's Taylor expansion.

    With L2-normalised rows, ``exp(−γ‖x_i − x_j‖²) = e^{−2γ} · exp(2γ·x_iᵀx_j)``, whose
    expansion to ``order`` P is ``Σ_{p=0..P} e^{−2γ} (2γ)^p / p! · (x_iᵀx_j)^p``
    (Peng et al. 2019, Eq. 9).
    """
    x = F.normalize(emb.float(), dim=1)
    sim = x @ x.t()
    corr = torch.full_like(sim, math.exp(-2 * gamma))  # p = 0
    power = torch.ones_like(sim)
    for p in range(1, order + 1):
        power = power * sim
        corr = corr + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * power
    return corr


@float32_math
def cc(student_emb: Tensor, teacher_emb: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Correlation congruence (Peng et al. 2019): ``‖ψ(F_t) − ψ(F_s)‖²_F / b²``.

    ``ψ`` is :func:`correlation_matrix` (Gaussian RBF, Taylor order ``order``): the paper's
    form. The numbers cited for CC come from :func:`cc_delta` instead.
    """
    _check_batch(student_emb, teacher_emb, "cc")
    return F.mse_loss(
        correlation_matrix(student_emb, gamma, order),
        correlation_matrix(target(teacher_emb), gamma, order),
    )


@float32_math
def cc_delta(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """CC as the code behind the cited numbers computes it (RepDistiller's ``Correlation``,
    the authors' own code): ``δ = |e_s − e_t|``, ``mean_i Σ_d δ_i,d · δ_{i+1},d`` over
    neighbouring samples of the batch.

    Both inputs are trainable embeddings of one dimension (the teacher's *network* features
    come in detached, its embedding learns), so unlike the other relation losses the teacher
    side is not a constant here: gradients reach ``teacher_emb``.
    """
    _check_batch(student_emb, teacher_emb, "cc")
    if student_emb.shape != teacher_emb.shape or len(student_emb) < 2:
        raise ValueError(
            "cc (delta form) compares embeddings of one shape over at least 2 samples; got "
            f"student {tuple(student_emb.shape)} and teacher {tuple(teacher_emb.shape)}"
        )
    delta = (student_emb.float() - teacher_emb.float()).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


# ---- RKD: relational KD ----------------------------------------------------------------------
def pairwise_distances(emb: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between rows, ``sqrt(max(‖a‖² + ‖b‖² − 2aᵀb, eps))``, zero diagonal."""
    sq = emb.pow(2).sum(dim=1)
    dist = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * emb @ emb.t()).clamp(min=eps).sqrt()
    eye = torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    return dist.masked_fill(eye, 0.0)


def rkd_distance(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD distance term: smooth-L1 between pairwise distances, each set divided by its mean
    over non-zero entries (mean over all b² pairs, diagonal included, as the reference code)."""
    s, t = student_emb.float(), target(teacher_emb)
    with torch.no_grad():
        t_d = pairwise_distances(t)
        t_d = t_d / t_d[t_d > 0].mean()
    s_d = pairwise_distances(s)
    s_d = s_d / s_d[s_d > 0].mean()
    return F.smooth_l1_loss(s_d, t_d)


def triplet_angles(emb: Tensor) -> Tensor:
    """``cos∠(x_j − x_i, x_k − x_i)`` for all triplets, flattened (``(b³,)``, i the vertex)."""
    diff = F.normalize(emb.unsqueeze(0) - emb.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_angle(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD angle term: smooth-L1 between the triplet cosines (mean over all b³ triplets)."""
    s, t = student_emb.float(), target(teacher_emb)
    with torch.no_grad():
        t_a = triplet_angles(t)
    return F.smooth_l1_loss(triplet_angles(s), t_a)


@float32_math
def rkd(
    student_emb: Tensor,
    teacher_emb: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> Tensor:
    """Relational KD (Park et al. 2019): ``25 · distance term + 50 · angle term``."""
    _check_batch(student_emb, teacher_emb, "rkd")
    loss = student_emb.new_zeros((), dtype=torch.float32)
    if distance_weight:
        loss = loss + distance_weight * rkd_distance(student_emb, teacher_emb)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle(student_emb, teacher_emb)
    return loss


# ---- PKT: probabilistic knowledge transfer ---------------------------------------------------
def cosine_conditional(emb: Tensor, eps: float = 1e-7) -> Tensor:
    """Rows of ``K(a, b) = (1 + cos(a, b)) / 2`` normalised to conditional probabilities.

    Each vector is divided by ``‖x‖ + eps`` (the reference code); the diagonal is kept.
    """
    x = emb / (emb.norm(dim=1, keepdim=True) + eps)
    kernel = (x @ x.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@float32_math
def pkt(student_emb: Tensor, teacher_emb: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018).

    ``mean_{i,j} p_{j|i} · log((p_{j|i} + ε) / (q_{j|i} + ε))`` over all b² entries, ``P``
    from the teacher and ``Q`` from the student (cosine kernel).
    """
    _check_batch(student_emb, teacher_emb, "pkt")
    q = cosine_conditional(student_emb.float(), eps)
    p = cosine_conditional(target(teacher_emb), eps)
    return (p * torch.log((p + eps) / (q + eps))).mean()
