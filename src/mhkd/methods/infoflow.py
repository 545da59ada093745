"""Heterogeneous KD by information-flow modelling (Passalis, Tzelepi & Tefas, CVPR 2020).

Matched layer pairs are compared through batch-wise conditional probabilities of a cosine and
a Student-t kernel (:func:`mhkd.losses.information_flow`), so widths and layer types may differ. The
critical-period schedule weights the final layer 1 and every intermediate layer
``period_start · period_decay^epoch`` (100 · 0.7^k): the intermediate layers lead early, while
the network's information flow is still plastic, the final layer later.

The paper's proxy teacher (a network of the student's family, trained first) is not part of
the method: it is a pipeline stage (:mod:`mhkd.pipelines.proxy`, ``--aux auto``) after which
the proxy is simply this method's teacher. The student's CE stays on (weight 1).

Layer matching (:func:`mhkd.methods.layers.flow_pairs`): zoo models pair their stage ends one
to one, plus the penultimate embedding as the final layer. When one network has more stages
(m against n), stage i of the shallower (1-based) pairs with stage ⌈i·m/n⌉ of the deeper, the
one at the same relative depth, so both last stages pair and the deeper net's earliest stages
are the ones left out. User lists (``teacher_layers``/``student_layers``) are paired in order,
the last entry being the final layer; their lengths must be equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from mhkd import distributed, losses
from mhkd.data.batch import Batch
from mhkd.methods import layers
from mhkd.methods.base import (
    Method,
    MethodContext,
    ModelOutput,
    TeacherUse,
    Trained,
    option,
    register,
)
from mhkd.retrieval import retrieval_loaders, retrieval_map

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

    def __init__(self, ctx: MethodContext, options: InfoFlowOptions):
        super().__init__(TeacherUse.FEATURES)
        self.period_start, self.period_decay = options.period_start, options.period_decay
        self.diagonal = options.kernel_diagonal == "keep"
        self.teacher_layers, self.student_layers = layers.flow_pairs(ctx, self.name)
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

    def report(self, trained: Trained) -> dict[str, Any]:
        """The paper's measure (Table 1, CIFAR-10): the student's retrieval mAP, test images
        against the whole training split (rank 0; the split must be held in memory)."""
        if not getattr(trained.data, "resident", True) or distributed.world()[0] != 0:
            return {}
        database, queries = retrieval_loaders(trained.data, trained.batch_size, trained.device,
                                              trained.channels_last)  # fmt: skip
        score = retrieval_map(trained.student, database, queries, device=trained.device,
                              precision=trained.precision)  # fmt: skip
        return {"retrieval_map": score}
