"""Giving a network the channel counts a pruned copy of it recorded.

Pruning (``mhkd.prune``) removes channels and records the sizes that changed as
``pruned_channels``: ``{layer name: [in, out, groups] | [in, out] | [features]}``. Rebuilding
such a network needs only these sizes, so it lives with the models and knows nothing of
pruning: build the dense zoo network, then replace the named layers by fresh ones.
"""

from __future__ import annotations

from torch import nn


def _channel_shape(module: nn.Module) -> list[int] | None:
    if isinstance(module, nn.Conv2d):
        return [module.in_channels, module.out_channels, module.groups]
    if isinstance(module, nn.Linear):
        return [module.in_features, module.out_features]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return [module.num_features]
    return None


def channel_shapes(model: nn.Module) -> dict[str, list[int]]:
    """The channel sizes pruning can change, by layer name: conv ``[in, out, groups]``,
    linear ``[in, out]``, BatchNorm ``[features]``."""
    return {n: s for n, m in model.named_modules() if (s := _channel_shape(m)) is not None}


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
    changed in place and returned, with ``pruned_channels`` recorded on it and, for a zoo
    model, in its ``zoo_spec`` so a checkpoint of it can be rebuilt.
    """
    for name, shape in pruned_channels.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _resized(getattr(parent, child), list(shape)))
    model.pruned_channels = dict(pruned_channels)
    spec = getattr(model, "zoo_spec", None)
    if spec:
        model.zoo_spec = {**spec, "pruned_channels": dict(pruned_channels)}
    return model
