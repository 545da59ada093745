"""Factor transfer (Kim et al. 2018): a paraphraser pre-trained on the teacher, then a
translator on the student."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from mhkd import checkpoint, losses
from mhkd.data.batch import Batch
from mhkd.losses._common import constant
from mhkd.methods.base import Method, MethodContext, ModelOutput, TeacherUse, option, register
from mhkd.methods.layers import check_maps, stage_pairs


@dataclass
class FTOptions:
    paraphraser: str | None = option(
        None, "the trained paraphraser (OUT/pretrain/paraphraser.pt); none: train one first"
    )
    rate: float = option(0.5, "factor channels as a fraction of the teacher's")
    init_epochs: int = option(30, "epochs of the paraphraser's training stage (OUT/pretrain)")
    init_lr: float | None = option(None, "learning rate of that stage (default: --lr)")


def _convs(channels: list[int], batchnorm: bool, transpose: bool = False) -> nn.Sequential:
    """3×3 same-size convolutions through ``channels``, each (BN and) LeakyReLU(0.1)."""
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels, channels[1:], strict=False):
        layers += [conv(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out) if batchnorm else None]
        layers += [nn.LeakyReLU(0.1)]
    return nn.Sequential(*(layer for layer in layers if layer is not None))


class Paraphraser(nn.Module):
    """An autoencoder of the teacher's map: its code is the teacher's factor."""

    def __init__(self, channels: int, rate: float):
        super().__init__()
        factor = int(channels * rate)
        self.encoder = _convs([channels, channels, factor, factor], batchnorm=False)
        self.decoder = _convs([factor, factor, channels, channels], False, transpose=True)


@register
class FT(Method):
    """``mean |φ(T(f_s)) − φ(P(f_t))|`` between the student's translated last stage and the
    teacher's paraphrased one, β = 200, CE 1, no KD (the CRD benchmark's ``-a 0 -b 200``).

    ``mhkd distill --method ft`` first trains the paraphraser alone to reconstruct the teacher's
    map (term ``ft_paraphrase``, MSE, CE weight 0, the student frozen) for ``init_epochs`` in
    ``OUT/pretrain``, saved as ``OUT/pretrain/paraphraser.pt``; then the student and the
    translator in ``OUT`` with that paraphraser frozen.
    """

    name = "ft"
    Options = FTOptions
    ce_weight = 1.0
    weights = {"ft": 200.0, "ft_paraphrase": 1.0}

    def __init__(self, ctx: MethodContext, options: FTOptions):
        super().__init__(TeacherUse.FEATURES)
        self.teacher_layers, self.student_layers = stage_pairs(ctx, self.name, "last")
        t_shapes = ctx.teacher_shapes(self.teacher_layers)
        s_shapes = ctx.student_shapes(self.student_layers)
        check_maps(self.name, "teacher", t_shapes)
        check_maps(self.name, "student", s_shapes)
        t_shape, s_shape = t_shapes[self.teacher_layers[0]], s_shapes[self.student_layers[0]]
        self.paraphraser = Paraphraser(int(t_shape[0]), options.rate)
        self.translator: nn.Module | None = None
        if options.paraphraser is not None:
            state = checkpoint.read_state(options.paraphraser)
            try:
                self.paraphraser.load_state_dict(state["paraphraser"])
            except (KeyError, RuntimeError) as exc:
                raise ValueError(
                    f"ft: {options.paraphraser} holds no paraphraser for this teacher's "
                    f"{int(t_shape[0])}-channel map ({type(exc).__name__})"
                ) from None
            self.paraphraser.requires_grad_(False)
            factor = int(int(t_shape[0]) * options.rate)
            self.translator = _convs([int(s_shape[0]), int(s_shape[0]), factor, factor], True)

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch
    ) -> dict[str, Tensor]:
        f_t = constant(teacher.features[self.teacher_layers[0]]).float()
        if self.translator is None:
            return {"ft_paraphrase": F.mse_loss(self.paraphraser.decoder(
                self.paraphraser.encoder(f_t)), f_t)}  # fmt: skip
        factor_s = self.translator(student.features[self.student_layers[0]])
        return {"ft": losses.factor_transfer(factor_s, self.paraphraser.encoder(f_t))}
