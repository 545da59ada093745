"""Self-supervised knowledge distillation with singular value decomposition (Lee et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import require_equal_channels, stage_pairs


@dataclass
class KDSVDOptions:
    k: int = option(1, "teacher singular vectors kept per stage (the student keeps k + 3)")


@register
class KDSVD(Method):
    """RBF relations between consecutive stages' top singular vectors; β = 1, CE 1, no KD
    (mdistiller's KDSVD config). The decomposition is the CRD benchmark's, of each sample's
    ``(HW, C)`` matrix, so paired stages need equal channel counts (same-family pairs)."""

    name = "kdsvd"
    Options = KDSVDOptions
    ce_weight = 1.0
    weights = {"kdsvd": 1.0}

    def __init__(self, ctx: MethodContext, options: KDSVDOptions):
        super().__init__(TeacherUse.FEATURES)
        if options.k < 1:
            raise ValueError(f"kdsvd.k must be at least 1, got {options.k}")
        self.k = options.k
        self.teacher_layers, self.student_layers = stage_pairs(ctx, self.name, "all")
        require_equal_channels(ctx, self.name, self.teacher_layers, self.student_layers)

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        s = [student.features[n] for n in self.student_layers]
        t = [teacher.features[n] for n in self.teacher_layers]
        return {"kdsvd": losses.kdsvd(s, t, self.k)}
