"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020): the pieces.

- :class:`CRDEmbed`: a linear map of penultimate features to 128-d, L2-normalised.
- :class:`ContrastMemory`: one memory bank of student embeddings and one of teacher embeddings
  for every training sample, updated with momentum; it draws the negatives and turns dot
  products into the NCE model's probabilities ``exp(v·m / T) / Z``.
- :func:`nce_loss`: the NCE objective of one side (Eq. 18 of the paper, as the reference code).
- :func:`crd`: both sides together (student anchor against teacher bank, and the reverse).

The banks are registered buffers, so they are saved in checkpoints and restored on resume.
Under ``torch.distributed`` every rank's bank updates are all-gathered, so the banks of all
ranks stay identical. Memory: ``2 · N · dim · 4`` bytes (+ ``8 · N`` for the labels that
class-aware negative sampling keeps); CIFAR-100 train (N = 50 000, dim 128): 51.2 MB + 0.4 MB.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mhkd.losses._common import float32_math

#: Numerical guard of the NCE ratio, as in the reference implementation.
NCE_EPS = 1e-7
#: How often a same-class negative is re-drawn before it is accepted (class-aware sampling).
MAX_RESAMPLE_ROUNDS = 32
SAMPLING = ("other_class", "uniform")


class CRDEmbed(nn.Module):
    """``normalize(W·x + b)``: a linear embedding to ``dim_out`` on the unit sphere.

    Computed in float32 even under autocast: the embeddings are compared at temperature 0.07,
    where bf16's rounding of the dot products would matter.
    """

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.normalize(self.linear(x.flatten(1).float()), dim=1)


