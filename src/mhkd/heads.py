"""The auxiliary classifier head of MHKD (Wang et al. 2020), and where its convolutions stride.

A head turns an intermediate feature map of any shape into class logits, so teacher and
student stages with different channels, spatial sizes or architecture families become
comparable without a hand-sized adapter. Its capacity is deliberately small: a strong head
would hide the teacher–student discrepancy it is meant to expose.

The paper states no stride. At stride 1 a head on a 32×32 stage costs 680 MMACs per image,
more than a WRN-40-2 teacher and a WRN-16-2 student together, so by default (as the related
auxiliary-classifier methods HSAKD, DKS, BYOT and TOFD do) each convolution strides 2 while
its input is still larger than the network's last-stage map: see :func:`head_strides`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def strided_size(size: int, stride: int) -> int:
    """Output side of a 3×3 convolution with padding 1 and ``stride`` on a side of ``size``."""
    return (size - 1) // stride + 1


def head_strides(
    size: Sequence[int], last: Sequence[int], convs: int = 2, stride: int | None = None
) -> tuple[int, ...]:
    """Stride of each of a head's ``convs`` convolutions on an input map of ``size`` (H, W).

    ``stride=None`` is the rule: a convolution strides 2 while the map it reads is larger than
    ``last`` (H, W), the network's last-stage map, in either side, else 1. A 32×32 CIFAR stage
    whose network ends at 8×8 gets (2, 2) and reaches 8×8; a 16×16 stage gets (2, 1); the last
    stage itself (1, 1). An integer gives every convolution that stride (1: the paper-literal
    head).
    """
    if stride is not None:
        return (stride,) * convs
    height, width = size
    strides = []
    for _ in range(convs):
        step = 2 if height > last[0] or width > last[1] else 1
        strides.append(step)
        height, width = strided_size(height, step), strided_size(width, step)
    return tuple(strides)


class AuxHead(nn.Module):
    """``convs`` × (3×3 conv of ``width`` kernels, BatchNorm, ReLU) → global average pool →
    ``fcs`` fully connected layers (``width`` hidden units with ReLU between) → classes.

    The paper's head is ``convs=2, fcs=2, width=256``; ``strides`` gives each convolution's
    stride (default all 1; MHKD picks them with :func:`head_strides`). The convolutions have
    no bias because the BatchNorm after each one has its own.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        convs: int = 2,
        fcs: int = 2,
        width: int = 256,
        strides: Sequence[int] | None = None,
    ):
        super().__init__()
        strides = tuple(strides) if strides is not None else (1,) * convs
        if convs < 0 or fcs < 1 or width < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"a head needs convs >= 0, fcs >= 1 and positive sizes; got convs={convs}, "
                f"fcs={fcs}, width={width}, in_channels={in_channels}, classes={num_classes}"
            )
        if len(strides) != convs or any(s < 1 for s in strides):
            raise ValueError(f"a head needs one stride >= 1 per conv; got {strides} for {convs}")
        self.strides = strides
        layers: list[nn.Module] = []
        channels = in_channels
        for stride in strides:
            layers += [
                nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.convs = nn.Sequential(*layers)
        fc: list[nn.Module] = []
        for _ in range(fcs - 1):
            fc += [nn.Linear(channels, width), nn.ReLU(inplace=True)]
            channels = width
        fc.append(nn.Linear(channels, num_classes))
        self.fcs = nn.Sequential(*fc)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return self.fcs(self.convs(x).mean(dim=(2, 3)))
