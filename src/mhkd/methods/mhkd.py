"""Multi-head knowledge distillation, MHKD (Wang, Lohit, Jones & Fu 2020), and one-head OHKD.

Auxiliary heads (:class:`mhkd.heads.AuxHead`) sit on the ends of the first stages of the
teacher and of the student; head j of the student learns from head j of the teacher with the
one-head loss ``α·KL·τ² + (1 − α)·CE``. The teacher heads learn from the labels alone, on
detached features of the frozen teacher, either alongside the student (``joint``, the paper's
default) or once before distillation (``prefit``, then fixed).

Head stride (the paper states none): by default each head convolution strides 2 while the map
it reads is larger than its network's last-stage map (:func:`mhkd.heads.head_strides`), so a
WRN-16-2 stage-1 head (32 channels, 32×32, network ending at 8×8) strides (2, 2) and costs
56.7 MMACs per image instead of 679.6 at stride 1. ``head_stride=1`` is the paper-literal head
for ablations. The last-stage map is found by the dry run that sizes the heads
(:func:`mhkd.methods.layers.probe`): the output of the model's last ``stage_names`` entry, or,
for a model without ``stage_names`` (user layers), the last map larger than 1×1 that any of
its modules outputs in forward order (the map its global pooling reduces), whichever layers
the heads tap.

What the method reads of the teacher: in ``joint`` mode live stage features every step
(``TeacherUse.FEATURES``; the teacher heads train on detached copies, nothing flows back into
the teacher). In ``prefit`` mode the teacher heads are fixed after :meth:`MHKD.prepare`, so
their logits are per-sample outputs of the frozen teacher (``TeacherUse.OUTPUTS``): they run
under ``no_grad``, and a teacher cache built *after* ``prepare`` serves them (keys
``"<name>.head<j>"``, see :meth:`MHKD.cached_teacher_outputs`) so the teacher and its heads
cost nothing per step.

How the paper's objective maps onto the loss terms the trainer weights and sums::

    paper:  β·Σ_j [α·KL_j·τ² + (1−α)·CE_j]  +  [α·KL·τ² + (1−α)·CE]   (+ teacher heads' CE)
    terms:  "mhkd" (weight 1, β inside)     +  0.9·"kd" + 0.1·"ce"     (+ "mhkd_teacher_ce")

The final-logit part is the companion ``kd`` method, whose weights 0.9/0.1 equal the paper's
α = 0.9; changing ``--mhkd.alpha`` changes the heads only (use ``--weight kd=…`` and
``--weight ce=…`` for the final logits), and ``--mhkd.temperature`` the heads' τ only
(``--kd.temperature`` is the final logits').
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.heads import AuxHead, head_strides
from mhkd.methods.base import (
    Method,
    MethodContext,
    ModelOutput,
    Prefit,
    TeacherUse,
    option,
    register,
)
from mhkd.methods.layers import Probe, check_maps, head_stages, probe
from mhkd.models.complexity import count_macs

HEAD_MODES = ("joint", "prefit")


def parse_heads(value: int | str | Sequence[int] | None) -> tuple[int, ...] | None:
    """Head numbers (1-based stage positions) from ``2``, ``"2,3"`` or ``[2, 3]``."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return tuple(int(part) for part in value.split(","))
        except ValueError:
            raise ValueError(
                f"heads must be comma-separated numbers such as 2,3; got {value!r}"
            ) from None
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


@dataclass
class MHKDOptions:
    heads: list[int] | None = option(
        None, "heads to use by stage position, e.g. 1 or 2,3 (default: all for mhkd, 1 for ohkd)"
    )
    temperature: float = option(4.0, "softmax temperature τ of the heads")
    alpha: float = option(0.9, "KL share of each head's loss")
    beta: float = option(0.5, "weight of the heads' sum (5 on SVHN)")
    head_stages: int = option(3, "heads on the first N stages of zoo models")
    head_mode: str = option(
        "joint",
        "train the teacher heads alongside the student (joint) or fit them first on the "
        "frozen teacher (prefit)",
    )
    head_convs: int = option(2, "3x3 conv layers per head, N_c")
    head_fcs: int = option(2, "fully connected layers per head, N_f")
    head_width: int = option(256, "conv kernels and hidden units per head")
    head_stride: int | None = option(
        None,
        "stride of every head conv; 1 is the paper-literal head (default: stride 2 while the "
        "map is larger than the network's last-stage map)",
    )
    prefit_epochs: int = option(5, "epochs of teacher-head fitting in prefit mode")
    prefit_lr: float = option(0.05, "learning rate of teacher-head fitting")

    def __post_init__(self) -> None:
        if self.head_mode not in HEAD_MODES:
            raise ValueError(f"unknown head mode {self.head_mode!r}; choose joint or prefit")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1 or self.beta < 0:
            raise ValueError(
                f"need temperature > 0, 0 <= alpha <= 1 and beta >= 0; got "
                f"{self.temperature}, {self.alpha}, {self.beta}"
            )
        if not 1 <= self.head_stages <= 16:
            raise ValueError(
                "head_stages must be in 1..16 (heads on the first N stages), "
                f"got {self.head_stages}"
            )
        if self.head_stride is not None and self.head_stride < 1:
            raise ValueError(f"head_stride must be at least 1 (or unset), got {self.head_stride}")


