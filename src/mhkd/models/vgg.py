"""VGG with BatchNorm, CIFAR layout of the CRD benchmark: five conv blocks, max-pooling after the
first three only (so blocks 3 and 4 both run at 4x4), global average pooling, one linear layer."""

from __future__ import annotations

from torch import nn

from mhkd.models._base import ZooNet, scaled
from mhkd.models._registry import register

# output channels of each 3x3 conv, block by block
_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(ZooNet):
    """Blocks ``block0..block4`` of conv(with bias)-BN-ReLU.

    Stage ends: block0 (32x32), block1 (16x16), block2 (8x8), block4 (4x4).
    """

    def __init__(self, depth: int, num_classes: int = 100, width_mult: float = 1.0):
        if depth not in _CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(_CONFIGS)}, got {depth}")
        body: list[tuple[str, nn.Module]] = []
        cin = 3
        for i, block in enumerate(_CONFIGS[depth]):
            layers: list[nn.Module] = []
            for channels in block:
                cout = scaled(channels, width_mult)
                layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
            body.append((f"block{i}", nn.Sequential(*layers)))
            if i < 3:
                body.append((f"pool{i}", nn.MaxPool2d(2)))
        super().__init__(body, ("block0", "block1", "block2", "block4"), cin, num_classes)


@register
def vgg8(num_classes: int = 100, width_mult: float = 1.0) -> VGG:
    """VGG-8 with BN (3.97M params), the benchmark's VGG13 student."""
    return VGG(8, num_classes, width_mult)


@register
def vgg11(num_classes: int = 100, width_mult: float = 1.0) -> VGG:
    """VGG-11 with BN."""
    return VGG(11, num_classes, width_mult)


@register
def vgg13(num_classes: int = 100, width_mult: float = 1.0) -> VGG:
    """VGG-13 with BN (9.46M params), a benchmark teacher."""
    return VGG(13, num_classes, width_mult)


@register
def vgg16(num_classes: int = 100, width_mult: float = 1.0) -> VGG:
    """VGG-16 with BN."""
    return VGG(16, num_classes, width_mult)


@register
def vgg19(num_classes: int = 100, width_mult: float = 1.0) -> VGG:
    """VGG-19 with BN."""
    return VGG(19, num_classes, width_mult)
