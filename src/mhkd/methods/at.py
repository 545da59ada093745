"""Attention transfer (Zagoruyko & Komodakis 2017)."""

from __future__ import annotations

import argparse

from torch import Tensor

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods._layers import stage_pairs
from mhkd.methods.base import Method, MethodContext, ModelOutput, register


@register
class AT(Method):
    """Attention maps (``p = 2``) at every stage end, summed over stages; β = 1000, no KD.

    Zoo stages are paired from the first on; when the two models have different numbers of
    stages the deeper extra ones are left out. Spatial sizes are matched by pooling the larger
    map, channel counts may differ, so no trainable extras.
    """

    name = "at"
    weights = {"at": 1000.0}

    def __init__(self, ctx: MethodContext, p: float = 2.0):
        super().__init__(ctx)
        self.p = p
        self.teacher_layers, self.student_layers = stage_pairs(ctx, self.name, "all")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--at-p",
            dest="p",
            type=float,
            default=argparse.SUPPRESS,
            help="at: power of the attention maps (default 2)",
        )

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        loss = sum(
            losses.at(student.features[s], teacher.features[t], self.p)
            for t, s in zip(self.teacher_layers, self.student_layers, strict=True)
        )
        return {"at": loss}
