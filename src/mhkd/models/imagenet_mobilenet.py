"""ImageNet MobileNets whose state_dict layout matches the weights people publish for them.

``mobilenet_v2`` is torchvision's MobileNetV2 (Sandler et al. 2018; ``features.N``,
``classifier.1``). ``mobilenetv1`` is MobileNetV1 (Howard et al. 2017) laid out as the CRD and
mdistiller ImageNet experiments have it (``model.N``, ``fc``), the ResNet-50 teacher's student.
"""

from __future__ import annotations

from torch import Tensor, nn

from mhkd.models._base import ZooNet, he_init, scaled
from mhkd.models._registry import register

# (expansion ratio, output channels at full width, blocks, first stride) of each group
_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _divisible(channels: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple of ``divisor``, never 10 % below."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def _conv_bn_act(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type = nn.ReLU6
) -> nn.Sequential:
    """Conv (no bias), BatchNorm, activation: keys ``0.weight`` and ``1.*`` as torchvision's."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (left out at ratio 1), 3x3 depthwise, linear 1x1 project, all in ``conv``;
    the input is added back when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = round(cin * expand_ratio)
        expand = [_conv_bn_act(cin, hidden, 1)] if expand_ratio != 1 else []
        self.conv = nn.Sequential(
            *expand,
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class ImageNetMobileNetV2(ZooNet):
    """``features.0`` stem, ``features.1..17`` inverted residuals, ``features.18`` 1x1 conv to
    1280 channels, then ``classifier`` = (dropout 0.2, ``classifier.1`` linear).

    Stage ends: features.3 (stride 4), .6 (8), .13 (16), .18 (32).
    """

    classifier_name = "classifier.1"
    default_input_size = 224

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        cin = _divisible(32 * width_mult)
        layers: list[nn.Module] = [_conv_bn_act(3, cin, 3, 2)]
        for ratio, channels, depth, stride in _V2_SETTINGS:
            cout = _divisible(channels * width_mult)
            for i in range(depth):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, ratio))
                cin = cout
        last = _divisible(1280 * max(1.0, width_mult))
        layers.append(_conv_bn_act(cin, last, 1))
        stages = ("features.3", "features.6", "features.13", "features.18")
        super().__init__([("features", nn.Sequential(*layers))], stages, last, num_classes)
        he_init(self)
        nn.init.normal_(self.classifier[1].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[1].bias)

    @staticmethod
    def tail(num_features: int, num_classes: int) -> list[tuple[str, nn.Module]]:
        head = nn.Sequential(nn.Dropout(0.2), nn.Linear(num_features, num_classes))
        return [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("classifier", head)]


# output channels and stride of the 13 depthwise-separable blocks after the stem
_V1_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *((512, 1),) * 5,
    (1024, 2),
    (1024, 1),
)


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv-BN-ReLU then 1x1 conv-BN-ReLU, flat: keys ``0``, ``1``, ``3``, ``4``."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class MobileNetV1(ZooNet):
    """``model.0`` stem (3x3 stride 2, 32 channels), ``model.1..13`` separable blocks, ``fc``.

    Stage ends: model.3 (stride 4, 128 channels), .5 (8, 256), .11 (16, 512), .13 (32, 1024).
    The average pool is adaptive, so any input size works (weight-free: the keys are unchanged).
    """

    classifier_name = "fc"
    default_input_size = 224

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        cin = scaled(32, width_mult, 8)
        layers: list[nn.Module] = [_conv_bn_act(3, cin, 3, 2, act=nn.ReLU)]
        for channels, stride in _V1_BLOCKS:
            cout = scaled(channels, width_mult, 8)
            layers.append(_separable(cin, cout, stride))
            cin = cout
        stages = ("model.3", "model.5", "model.11", "model.13")
        super().__init__([("model", nn.Sequential(*layers))], stages, cin, num_classes)
        he_init(self)

    @staticmethod
    def tail(num_features: int, num_classes: int) -> list[tuple[str, nn.Module]]:
        return [
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(num_features, num_classes)),
        ]


@register
def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0) -> ImageNetMobileNetV2:
    """torchvision's MobileNetV2 (3.50M params, 0.30G MACs at 224x224)."""
    return ImageNetMobileNetV2(num_classes, width_mult)


@register
def mobilenetv1(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV1:
    """MobileNetV1 of the CRD/DKD ImageNet tables (4.23M params, 0.57G MACs at 224x224)."""
    return MobileNetV1(num_classes, width_mult)
