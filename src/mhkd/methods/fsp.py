"""Flow of solution procedure (Yim et al. 2017): a pre-training stage, then the usual training."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import require_equal_channels, stage_pairs

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class FSPOptions:
    init_epochs: int = option(30, "epochs of the pre-training stage (OUT/pretrain)")
    init_lr: float | None = option(None, "learning rate of the pre-training stage (default: --lr)")


def stem_name(model: nn.Module, first_stage: str) -> str | None:
    """The module registered just before the first stage in its parent (the stem's end),
    pooling layers skipped: RepDistiller's VGG ``feat[0]`` is ``block0``'s map, before ``pool0``."""
    parent_name, _, child = first_stage.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    children = list(parent.named_children())
    names = [name for name, _ in children]
    if child not in names:
        return None
    at = names.index(child) - 1
    while at >= 0 and isinstance(children[at][1], POOLS):
        at -= 1
    if at < 0:
        return None
    return f"{parent_name}.{names[at]}" if parent_name else names[at]


@register
class FSP(Method):
    """``Σ mean((G_s − G_t)²)`` of the Gram matrices between consecutive maps (the stem's output,
    then every stage end), β = 50 — a pre-training objective: ``mhkd distill --method fsp``
    trains the student's layers on it alone for ``init_epochs`` (``OUT/pretrain``), then the
    student with CE alone in ``OUT`` (the CRD benchmark's ``-a 0 -b 50``). Paired maps need
    equal channel counts (same-family pairs)."""

    name = "fsp"
    Options = FSPOptions
    ce_weight = 1.0
    weights = {"fsp": 50.0}

    def __init__(self, ctx: MethodContext, options: FSPOptions):
        super().__init__(TeacherUse.FEATURES)
        teacher, student = stage_pairs(ctx, self.name, "all")
        if not (ctx.teacher_layers or ctx.student_layers):
            stems = [stem_name(ctx.teacher, teacher[0]), stem_name(ctx.student, student[0])]
            if all(stems):
                teacher, student = [stems[0], *teacher], [stems[1], *student]
        self.teacher_layers, self.student_layers = teacher, student
        require_equal_channels(ctx, self.name, teacher, student)

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        s = [student.features[n] for n in self.student_layers]
        t = [teacher.features[n] for n in self.teacher_layers]
        return {"fsp": losses.fsp(s, t)}
