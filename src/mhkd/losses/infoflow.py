"""Information-flow losses (Passalis, Tzelepi & Tefas 2020): batch-wise conditional
probabilities of two kernels per layer, compared with the symmetric (Jeffreys) divergence.

Inputs are layer outputs of any shape ``(B, ...)``, flattened to ``(B, D)``; student and teacher
widths may differ because only the ``B × B`` relations between samples are compared. Defaults
follow the authors' reference code: each kernel's diagonal is kept and the divergence is
averaged over all ``B²`` entries. ``diagonal=False`` is the paper's definition (``j ≠ i``: the
diagonal is left out of the row normalisation and the mean runs over ``B(B − 1)`` entries).
The teacher's side is a constant target with no gradient.

Numerics. The loss's value is well conditioned, its gradient is not: computed in float32 as the
reference code does, the gradient deviated from the exact one by 2–25 % on class-structured
features (up to 100 % on wide feature maps), for two reasons, both mended here without
changing the value:

- The Student-t kernel's diagonal. A row's distance to itself is the constant 0, but written
  as ``‖a‖² + ‖a‖² − 2aᵀa`` its gradient is a sum of rounding errors, multiplied by
  ``dK/d(d²) = K²/(2√eps) ≈ 500``, 10⁵–10⁸ times the factor of a distinct pair. The diagonal
  distance is therefore a constant zero.
- Close rows (same-class features). ``‖a‖² + ‖b‖² − 2aᵀb`` cancels to a small distance and
  float32 inner products keep too few of its digits. Inner products of the float32 rows are
  taken in float64, where their products are exact, and the ``B × B`` kernel math follows in
  float64; the backward product ``(G + Gᵀ)X`` has no such cancellation and stays in float32.
  For the student that is one float64 and one float32 ``B × D × B`` product where float32
  autograd spends three float32 ones; the teacher's single product moves to float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mhkd.losses._common import float32_math

#: Added under the square root of squared distances, and to norms (the reference code's 1e-6).
EPS = 1e-6


class _Gram(torch.autograd.Function):
    """``XXᵀ`` in float64; its backward ``(G + Gᵀ)X`` in ``X``'s dtype (float32 for float32
    rows: see the module doc)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        x64 = x.double()
        return x64 @ x64.t()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            return (grad + grad.t()).to(x.dtype) @ x


def _gram(x: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 inner products ``XXᵀ`` of the flattened rows and their squared norms (one product
    serves both kernels)."""
    x = x.flatten(1)
    gram = _Gram.apply(x.to(torch.promote_types(x.dtype, torch.float32)))
    return gram, gram.diagonal()


def _norms(sq_norms: Tensor) -> Tensor:
    """``‖a‖`` with gradient 0 at ``a = 0``, where the square root's is infinite (a dead-ReLU
    row would otherwise turn every gradient into NaN)."""
    positive = sq_norms > 0
    tiny = torch.finfo(sq_norms.dtype).tiny
    return torch.where(positive, sq_norms.clamp(min=tiny).sqrt(), 0.0)


def _cosine(gram: Tensor, sq_norms: Tensor, eps: float) -> Tensor:
    norms = _norms(sq_norms) + eps
    return (1.0 + gram / (norms.unsqueeze(1) * norms.unsqueeze(0))) / 2.0


def _student_t(gram: Tensor, sq_norms: Tensor, eps: float) -> Tensor:
    sq_dist = sq_norms.unsqueeze(1) + sq_norms.unsqueeze(0) - 2.0 * gram
    self_pairs = torch.eye(len(gram), dtype=torch.bool, device=gram.device)
    sq_dist = sq_dist.masked_fill(self_pairs, 0.0)  # exactly 0, and a constant (module doc)
    return 1.0 / (1.0 + (sq_dist.clamp(min=0) + eps).sqrt())


def cosine_kernel(x: Tensor, eps: float = EPS) -> Tensor:
    """``K(a, b) = (1 + cos(a, b)) / 2``, each vector divided by ``‖a‖ + eps`` (float64)."""
    return _cosine(*_gram(x), eps)


def student_t_kernel(x: Tensor, eps: float = EPS) -> Tensor:
    """Student-t kernel with one degree of freedom, ``1 / (1 + ‖a − b‖)``, with the distance
    computed as ``sqrt(max(‖a‖² + ‖b‖² − 2aᵀb, 0) + eps)`` (so the diagonal is ``1/(1+√eps)``),
    in float64."""
    return _student_t(*_gram(x), eps)


def _off_diagonal(m: Tensor) -> Tensor:
    keep = ~torch.eye(len(m), dtype=torch.bool, device=m.device)
    return m[keep].view(len(m), len(m) - 1)


def conditional_probabilities(kernel: Tensor, diagonal: bool = True) -> Tensor:
    """Rows of a kernel matrix normalised to ``p_{j|i}``.

    ``diagonal=False`` drops each ``K(x_i, x_i)``: the result is ``(B, B − 1)``, row ``i``
    holding ``p_{j|i}`` for ``j ≠ i`` in order.
    """
    if not diagonal:
        kernel = _off_diagonal(kernel)
    return kernel / kernel.sum(dim=1, keepdim=True)


def jeffreys(p: Tensor, q: Tensor) -> Tensor:
    """Symmetric divergence ``Σ (p − q)(log p − log q)`` averaged over all entries given.

    Logs are clamped at float32's smallest normal number so an exactly zero probability (a
    cosine kernel of opposite vectors) gives a large finite value, not NaN.
    """
    tiny = torch.finfo(torch.float32).tiny
    return ((p - q) * (p.clamp(min=tiny).log() - q.clamp(min=tiny).log())).mean()


def _kernels(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    gram, sq_norms = _gram(x)
    return _cosine(gram, sq_norms, eps), _student_t(gram, sq_norms, eps)


@float32_math
def information_flow_pair(
    student: Tensor, teacher: Tensor, diagonal: bool = True, eps: float = EPS
) -> Tensor:
    """One layer pair: ``D_J(P_t^cos, P_s^cos) + D_J(P_t^t, P_s^t)``, a float32 scalar (float64
    for float64 inputs)."""
    if student.shape[0] != teacher.shape[0] or student.shape[0] < 2:
        raise ValueError(
            f"infoflow compares the same batch of at least 2 samples; got "
            f"{student.shape[0]} student and {teacher.shape[0]} teacher rows"
        )
    loss = sum(
        jeffreys(conditional_probabilities(k_t, diagonal), conditional_probabilities(k_s, diagonal))
        for k_s, k_t in zip(_kernels(student, eps), _kernels(teacher.detach(), eps), strict=True)
    )
    return loss.to(torch.promote_types(student.dtype, torch.float32))


def information_flow(
    students: Sequence[Tensor],
    teachers: Sequence[Tensor],
    weights: Sequence[float],
    diagonal: bool = True,
    eps: float = EPS,
) -> Tensor:
    """``Σ_l α_l · L_l`` over matched layer pairs (layers with weight 0 are not computed)."""
    if not students or not len(students) == len(teachers) == len(weights):
        raise ValueError(
            f"infoflow needs layer pairs and one weight each; got {len(students)} student layers, "
            f"{len(teachers)} teacher layers and {len(weights)} weights"
        )
    loss = students[0].new_zeros((), dtype=torch.float32)
    for s, t, w in zip(students, teachers, weights, strict=True):
        if w:
            loss = loss + w * information_flow_pair(s, t, diagonal, eps)
    return loss
