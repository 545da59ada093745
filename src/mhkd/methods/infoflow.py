"""Heterogeneous KD by information-flow modelling (Passalis, Tzelepi & Tefas, CVPR 2020).

Matched layer pairs are compared through batch-wise conditional probabilities of a cosine and
a Student-t kernel (:func:`mhkd.losses.information_flow`), so widths and layer types may differ. The
critical-period schedule weights the final layer 1 and every intermediate layer
``period_start · period_decay^epoch`` (100 · 0.7^k): the intermediate layers lead early, while
the network's information flow is still plastic, the final layer later.

The paper's proxy teacher (a network of the student's family, trained first) is not part of
the method: it is a pipeline stage (:mod:`mhkd.pipelines.proxy`, ``--aux auto``) after which
the proxy is simply this method's teacher. The student's CE stays on (weight 1).

Layer matching: zoo models pair their stage ends one to one, plus the penultimate embedding as
the final layer. When one network has more stages (m against n), stage i of the shallower
(1-based) pairs with stage ⌈i·m/n⌉ of the deeper, the one at the same relative depth, so
both last stages pair and the deeper net's earliest stages are the ones left out. User lists
(``teacher_layers``/``student_layers``) are paired in order, the last entry being the final
layer; their lengths must be equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register

DIAGONAL_MODES = ("keep", "exclude")


@dataclass
class InfoFlowOptions:
    period_start: float = option(100.0, "intermediate layers' weight at epoch 0")
    period_decay: float = option(0.7, "its factor per epoch (1: no critical period)")
    kernel_diagonal: str = option(
        "keep",
        "keep each kernel's diagonal, mean over b² (reference code), or exclude it (the paper)",
    )

    def __post_init__(self) -> None:
        if self.kernel_diagonal not in DIAGONAL_MODES:
            raise ValueError(
                f"kernel_diagonal must be keep or exclude, got {self.kernel_diagonal!r}"
            )
        if self.period_start < 0 or not 0 < self.period_decay <= 1:
            raise ValueError(
                f"need period_start >= 0 and 0 < period_decay <= 1; got {self.period_start}, "
                f"{self.period_decay}"
            )


def default_layers(model: nn.Module, role: str) -> list[str]:
    """A zoo model's stage ends followed by its penultimate embedding."""
    stages = getattr(model, "stage_names", None)
    embedding = getattr(model, "embedding_name", None)
    if not stages or not embedding:
        raise ValueError(
            f"the {role} ({type(model).__name__}) declares no stage_names/embedding_name; "
            "name the matched layers with --teacher-layers and --student-layers"
        )
    return [*stages, embedding]


def _same_depth(stages: Sequence[str], count: int) -> list[str]:
    """``count`` of ``stages``: the i-th (1-based) is stage ⌈i·m/count⌉ of the m given."""
    m = len(stages)
    return [stages[math.ceil(i * m / count) - 1] for i in range(1, count + 1)]


def match_layers(
    teacher: nn.Module,
    student: nn.Module,
    teacher_layers: Sequence[str] | None = None,
    student_layers: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Pairs of (teacher, student) layers, the final representations last (see module doc)."""
    if teacher_layers or student_layers:
        t = list(teacher_layers) if teacher_layers else default_layers(teacher, "teacher")
        s = list(student_layers) if student_layers else default_layers(student, "student")
        if len(t) != len(s):
            raise ValueError(
                f"infoflow pairs teacher and student layers in order, but got {len(t)} teacher "
                f"layers ({', '.join(t)}) and {len(s)} student layers ({', '.join(s)})"
            )
        return t, s
    *t_stages, t_final = default_layers(teacher, "teacher")
    *s_stages, s_final = default_layers(student, "student")
    n = min(len(t_stages), len(s_stages))
    return (
        [*_same_depth(t_stages, n), t_final],
        [*_same_depth(s_stages, n), s_final],
    )


def period_weights(
    layers: int, epoch: int, start: float = 100.0, decay: float = 0.7
) -> list[float]:
    """Critical-period weights: ``start · decay^epoch`` per intermediate layer, 1 for the last."""
    return [start * decay**epoch] * (layers - 1) + [1.0]


@register
class InfoFlow(Method):
    """Multi-layer kernel distillation with critical periods."""

    name = "infoflow"
    Options = InfoFlowOptions
    ce_weight = 1.0
    weights = {"infoflow": 1.0}
    judged_by_retrieval = True  # the paper's Table 1: retrieval mAP on CIFAR-10

    def __init__(self, ctx: MethodContext, options: InfoFlowOptions):
        super().__init__(TeacherUse.FEATURES)
        self.period_start, self.period_decay = options.period_start, options.period_decay
        self.diagonal = options.kernel_diagonal == "keep"
        if ctx.teacher is None:
            raise ValueError("infoflow needs a teacher")
        self.teacher_layers, self.student_layers = match_layers(
            ctx.teacher, ctx.student, ctx.teacher_layers, ctx.student_layers
        )
        self.layer_weights = period_weights(
            len(self.student_layers), 0, self.period_start, self.period_decay
        )

    def start_epoch(self, epoch: int) -> dict[str, float]:
        self.layer_weights = period_weights(
            len(self.student_layers), epoch, self.period_start, self.period_decay
        )
        logged = {"infoflow_alpha_final": self.layer_weights[-1]}
        if len(self.layer_weights) > 1:
            logged["infoflow_alpha_intermediate"] = self.layer_weights[0]
        return logged

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        if teacher is None:
            raise ValueError("infoflow needs the teacher's outputs")
        targets = [teacher.features[name] for name in self.teacher_layers]
        students = [student.features[name] for name in self.student_layers]
        loss = losses.information_flow(students, targets, self.layer_weights, self.diagonal)
        return {"infoflow": loss}

    def summary(self) -> dict[str, Any]:
        pairs = zip(self.teacher_layers, self.student_layers, strict=True)
        return {"infoflow_pairs": [list(pair) for pair in pairs]}
