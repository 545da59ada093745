"""Decoupled knowledge distillation (Zhao et al. 2022)."""

from __future__ import annotations

import argparse

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, register


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
    weights = {"dkd": 1.0}
    teacher_inputs = "logits"

    def __init__(
        self,
        ctx: MethodContext,
        dkd_alpha: float = 1.0,
        dkd_beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
    ):
        super().__init__(ctx)
        if temperature <= 0 or warmup_epochs < 0:
            raise ValueError(
                f"dkd needs temperature > 0 and warmup_epochs >= 0, got {temperature} and "
                f"{warmup_epochs}"
            )
        self.alpha, self.beta = dkd_alpha, dkd_beta
        self.temperature, self.warmup_epochs = temperature, warmup_epochs
        self.warmup = self._factor(0)

    def _factor(self, epoch: int) -> float:
        return 1.0 if self.warmup_epochs == 0 else min((epoch + 1) / self.warmup_epochs, 1.0)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        keep = argparse.SUPPRESS
        parser.add_argument(
            "--dkd-alpha",
            type=float,
            default=keep,
            help="dkd: weight of the target-class term (default 1)",
        )
        parser.add_argument(
            "--dkd-beta",
            type=float,
            default=keep,
            help="dkd: weight of the non-target-class term (default 8)",
        )
        parser.add_argument("--temperature", type=float, default=keep, help="τ (default 4)")
        parser.add_argument(
            "--warmup-epochs",
            type=int,
            default=keep,
            help="dkd: epochs of linear warm-up of its loss (default 20)",
        )

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
