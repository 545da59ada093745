"""Wide ResNets (Zagoruyko & Komodakis 2016) as in the CRD benchmark: pre-activation blocks,
``wrn_<depth>_<widen factor>``, no dropout."""

from __future__ import annotations

from torch import Tensor, nn

from mhkd.models._base import ZooNet, make_stage, scaled
from mhkd.models._registry import register


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; a 1x1 conv shortcut on the activated input when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(ZooNet):
    """WRN-depth-k: 3x3 stem of 16, stages ``block1..3`` of 16k, 32k, 64k, final BN-ReLU.

    The stage ends are ``block1``, ``block2`` and the final ``relu`` (the map that is pooled).
    """

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int = 100, width_mult: float = 1.0
    ):
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        k = widen_factor
        stem, *widths = (scaled(c, width_mult) for c in (16, 16 * k, 32 * k, 64 * k))
        body: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(3, stem, 3, 1, 1, bias=False))]
        cin = stem
        for i, cout in enumerate(widths):
            body.append((f"block{i + 1}", make_stage(PreActBlock, cin, cout, n, 2 if i else 1)))
            cin = cout
        body += [("bn", nn.BatchNorm2d(cin)), ("relu", nn.ReLU())]
        super().__init__(body, ("block1", "block2", "relu"), cin, num_classes)


@register
def wrn_16_1(num_classes: int = 100, width_mult: float = 1.0) -> WideResNet:
    """WRN-16-1 (0.18M params)."""
    return WideResNet(16, 1, num_classes, width_mult)


@register
def wrn_16_2(num_classes: int = 100, width_mult: float = 1.0) -> WideResNet:
    """WRN-16-2 (0.70M params), the benchmark's WRN-40-2 student."""
    return WideResNet(16, 2, num_classes, width_mult)


@register
def wrn_40_1(num_classes: int = 100, width_mult: float = 1.0) -> WideResNet:
    """WRN-40-1 (0.57M params)."""
    return WideResNet(40, 1, num_classes, width_mult)


@register
def wrn_40_2(num_classes: int = 100, width_mult: float = 1.0) -> WideResNet:
    """WRN-40-2 (2.26M params), a benchmark teacher."""
    return WideResNet(40, 2, num_classes, width_mult)
