"""Relational knowledge distillation (Park et al. 2019)."""

from __future__ import annotations

import argparse

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.losses._common import flat_features
from mhkd.methods._layers import embedding_layers
from mhkd.methods.base import Method, MethodContext, ModelOutput, register


@register
class RKD(Method):
    """Distance (×25) and angle (×50) relations of penultimate features; β = 1, with KD.

    Relations are dimension-free, so no trainable extras; the teacher's distances and
    angles carry no gradient.
    """

    name = "rkd"
    companions = ("kd",)
    weights = {"ce": 0.1, "rkd": 1.0}

    def __init__(
        self, ctx: MethodContext, distance_weight: float = 25.0, angle_weight: float = 50.0
    ):
        super().__init__(ctx)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        t_layer, s_layer = embedding_layers(ctx, self.name)
        self.teacher_layers, self.student_layers = [t_layer], [s_layer]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        keep = argparse.SUPPRESS
        parser.add_argument(
            "--rkd-distance-weight",
            dest="distance_weight",
            type=float,
            default=keep,
            help="rkd: weight of the distance term (default 25)",
        )
        parser.add_argument(
            "--rkd-angle-weight",
            dest="angle_weight",
            type=float,
            default=keep,
            help="rkd: weight of the angle term (default 50)",
        )

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        s = flat_features(student.features[self.student_layers[0]])
        t = flat_features(teacher.features[self.teacher_layers[0]])
        return {"rkd": losses.rkd(s, t, self.distance_weight, self.angle_weight)}
