"""FitNet: hints from a teacher feature map (Romero et al. 2015)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import check_maps, stage_pairs


@dataclass
class FitNetOptions:
    hint_stage: int | None = option(
        None,
        "index of the hint among the benchmark maps feat[1:-1] (default 1: RepDistiller's "
        "hint_layer 2)",
    )


class Regressor(nn.Module):
    """Student map → teacher map: a convolution to the teacher's channels, BN, ReLU.

    The spatial size is matched by the convolution itself (the CRD benchmark's ``ConvReg``):
    same size → 1×1; twice the teacher's → 3×3 stride 2; half → 4×4 transposed stride 2;
    larger → a valid convolution of kernel ``1 + s − t``; any other smaller size → bilinear
    upsampling, then 1×1.
    """

    def __init__(self, student_shape, teacher_shape):  # noqa: ANN001 (torch.Size, C×H×W)
        super().__init__()
        s_c, s_h, s_w = (int(v) for v in student_shape)
        t_c, t_h, t_w = (int(v) for v in teacher_shape)
        self.size = (t_h, t_w)
        self.upsample = False
        if (s_h, s_w) == (t_h, t_w):
            conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=1)
        elif (s_h, s_w) == (2 * t_h, 2 * t_w):
            conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif (2 * s_h, 2 * s_w) == (t_h, t_w):
            conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            conv, self.upsample = nn.Conv2d(s_c, t_c, kernel_size=1), True
        self.conv = conv
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.relu(self.bn(self.conv(x)))


@register
class FitNet(Method):
    """Hint loss at a middle map: ``MSE(regressor(f_s), f_t)``, β = 100, with KD.

    Default layers: RepDistiller's ``feat[hint_layer = 2]`` of each zoo model (map 1 of
    :func:`~mhkd.methods.layers.feature_maps`: VGG ``block2``, WRN ``block2``, ResNet
    ``layer2``, MobileNetV2 ``blocks.2``, ShuffleNetV2 ``layer2``); ``hint_stage`` picks another
    map index; user-named layers give one hint per pair (one regressor each, losses summed).
    The regressor is sized by a dry run.
    """

    name = "fitnet"
    Options = FitNetOptions
    companions = ("kd",)
    ce_weight = 0.1
    weights = {"fitnet": 100.0}

    def __init__(self, ctx: MethodContext, options: FitNetOptions):
        super().__init__(TeacherUse.FEATURES)
        select = 1 if options.hint_stage is None else options.hint_stage
        self.teacher_layers, self.student_layers = stage_pairs(ctx, self.name, select)
        t_shapes = ctx.teacher_shapes(self.teacher_layers)
        s_shapes = ctx.student_shapes(self.student_layers)
        check_maps(self.name, "teacher", t_shapes)
        check_maps(self.name, "student", s_shapes)
        self.regressors = nn.ModuleList(
            Regressor(s_shapes[s], t_shapes[t])
            for t, s in zip(self.teacher_layers, self.student_layers, strict=True)
        )

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        loss = sum(
            losses.fitnet(reg(student.features[s]), teacher.features[t])
            for reg, t, s in zip(
                self.regressors, self.teacher_layers, self.student_layers, strict=True
            )
        )
        return {"fitnet": loss}
