"""Channel masks from learned per-channel scores: a global top-k and a straight-through estimator.

``Y = Z · M`` with ``M`` a hard 0/1 mask. The straight-through estimator treats ``∂M/∂γ`` as 1,
so ``∂L/∂γ_n = Σ_{b,h,w} (∂L/∂Y)_{b,n,h,w} · Z_{b,n,h,w}``: the first-order change of the loss
when channel ``n`` is switched, which lets a dropped channel earn its way back.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mhkd.prune.groups import ChannelGroup, MaskPoint, PruneError


def check_keep(keep: float) -> float:
    """``keep`` as a float, or a :class:`PruneError` when it is outside (0, 1]."""
    if not 0.0 < float(keep) <= 1.0:
        raise PruneError(f"keep fraction must be in (0, 1], got {keep}")
    return float(keep)


def global_masks(scores: Sequence[Tensor], keep: float) -> list[Tensor]:
    """Hard 0/1 masks keeping the ``round(keep · total)`` highest scores over all groups.

    One threshold across all groups lets layers be pruned unevenly. Each group keeps at least
    its best channel, so no layer disappears (a zero-channel conv cannot be built).
    """
    check_keep(keep)
    flat = torch.cat([s.detach().reshape(-1) for s in scores])
    k = max(1, round(keep * flat.numel()))
    keep_flat = torch.zeros_like(flat, dtype=torch.bool)
    keep_flat[flat.topk(k).indices] = True
    masks = []
    for chunk, s in zip(keep_flat.split([s.numel() for s in scores]), scores, strict=True):
        chunk = chunk.clone()
        chunk[s.detach().argmax()] = True
        masks.append(chunk.to(s.dtype))
    return masks


def ste_mask(scores: Tensor, hard: Tensor) -> Tensor:
    """``hard`` in the forward pass; the identity from mask to ``scores`` in the backward pass."""
    return hard.detach() + (scores - scores.detach())  # exactly ``hard``: the bracket is 0


def magnitude_scores(net: nn.Module, groups: Sequence[ChannelGroup]) -> list[Tensor]:
    """Per channel, the L2 norm of all the group's producer filters, normalised per group."""
    modules = dict(net.named_modules())
    result = []
    for group in groups:
        squares = torch.zeros(group.size)
        for p in group.producers:
            weight = modules[p.module].weight.detach().float().cpu()
            per_filter = weight.pow(2).reshape(weight.shape[0], -1).sum(1)
            squares.index_add_(0, p.group_channels, per_filter[p.channels])
        result.append(squares.sqrt())
    return normalize_per_group(result)


def normalize_per_group(scores: Sequence[Tensor]) -> list[Tensor]:
    """Each group's scores over their mean, so one global threshold compares like with like."""
    return [s / s.mean().clamp_min(1e-12) for s in scores]


class MaskedNet(nn.Module):
    """A model whose group channels are multiplied by masks from its own scores.

    The model is not edited: forward hooks on the mask points multiply their outputs. Masks
    are recomputed from the scores in every training forward pass unless ``frozen``; they are
    kept in the ``masks`` buffers, so evaluation and export use exactly the last ones.
    """

    def __init__(
        self,
        net: nn.Module,
        groups: Sequence[ChannelGroup],
        keep: float,
        scores: Sequence[Tensor],
        frozen: bool = False,
    ):
        super().__init__()
        self.net = net
        self.groups = tuple(groups)
        self.keep = check_keep(keep)
        self.frozen = frozen
        self.scores = nn.ParameterList([nn.Parameter(s.detach().clone()) for s in scores])
        for i, hard in enumerate(global_masks(list(self.scores), self.keep)):
            self.register_buffer(f"mask{i}", hard)
        self._soft: list[Tensor] | None = None
        self._points: dict[str, list[tuple[int, MaskPoint]]] = {}
        for i, group in enumerate(self.groups):
            for point in group.mask_points:
                self._points.setdefault(point.module, []).append((i, point))
        self._handles: list = []
        self._attach()

    def _attach(self) -> None:
        modules = dict(self.net.named_modules())
        self._handles = [
            modules[name].register_forward_hook(self._hook(points))
            for name, points in self._points.items()
        ]

    def hard_masks(self) -> list[Tensor]:
        return [getattr(self, f"mask{i}") for i in range(len(self.groups))]

    def refresh(self) -> None:
        """Recompute the hard masks from the current scores (skipped when frozen)."""
        if self.frozen:
            return
        fresh = global_masks(list(self.scores), self.keep)
        for old, new in zip(self.hard_masks(), fresh, strict=True):
            old.copy_(new)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.refresh()
        self._soft = [ste_mask(s, m) for s, m in zip(self.scores, self.hard_masks(), strict=True)]
        try:
            return self.net(x)
        finally:
            self._soft = None

    def _hook(self, points: list[tuple[int, MaskPoint]]):
        def multiply(_module: nn.Module, _inputs, output: Tensor) -> Tensor:
            masks = self._soft if self._soft is not None else self.hard_masks()
            channels = output.shape[1]
            vector = output.new_ones(channels)
            for i, point in points:
                values = masks[i].to(output.dtype)
                picked = values[point.group_channels.to(values.device)]
                vector = vector.index_copy(0, point.channels.to(values.device), picked)
            return output * vector.view(1, channels, *([1] * (output.dim() - 2)))

        return multiply

    def plain_copy(self) -> nn.Module:
        """A deep copy of ``net`` without the mask hooks (its own, unshared weights)."""
        for handle in self._handles:
            handle.remove()
        try:
            return copy.deepcopy(self.net)
        finally:
            self._attach()

    def kept_fraction(self) -> float:
        masks = self.hard_masks()
        return float(sum(m.sum() for m in masks) / sum(m.numel() for m in masks))
