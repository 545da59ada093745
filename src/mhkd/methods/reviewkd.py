"""Distilling knowledge via knowledge review (Chen et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods._preact import preact_taps
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import embedding_layers, stage_pairs


@dataclass
class ReviewKDOptions:
    warmup_epochs: int = option(20, "epochs of linear warm-up of the loss")
    student_preact: bool = option(False, "read the student's stages before their final ReLU")

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise ValueError(f"reviewkd.warmup_epochs must be >= 0, got {self.warmup_epochs}")


class ABF(nn.Module):
    """Attention-based fusion: a 1×1 conv-BN of the student's map, fused (when ``fuse``) with
    the deeper level's residual by two sigmoid attention maps, then a 3×3 conv-BN to the
    teacher's channels at the teacher's spatial size."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, x.shape[-2:], mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, :1] + residual * att[:, 1:]
        if tuple(x.shape[-2:]) != out_size:
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def _as_map(x: Tensor) -> Tensor:
    return x if x.dim() == 4 else x.flatten(1)[:, :, None, None]


class Reviewer(nn.Module):
    """One ABF per level, shallow first; the deepest (the embeddings) fuses nothing. Their mid
    width is ``min(512, C)`` of the deepest student level (mdistiller's choice)."""

    def __init__(self, s_channels: list[int], t_channels: list[int], out_sizes: list[tuple]):
        super().__init__()
        self.out_sizes = [tuple(size) for size in out_sizes]
        mid, last = min(512, s_channels[-1]), len(s_channels) - 1
        self.abfs = nn.ModuleList(
            ABF(c_in, mid, c_out, i < last)
            for i, (c_in, c_out) in enumerate(zip(s_channels, t_channels, strict=True))
        )

    def forward(self, student_feats: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        """The student's maps after review, shallow first: the deepest level through its own
        ABF, every shallower one fused with the residual from the level below."""
        results, residual = [], None
        for i in reversed(range(len(self.abfs))):
            out, residual = self.abfs[i](_as_map(student_feats[i]), residual, self.out_sizes[i])
            results.insert(0, out)
        return results


@register
class ReviewKD(Method):
    """HCL between the teacher's pre-ReLU stage maps (and pooled features) and the student's
    reviewed maps: each level fuses the student's map with all deeper levels through ABF
    modules. Weight 5, CE 1, no KD, warm-up ``min((epoch + 1) / 20, 1)`` (mdistiller's
    CIFAR-100 config; its ImageNet ones use weight 1 or 8, warm-up 1, pre-ReLU student maps).

    Levels: the zoo stages paired from the first (deeper extras left out), then the
    embeddings (see :class:`Reviewer`).
    """

    name = "reviewkd"
    Options = ReviewKDOptions
    ce_weight = 1.0
    weights = {"reviewkd": 5.0}

    def __init__(self, ctx: MethodContext, options: ReviewKDOptions):
        super().__init__(TeacherUse.FEATURES)
        self.warmup_epochs = options.warmup_epochs
        self.warmup = self._factor(0)
        t_stages, s_stages = stage_pairs(ctx, self.name, "all")
        t_embed, s_embed = embedding_layers(ctx, self.name)
        t_taps, _ = preact_taps(ctx.teacher, t_stages, self.name)
        if options.student_preact:
            s_stages, _ = preact_taps(ctx.student, s_stages, self.name)
        self.teacher_layers, self.student_layers = [*t_taps, t_embed], [*s_stages, s_embed]
        t_shapes = ctx.teacher_shapes(self.teacher_layers)
        s_shapes = ctx.student_shapes(self.student_layers)
        s_channels = [int(s_shapes[n][0]) for n in self.student_layers]
        t_channels = [int(t_shapes[n][0]) for n in self.teacher_layers]
        out_sizes = [tuple(t_shapes[n][1:]) or (1, 1) for n in self.teacher_layers]
        self.reviewer = Reviewer(s_channels, t_channels, out_sizes)

    def _factor(self, epoch: int) -> float:
        return 1.0 if self.warmup_epochs == 0 else min((epoch + 1) / self.warmup_epochs, 1.0)

    def start_epoch(self, epoch: int) -> dict[str, float]:
        self.warmup = self._factor(epoch)
        return {"reviewkd_warmup": self.warmup}

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        reviewed = self.reviewer([student.features[n] for n in self.student_layers])
        targets = [_as_map(teacher.features[n]) for n in self.teacher_layers]
        return {"reviewkd": self.warmup * losses.hcl(reviewed, targets)}
