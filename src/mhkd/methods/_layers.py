"""Which layers the feature-based baselines tap, from zoo attributes or the user's names.

Zoo models declare ``stage_names`` (stage ends, 4-D outputs) and ``embedding_name`` (the
flattened penultimate features). A user model names its layers instead
(``ctx.teacher_layers``/``ctx.student_layers``, ``--teacher-layers``/``--student-layers``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mhkd.methods.base import MethodContext


def _declared(model: nn.Module, attr: str, method: str, role: str) -> list[str] | str:
    value = getattr(model, attr, None)
    if not value:
        raise ValueError(
            f"{method}: the {role} ({type(model).__name__}) declares no {attr}; name its "
            f"layers with --{role}-layers (or {role}_layers= in the Python API)"
        )
    return list(value) if not isinstance(value, str) else value


def _given(ctx: MethodContext, role: str) -> list[str] | None:
    layers = ctx.teacher_layers if role == "teacher" else ctx.student_layers
    return list(layers) if layers else None


def _model(ctx: MethodContext, role: str) -> nn.Module:
    model = ctx.teacher if role == "teacher" else ctx.student
    if model is None:
        raise ValueError("this method needs a teacher")
    return model


def require_maps(ctx: MethodContext, method: str, teacher: list[str], student: list[str]) -> None:
    """Refuse layers whose outputs are not spatial maps (N×C×H×W), naming layer and shape."""
    for role, names, shapes in (
        ("teacher", teacher, ctx.teacher_shapes),
        ("student", student, ctx.student_shapes),
    ):
        for name, shape in shapes(names).items():
            if len(shape) != 3:
                got = "×".join(["N", *map(str, shape)])
                raise ValueError(
                    f"{method} needs {role} layers with spatial maps (outputs N×C×H×W, such as "
                    f"a convolution or a stage end), but {role} layer {name!r} gives {got}"
                )


def stage_pairs(
    ctx: MethodContext, method: str, select: str | int = "all"
) -> tuple[list[str], list[str]]:
    """(teacher layers, student layers) paired by position.

    Layers the user named are used as given (both lists must then have one length). Otherwise
    the zoo's ``stage_names`` are taken: ``"all"`` pairs them from the first stage on (the
    longer list's extra deepest stages are left out, like the benchmark's ``zip``),
    ``"middle"`` takes stage ``(n − 1) // 2`` of each (the benchmark's hint layer),
    ``"last"`` the last stage, an integer that stage index of each.
    """
    sides = {}
    explicit = False
    for role in ("teacher", "student"):
        given = _given(ctx, role)
        if given is not None:
            sides[role] = given
            explicit = True
            continue
        stages = _declared(_model(ctx, role), "stage_names", method, role)
        if select == "all":
            sides[role] = stages
        elif select == "middle":
            sides[role] = [stages[(len(stages) - 1) // 2]]
        elif select == "last":
            sides[role] = [stages[-1]]
        else:
            try:
                sides[role] = [stages[int(select)]]
            except IndexError:
                raise ValueError(
                    f"{method}: stage {select} does not exist; the {role} has {len(stages)} "
                    f"stages ({', '.join(stages)})"
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


def embedding_layers(ctx: MethodContext, method: str) -> tuple[str, str]:
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


def feature_dim(shape: Sequence[int] | torch.Size) -> int:
    """Size of a layer's output as a vector (see :func:`mhkd.losses._common.flat_features`)."""
    return int(shape[0]) if len(shape) == 3 else int(math.prod(shape))
