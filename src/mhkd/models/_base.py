"""What every zoo model shares: the classifier tail, the tap names and channel scaling."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import nn


def scaled(channels: int, width_mult: float, divisor: int = 1) -> int:
    """``channels * width_mult`` rounded to a multiple of ``divisor`` (at least one multiple).

    The divisor keeps grouped convolutions and channel splits valid at any width.
    """
    return max(divisor, round(channels * width_mult / divisor) * divisor)


def make_stage(
    block: Callable[[int, int, int], nn.Module], cin: int, cout: int, depth: int, stride: int
) -> nn.Sequential:
    """``depth`` blocks ``block(cin, cout, stride)``; only the first changes width and size."""
    return nn.Sequential(
        *(block(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(depth))
    )


class ZooNet(nn.Sequential):
    """A body of named children, then global average pooling, ``flatten`` and ``classifier``.

    A flat ``nn.Sequential`` of named modules means forward hooks and dependency-graph tracing
    see every stage by a stable name, and ``forward`` returns nothing but the logits.
    """

    embedding_name: str = "flatten"
    classifier_name: str = "classifier"

    def __init__(
        self,
        body: Sequence[tuple[str, nn.Module]],
        stage_names: Sequence[str],
        num_features: int,
        num_classes: int,
    ):
        super().__init__(
            OrderedDict(
                [
                    *body,
                    ("pool", nn.AdaptiveAvgPool2d(1)),
                    ("flatten", nn.Flatten()),
                    ("classifier", nn.Linear(num_features, num_classes)),
                ]
            )
        )
        self.stage_names: tuple[str, ...] = tuple(stage_names)
