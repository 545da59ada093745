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
    """A body of named children, then the tail: global average pooling, flatten, classifier.

    A flat ``nn.Sequential`` of named modules means forward hooks and dependency-graph tracing
    see every stage by a stable name, and ``forward`` returns nothing but the logits.
    Subclasses that must keep another library's module names override :meth:`tail` together
    with ``classifier_name``. ``default_input_size`` is the side of the square images the
    network is built for (:func:`mhkd.models.profile` measures it there).
    """

    embedding_name: str = "flatten"
    classifier_name: str = "classifier"
    default_input_size: int = 32

    def __init__(
        self,
        body: Sequence[tuple[str, nn.Module]],
        stage_names: Sequence[str],
        num_features: int,
        num_classes: int,
    ):
        super().__init__(OrderedDict([*body, *self.tail(num_features, num_classes)]))
        self.stage_names: tuple[str, ...] = tuple(stage_names)

    @staticmethod
    def tail(num_features: int, num_classes: int) -> list[tuple[str, nn.Module]]:
        """The named modules after the body; ``classifier_name`` must name its last Linear."""
        return [
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("classifier", nn.Linear(num_features, num_classes)),
        ]


def he_init(model: nn.Module) -> None:
    """torchvision's initialisation of its ImageNet networks, so training from scratch matches.

    Convs: He-normal over fan-out; BatchNorm: weight 1, bias 0. Linear layers keep PyTorch's.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
