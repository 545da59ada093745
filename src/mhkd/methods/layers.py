"""Which layers the feature-based baselines tap, from zoo attributes or the user's names.

Zoo models declare ``stage_names`` (stage ends, 4-D outputs) and ``embedding_name`` (the
flattened penultimate features). The baselines tap what the benchmark code behind their cited
numbers taps: RepDistiller's ``feat`` list (``model(x, is_feat=True, preact=False)``), whose
maps ``feat[1:-1]`` are the stage ends except in four families (:data:`BENCHMARK_MAPS`). A user
model names its layers instead (``ctx.teacher_layers``/``ctx.student_layers``,
``--teacher-layers``/``--student-layers``).

What the chosen layers output comes from one dry run, :func:`probe` (which also finds the
last-stage map MHKD's heads are sized against); ``MethodContext.student_shapes`` /
``teacher_shapes`` call it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn

from mhkd.taps import Taps

#: RepDistiller's ``feat[1:-1]`` of the zoo families where they differ from ``stage_names``
#: (MHKD's heads keep the stage ends): WRN's last map is ``block3``'s output before the final
#: BN+ReLU; VGG's are blocks 1-4 (block 0 is ``feat[0]``); MobileNetV2's last is ``blocks[6]``
#: (320 half-width channels, not ``conv2``'s 1280); ShuffleNetV2's is ``layer3`` (not the
#: 1024-channel ``relu2``). ResNets and ShuffleNetV1 tap their stage ends.
BENCHMARK_MAPS: dict[str, tuple[str, ...]] = {
    "WideResNet": ("block1", "block2", "block3"),
    "VGG": ("block1", "block2", "block3", "block4"),
    "MobileNetV2": ("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
    "ShuffleNetV2": ("layer1", "layer2", "layer3"),
}


class LayerContext(Protocol):
    """What choosing layers reads of a :class:`~mhkd.methods.base.MethodContext`."""

    student: nn.Module
    teacher: nn.Module | None
    input_shape: tuple[int, int, int]
    teacher_layers: Sequence[str] | None
    student_layers: Sequence[str] | None


def feature_maps(model: nn.Module, method: str, role: str) -> list[str]:
    """The benchmark's intermediate maps of a zoo model (``feat[1:-1]``), in forward order."""
    stages = _declared(model, "stage_names", method, role)
    return list(BENCHMARK_MAPS.get(type(model).__name__, stages))


def _declared(model: nn.Module, attr: str, method: str, role: str) -> list[str] | str:
    value = getattr(model, attr, None)
    if not value:
        raise ValueError(
            f"{method}: the {role} ({type(model).__name__}) declares no {attr}; name its "
            f"layers with --{role}-layers (or {role}_layers= in the Python API)"
        )
    return list(value) if not isinstance(value, str) else value


def _given(ctx: LayerContext, role: str) -> list[str] | None:
    layers = ctx.teacher_layers if role == "teacher" else ctx.student_layers
    return list(layers) if layers else None


def _model(ctx: LayerContext, role: str) -> nn.Module:
    model = ctx.teacher if role == "teacher" else ctx.student
    if model is None:
        raise ValueError("this method needs a teacher")
    return model


def require_maps(ctx: LayerContext, method: str, teacher: list[str], student: list[str]) -> None:
    """Refuse layers whose outputs are not spatial maps (N×C×H×W), naming layer and shape."""
    for role, names in (("teacher", teacher), ("student", student)):
        shapes = probe(_model(ctx, role), names, ctx.input_shape).shapes
        for name, shape in shapes.items():
            if len(shape) != 3:
                got = "×".join(["N", *map(str, shape)])
                raise ValueError(
                    f"{method} needs {role} layers with spatial maps (outputs N×C×H×W, such as "
                    f"a convolution or a stage end), but {role} layer {name!r} gives {got}"
                )


