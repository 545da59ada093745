"""Which layers the methods tap, and what those layers output: one place for both.

Zoo models declare ``stage_names`` (stage ends, 4-D outputs, in forward order) and
``embedding_name`` (the flattened penultimate features). A user model names its layers instead
(``ctx.teacher_layers``/``ctx.student_layers``, ``--teacher-layers``/``--student-layers``);
named layers are used as given, paired in order, and both lists must then have one length.
Each method picks its zoo layers by one of these rules:

- :func:`stage_pairs`: the benchmark's intermediate maps (RepDistiller's ``feat[1:-1]``,
  :func:`feature_maps`): all of them paired from the first, the last, or one index;
- :func:`deepest_pairs`: the stage ends paired from the deepest back (mdistiller's OFD);
- :func:`embedding_layers`: the penultimate features (CC, CRD, PKT, RKD, ReviewKD);
- :func:`head_stages`: the first ``count`` stage ends (MHKD's heads);
- :func:`flow_pairs`: the stage ends at the same relative depth, then the embedding
  (information flow); :func:`final_layer` is one network's last layer of those.

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

ROLES = ("teacher", "student")


class LayerContext(Protocol):
    """What choosing layers reads of a :class:`~mhkd.methods.base.MethodContext`."""

    student: nn.Module
    teacher: nn.Module | None
    input_shape: tuple[int, int, int]
    teacher_layers: Sequence[str] | None
    student_layers: Sequence[str] | None


# ---- the error messages, one helper each ------------------------------------------------------
def _undeclared(model: nn.Module, attr: str, method: str | None, role: str) -> ValueError:
    prefix = f"{method}: " if method else ""
    if role in ROLES:
        remedy = f"name its layers with --{role}-layers (or {role}_layers= in the Python API)"
    else:
        remedy = "use a zoo model, which declares it"
    return ValueError(f"{prefix}the {role} ({type(model).__name__}) declares no {attr}; {remedy}")


def _unpaired(method: str, teacher: Sequence[str], student: Sequence[str]) -> ValueError:
    return ValueError(
        f"{method} pairs teacher and student layers in order, but got {len(teacher)} teacher "
        f"layers ({', '.join(teacher)}) and {len(student)} student layers ({', '.join(student)})"
    )


def _too_few_stages(method: str, role: str, stages: Sequence[str], count: int) -> ValueError:
    return ValueError(
        f"{method}: the {role} has {len(stages)} stages but {count} heads were asked for; "
        f"lower head_stages or name layers with --{role}-layers"
    )


def _no_map(method: str, role: str, stages: Sequence[str], index: int | str) -> ValueError:
    return ValueError(
        f"{method}: map {index} does not exist; the {role} has {len(stages)} maps "
        f"({', '.join(stages)})"
    )


def _not_spatial(method: str, role: str, name: str, shape: Sequence[int]) -> ValueError:
    got = "×".join(["N", *map(str, shape)])
    return ValueError(
        f"{method} needs {role} layers with spatial maps (outputs N×C×H×W, such as a "
        f"convolution or a stage end), but {role} layer {name!r} gives {got}"
    )


def _no_tensor(model: nn.Module, names: Sequence[str]) -> ValueError:
    return ValueError(
        f"layer(s) {', '.join(map(repr, names))} of {type(model).__name__} output no tensor in "
        "a dry run; a tapped layer must output a tensor (or a tuple whose first item is one)"
    )


def _no_teacher(method: str) -> ValueError:
    return ValueError(f"method {method!r} needs a teacher")


# ---- what a model declares and what the user named --------------------------------------------
def _declared(model: nn.Module, attr: str, method: str | None, role: str) -> list[str] | str:
    value = getattr(model, attr, None)
    if not value:
        raise _undeclared(model, attr, method, role)
    return list(value) if not isinstance(value, str) else value


def stage_ends(model: nn.Module, method: str | None, role: str) -> list[str]:
    """A zoo model's ``stage_names``, or the one error that asks for named layers."""
    return list(_declared(model, "stage_names", method, role))