@float32_math
def nce_loss(probs: Tensor, num_samples: int, eps: float = NCE_EPS) -> Tensor:
    """NCE loss of one side: column 0 of ``probs`` is the positive, the others negatives.

    With ``m`` negatives drawn uniformly from ``N = num_samples`` items (noise probability
    ``P_n = 1/N``) and the model probability ``P = exp(v·m/T)/Z``:
    ``−(Σ_b log(P_pos / (P_pos + m·P_n + ε)) + Σ_{b,k} log(m·P_n / (P_neg + m·P_n + ε))) / B``.
    """
    batch, m = probs.shape[0], probs.shape[1] - 1
    noise = m / float(num_samples)
    pos, neg = probs[:, 0], probs[:, 1:]
    log_d1 = torch.log(pos) - torch.log(pos + (noise + eps))
    # Σ log(m·P_n / (P_neg + m·P_n + ε)) with the constant numerator taken out of the sum
    log_d0 = neg.numel() * math.log(noise) - torch.log(neg + (noise + eps)).sum()
    return -(log_d1.sum() + log_d0) / batch


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_rows(*tensors: Tensor) -> list[Tensor]:
    """Every rank's rows of each tensor, concatenated in rank order (row counts may differ)."""
    world = dist.get_world_size()
    device = tensors[0].device
    count = torch.tensor([tensors[0].shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    top = max(sizes)
    gathered = []
    for t in tensors:
        padded = t.new_zeros((top, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        gathered.append(torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]))
    return gathered


class ContrastMemory(nn.Module):
    """The two memory banks of CRD and its NCE probabilities.

    ``forward(v_s, v_t, indices, labels)`` returns ``(p_s, p_t)``, each ``(B, K+1)``: the
    student embeddings scored against the teacher bank and the teacher embeddings against the
    student bank, at the samples' own rows (column 0, the positives) and at ``K`` negatives
    per sample. ``Z`` is fixed from the first batch (``mean(exp(·/T)) · N``, as the reference
    code). In training mode the rows of the batch are then updated:
    ``m ← normalize(momentum · m + (1 − momentum) · v)``.

    Negatives (``K = min(negatives, N − 1)``, drawn with replacement): ``"other_class"`` (the
    CRD benchmark's default) draws from samples of other classes than the anchor, learning the
    labels of the data set as batches arrive (a sample not yet seen counts as another class);
    ``"uniform"`` draws from all N samples (the paper's NCE noise distribution).

    Scores are computed as ``anchor · bankᵀ`` for all N rows and then picked, when that is
    cheaper than gathering ``B·(K+1)`` rows (N ≤ B·(K+1), e.g. CIFAR); both give the same
    numbers. Since that product keeps the bank for the backward pass, a step's update is
    applied at the start of the next ``forward`` (or before ``state_dict``), never under a live
    graph; :meth:`flush` applies it at once.
    """

    def __init__(
        self,
        num_samples: int,
        dim: int = 128,
        negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        sampling: str = "other_class",
    ):
        super().__init__()
        if num_samples < 2:
            raise ValueError(f"CRD's memory needs at least 2 training samples, got {num_samples}")
        if sampling not in SAMPLING:
            raise ValueError(f"unknown negative sampling {sampling!r}; choose {SAMPLING}")
        if negatives < 1 or temperature <= 0 or not 0 <= momentum < 1:
            raise ValueError(
                f"need negatives >= 1, temperature > 0, 0 <= momentum < 1; got "
                f"{negatives}, {temperature}, {momentum}"
            )
        self.num_samples = num_samples
        self.dim = dim
        self.negatives = min(negatives, num_samples - 1)
        self.temperature = temperature
        self.momentum = momentum
        self.sampling = sampling
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("student_bank", torch.rand(num_samples, dim) * (2 * stdv) - stdv)
        self.register_buffer("teacher_bank", torch.rand(num_samples, dim) * (2 * stdv) - stdv)
        #: Class of each sample as seen so far (-1: not seen), for class-aware sampling.
        self.register_buffer("labels", torch.full((num_samples,), -1, dtype=torch.long))
        #: NCE normalisers (student-anchored, teacher-anchored); -1 until the first batch.
        self.register_buffer("z", torch.full((2,), -1.0))
        self._pending: tuple[Tensor, Tensor, Tensor, Tensor | None] | None = None
        self._z_set = False
        self._synced = False

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, dim={self.dim}, negatives={self.negatives}, "
            f"temperature={self.temperature}, momentum={self.momentum}, sampling={self.sampling}"
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the banks, labels and normalisers."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    # ---- sampling and scores ---------------------------------------------------------------
    def sample(self, indices: Tensor, labels: Tensor | None = None) -> Tensor:
        """``(B, K+1)`` bank rows: each sample's own index, then its K negatives."""
        batch = indices.shape[0]
        negatives = torch.randint(self.num_samples, (batch, self.negatives), device=indices.device)
        if self.sampling == "other_class" and labels is not None:
            labels = labels.to(self.labels.dtype)
            with torch.no_grad():
                self.labels.index_copy_(0, indices, labels)
            seen = self.labels.index_select(0, negatives.flatten()).view_as(negatives)
            rows, cols = (seen == labels.view(-1, 1)).nonzero(as_tuple=True)
            for _ in range(MAX_RESAMPLE_ROUNDS):  # re-draw only the same-class negatives
                if rows.numel() == 0:
                    break
                draws = torch.randint(self.num_samples, (rows.numel(),), device=indices.device)
                negatives[rows, cols] = draws
                clash = self.labels.index_select(0, draws) == labels.index_select(0, rows)
                rows, cols = rows[clash], cols[clash]
        return torch.cat([indices.view(-1, 1), negatives], dim=1)

    def dot(self, anchor: Tensor, bank: Tensor, rows: Tensor) -> Tensor:
        """``anchor[b] · bank[rows[b, k]]`` as a ``(B, K+1)`` tensor."""
        batch, width = rows.shape
        if self.num_samples <= batch * width:
            return (anchor @ bank.t()).gather(1, rows)
        picked = bank.index_select(0, rows.flatten()).view(batch, width, -1)
        return torch.bmm(picked, anchor.unsqueeze(2)).squeeze(2)

    # ---- the step --------------------------------------------------------------------------
    @float32_math
    def forward(  # type: ignore[override]
        self, v_s: Tensor, v_t: Tensor, indices: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        self.flush()
        if not self._synced:
            self._sync_from_rank0()
        indices = indices.to(self.student_bank.device).long()
        v_s, v_t = v_s.float(), v_t.float()
        rows = self.sample(indices, labels)
        s_s = self.dot(v_s, self.teacher_bank, rows) / self.temperature
        s_t = self.dot(v_t, self.student_bank, rows) / self.temperature
        if not self._z_set:
            self._set_z(s_s, s_t)
        # exp(s) / Z as exp(s − log Z), in place: one buffer per side
        log_z = self.z.log()
        p_s, p_t = s_s.sub_(log_z[0]).exp_(), s_t.sub_(log_z[1]).exp_()
        if self.training:
            self._queue_update(indices, v_s.detach(), v_t.detach(), labels)
        return p_s, p_t

    @torch.no_grad()
    def _set_z(self, s_s: Tensor, s_t: Tensor) -> None:
        """``Z = mean(exp(scores)) · N`` from the first batch, as the reference code."""
        if bool((self.z < 0).any()):
            estimate = torch.stack([s_s.exp().mean(), s_t.exp().mean()]) * self.num_samples
            if _distributed():
                dist.all_reduce(estimate)
                estimate /= dist.get_world_size()
            self.z.copy_(torch.where(self.z < 0, estimate, self.z))
        self._z_set = True

    @torch.no_grad()
    def _sync_from_rank0(self) -> None:
        """Start every rank from rank 0's banks (ranks may have drawn different random ones)."""
        if _distributed():
            for buffer in self.buffers():
                dist.broadcast(buffer, src=0)
        self._synced = True

    @torch.no_grad()
    def _queue_update(
        self, indices: Tensor, v_s: Tensor, v_t: Tensor, labels: Tensor | None
    ) -> None:
        if self.sampling != "other_class":
            labels = None
        if _distributed():
            ids = torch.stack(
                [indices, labels.long() if labels is not None else torch.full_like(indices, -1)],
                dim=1,
            )
            ids, vectors = all_gather_rows(ids, torch.cat([v_s, v_t], dim=1))
            indices, labels = ids[:, 0], (ids[:, 1] if labels is not None else None)
            v_s, v_t = vectors[:, : self.dim], vectors[:, self.dim :]
        self._pending = (indices, v_s, v_t, labels)

    @torch.no_grad()
    def flush(self) -> None:
        """Apply the last step's bank update now (it is otherwise applied lazily)."""
        if self._pending is None:
            return
        indices, v_s, v_t, labels = self._pending
        self._pending = None
        keep = _last_occurrence(indices)  # one write per row, the same on every rank
        indices = indices[keep]
        for bank, v in ((self.student_bank, v_s[keep]), (self.teacher_bank, v_t[keep])):
            rows = bank.index_select(0, indices).mul_(self.momentum)
            rows.add_(v, alpha=1.0 - self.momentum)
            rows.div_(rows.norm(dim=1, keepdim=True))
            bank.index_copy_(0, indices, rows)
        if labels is not None:
            self.labels.index_copy_(0, indices, labels[keep].to(self.labels.dtype))

    # ---- state -------------------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001
        self.flush()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        self._pending = None
        self._z_set = False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _last_occurrence(indices: Tensor) -> Tensor:
    """Positions of the last occurrence of each distinct value of ``indices``."""
    unique, inverse = torch.unique(indices, return_inverse=True)
    positions = torch.arange(len(indices), device=indices.device)
    last = torch.full_like(unique, -1)
    return last.scatter_reduce_(0, inverse, positions, reduce="amax")


def crd(
    student_emb: Tensor,
    teacher_emb: Tensor,
    memory: ContrastMemory,
    indices: Tensor,
    labels: Tensor | None = None,
) -> Tensor:
    """The CRD loss of a batch: NCE with the student as anchor plus NCE with the teacher.

    ``student_emb``/``teacher_emb`` are the :class:`CRDEmbed` outputs (both embeddings are
    trainable; the teacher *network's* features must come in detached). ``indices`` are the
    samples' data-set indices. Updates ``memory`` when it is in training mode.
    """
    p_s, p_t = memory(student_emb, teacher_emb, indices, labels)
    return nce_loss(p_s, memory.num_samples) + nce_loss(p_t, memory.num_samples)