def stage_pairs(
    ctx: LayerContext, method: str, select: str | int = "all"
) -> tuple[list[str], list[str]]:
    """(teacher layers, student layers) paired by position.

    Layers the user named are used as given (both lists must then have one length). Otherwise
    the zoo's benchmark maps (:func:`feature_maps`, RepDistiller's ``feat[1:-1]``) are taken:
    ``"all"`` pairs them from the first on (the longer list's extra deepest maps are left out,
    like the benchmark's ``zip``), ``"last"`` the last (``feat[-2]``), an integer that index of
    each (FitNet's ``hint_layer = 2`` is index 1: ``feat[2]``).
    """
    sides = {}
    explicit = False
    for role in ("teacher", "student"):
        given = _given(ctx, role)
        if given is not None:
            sides[role] = given
            explicit = True
            continue
        stages = feature_maps(_model(ctx, role), method, role)
        if select == "all":
            sides[role] = stages
        elif select == "last":
            sides[role] = [stages[-1]]
        else:
            try:
                sides[role] = [stages[int(select)]]
            except IndexError:
                raise ValueError(
                    f"{method}: map {select} does not exist; the {role} has {len(stages)} "
                    f"maps ({', '.join(stages)})"
                ) from None
    teacher, student = sides["teacher"], sides["student"]
    if len(teacher) != len(student):
        if explicit:
            raise ValueError(
                f"{method} pairs teacher and student layers in order, but got {len(teacher)} "
                f"teacher layers ({', '.join(teacher)}) and {len(student)} student layers "
                f"({', '.join(student)})"
            )
        n = min(len(teacher), len(student))
        teacher, student = teacher[:n], student[:n]
    return teacher, student


def embedding_layers(ctx: LayerContext, method: str) -> tuple[str, str]:
    """(teacher layer, student layer) of the penultimate features.

    The zoo's ``embedding_name``, or the last of the layers the user named (a 4-D output is
    globally average-pooled to a vector).
    """
    names = []
    for role in ("teacher", "student"):
        given = _given(ctx, role)
        if given is not None:
            names.append(given[-1])
        else:
            names.append(_declared(_model(ctx, role), "embedding_name", method, role))
    return names[0], names[1]


# ---- what the layers output -------------------------------------------------------------------
class Probe(NamedTuple):
    """One dry run's findings: per-sample output shapes of the requested layers (in the order
    asked), and the (H, W) of the model's last-stage map when it was asked for."""

    shapes: dict[str, torch.Size]
    last_map: tuple[int, int] | None = None


@torch.no_grad()
def probe(
    model: nn.Module,
    names: Sequence[str],
    input_shape: Sequence[int] = (3, 32, 32),
    last_map: bool = False,
) -> Probe:
    """Output shapes of the named layers (without the batch dimension), from one dry run.

    The run uses a batch of 2 zeros in eval mode, so BatchNorm statistics are left untouched.
    ``last_map``: also find the (H, W) of the model's last-stage map, the output of its last
    ``stage_names`` entry or, for a model without ``stage_names``, the last map larger than
    1×1 that any of its modules outputs in forward order (the map its global pooling reduces).
    """
    names = list(dict.fromkeys(names))
    stages = getattr(model, "stage_names", None)
    extra = []
    if last_map:
        extra = [stages[-1]] if stages else [name for name, _ in model.named_modules() if name]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with Taps(model, [*names, *extra]) as taps:
            model(torch.zeros(2, *input_shape, device=device))
            seen = {n: out.shape[1:] for n, out in taps.outputs.items() if isinstance(out, Tensor)}
    finally:
        model.train(was_training)
    missing = [name for name in names if name not in seen]
    if missing:
        raise ValueError(
            f"layer(s) {', '.join(map(repr, missing))} of {type(model).__name__} output no "
            "tensor in a dry run; a tapped layer must output a tensor (or a tuple whose first "
            "item is one)"
        )
    found = None
    if last_map:
        if stages:
            last = seen[stages[-1]]
        else:  # outputs are in the order the modules finished: the last map is the deepest
            maps = [shape for shape in seen.values() if len(shape) == 3 and shape[1] * shape[2] > 1]
            last = maps[-1] if maps else torch.Size((0, 1, 1))
        found = (int(last[-2]), int(last[-1]))
    return Probe({name: seen[name] for name in names}, found)


def feature_dim(shape: Sequence[int] | torch.Size) -> int:
    """Size of a layer's output as a vector (see :func:`mhkd.losses._common.flat_features`)."""
    return int(shape[0]) if len(shape) == 3 else int(math.prod(shape))
