"""Physically smaller networks: masked channels removed, and rebuilt later from a small spec.

Export removes each group's masked channels with Torch-Pruning (producer filters, BatchNorm
entries and the consumers' input channels together), so the result computes exactly what the
masked model computes. The sizes that changed are recorded as ``pruned_channels``; a zoo
model is rebuilt from ``{"name", "num_classes", "kwargs", "pruned_channels"}`` alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from mhkd import checkpoint
from mhkd.prune.groups import traceable
from mhkd.prune.masks import MaskedNet


def _shape(module: nn.Module) -> list[int] | None:
    """The channel sizes export can change: conv ``[in, out, groups]``, linear, norm."""
    if isinstance(module, nn.Conv2d):
        return [module.in_channels, module.out_channels, module.groups]
    if isinstance(module, nn.Linear):
        return [module.in_features, module.out_features]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return [module.num_features]
    return None


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {n: s for n, m in model.named_modules() if (s := _shape(m)) is not None}


def export(masked: MaskedNet, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """A plain copy of ``masked.net`` with every masked channel removed.

    The copy records ``pruned_channels`` (and, for a zoo model, adds it to ``zoo_spec``) so
    checkpoints of it can be rebuilt without this package's masking code.
    """
    net = masked.plain_copy()
    dense = _shapes(net)
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
    changed = {n: s for n, s in _shapes(net).items() if s != dense[n]}
    net.pruned_channels = changed
    spec = checkpoint.model_spec(net)
    if spec is not None:
        net.zoo_spec = {**spec, "pruned_channels": changed}
    return net


def _resized(module: nn.Module, shape: list[int]) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        cin, cout, groups = shape
        return nn.Conv2d(
            cin,
            cout,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            groups,
            module.bias is not None,
            module.padding_mode,
        )
    if isinstance(module, nn.Linear):
        return nn.Linear(*shape, bias=module.bias is not None)
    return type(module)(
        shape[0], module.eps, module.momentum, module.affine, module.track_running_stats
    )


def resize(model: nn.Module, pruned_channels: dict[str, list[int]]) -> nn.Module:
    """Replace the layers named in ``pruned_channels`` by fresh ones of the recorded sizes.

    The result has the pruned network's shapes (load its state dict next); ``model`` is
    changed in place and returned.
    """
    for name, shape in pruned_channels.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _resized(getattr(parent, child), list(shape)))
    model.pruned_channels = dict(pruned_channels)
    spec = checkpoint.model_spec(model)
    if spec is not None:
        model.zoo_spec = {**spec, "pruned_channels": dict(pruned_channels)}
    return model


def rebuild(spec: dict[str, Any]) -> nn.Module:
    """A zoo model from a spec that may carry ``pruned_channels`` (weights not loaded).

    ``mhkd.models.from_spec`` can delegate here for specs with ``pruned_channels``.
    """
    from mhkd import models

    model = models.create(spec["name"], spec["num_classes"], **spec.get("kwargs", {}))
    return resize(model, spec.get("pruned_channels") or {})


def load_pruned(path: str | Path) -> nn.Module:
    """Rebuild and load a pruned (or dense) zoo checkpoint written by ``mhkd prune``."""
    state = checkpoint.load(path)
    if not state.get("arch"):
        raise checkpoint.CheckpointError(f"{path} has no architecture spec to rebuild")
    model = rebuild(state["arch"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise checkpoint.CheckpointError(f"{path}: {str(exc).splitlines()[0]}") from None
    return model


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
