"""Relational knowledge distillation (Park et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.losses._common import flat_features
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import embedding_layers


@dataclass
class RKDOptions:
    distance_weight: float = option(25.0, "weight of the distance term")
    angle_weight: float = option(50.0, "weight of the angle term")


@register
class RKD(Method):
    """Distance (×25) and angle (×50) relations of penultimate features; β = 1, with KD.

    Relations are dimension-free, so no trainable extras; the teacher's distances and
    angles carry no gradient.
    """

    name = "rkd"
    Options = RKDOptions
    companions = ("kd",)
    ce_weight = 0.1
    weights = {"rkd": 1.0}

    def __init__(self, ctx: MethodContext, options: RKDOptions):
        super().__init__(TeacherUse.FEATURES)
        self.distance_weight, self.angle_weight = options.distance_weight, options.angle_weight
        t_layer, s_layer = embedding_layers(ctx, self.name)
        self.teacher_layers, self.student_layers = [t_layer], [s_layer]

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        s = flat_features(student.features[self.student_layers[0]])
        t = flat_features(teacher.features[self.teacher_layers[0]])
        return {"rkd": losses.rkd(s, t, self.distance_weight, self.angle_weight)}