@dataclass
class OHKDOptions(MHKDOptions):
    heads: list[int] | None = option([1], "the one head to use, by stage position")


def _head_input(feature: Tensor) -> Tensor:
    """A teacher feature as a head input that carries no graph into the teacher.

    A feature captured under ``inference_mode`` cannot be saved for backward, so it is copied.
    """
    return feature.clone() if feature.is_inference() else feature.detach()


def _heads_for(
    probed: Probe, role: str, method: str, num_classes: int, o: MHKDOptions
) -> nn.ModuleList:
    check_maps(method, role, probed.shapes)
    heads = []
    for shape in probed.shapes.values():
        strides = head_strides(shape[1:], probed.last_map, o.head_convs, o.head_stride)
        heads.append(AuxHead(shape[0], num_classes, o.head_convs, o.head_fcs, o.head_width,
                             strides))  # fmt: skip
    return nn.ModuleList(heads)


@register
class MHKD(Method):
    """Auxiliary heads on the first ``head_stages`` stages of both networks, all used.

    ``heads`` picks a subset by 1-based position (``(1,)``, ``(2, 3)``); layers default to the
    zoo models' first ``head_stages`` ``stage_names``, or are the user's ``teacher_layers`` /
    ``student_layers`` (paired in order). ``beta`` multiplies the heads' term; the heads live
    here, never in the student, so the deployable student is the bare network. Each head's
    convolutions stride 2 while its map is larger than its network's last-stage map
    (``head_stride=1``: the paper-literal stride-1 head). ``joint`` mode reads live teacher
    features; ``prefit`` mode reads teacher outputs only, which a teacher cache can serve.
    """

    name = "mhkd"
    Options = MHKDOptions
    companions = ("kd",)
    ce_weight = 0.1  # the companion KD's split
    weights = {"mhkd": 1.0, "mhkd_teacher_ce": 1.0}

    def __init__(self, ctx: MethodContext, options: MHKDOptions):
        o = options
        prefit = o.head_mode == "prefit"
        super().__init__(TeacherUse.OUTPUTS if prefit else TeacherUse.FEATURES)
        teacher_layers, student_layers = head_stages(ctx, self.name, o.head_stages)
        chosen = parse_heads(o.heads) or range(1, len(teacher_layers) + 1)
        self.heads = tuple(chosen)
        self._check_heads(len(teacher_layers))
        self.teacher_layers = [teacher_layers[j - 1] for j in self.heads]
        self.student_layers = [student_layers[j - 1] for j in self.heads]
        #: Names under which a teacher cache serves the fixed teacher heads' logits.
        self.cached_keys = [f"{self.name}.head{j}" for j in self.heads]

        self.temperature, self.alpha, self.beta = o.temperature, o.alpha, o.beta
        self.head_mode, self.head_stride = o.head_mode, o.head_stride
        self.prefit_epochs, self.prefit_lr = o.prefit_epochs, o.prefit_lr
        s_probe = probe(ctx.student, self.student_layers, ctx.input_shape, last_map=True)
        t_probe = probe(ctx.teacher, self.teacher_layers, ctx.input_shape, last_map=True)
        self.student_heads = _heads_for(s_probe, "student", self.name, ctx.num_classes, o)
        self.teacher_heads = _heads_for(t_probe, "teacher", self.name, ctx.num_classes, o)
        self.head_inputs = {
            "student": list(s_probe.shapes.values()),
            "teacher": list(t_probe.shapes.values()),
        }
        if prefit:
            # Fitted once in prepare(), then fixed: out of the optimizer, BatchNorm frozen.
            self.teacher_heads.requires_grad_(False).eval()
        self.prefit_acc: list[float] = []

    def _check_heads(self, available: int) -> None:
        bad = [j for j in self.heads if not 1 <= j <= available]
        if bad or not self.heads or len(set(self.heads)) != len(self.heads):
            raise ValueError(
                f"heads must be distinct numbers from 1 to {available} (one per stage), "
                f"got {','.join(map(str, self.heads))}"
            )

    def train(self, mode: bool = True) -> MHKD:
        super().train(mode)
        if self.head_mode == "prefit":
            self.teacher_heads.eval()
        return self

    def teacher_head_logits(self, features: dict[str, Tensor]) -> list[Tensor]:
        """The teacher heads' logits on tapped teacher features; a graph only in joint mode."""
        missing = [name for name in self.teacher_layers if name not in features]
        if missing:
            raise ValueError(
                f"{self.name}: the teacher's outputs hold neither the teacher heads' logits "
                f"({', '.join(self.cached_keys)}) nor the layers {', '.join(missing)}"
            )
        pairs = zip(self.teacher_heads, self.teacher_layers, strict=True)
        if self.head_mode == "prefit":  # fixed heads: no graph at all
            with torch.no_grad():
                return [head(features[name]) for head, name in pairs]
        return [head(_head_input(features[name])) for head, name in pairs]

    def cached_teacher_outputs(self, teacher: ModelOutput) -> dict[str, Tensor]:
        """In prefit mode, the fixed teacher heads' logits, for a teacher cache to store.

        Valid only once :meth:`prefit` has been fitted: build the cache after it.
        """
        if self.head_mode != "prefit":
            return {}
        logits = self.teacher_head_logits(teacher.features)
        return dict(zip(self.cached_keys, logits, strict=True))

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        if teacher is None:
            raise ValueError(f"method {self.name!r} needs a teacher")
        served = [teacher.features.get(key) for key in self.cached_keys]
        if self.head_mode == "prefit" and all(z is not None for z in served):
            teacher_logits = served  # from a teacher cache
        else:
            teacher_logits = self.teacher_head_logits(teacher.features)
        student_logits = [
            head(student.features[name])
            for head, name in zip(self.student_heads, self.student_layers, strict=True)
        ]
        terms = {
            self.name: losses.multi_head_kd(
                student_logits,
                teacher_logits,
                batch.labels,
                self.temperature,
                self.alpha,
                self.beta,
            )
        }
        if self.head_mode == "joint":
            terms[f"{self.name}_teacher_ce"] = losses.heads_ce(teacher_logits, batch.labels)
        return terms

    def prefit(self) -> Prefit | None:
        """In prefit mode the teacher heads are fitted first, by CE on the frozen teacher."""
        if self.head_mode != "prefit" or self.prefit_epochs < 1:
            return None
        return Prefit(
            name=f"{self.name} teacher heads", module=self.teacher_heads,
            teacher_layers=self.teacher_layers, logits=self._fitted_head_logits,
            epochs=self.prefit_epochs, lr=self.prefit_lr, finished=self._prefitted,
        )  # fmt: skip

    def _fitted_head_logits(self, features: dict[str, Tensor]) -> list[Tensor]:
        pairs = zip(self.teacher_heads, self.teacher_layers, strict=True)
        return [head(_head_input(features[name])) for head, name in pairs]

    def _prefitted(self, train_acc: list[float]) -> None:
        """The heads are fitted: fixed from now on (out of the optimiser, BatchNorm frozen)."""
        self.teacher_heads.requires_grad_(False).eval()
        self.prefit_acc = train_acc

    def summary(self) -> dict[str, Any]:
        """Static facts of the heads: which, their strides, parameters and MACs per image.

        ``head_stride`` null means the last-stage rule; ``head_conv_strides`` lists the
        strides each head got. MACs are forward multiply-accumulates per image, counted by a
        batch-1 dry run of each head on its input shape (no timing).
        """
        extra: dict[str, Any] = {"heads": list(self.heads), "head_stride": self.head_stride}
        for role, heads in (("student", self.student_heads), ("teacher", self.teacher_heads)):
            shapes = self.head_inputs[role]
            extra[f"{role}_head_conv_strides"] = [list(head.strides) for head in heads]
            extra[f"{role}_head_params"] = sum(p.numel() for p in heads.parameters())
            extra[f"{role}_head_macs"] = sum(
                count_macs(head, shape) for head, shape in zip(heads, shapes, strict=True)
            )
        for fact in ("params", "macs"):
            extra[f"head_{fact}"] = extra[f"student_head_{fact}"] + extra[f"teacher_head_{fact}"]
        if self.prefit_acc:
            extra["teacher_head_prefit_train_acc"] = self.prefit_acc
        return extra


@register
class OHKD(MHKD):
    """One-head KD: a single auxiliary head pair (head 1 unless ``heads`` says otherwise)."""

    name = "ohkd"
    Options = OHKDOptions
    weights = {"ohkd": 1.0, "ohkd_teacher_ce": 1.0}

    def _check_heads(self, available: int) -> None:
        if len(self.heads) != 1:
            raise ValueError(f"ohkd uses exactly one head, got {','.join(map(str, self.heads))}")
        super()._check_heads(available)
