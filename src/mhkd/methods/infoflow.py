"""Heterogeneous KD by information-flow modelling (Passalis, Tzelepi & Tefas, CVPR 2020).

Matched layer pairs are compared through batch-wise conditional probabilities of a cosine and
a Student-t kernel (:func:`mhkd.losses.information_flow`), so widths and layer types may differ. The
critical-period schedule weights the final layer 1 and every intermediate layer
``period_start · period_decay^epoch`` (100 · 0.7^k): the intermediate layers lead early, while
the network's information flow is still plastic, the final layer later.

``aux`` chooses who teaches the layers: ``"none"`` the real teacher; ``"auto"`` a proxy of the
student's family at ``aux_width`` times its width, trained before distillation (CE, then
infoflow from the real teacher on the final layer only, see :mod:`mhkd.auxteacher`) and saved
in ``OUT/aux``; a checkpoint path, a proxy trained before (by another run); an ``nn.Module``
(Python API), a proxy architecture of the user's, trained like ``"auto"``'s (``aux_epochs=0``
and ``aux_distill_epochs=0`` take it as already trained). The student's CE stays on (weight 1).

Layer matching: zoo models pair their stage ends one to one, plus the penultimate embedding as
the final layer. When one network has more stages (m against n), stage i of the shallower
(1-based) pairs with stage ⌈i·m/n⌉ of the deeper, the one at the same relative depth, so
both last stages pair and the deeper net's earliest stages are the ones left out. User lists
(``teacher_layers``/``student_layers``) are paired in order, the last entry being the final
layer; their lengths must be equal.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mhkd import checkpoint, losses
from mhkd.auxteacher import PROXY_WIDTH, build_proxy, proxy_checkpoint, train_proxy
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, register
from mhkd.taps import Taps

AUX_MODES = ("auto", "none")
DIAGONAL_MODES = ("keep", "exclude")


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


def _proxy_layers(proxy: nn.Module, ctx: MethodContext) -> Sequence[str] | None:
    """The user's student layers when the proxy has them all (same family), else ``None``."""
    existing = dict(proxy.named_modules())
    names = ctx.student_layers
    return names if names and all(name in existing for name in names) else None


