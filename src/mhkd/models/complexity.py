"""Model size: parameters, and multiply-accumulates of conv and linear layers by a dry run.

MACs are counted from the real output shapes seen by forward hooks, so any input size, stride
or grouping is handled without re-deriving each architecture's arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters once), trainable or not."""
    return sum(p.numel() for p in model.parameters())


def _macs(module: nn.Module, output: Tensor) -> int:
    if isinstance(module, _CONVS):
        # each output element is a dot product over (in_channels / groups) x kernel inputs
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output.numel() * per_output
    return output.numel() * module.in_features


def default_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(3, s, s)`` for the model's ``default_input_size`` s: 224 for the ImageNet zoo, else 32."""
    size = getattr(model, "default_input_size", 32)
    return (3, size, size)


def count_macs(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """Multiply-accumulates of conv and linear layers for one input of ``input_shape``.

    ``None`` means the model's :func:`default_input_shape`.

    Runs one batch-1 forward pass in eval mode without gradients; each module's train/eval
    flag is restored afterwards. Biases, BatchNorm, activations and pooling are not counted.
    """
    total = 0

    def hook(module: nn.Module, _inputs, output: Tensor) -> None:
        nonlocal total
        total += _macs(module, output)

    if input_shape is None:
        input_shape = default_input_shape(model)
    counted = [m for m in model.modules() if isinstance(m, (*_CONVS, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in counted]
    modes = {m: m.training for m in model.modules()}
    reference = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape) if reference is None else reference.new_zeros(1, *input_shape)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return total


def profile(model: nn.Module, input_shape: Sequence[int] | None = None) -> dict[str, int]:
    """``{"params": ..., "macs": ...}`` of ``model`` at ``input_shape`` (default: its own)."""
    return {"params": count_params(model), "macs": count_macs(model, input_shape)}
