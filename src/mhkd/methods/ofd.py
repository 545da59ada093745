"""A comprehensive overhaul of feature distillation (Heo et al. 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods._preact import preact_taps
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import deepest_pairs


@dataclass
class OFDOptions:
    kernel_size: int = option(1, "kernel size of the student→teacher connectors (odd)")


def connector(s_channels: int, t_channels: int, kernel_size: int) -> nn.Sequential:
    """Convolution (no bias, He-normal over fan-out) and BatchNorm (1, 0) to the teacher's
    channels, as mdistiller's ``ConnectorConvBN``."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size, 1, (kernel_size - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
    bn = nn.BatchNorm2d(t_channels)
    return nn.Sequential(conv, bn)


def ofd_stages(connectors, student_feats, teacher_feats, margins) -> Tensor:  # noqa: ANN001
    """OFD over ``n`` stages: stage ``i`` (from the shallowest) weighted ``2^{−(n − 1 − i)}``."""
    n = len(connectors)
    parts = zip(connectors, student_feats, teacher_feats, margins, strict=True)
    return sum(
        losses.ofd(conn(s), t, m) / 2 ** (n - i - 1) for i, (conn, s, t, m) in enumerate(parts)
    )


@register
class OFD(Method):
    """Partial L2 between connected student and margin-ReLU'd teacher pre-ReLU maps at every
    stage end, the stage ``i`` of ``n`` weighted ``2^{−(n − 1 − i)}``; β = 0.001, CE 1, no KD
    (mdistiller's CIFAR-100 config; its ImageNet one uses 0.0001).

    Both sides are tapped before their final ReLU (:mod:`mhkd.methods._preact`); the margin of
    each teacher channel comes from the BatchNorm producing its map. Stages pair from the
    deepest back. The teacher runs in eval mode here (mdistiller's OFD leaves it in train mode,
    so its BN uses batch statistics there).
    """

    name = "ofd"
    Options = OFDOptions
    ce_weight = 1.0
    weights = {"ofd": 0.001}

    def __init__(self, ctx: MethodContext, options: OFDOptions):
        super().__init__(TeacherUse.FEATURES)
        if options.kernel_size < 1 or options.kernel_size % 2 == 0:
            raise ValueError(f"ofd.kernel_size must be odd and positive, got {options.kernel_size}")
        t_stages, s_stages = deepest_pairs(ctx, self.name)
        self.teacher_layers, norms = preact_taps(ctx.teacher, t_stages, self.name)
        self.student_layers, _ = preact_taps(ctx.student, s_stages, self.name)
        t_shapes = ctx.teacher_shapes(self.teacher_layers)
        s_shapes = ctx.student_shapes(self.student_layers)
        self.connectors = nn.ModuleList(
            connector(s_shapes[s][0], t_shapes[t][0], options.kernel_size)
            for t, s in zip(self.teacher_layers, self.student_layers, strict=True)
        )
        for i, bn in enumerate(norms):
            self.register_buffer(f"margin{i}", losses.ofd_margin(bn.weight, bn.bias))

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        margins = [getattr(self, f"margin{i}") for i in range(len(self.connectors))]
        s = [student.features[n] for n in self.student_layers]
        t = [teacher.features[n] for n in self.teacher_layers]
        return {"ofd": ofd_stages(self.connectors, s, t, margins)}
