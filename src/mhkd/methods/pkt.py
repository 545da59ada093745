"""Probabilistic knowledge transfer (Passalis & Tefas 2018)."""

from __future__ import annotations

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.losses._common import flat_features
from mhkd.methods._layers import embedding_layers
from mhkd.methods.base import Method, MethodContext, ModelOutput, register


@register
class PKT(Method):
    """KL between cosine-kernel conditional distributions of penultimate features;
    β = 30000, no KD. No trainable extras."""

    name = "pkt"
    weights = {"pkt": 30000.0}

    def __init__(self, ctx: MethodContext, eps: float = 1e-7):
        super().__init__(ctx)
        self.eps = eps
        t_layer, s_layer = embedding_layers(ctx, self.name)
        self.teacher_layers, self.student_layers = [t_layer], [s_layer]

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        s = flat_features(student.features[self.student_layers[0]])
        t = flat_features(teacher.features[self.teacher_layers[0]])
        return {"pkt": losses.pkt(s, t, self.eps)}
