"""The auxiliary classifier head of MHKD (Wang et al. 2020).

A head turns an intermediate feature map of any shape into class logits, so teacher and
student stages with different channels, spatial sizes or architecture families become
comparable without a hand-sized adapter. Its capacity is deliberately small: a strong head
would hide the teacher–student discrepancy it is meant to expose.
"""

from __future__ import annotations

from torch import Tensor, nn


class AuxHead(nn.Module):
    """``convs`` × (3×3 conv of ``width`` kernels, BatchNorm, ReLU) → global average pool →
    ``fcs`` fully connected layers (``width`` hidden units with ReLU between) → classes.

    The paper's head is ``convs=2, fcs=2, width=256``. The convolutions have no bias because
    the BatchNorm after each one has its own.
    """

    def __init__(
        self, in_channels: int, num_classes: int, convs: int = 2, fcs: int = 2, width: int = 256
    ):
        super().__init__()
        if convs < 0 or fcs < 1 or width < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"a head needs convs >= 0, fcs >= 1 and positive sizes; got convs={convs}, "
                f"fcs={fcs}, width={width}, in_channels={in_channels}, classes={num_classes}"
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(convs):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
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
