"""MobileNetV2 (Sandler et al. 2018) as in the CRD benchmark ("mobile_half"): half width,
expansion 6, a stride-2 stem so 32x32 inputs end at 2x2, and a 1280-channel 1x1 conv."""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from mhkd.models._base import ZooNet, make_stage, scaled
from mhkd.models._registry import register

# (expansion ratio, output channels at full width, blocks, first stride) of each group
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, linear 1x1 project; residual sum when the shape is kept.

    The expansion conv is kept even at ratio 1, as in the benchmark.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2(ZooNet):
    """``conv1``, seven groups ``blocks.0..6``, ``conv2`` to 1280 channels.

    ``width`` scales the block channels (0.5 is the benchmark model); ``last_channels`` is the
    width of ``conv2``. Stage ends: blocks.1 (16x16), blocks.2 (8x8), blocks.4 (4x4), conv2 (2x2).
    """

    def __init__(self, num_classes: int = 100, width: float = 0.5, last_channels: int = 1280):
        cin = scaled(32, width)
        stem = _conv_bn_relu(3, cin, 3, stride=2)
        groups = []
        for ratio, channels, depth, stride in _SETTINGS:
            cout = scaled(channels, width)
            block = partial(InvertedResidual, expand_ratio=ratio)
            groups.append(make_stage(block, cin, cout, depth, stride))
            cin = cout
        body = [
            ("conv1", stem),
            ("blocks", nn.Sequential(*groups)),
            ("conv2", _conv_bn_relu(cin, last_channels, 1)),
        ]
        stages = ("blocks.1", "blocks.2", "blocks.4", "conv2")
        super().__init__(body, stages, last_channels, num_classes)


@register
def mobilenetv2(num_classes: int = 100, width_mult: float = 1.0) -> MobileNetV2:
    """The benchmark's half-width MobileNetV2 (0.81M params); ``width_mult`` scales every layer."""
    return MobileNetV2(num_classes, width=0.5 * width_mult, last_channels=scaled(1280, width_mult))
