"""Hinton knowledge distillation (Hinton, Vinyals & Dean 2015)."""

from __future__ import annotations

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, register


@register
class KD(Method):
    """Soft targets at the final logits: ``0.1·CE + 0.9·KL·τ²`` (the CIFAR benchmark's split)."""

    name = "kd"
    weights = {"ce": 0.1, "kd": 0.9}
    teacher_inputs = "logits"

    def __init__(self, ctx: MethodContext, temperature: float = 4.0):
        super().__init__(ctx)
        self.temperature = temperature

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        return {"kd": losses.kd(student.logits, teacher.logits, self.temperature)}
