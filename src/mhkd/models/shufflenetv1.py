"""ShuffleNet V1 (Zhang et al. 2018) as in the CRD benchmark: 1x1 stem of 24 channels, groups 3,
stages of 240, 480, 960 channels with 4, 8, 4 units."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mhkd.models._base import ZooNet, scaled
from mhkd.models._registry import register


class ShuffleUnit(nn.Module):
    """Grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1; then sum with the input, or at
    stride 2 concatenation with its 3x3 average pool (so the branch makes ``cout - cin``)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        branch = cout - cin if stride == 2 else cout
        mid = branch // 4
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle = nn.ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle(self.relu1(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        out = out + x if self.pool is None else torch.cat([out, self.pool(x)], 1)
        return self.relu3(out)


class ShuffleNetV1(ZooNet):
    """Stem ``conv1`` (1x1), stages ``layer1..3`` each starting at stride 2; stage ends layer1-3.

    Channel counts are rounded to multiples of ``4 * groups`` so every grouped conv divides.
    The first unit's 1x1 conv is not grouped: the 24-channel stem is too thin to split.
    """

    def __init__(
        self,
        num_classes: int = 100,
        width_mult: float = 1.0,
        groups: int = 3,
        widths: tuple[int, int, int] = (240, 480, 960),
        depths: tuple[int, int, int] = (4, 8, 4),
    ):
        stem = scaled(24, width_mult, 4 * groups)
        body: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(3, stem, 1, bias=False)),
            ("bn1", nn.BatchNorm2d(stem)),
            ("relu", nn.ReLU()),
        ]
        cin = stem
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            cout = scaled(width, width_mult, 4 * groups)
            units = []
            for j in range(depth):
                first_groups = 1 if i == 0 and j == 0 else groups
                units.append(ShuffleUnit(cin, cout, 2 if j == 0 else 1, groups, first_groups))
                cin = cout
            body.append((f"layer{i + 1}", nn.Sequential(*units)))
        super().__init__(body, ("layer1", "layer2", "layer3"), cin, num_classes)


@register
def shufflenetv1(num_classes: int = 100, width_mult: float = 1.0) -> ShuffleNetV1:
    """The benchmark's ShuffleNetV1 (0.95M params)."""
    return ShuffleNetV1(num_classes, width_mult)
