"""Variational information distillation (Ahn et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mhkd import losses
from mhkd.data.batch import Batch
from mhkd.losses.features import match_spatial
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import check_maps, stage_pairs


@dataclass
class VIDOptions:
    init_var: float = option(5.0, "initial variance of the Gaussian over the teacher's map")
    eps: float = option(1e-5, "floor added to the variance")


class VIDRegressor(nn.Module):
    """Student map → mean of the teacher's: three bias-free 1×1 convolutions with ReLUs
    (mid width = the teacher's channels), and a learned per-channel ``log_scale``."""

    def __init__(self, s_channels: int, t_channels: int, init_var: float, eps: float):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(s_channels, t_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t_channels, t_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(t_channels, t_channels, 1, bias=False),
        )
        self.log_scale = nn.Parameter(losses.vid_log_scale_init(t_channels, init_var, eps))


def vid_stage(reg: VIDRegressor, f_s: Tensor, f_t: Tensor, eps: float) -> Tensor:
    """VID at one stage pair: pool the larger map to the smaller, regress, compare."""
    f_s, f_t = match_spatial(f_s, f_t.detach())
    return losses.vid(reg.mean(f_s), f_t, reg.log_scale, eps)


@register
class VID(Method):
    """Mutual-information bound at every stage end, summed over stages; β = 1, CE 1, no KD
    (the CRD benchmark's script). The larger of two maps is pooled to the smaller first."""

    name = "vid"
    Options = VIDOptions
    ce_weight = 1.0
    weights = {"vid": 1.0}

    def __init__(self, ctx: MethodContext, options: VIDOptions):
        super().__init__(TeacherUse.FEATURES)
        self.eps = options.eps
        self.teacher_layers, self.student_layers = stage_pairs(ctx, self.name, "all")
        t_shapes = ctx.teacher_shapes(self.teacher_layers)
        s_shapes = ctx.student_shapes(self.student_layers)
        check_maps(self.name, "teacher", t_shapes)
        check_maps(self.name, "student", s_shapes)
        self.regressors = nn.ModuleList(
            VIDRegressor(s_shapes[s][0], t_shapes[t][0], options.init_var, options.eps)
            for t, s in zip(self.teacher_layers, self.student_layers, strict=True)
        )

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        pairs = zip(self.regressors, self.teacher_layers, self.student_layers, strict=True)
        return {
            "vid": sum(
                vid_stage(reg, student.features[s], teacher.features[t], self.eps)
                for reg, t, s in pairs
            )
        }
