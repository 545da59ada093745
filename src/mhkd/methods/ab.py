"""Activation boundaries (Heo et al. 2019): a pre-training stage, then the usual training."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods._preact import preact_taps
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.fitnet import Regressor
from mhkd.methods.layers import stage_pairs


@dataclass
class ABOptions:
    margin: float = option(1.0, "margin of the activation boundary")
    init_epochs: int = option(30, "epochs of the pre-training stage (OUT/pretrain)")
    init_lr: float | None = option(None, "learning rate of the pre-training stage (default: --lr)")


def ab_connector(s_shape, t_shape) -> nn.Module:  # noqa: ANN001 (torch.Size, C×H×W)
    """Identity for equal channels and size, else the benchmark's ``ConvReg`` without its ReLU
    (the connector must be able to output negative, pre-activation values)."""
    if s_shape[0] == t_shape[0] and s_shape[1] == t_shape[1]:
        return nn.Identity()
    regressor = Regressor(s_shape, t_shape)
    regressor.relu = nn.Identity()
    return regressor


@register
class AB(Method):
    """The alternative-L2 boundary loss between connected student and teacher pre-ReLU maps at
    every stage end, stage ``i`` of ``n`` weighted ``2^{i − n + 1}·3/1000``.

    It is a pre-training objective: ``mhkd distill --method ab`` first trains the student's
    layers (and the connectors) on it alone for ``init_epochs`` (CE weight 0, a run directory
    ``OUT/pretrain``), then trains the student with CE alone in ``OUT`` (the CRD benchmark's
    ``-a 0 -b 1``; ``ab+kd`` trains with KD instead). Used directly in a ``MethodSet`` it adds
    the boundary loss to the other terms.
    """

    name = "ab"
    Options = ABOptions
    ce_weight = 1.0
    weights = {"ab": 1.0}

    def __init__(self, ctx: MethodContext, options: ABOptions):
        super().__init__(TeacherUse.FEATURES)
        self.margin = options.margin
        t_stages, s_stages = stage_pairs(ctx, self.name, "all")
        self.teacher_layers, _ = preact_taps(ctx.teacher, t_stages, self.name)
        self.student_layers, _ = preact_taps(ctx.student, s_stages, self.name)
        t_shapes = ctx.teacher_shapes(self.teacher_layers)
        s_shapes = ctx.student_shapes(self.student_layers)
        self.connectors = nn.ModuleList(
            ab_connector(s_shapes[s], t_shapes[t])
            for t, s in zip(self.teacher_layers, self.student_layers, strict=True)
        )

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        s = [
            c(student.features[n])
            for c, n in zip(self.connectors, self.student_layers, strict=True)
        ]
        t = [teacher.features[n] for n in self.teacher_layers]
        return {"ab": losses.ab_stages(s, t, self.margin)}
