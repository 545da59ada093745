"""ResNets as in the CRD benchmark: the CIFAR ResNet-n (He et al. 2016, 3 stages) and the
CIFAR variant of ResNet-50 (3x3 stride-1 stem, no max-pool, 4 bottleneck stages)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from mhkd.models._base import ZooNet, make_stage, scaled
from mhkd.models._registry import register


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity when shapes match, else the 1x1 conv + BN projection shortcut."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride, bias=False),
        nn.BatchNorm2d(cout),
    )


class _Residual(nn.Module):
    """A residual block whose shortcut module is called ``shortcut_name`` (``shortcut`` here,
    ``downsample`` in torchvision's layout), so one block serves both state_dict layouts."""

    shortcut_name = "shortcut"

    def _shortcut(self, x: Tensor) -> Tensor:
        return getattr(self, self.shortcut_name)(x)


class BasicBlock(_Residual):
    """Two 3x3 conv-BN layers plus a shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.add_module(self.shortcut_name, _projection(cin, cout, stride))
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self._shortcut(x))


class Bottleneck(_Residual):
    """1x1 reduce to ``cout / 4``, strided 3x3, 1x1 expand to ``cout``; ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        mid = cout // 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.add_module(self.shortcut_name, _projection(cin, cout, stride))
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        return self.relu3(out + self._shortcut(x))


class ResNet(ZooNet):
    """3x3 stem, then stages ``layer1..`` (the first at stride 1, the others halving the size).

    Stage ends are ``layer1``, ``layer2``, ...; ``widths`` are the stages' output channels.
    """

    def __init__(
        self,
        block: Callable[[int, int, int], nn.Module],
        stem_width: int,
        widths: Sequence[int],
        depths: Sequence[int],
        num_classes: int = 100,
    ):
        body: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)),
            ("bn1", nn.BatchNorm2d(stem_width)),
            ("relu", nn.ReLU()),
        ]
        cin = stem_width
        for i, (cout, depth) in enumerate(zip(widths, depths, strict=True)):
            body.append((f"layer{i + 1}", make_stage(block, cin, cout, depth, 2 if i else 1)))
            cin = cout
        stages = [f"layer{i + 1}" for i in range(len(widths))]
        super().__init__(body, stages, cin, num_classes)


_THIN = (16, 16, 32, 64)  # stem and stage widths of resnet8..resnet110
_X4 = (32, 64, 128, 256)  # the "x4" variants


def cifar_resnet(
    depth: int, widths: Sequence[int], num_classes: int = 100, width_mult: float = 1.0
) -> ResNet:
    """CIFAR ResNet of ``depth = 6n + 2`` layers: stem width ``widths[0]``, 3 stages of n blocks."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    n = (depth - 2) // 6
    stem, *stages = (scaled(c, width_mult) for c in widths)
    return ResNet(BasicBlock, stem, stages, (n, n, n), num_classes)


@register
def resnet8(num_classes: int = 100, width_mult: float = 1.0) -> ResNet:
    """ResNet-8, the smallest CIFAR ResNet (0.08M params)."""
    return cifar_resnet(8, _THIN, num_classes, width_mult)


@register
def resnet14(num_classes: int = 100, width_mult: float = 1.0) -> ResNet:
    """ResNet-14 (0.17M params)."""
    return cifar_resnet(14, _THIN, num_classes, width_mult)


@register
def resnet20(num_classes: int = 100, width_mult: float = 1.0) -> ResNet:
    """ResNet-20 (0.28M params), the benchmark's ResNet110 student."""
    return cifar_resnet(20, _THIN, num_classes, width_mult)


@register
def resnet32(num_classes: int = 100, width_mult: float = 1.0) -> ResNet:
    """ResNet-32 (0.47M params)."""
    return cifar_resnet(32, _THIN, num_classes, width_mult)


@register
def resnet44(num_classes: int = 100, width_mult: float = 1.0) -> ResNet:
    """ResNet-44 (0.67M params)."""
    return cifar_resnet(44, _THIN, num_classes, width_mult)


@register
def resnet56(num_classes: int = 100, width_mult: float = 1.0) -> ResNet:
    """ResNet-56 (0.86M params), a benchmark teacher."""
    return cifar_resnet(56, _THIN, num_classes, width_mult)


@register
def resnet110(num_classes: int = 100, width_mult: float = 1.0) -> ResNet:
    """ResNet-110 (1.74M params), a benchmark teacher."""
    return cifar_resnet(110, _THIN, num_classes, width_mult)


@register
def resnet8x4(num_classes: int = 100, width_mult: float = 1.0) -> ResNet:
    """ResNet-8 with 4x the channels (1.23M params), the benchmark's resnet32x4 student."""
    return cifar_resnet(8, _X4, num_classes, width_mult)


@register
def resnet32x4(num_classes: int = 100, width_mult: float = 1.0) -> ResNet:
    """ResNet-32 with 4x the channels (7.43M params), a benchmark teacher."""
    return cifar_resnet(32, _X4, num_classes, width_mult)


@register
def resnet50_cifar(num_classes: int = 100, width_mult: float = 1.0) -> ResNet:
    """ResNet-50 for 32x32 inputs (23.7M params): bottleneck stages of 3, 4, 6, 3 blocks.

    The benchmark's "ResNet50"; zoo specs written before the ImageNet networks call it
    ``resnet50`` (``mhkd.models.from_spec`` maps the old name).
    """
    planes = [scaled(c, width_mult) for c in (64, 128, 256, 512)]
    widths = [4 * p for p in planes]  # bottleneck expansion 4
    return ResNet(Bottleneck, planes[0], widths, (3, 4, 6, 3), num_classes)
