"""ImageNet ResNets (He et al. 2016) with torchvision's module names and state_dict layout, so
weights exported from torchvision or timm load with ``load_state_dict(strict=True)``.

ResNet-50 is torchvision's "v1.5": the stride of a bottleneck sits on its 3x3 conv.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from mhkd.models import resnet
from mhkd.models._base import ZooNet, he_init, make_stage, scaled
from mhkd.models._registry import register


class BasicBlock(resnet.BasicBlock):
    """The CIFAR ResNets' basic block with torchvision's name for its shortcut."""

    shortcut_name = "downsample"


class Bottleneck(resnet.Bottleneck):
    """The bottleneck (stride on the 3x3 conv) with torchvision's name for its shortcut."""

    shortcut_name = "downsample"


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
