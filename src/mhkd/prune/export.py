"""Physically smaller networks: masked channels removed, and their latency.

Export removes each group's masked channels with Torch-Pruning (producer filters, BatchNorm
entries and the consumers' input channels together), so the result computes exactly what the
masked model computes. The sizes that changed are recorded as ``pruned_channels``; a zoo
model is rebuilt from ``{"name", "num_classes", "kwargs", "pruned_channels"}`` alone by
``mhkd.models.from_spec`` (which resizes with ``mhkd.models.resize``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from mhkd import checkpoint
from mhkd.models.resize import channel_shapes
from mhkd.prune.groups import traceable
from mhkd.prune.masks import MaskedNet


def export(masked: MaskedNet, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """A plain copy of ``masked.net`` with every masked channel removed.

    The copy records ``pruned_channels`` (and, for a zoo model, adds it to ``zoo_spec``) so
    checkpoints of it can be rebuilt without this package's masking code.
    """
    net = masked.plain_copy()
    dense = channel_shapes(net)
    example = torch.zeros(1, *input_shape, device=next(net.parameters()).device)
    with traceable(net):
        graph = tp.DependencyGraph().build_dependency(net, example_inputs=example, verbose=False)
    modules = dict(net.named_modules())
    for group, mask in zip(masked.groups, masked.hard_masks(), strict=True):
        drop = (mask == 0).nonzero().flatten().tolist()
        if drop:
            root = modules[group.root]
            handler = graph.get_pruner_of_module(root).prune_out_channels
            graph.get_pruning_group(root, handler, drop).prune()
    changed = {n: s for n, s in channel_shapes(net).items() if s != dense[n]}
    net.pruned_channels = changed
    spec = checkpoint.model_spec(net)
    if spec is not None:
        net.zoo_spec = {**spec, "pruned_channels": changed}
    return net


@torch.inference_mode()
def latency_ms(
    model: nn.Module, input_shape: Sequence[int], batch: int, repeats: int = 10
) -> float:
    """Median wall time (ms) of one eval-mode forward pass on a batch, after one warm-up."""
    was_training = model.training
    model.eval()
    x = torch.randn(batch, *input_shape, device=next(model.parameters()).device)
    model(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    model.train(was_training)
    return 1000.0 * statistics.median(times)