def embedding(model: nn.Module, method: str | None, role: str) -> str:
    """A zoo model's ``embedding_name``, or the one error that asks for named layers."""
    return str(_declared(model, "embedding_name", method, role))


def feature_maps(model: nn.Module, method: str, role: str) -> list[str]:
    """The benchmark's intermediate maps of a zoo model (``feat[1:-1]``), in forward order."""
    stages = stage_ends(model, method, role)
    return list(BENCHMARK_MAPS.get(type(model).__name__, stages))


def _given(ctx: LayerContext, role: str) -> list[str] | None:
    layers = ctx.teacher_layers if role == "teacher" else ctx.student_layers
    return list(layers) if layers else None


def _model(ctx: LayerContext, role: str, method: str) -> nn.Module:
    model = ctx.teacher if role == "teacher" else ctx.student
    if model is None:
        raise _no_teacher(method)
    return model


def _paired(method: str, teacher: list[str], student: list[str]) -> tuple[list[str], list[str]]:
    if len(teacher) != len(student):
        raise _unpaired(method, teacher, student)
    return teacher, student


# ---- the rules ---------------------------------------------------------------------------------
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
    for role in ROLES:
        model, given = _model(ctx, role, method), _given(ctx, role)
        if given is not None:
            sides[role] = given
            explicit = True
            continue
        stages = feature_maps(model, method, role)
        if select == "all":
            sides[role] = stages
        elif select == "last":
            sides[role] = [stages[-1]]
        else:
            try:
                sides[role] = [stages[int(select)]]
            except IndexError:
                raise _no_map(method, role, stages, select) from None
    teacher, student = sides["teacher"], sides["student"]
    if explicit:
        return _paired(method, teacher, student)
    n = min(len(teacher), len(student))
    return teacher[:n], student[:n]


def deepest_pairs(ctx: LayerContext, method: str) -> tuple[list[str], list[str]]:
    """Zoo stage ends paired from the deepest back (mdistiller's ``_align_list``: the shallower
    extra stages of the longer list are left out); user-named layers are used as given."""
    if ctx.teacher_layers or ctx.student_layers:
        return stage_pairs(ctx, method, "all")
    teacher = stage_ends(_model(ctx, "teacher", method), method, "teacher")
    student = stage_ends(_model(ctx, "student", method), method, "student")
    n = min(len(teacher), len(student))
    return teacher[-n:], student[-n:]


def embedding_layers(ctx: LayerContext, method: str) -> tuple[str, str]:
    """(teacher layer, student layer) of the penultimate features.

    The zoo's ``embedding_name``, or the last of the layers the user named (a 4-D output is
    globally average-pooled to a vector).
    """
    names = []
    for role in ROLES:
        model, given = _model(ctx, role, method), _given(ctx, role)
        names.append(given[-1] if given is not None else embedding(model, method, role))
    return names[0], names[1]


def head_stages(ctx: LayerContext, method: str, count: int) -> tuple[list[str], list[str]]:
    """(teacher layers, student layers) for auxiliary heads: the first ``count`` stage ends of
    each zoo model, or the user's layers; paired in order."""
    sides = []
    for role in ROLES:
        model, given = _model(ctx, role, method), _given(ctx, role)
        if given is None:
            stages = stage_ends(model, method, role)
            if len(stages) < count:
                raise _too_few_stages(method, role, stages, count)
            given = stages[:count]
        sides.append(given)
    return _paired(method, *sides)


def flow_layers(model: nn.Module, role: str, method: str | None = None) -> list[str]:
    """A zoo model's stage ends followed by its penultimate embedding."""
    return [*stage_ends(model, method, role), embedding(model, method, role)]


