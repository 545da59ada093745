"""Coupled channel groups of a dense model, found with Torch-Pruning's dependency graph.

Channels joined by a residual sum, a concatenation or a depthwise convolution must be kept or
removed together, or the pruned network cannot be built. Torch-Pruning traces the model once
and returns those groups; we keep only what masking and export need, by module name, so the
same groups apply to every copy of the model in a cascade.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class PruneError(ValueError):
    """The model or the request cannot be pruned; the message is one line for a CLI user."""


@dataclass(frozen=True)
class MaskPoint:
    """A module whose output channels ``channels`` carry group channels ``group_channels``.

    The mask multiplies the module's output there: after every BatchNorm of the group (a zero
    channel comes out of BN as its shift, not zero) and after each producer not followed by
    its own BatchNorm.
    """

    module: str
    channels: Tensor
    group_channels: Tensor


@dataclass(frozen=True)
class ChannelGroup:
    """One set of coupled channels: ``size`` channels, one mask and one score per channel.

    ``producers`` are the conv/linear layers whose filters make these channels (their weights
    give magnitude scores); ``root`` names the layer Torch-Pruning prunes the group through.
    """

    root: str
    size: int
    mask_points: tuple[MaskPoint, ...]
    producers: tuple[MaskPoint, ...]


@dataclass(frozen=True)
class ModelLayout:
    """Which layers of a model are pruned, shared in a cascade, or per model."""

    groups: tuple[ChannelGroup, ...]
    first_conv: str
    classifier: str
    shared: tuple[str, ...]  # conv/linear layers whose weights the cascade shares


def _is_supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 or module.groups == module.in_channels == module.out_channels
    return isinstance(module, (nn.Linear, *_NORMS))


def check_supported(model: nn.Module) -> None:
    """Raise :class:`PruneError` naming the first layer with weights we cannot prune through.

    Supported: Conv2d (dense or depthwise), Linear, BatchNorm; weight-free layers of any kind.
    """
    for name, module in model.named_modules():
        owns_state = any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False)
        )
        if owns_state and not _is_supported(module):
            detail = " (grouped conv)" if isinstance(module, nn.Conv2d) else ""
            raise PruneError(
                f"unsupported layer type {type(module).__name__}{detail} at {name!r}; "
                "channel pruning handles Conv2d (dense or depthwise), Linear and BatchNorm"
            )


def _forward_order(model: nn.Module, example: Tensor) -> list[str]:
    """Names of conv and linear layers in the order a forward pass calls them."""
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda *_, n=name: order.append(n))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """Eval mode with every parameter requiring grad, restored afterwards.

    Torch-Pruning follows the autograd graph: a frozen model would show no coupling at all.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval().requires_grad_(True)
    try:
        yield
    finally:
        model.train(was_training)
        for p, flag in flags:
            p.requires_grad_(flag)


def find_layout(model: nn.Module, input_shape: Sequence[int] = (3, 32, 32)) -> ModelLayout:
    """Trace ``model`` and return its prunable channel groups and per-model layers.

    The first conv (it sees the image) and the classifier's outputs are not pruned, so a group
    that contains the first conv's output channels is left whole. Raises :class:`PruneError`
    for unsupported layers and for a model with nothing left to prune.
    """
    check_supported(model)
    with traceable(model):
        device = next(model.parameters(), torch.empty(0)).device
        example = torch.zeros(1, *input_shape, device=device)
        order = _forward_order(model, example)
        if not order:
            raise PruneError(f"{type(model).__name__} has no conv or linear layer to prune")
        classifier = getattr(model, "classifier_name", None) or order[-1]
        first_conv = order[0]
        modules = dict(model.named_modules())
        names = {module: name for name, module in modules.items()}
        try:
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example, verbose=False
            )
            raw_groups = list(
                graph.get_all_groups(
                    ignored_layers=[modules[classifier]], root_module_types=[nn.Conv2d, nn.Linear]
                )
            )
        except (IndexError, KeyError, RuntimeError, TypeError) as exc:
            raise PruneError(
                f"Torch-Pruning cannot trace the channel coupling of {type(model).__name__} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        groups = [_channel_group(g, graph, names, first_conv) for g in raw_groups]
    prunable = tuple(g for g in groups if g is not None and g.size > 1)
    if not prunable:
        raise PruneError(
            f"{type(model).__name__} has no prunable layer: every channel feeds the classifier "
            "directly or comes from the first conv"
        )
    shared = tuple(n for n in order if n not in (first_conv, classifier))
    return ModelLayout(prunable, first_conv, classifier, tuple(dict.fromkeys(shared)))


def _channel_group(group, graph, names: dict[nn.Module, str], first_conv: str):
    """Our view of one Torch-Pruning group, or ``None`` when it must stay whole."""
    mask_points: dict[str, MaskPoint] = {}
    producers: dict[str, MaskPoint] = {}
    for item in group.items:
        module = item.dep.target.module
        if not graph.is_out_channel_pruning_fn(item.dep.handler):
            continue
        name = names.get(module)
        point = MaskPoint(name, torch.tensor(list(item.idxs)), torch.tensor(list(item.root_idxs)))
        if isinstance(module, _NORMS):  # a norm maps a zero channel to its shift: mask after
            mask_points[name] = point
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if name == first_conv:
            return None
        producers[name] = point
        node = graph.module2node[module]
        followed_by_norm = len(node.outputs) == 1 and isinstance(node.outputs[0].module, _NORMS)
        if not followed_by_norm:  # else the norm, a member of this group too, is masked
            mask_points[name] = point
    if not producers:
        return None
    root = names[group.items[0].dep.target.module]
    size = len(group.items[0].idxs)
    return ChannelGroup(root, size, tuple(mask_points.values()), tuple(producers.values()))
