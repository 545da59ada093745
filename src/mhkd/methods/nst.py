"""Neuron selectivity transfer (Huang & Wang 2017)."""

from __future__ import annotations

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, NoOptions, TeacherUse, register
from mhkd.methods.layers import stage_pairs


@register
class NST(Method):
    """Polynomial-kernel MMD between the channels' spatial distributions at every stage end,
    summed over stages; β = 50, CE 1, no KD (the CRD benchmark's script). No trainable extras:
    channel counts may differ, the larger map is pooled to the smaller."""

    name = "nst"
    Options = NoOptions
    ce_weight = 1.0
    weights = {"nst": 50.0}

    def __init__(self, ctx: MethodContext, options: NoOptions):
        super().__init__(TeacherUse.FEATURES)
        self.teacher_layers, self.student_layers = stage_pairs(ctx, self.name, "all")

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        loss = sum(
            losses.nst(student.features[s], teacher.features[t])
            for t, s in zip(self.teacher_layers, self.student_layers, strict=True)
        )
        return {"nst": loss}
