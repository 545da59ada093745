"""ShuffleNet V2 1x (Ma et al. 2018) as in the CRD benchmark: 1x1 stem of 24, stages of
116, 232, 464 channels (a down-sampling unit plus 3, 7, 3 units), a 1x1 conv to 1024."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mhkd.models._base import ZooNet, scaled
from mhkd.models._registry import register


def _dw_bn(channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
    ]


def _pw_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ShuffleUnit(nn.Module):
    """Split the channels in half, transform one half (1x1, depthwise 3x3, 1x1), concatenate
    with the untouched half, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            *_pw_bn_relu(half, half), *_dw_bn(half, 1), *_pw_bn_relu(half, half)
        )
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        keep, change = x.chunk(2, dim=1)
        return self.shuffle(torch.cat([keep, self.branch(change)], 1))


class DownUnit(nn.Module):
    """Two stride-2 branches of ``cout / 2`` channels each, concatenated and shuffled."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(*_dw_bn(cin, 2), *_pw_bn_relu(cin, mid))
        self.right = nn.Sequential(*_pw_bn_relu(cin, mid), *_dw_bn(mid, 2), *_pw_bn_relu(mid, mid))
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2(ZooNet):
    """Stem, stages ``layer1..3`` (each a DownUnit then ShuffleUnits), ``conv2``-``bn2``-``relu2``.

    Stage ends: layer1, layer2 and the final ``relu2`` (the 4x4 map that is pooled). Channels are
    rounded to even numbers so the halves split evenly.
    """

    def __init__(
        self,
        num_classes: int = 100,
        width_mult: float = 1.0,
        widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
        depths: tuple[int, int, int] = (3, 7, 3),
    ):
        stem, *stages, last = [scaled(c, width_mult, 2) for c in (24, *widths)]
        body: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(3, stem, 1, bias=False)),
            ("bn1", nn.BatchNorm2d(stem)),
            ("relu1", nn.ReLU()),
        ]
        cin = stem
        for i, (cout, depth) in enumerate(zip(stages, depths, strict=True)):
            units = [DownUnit(cin, cout), *(ShuffleUnit(cout) for _ in range(depth))]
            body.append((f"layer{i + 1}", nn.Sequential(*units)))
            cin = cout
        body += [
            ("conv2", nn.Conv2d(cin, last, 1, bias=False)),
            ("bn2", nn.BatchNorm2d(last)),
            ("relu2", nn.ReLU()),
        ]
        super().__init__(body, ("layer1", "layer2", "relu2"), last, num_classes)


@register
def shufflenetv2(num_classes: int = 100, width_mult: float = 1.0) -> ShuffleNetV2:
    """The benchmark's ShuffleNetV2 1x (1.36M params)."""
    return ShuffleNetV2(num_classes, width_mult)
