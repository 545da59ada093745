"""ImageNet ResNets (He et al. 2016) with torchvision's module names and state_dict layout, so
weights exported from torchvision or timm load with ``load_state_dict(strict=True)``.

ResNet-50 is torchvision's "v1.5": the stride of a bottleneck sits on its 3x3 conv.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from mhkd.models._base import ZooNet, he_init, make_stage, scaled
from mhkd.models._registry import register


def _downsample(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity when shapes match, else torchvision's 1x1 conv + BN ``downsample``."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus ``downsample`` of the input, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.downsample(x))


class Bottleneck(nn.Module):
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
        self.downsample = _downsample(cin, cout, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        return self.relu3(out + self.downsample(x))


class ImageNetResNet(ZooNet):
    """7x7 stride-2 ``conv1``, ``bn1``, ``relu``, 3x3 stride-2 ``maxpool``, ``layer1..4``, ``fc``.

    Stage ends are ``layer1`` (stride 4, 56x56 at 224) to ``layer4`` (stride 32, 7x7).
    ``width_mult`` scales every channel count (1.0 is torchvision's network).
    """

    classifier_name = "fc"
    default_input_size = 224

    def __init__(
        self,
        block: Callable[[int, int, int], nn.Module],
        expansion: int,
        depths: Sequence[int],
        num_classes: int = 1000,
        width_mult: float = 1.0,
    ):
        stem = scaled(64, width_mult)
        body: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(3, stem, 7, 2, 3, bias=False)),
            ("bn1", nn.BatchNorm2d(stem)),
            ("relu", nn.ReLU()),
            ("maxpool", nn.MaxPool2d(3, 2, 1)),
        ]
        cin = stem
        for i, depth in enumerate(depths):
            cout = expansion * scaled(64 * 2**i, width_mult)
            body.append((f"layer{i + 1}", make_stage(block, cin, cout, depth, 2 if i else 1)))
            cin = cout
        super().__init__(body, [f"layer{i + 1}" for i in range(len(depths))], cin, num_classes)
        he_init(self)

    @staticmethod
    def tail(num_features: int, num_classes: int) -> list[tuple[str, nn.Module]]:
        return [
            ("avgpool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(num_features, num_classes)),
        ]


@register
def resnet18(num_classes: int = 1000, width_mult: float = 1.0) -> ImageNetResNet:
    """torchvision's ResNet-18 (11.69M params, 1.81G MACs at 224x224)."""
    return ImageNetResNet(BasicBlock, 1, (2, 2, 2, 2), num_classes, width_mult)


@register
def resnet34(num_classes: int = 1000, width_mult: float = 1.0) -> ImageNetResNet:
    """torchvision's ResNet-34 (21.80M params, 3.66G MACs at 224x224)."""
    return ImageNetResNet(BasicBlock, 1, (3, 4, 6, 3), num_classes, width_mult)


@register
def resnet50(num_classes: int = 1000, width_mult: float = 1.0) -> ImageNetResNet:
    """torchvision's ResNet-50 v1.5 (25.56M params, 4.09G MACs at 224x224)."""
    return ImageNetResNet(Bottleneck, 4, (3, 4, 6, 3), num_classes, width_mult)
