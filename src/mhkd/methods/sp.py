"""Similarity-preserving knowledge distillation (Tung & Mori 2019)."""

from __future__ import annotations

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, NoOptions, TeacherUse, register
from mhkd.methods.layers import stage_pairs


@register
class SP(Method):
    """Row-normalised batch Gram matrices of the last benchmark map (RepDistiller's
    ``feat[-2]``: WRN ``block3`` before the final BN+ReLU, MobileNetV2 ``blocks.6``,
    ShuffleNetV2 ``layer3``); β = 3000, no KD.

    User-named layers give one term per pair, summed. No trainable extras.
    """

    name = "sp"
    ce_weight = 1.0
    weights = {"sp": 3000.0}

    def __init__(self, ctx: MethodContext, options: NoOptions):
        super().__init__(TeacherUse.FEATURES)
        self.teacher_layers, self.student_layers = stage_pairs(ctx, self.name, "last")

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        loss = sum(
            losses.sp(student.features[s], teacher.features[t])
            for t, s in zip(self.teacher_layers, self.student_layers, strict=True)
        )
        return {"sp": loss}
