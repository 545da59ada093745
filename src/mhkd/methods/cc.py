"""Correlation congruence for knowledge distillation (Peng et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.losses._common import flat_features, target
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import embedding_layers, feature_dim

FORMS = ("delta", "rbf")


@dataclass
class CCOptions:
    form: str = option(
        "delta",
        "delta: the authors' code behind the cited numbers (RepDistiller's Correlation); "
        "rbf: the paper's Gaussian-RBF Taylor kernel",
    )
    embed_dim: int = option(128, "delta form: both embeddings' dimension")
    gamma: float = option(0.4, "rbf form: the kernel's γ")
    order: int = option(2, "rbf form: order of the kernel's Taylor expansion")
    embed: bool = option(True, "rbf form: a trainable linear embedding of the student's features")

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if self.order < 0 or self.gamma <= 0 or self.embed_dim < 1:
            raise ValueError(
                f"cc needs gamma > 0, order >= 0 and embed_dim >= 1, got {self.gamma}, "
                f"{self.order} and {self.embed_dim}"
            )


@register
class CC(Method):
    """Correlation congruence of penultimate features; β = 0.02, with KD.

    ``form="delta"`` (default) is what the cited CIFAR-100 numbers ran (RepDistiller's
    ``distiller_zoo/CC.py``, shared by the CC authors): both networks' penultimate features pass
    trainable linear maps to 128-d (the teacher's embedding learns from the detached teacher
    features), and the loss is :func:`mhkd.losses.cc_delta`. ``form="rbf"`` is the paper's
    batch correlation matrices (Gaussian RBF, Taylor order 2, γ = 0.4) with their squared
    difference: the student's features pass a trainable linear map to the teacher's dimension
    (``embed=False``: raw features), the teacher's side is its own features, a fixed target.
    """

    name = "cc"
    Options = CCOptions
    companions = ("kd",)
    ce_weight = 0.1
    weights = {"cc": 0.02}

    def __init__(self, ctx: MethodContext, options: CCOptions):
        super().__init__(TeacherUse.FEATURES)
        self.form, self.gamma, self.order = options.form, options.gamma, options.order
        t_layer, s_layer = embedding_layers(ctx, self.name)
        self.teacher_layers, self.student_layers = [t_layer], [s_layer]
        t_dim = feature_dim(ctx.teacher_shapes([t_layer])[t_layer])
        s_dim = feature_dim(ctx.student_shapes([s_layer])[s_layer])
        self.embed_t: nn.Module = nn.Identity()
        if self.form == "delta":
            self.embed: nn.Module = nn.Linear(s_dim, options.embed_dim)
            self.embed_t = nn.Linear(t_dim, options.embed_dim)
        else:
            self.embed = nn.Linear(s_dim, t_dim) if options.embed else nn.Identity()

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        s = self.embed(flat_features(student.features[self.student_layers[0]]))
        t = self.embed_t(flat_features(target(teacher.features[self.teacher_layers[0]])))
        if self.form == "delta":
            return {"cc": losses.cc_delta(s, t)}
        return {"cc": losses.cc(s, t, self.gamma, self.order)}
