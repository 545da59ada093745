"""Correlation congruence for knowledge distillation (Peng et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.losses._common import flat_features
from mhkd.methods._layers import embedding_layers, feature_dim
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register


@dataclass
class CCOptions:
    gamma: float = option(0.4, "RBF kernel γ")
    order: int = option(2, "order of the kernel's Taylor expansion")
    embed: bool = option(True, "a trainable linear embedding of the student's features")

    def __post_init__(self) -> None:
        if self.order < 0 or self.gamma <= 0:
            raise ValueError(
                f"cc needs gamma > 0 and order >= 0, got {self.gamma} and {self.order}"
            )


@register
class CC(Method):
    """Batch correlation matrices (Gaussian RBF kernel, Taylor order 2) of penultimate
    features, squared difference; β = 0.02, with KD.

    The paper's kernel, not the simplified variant some benchmark code ships. Common
    dimension: the student's features pass a trainable linear embedding to the teacher's
    feature dimension; the teacher's side is its own features (identity embedding), so its
    correlation matrix is a fixed target with no gradient. (The CRD benchmark code also trains
    a teacher-side embedding; with a trainable embedding on both sides the two matrices can
    agree by drifting together, so the teacher's side is kept fixed here.) ``embed=False``
    compares the raw features. ``gamma`` = 0.4, ``order`` = 2 as the reference code.
    """

    name = "cc"
    Options = CCOptions
    companions = ("kd",)
    ce_weight = 0.1
    weights = {"cc": 0.02}

    def __init__(self, ctx: MethodContext, options: CCOptions):
        super().__init__(TeacherUse.FEATURES)
        self.gamma, self.order, embed = options.gamma, options.order, options.embed
        t_layer, s_layer = embedding_layers(ctx, self.name)
        self.teacher_layers, self.student_layers = [t_layer], [s_layer]
        t_dim = feature_dim(ctx.teacher_shapes([t_layer])[t_layer])
        s_dim = feature_dim(ctx.student_shapes([s_layer])[s_layer])
        self.embed: nn.Module = nn.Linear(s_dim, t_dim) if embed else nn.Identity()

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        s = self.embed(flat_features(student.features[self.student_layers[0]]))
        t = flat_features(teacher.features[self.teacher_layers[0]])
        return {"cc": losses.cc(s, t, self.gamma, self.order)}
