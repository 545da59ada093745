"""MACs from PyTorch's FLOP counter: the zoo's figures unchanged, every operator counted."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mhkd import models
from mhkd.models.complexity import count_macs, default_input_shape


def hook_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The count mhkd made before torch's counter: forward hooks on nn.Conv*/nn.Linear, each
    output element a dot product over (in_channels / groups) x kernel inputs."""
    total = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        else:
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += output.numel() * per_output

    counted = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return total


@pytest.mark.parametrize("name", models.available())
def test_zoo_macs_equal_the_conv_and_linear_hook_count(name: str) -> None:
    model = models.create(name, num_classes=10)
    shape = default_input_shape(model)
    if shape[1] > 32:  # the ImageNet networks: any size tells, a small one is fast
        shape = (3, 64, 64)
    assert count_macs(model, shape) == hook_macs(model, shape) > 0


class UserNet(nn.Module):
    """Operators the old hooks missed (ConvTranspose2d, F.conv2d, a matmul, attention) beside
    ones nobody counts (BatchNorm, ReLU, an addition, pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.weight = nn.Parameter(torch.randn(8, 6, 3, 3))
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.proj = nn.Parameter(torch.randn(8, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # 4x8x8 -> 6x16x16
        x = F.conv2d(x, self.weight, padding=1)  # -> 8x16x16
        x = x + torch.relu(self.bn(self.depthwise(x)))
        tokens = x.flatten(2).transpose(1, 2) @ self.proj  # (1, 256, 12)
        heads = tokens.view(1, 256, 2, 6).transpose(1, 2)  # (1, 2 heads, 256, 6)
        out = F.scaled_dot_product_attention(heads, heads, heads)
        return F.adaptive_avg_pool1d(out.flatten(2), 1)


def test_user_module_counts_every_multiplying_operator() -> None:
    transposed = 8 * 8 * 4 * (6 // 2) * 9  # each input pixel of each channel: out/groups x k²
    functional = 16 * 16 * 8 * 6 * 9
    depthwise = 16 * 16 * 8 * 9
    matmul = 256 * 8 * 12
    attention = 2 * (256 * 256 * 6) * 2  # 2 heads x (Q Kᵀ and A V)
    model = UserNet().train()
    assert count_macs(model, (4, 8, 8)) == transposed + functional + depthwise + matmul + attention
    assert model.training and model.bn.training  # modes restored
    assert hook_macs(model, (4, 8, 8)) == depthwise  # what mhkd reported before


def test_transformer_layers_are_counted_in_eval_mode_too() -> None:
    """In eval mode without gradients nn.MultiheadAttention runs one fused kernel unless its
    fast path is off, as it is while counting."""
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    tokens, width, hidden = 16, 32, 64
    projections = tokens * width * 3 * width + tokens * width * width  # q, k, v in; out
    attention = 2 * tokens * tokens * width  # Q Kᵀ and A V over all heads
    feed_forward = 2 * tokens * width * hidden
    assert count_macs(layer, (tokens, width)) == projections + attention + feed_forward
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_batchnorm_activations_additions_and_pooling_cost_nothing() -> None:
    class Free(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.bn(x)) + x * 2
            return F.max_pool2d(torch.sigmoid(y), 2).mean()

    assert count_macs(Free(), (3, 8, 8)) == 0
