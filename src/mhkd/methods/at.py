"""Attention transfer (Zagoruyko & Komodakis 2017)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import require_maps, stage_pairs


@dataclass
class ATOptions:
    p: float = option(2.0, "power of the attention maps")


@register
class AT(Method):
    """Attention maps (``p = 2``) of every benchmark map, summed; β = 1000, no KD.

    Zoo models give RepDistiller's ``feat[1:-1]`` (:func:`~mhkd.methods.layers.feature_maps`),
    paired from the first on; when the two models have different numbers of maps the deeper
    extra ones are left out (the benchmark's ``zip``). Spatial sizes are matched by pooling the
    larger map, channel counts may differ, so no trainable extras.
    """

    name = "at"
    Options = ATOptions
    ce_weight = 1.0
    weights = {"at": 1000.0}

    def __init__(self, ctx: MethodContext, options: ATOptions):
        super().__init__(TeacherUse.FEATURES)
        self.p = options.p
        self.teacher_layers, self.student_layers = stage_pairs(ctx, self.name, "all")
        require_maps(ctx, self.name, self.teacher_layers, self.student_layers)

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        loss = sum(
            losses.at(student.features[s], teacher.features[t], self.p)
            for t, s in zip(self.teacher_layers, self.student_layers, strict=True)
        )
        return {"at": loss}
