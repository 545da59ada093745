"""Pre-activation taps: where a zoo stage's map is read *before* its final ReLU (AB, OFD,
ReviewKD's teacher), and the BatchNorm whose statistics describe it (OFD's margin).

One rule covers the zoo families, from the stage's last module in registration order:

- a ``ReLU`` (ResNets, VGG, ShuffleNetV1, MobileNetV1, WRN's final ``relu``, MobileNetV2's
  ``conv2``): the input of that ReLU (``name:in``), i.e. the residual sum or BN output;
- a ``BatchNorm2d`` (MobileNetV2's linear bottlenecks): the stage output itself, which no ReLU
  follows;
- a ``Conv2d`` followed by a ``BatchNorm2d`` (WRN's pre-activation blocks): the output of that
  next BN, which is what the next ReLU sees (the CRD benchmark's WRN ``preact``).

Anything else (ShuffleNetV2's concatenation after its ReLU, a model without ``stage_names``)
cannot provide them: a one-line error names the method and the model.
"""

from __future__ import annotations

from torch import nn

from mhkd.taps import INPUT_SUFFIX

_SHORTCUTS = ("shortcut", "downsample")


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


def _inside(name: str, stage: str) -> bool:
    return name == stage or name.startswith(stage + ".")


def _fail(method: str, model: nn.Module, stage: str) -> ValueError:
    return ValueError(
        f"{method} needs pre-activation features, but {type(model).__name__} stage {stage!r} "
        "does not end in a ReLU module after a BatchNorm; name pre-activation layers with "
        "--teacher-layers/--student-layers"
    )


def _last_norm(leaves: list[tuple[str, nn.Module]], end: int) -> nn.BatchNorm2d | None:
    """The last BatchNorm up to leaf ``end`` that is not on a shortcut branch."""
    for name, module in reversed(leaves[: end + 1]):
        if isinstance(module, nn.BatchNorm2d) and not any(
            f".{s}." in f".{name}." for s in _SHORTCUTS
        ):
            return module
    return None


def preact_tap(model: nn.Module, stage: str, method: str) -> tuple[str, nn.BatchNorm2d]:
    """(tap name of the stage's pre-ReLU map, the BatchNorm that produces it).

    A name already ending in ``:in`` (user-named) is kept, with the BN before that module.
    """
    leaves = _leaves(model)
    module_name = stage.removesuffix(INPUT_SUFFIX)
    inside = [i for i, (n, _) in enumerate(leaves) if _inside(n, module_name)]
    if not inside:
        raise _fail(method, model, stage)
    last_name, last = leaves[inside[-1]]
    norm = _last_norm(leaves, inside[-1])
    if stage.endswith(INPUT_SUFFIX) and norm is not None:
        return stage, norm
    if type(last) is nn.ReLU and norm is not None:
        return last_name + INPUT_SUFFIX, norm
    if isinstance(last, nn.BatchNorm2d):
        return stage, last
    after = inside[-1] + 1
    if isinstance(last, nn.Conv2d) and after < len(leaves):
        next_name, next_module = leaves[after]
        if isinstance(next_module, nn.BatchNorm2d):
            return next_name, next_module
    raise _fail(method, model, stage)


def preact_taps(
    model: nn.Module, stages: list[str], method: str
) -> tuple[list[str], list[nn.BatchNorm2d]]:
    """:func:`preact_tap` for each stage: (tap names, BatchNorms)."""
    pairs = [preact_tap(model, stage, method) for stage in stages]
    return [name for name, _ in pairs], [bn for _, bn in pairs]