@register
class InfoFlow(Method):
    """Multi-layer kernel distillation with critical periods, optionally through a proxy."""

    name = "infoflow"
    weights = {"ce": 1.0, "infoflow": 1.0}

    def __init__(
        self,
        ctx: MethodContext,
        aux: str | Path | nn.Module | None = "none",
        period_start: float = 100.0,
        period_decay: float = 0.7,
        kernel_diagonal: str = "keep",
        aux_width: float = PROXY_WIDTH,
        aux_epochs: int | None = None,
        aux_distill_epochs: int | None = None,
    ):
        super().__init__(ctx)
        if kernel_diagonal not in DIAGONAL_MODES:
            raise ValueError(f"kernel_diagonal must be keep or exclude, got {kernel_diagonal!r}")
        if period_start < 0 or not 0 < period_decay <= 1:
            raise ValueError(
                f"need period_start >= 0 and 0 < period_decay <= 1; got {period_start}, "
                f"{period_decay}"
            )
        self.period_start, self.period_decay = period_start, period_decay
        self.diagonal = kernel_diagonal == "keep"
        self.aux_epochs, self.aux_distill_epochs = aux_epochs, aux_distill_epochs
        self._ctx = ctx
        self.aux_mode, proxy = self._proxy(ctx, aux, aux_width)
        self.aux_checkpoint = str(aux) if self.aux_mode == "checkpoint" else None
        if proxy is None:
            if ctx.teacher is None:
                raise ValueError("infoflow needs a teacher (or a proxy: --aux auto|CKPT)")
            self.teacher_layers, self.student_layers = match_layers(
                ctx.teacher, ctx.student, ctx.teacher_layers, ctx.student_layers
            )
            self.proxy = None
        else:
            # The proxy teaches; the trainer need not run the real teacher at all.
            self.needs_teacher = False
            self.proxy_layers, self.student_layers = match_layers(
                proxy, ctx.student, _proxy_layers(proxy, ctx), ctx.student_layers
            )
            self.proxy = proxy.requires_grad_(False).eval()
            self._proxy_taps: Taps | None = None  # hooked at the first step, after prepare()
        self.layer_weights = period_weights(
            len(self.student_layers), 0, period_start, period_decay
        )

    @staticmethod
    def _proxy(
        ctx: MethodContext, aux: str | Path | nn.Module | None, width: float
    ) -> tuple[str, nn.Module | None]:
        """The proxy mode (none, auto, module or checkpoint) and the proxy network, if any."""
        if isinstance(aux, nn.Module):
            return "module", aux
        if aux is None or str(aux) == "none":
            return "none", None
        if str(aux) == "auto":
            if ctx.teacher is None:
                raise ValueError("--aux auto trains the proxy from the teacher: pass --teacher")
            return "auto", build_proxy(ctx.student, width)
        return "checkpoint", checkpoint.build_model(checkpoint.load(aux), aux)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """infoflow's command-line flags; absent flags leave the constructor defaults."""
        keep = argparse.SUPPRESS
        parser.add_argument("--aux", default=keep, metavar="auto|CKPT|none",
                            help="infoflow's teacher of the layers: a proxy of the student's "
                            "family trained first (auto, saved in OUT/aux), a proxy checkpoint, "
                            "or the real teacher (none, default)")
        parser.add_argument("--aux-width", type=float, default=keep,
                            help="proxy width relative to the student (default 2)")
        parser.add_argument("--aux-epochs", type=int, default=keep,
                            help="proxy CE epochs (default: --epochs; 0 skips)")
        parser.add_argument("--aux-distill-epochs", type=int, default=keep,
                            help="proxy distillation epochs (default: --epochs; 0 skips)")
        parser.add_argument("--period-start", type=float, default=keep,
                            help="intermediate layers' weight at epoch 0 (default 100)")
        parser.add_argument("--period-decay", type=float, default=keep,
                            help="its factor per epoch (default 0.7)")
        parser.add_argument("--kernel-diagonal", choices=DIAGONAL_MODES, default=keep,
                            help="keep each kernel's diagonal, mean over b² (reference code, "
                            "default), or exclude it (the paper)")

    def train(self, mode: bool = True) -> InfoFlow:
        super().train(mode)
        if self.proxy is not None:
            self.proxy.eval()
        return self

    def start_epoch(self, epoch: int) -> dict[str, float]:
        self.layer_weights = period_weights(
            len(self.student_layers), epoch, self.period_start, self.period_decay
        )
        logged = {"infoflow_alpha_final": self.layer_weights[-1]}
        if len(self.layer_weights) > 1:
            logged["infoflow_alpha_intermediate"] = self.layer_weights[0]
        return logged

    def _proxy_features(self, images: Tensor) -> list[Tensor]:
        if self._proxy_taps is None:
            self._proxy_taps = Taps(self.proxy, self.proxy_layers)
        with torch.no_grad():
            self.proxy(images)
        features = self._proxy_taps.pop()
        return [features[name] for name in self.proxy_layers]

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        if self.proxy is not None:
            targets = self._proxy_features(batch.images)
        elif teacher is None:
            raise ValueError("infoflow needs the teacher's outputs")
        else:
            targets = [teacher.features[name] for name in self.teacher_layers]
        students = [student.features[name] for name in self.student_layers]
        loss = losses.information_flow(students, targets, self.layer_weights, self.diagonal)
        return {"infoflow": loss}

    def prepare(self, teacher: nn.Module | None, loader: Iterable[Batch]) -> None:
        """Train an ``auto`` or user-module proxy (CE, then the teacher's final layer)."""
        if self.aux_mode not in ("auto", "module"):
            return
        ctx = self._ctx
        if teacher is None or ctx.data is None or ctx.config is None:
            raise ValueError("training a proxy teacher needs a teacher and a Trainer run")
        train_proxy(
            self.proxy,
            teacher,
            ctx.data,
            ctx.config,
            teacher_layer=(ctx.teacher_layers or default_layers(teacher, "teacher"))[-1],
            proxy_layer=self.proxy_layers[-1],
            out=ctx.out,
            ce_epochs=self.aux_epochs,
            distill_epochs=self.aux_distill_epochs,
            method_options={"kernel_diagonal": "keep" if self.diagonal else "exclude"},
        )
        self.proxy.requires_grad_(False).eval()
        if ctx.out is not None:
            self.aux_checkpoint = str(proxy_checkpoint(ctx.out))

    def summary(self) -> dict[str, Any]:
        pairs = zip(
            self.proxy_layers if self.proxy is not None else self.teacher_layers,
            self.student_layers,
            strict=True,
        )
        extra: dict[str, Any] = {
            "infoflow_pairs": [list(pair) for pair in pairs],
            "infoflow_aux": self.aux_mode,
        }
        if self.proxy is not None:
            extra["infoflow_aux_params"] = sum(p.numel() for p in self.proxy.parameters())
            extra["infoflow_aux_model"] = (checkpoint.model_spec(self.proxy) or {}).get("name")
            extra["infoflow_aux_checkpoint"] = self.aux_checkpoint
        return extra
