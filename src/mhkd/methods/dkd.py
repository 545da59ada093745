"""Decoupled knowledge distillation (Zhao et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register


@dataclass
class DKDOptions:
    alpha: float = option(1.0, "weight of the target-class term (TCKD)")
    beta: float = option(8.0, "weight of the non-target-class term (NCKD)")
    temperature: float = option(4.0, "softmax temperature τ")
    warmup_epochs: int = option(20, "epochs of linear warm-up of the loss")

    def __post_init__(self) -> None:
        if not self.temperature > 0 or self.warmup_epochs < 0:
            raise ValueError(
                f"dkd needs temperature > 0 and warmup_epochs >= 0, got {self.temperature} and "
                f"{self.warmup_epochs}"
            )


@register
class DKD(Method):
    """``CE + w · (α·TCKD + β·NCKD)``, α = 1, β = 8, τ = 4, with ``w`` rising linearly over
    the first ``warmup_epochs`` = 20 epochs (``w = min((epoch + 1) / 20, 1)`` for epochs
    counted from 0: the reference code's ``min(epoch / 20, 1)`` with epochs from 1).

    Reads only logits, so a teacher-output cache can serve it. The CIFAR-100 reference
    configs lower β for some pairs (6 for WRN-40-2→WRN-16-2, VGG13→VGG8, VGG13→MobileNetV2;
    2 for ResNet56→ResNet20 and ResNet110→ResNet32); the recipes set those.
    """

    name = "dkd"
    Options = DKDOptions
    ce_weight = 1.0
    weights = {"dkd": 1.0}

    def __init__(self, ctx: MethodContext, options: DKDOptions):
        super().__init__(TeacherUse.OUTPUTS)
        self.alpha, self.beta = options.alpha, options.beta
        self.temperature, self.warmup_epochs = options.temperature, options.warmup_epochs
        self.warmup = self._factor(0)

    def _factor(self, epoch: int) -> float:
        return 1.0 if self.warmup_epochs == 0 else min((epoch + 1) / self.warmup_epochs, 1.0)

    def start_epoch(self, epoch: int) -> dict[str, float]:
        self.warmup = self._factor(epoch)
        return {"dkd_warmup": self.warmup}

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        loss = losses.dkd(
            student.logits, teacher.logits, batch.labels, self.alpha, self.beta, self.temperature
        )
        return {"dkd": self.warmup * loss}