def _same_depth(stages: Sequence[str], count: int) -> list[str]:
    """``count`` of ``stages``: the i-th (1-based) is stage ⌈i·m/count⌉ of the m given."""
    m = len(stages)
    return [stages[math.ceil(i * m / count) - 1] for i in range(1, count + 1)]


def flow_pairs(ctx: LayerContext, method: str = "infoflow") -> tuple[list[str], list[str]]:
    """Information flow's (teacher, student) layer pairs, the final representations last.

    Zoo models pair their stage ends one to one, plus the embedding as the final layer; when
    one has more stages (m against n), stage i of the shallower (1-based) pairs with stage
    ⌈i·m/n⌉ of the deeper, the one at the same relative depth. A side the user named is used
    as given, the other side defaulting to all its stage ends and its embedding.
    """
    teacher = _model(ctx, "teacher", method)
    t_given, s_given = _given(ctx, "teacher"), _given(ctx, "student")
    if t_given or s_given:
        return _paired(
            method,
            t_given or flow_layers(teacher, "teacher", method),
            s_given or flow_layers(ctx.student, "student", method),
        )
    *t_stages, t_final = flow_layers(teacher, "teacher", method)
    *s_stages, s_final = flow_layers(ctx.student, "student", method)
    n = min(len(t_stages), len(s_stages))
    return [*_same_depth(t_stages, n), t_final], [*_same_depth(s_stages, n), s_final]


def final_layer(model: nn.Module, role: str, given: Sequence[str] | None = None) -> str:
    """The layer information flow treats as ``model``'s final representation: the last of the
    layers named for it, else its embedding (the model must declare stage ends too)."""
    return list(given)[-1] if given else flow_layers(model, role)[-1]


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
        raise _no_tensor(model, missing)
    found = None
    if last_map:
        if stages:
            last = seen[stages[-1]]
        else:  # outputs are in the order the modules finished: the last map is the deepest
            maps = [shape for shape in seen.values() if len(shape) == 3 and shape[1] * shape[2] > 1]
            last = maps[-1] if maps else torch.Size((0, 1, 1))
        found = (int(last[-2]), int(last[-1]))
    return Probe({name: seen[name] for name in names}, found)


def check_maps(method: str, role: str, shapes: dict[str, torch.Size]) -> None:
    """Refuse layers whose outputs are not spatial maps (N×C×H×W), naming layer and shape."""
    for name, shape in shapes.items():
        if len(shape) != 3:
            raise _not_spatial(method, role, name, shape)


def require_maps(ctx: LayerContext, method: str, teacher: list[str], student: list[str]) -> None:
    """:func:`check_maps` on the teacher's layers, then on the student's."""
    for role, names in (("teacher", teacher), ("student", student)):
        check_maps(method, role, probe(_model(ctx, role, method), names, ctx.input_shape).shapes)


def require_equal_channels(
    ctx: LayerContext, method: str, teacher: list[str], student: list[str]
) -> None:
    """Refuse pairs that are not spatial maps of one channel count (methods comparing the
    maps' channel-by-channel products, FSP and KD-SVD), naming the pair and both shapes."""
    t_shapes = probe(_model(ctx, "teacher", method), teacher, ctx.input_shape).shapes
    s_shapes = probe(_model(ctx, "student", method), student, ctx.input_shape).shapes
    check_maps(method, "teacher", t_shapes)
    check_maps(method, "student", s_shapes)
    for t, s in zip(teacher, student, strict=True):
        if t_shapes[t][0] != s_shapes[s][0]:
            raise ValueError(
                f"{method} needs feature maps of equal channel counts; teacher {t} is "
                f"{tuple(t_shapes[t])}, student {s} is {tuple(s_shapes[s])}"
            )


def feature_dim(shape: Sequence[int] | torch.Size) -> int:
    """Size of a layer's output as a vector (see :func:`mhkd.losses._common.flat_features`)."""
    return int(shape[0]) if len(shape) == 3 else int(math.prod(shape))
