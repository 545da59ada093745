"""Hinton knowledge distillation (Hinton, Vinyals & Dean 2015)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register


@dataclass
class KDOptions:
    temperature: float = option(4.0, "softmax temperature τ")

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


@register
class KD(Method):
    """Soft targets at the final logits: ``0.1·CE + 0.9·KL·τ²`` (the CIFAR benchmark's split)."""

    name = "kd"
    Options = KDOptions
    ce_weight = 0.1
    weights = {"kd": 0.9}

    def __init__(self, ctx: MethodContext, options: KDOptions):
        super().__init__(TeacherUse.OUTPUTS)
        self.temperature = options.temperature

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        return {"kd": losses.kd(student.logits, teacher.logits, self.temperature)}
