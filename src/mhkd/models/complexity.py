"""Model size: parameters, and multiply-accumulates counted by PyTorch's FLOP counter.

MACs are half the FLOPs :class:`torch.utils.flop_counter.FlopCounterMode` counts over one dry
run: every convolution (transposed, grouped, depthwise, ``F.conv2d``), linear layer, matrix
product and attention is counted from its real shapes, whichever module or function calls
it, so a user's module is sized as the zoo is. Biases, BatchNorm, activations, additions and
pooling are not counted (the counter has no formula for them), as in the papers' figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters once), trainable or not."""
    return sum(p.numel() for p in model.parameters())


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """Attention on the CPU runs a fused kernel torch's counter has no formula for (torch
    2.13); it does the same two matrix products as the GPU kernels the counter knows."""
    return sdpa_flop_count(query, key, value)


#: Formulas added to torch's own: operator -> FLOPs of its input shapes.
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def default_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(3, s, s)`` for the model's ``default_input_size`` s: 224 for the ImageNet zoo, else 32."""
    size = getattr(model, "default_input_size", 32)
    return (3, size, size)


def count_macs(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """Multiply-accumulates of one input of ``input_shape`` (FLOPs / 2, see the module).

    ``None`` means the model's :func:`default_input_shape`. Runs one batch-1 forward pass in
    eval mode without gradients; each module's train/eval flag is restored afterwards.
    """
    if input_shape is None:
        input_shape = default_input_shape(model)
    modes = {m: m.training for m in model.modules()}
    reference = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape) if reference is None else reference.new_zeros(1, *input_shape)
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        # nn.MultiheadAttention's inference fast path is one fused kernel no counter sees into
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for module, training in modes.items():
            module.training = training
    return counter.get_total_flops() // 2


def profile(model: nn.Module, input_shape: Sequence[int] | None = None) -> dict[str, int]:
    """``{"params": ..., "macs": ...}`` of ``model`` at ``input_shape`` (default: its own)."""
    return {"params": count_params(model), "macs": count_macs(model, input_shape)}
