"""Probabilistic knowledge transfer (Passalis & Tefas 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.losses._common import flat_features
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import embedding_layers


@dataclass
class PKTOptions:
    eps: float = option(1e-7, "added to the kernels before normalising")


@register
class PKT(Method):
    """KL between cosine-kernel conditional distributions of penultimate features;
    β = 30000, no KD. No trainable extras."""

    name = "pkt"
    Options = PKTOptions
    ce_weight = 1.0
    weights = {"pkt": 30000.0}

    def __init__(self, ctx: MethodContext, options: PKTOptions):
        super().__init__(TeacherUse.FEATURES)
        self.eps = options.eps
        t_layer, s_layer = embedding_layers(ctx, self.name)
        self.teacher_layers, self.student_layers = [t_layer], [s_layer]

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        s = flat_features(student.features[self.student_layers[0]])
        t = flat_features(teacher.features[self.teacher_layers[0]])
        return {"pkt": losses.pkt(s, t, self.eps)}
