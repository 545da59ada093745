"""Name -> factory registry for the model zoo (timm-style: one ``create`` for every model)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from mhkd.models.resize import resize

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}

# The zoo's naming generation, stored in every spec. Generation 1 (specs without "zoo") named
# the CIFAR ResNet-50 "resnet50", the name torchvision's ImageNet network has now.
ZOO_VERSION = 2
_RENAMED_SINCE_V1 = {"resnet50": "resnet50_cifar"}


def register(factory: Factory) -> Factory:
    """Register ``factory`` under its lower-cased function name so ``create`` can find it."""
    name = factory.__name__.lower()
    if name in _FACTORIES:
        raise ValueError(f"model {name!r} is registered twice")
    _FACTORIES[name] = factory
    return factory


def available() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_FACTORIES)


def create(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build the zoo model ``name`` (case-insensitive); ``kwargs`` go to its factory.

    ``num_classes`` defaults to the network's own: 100 for the CIFAR zoo, 1000 for ImageNet.
    """
    factory = _FACTORIES.get(name.lower())
    if factory is None:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(available())}")
    if num_classes is None:
        num_classes = inspect.signature(factory).parameters["num_classes"].default
    model = factory(num_classes=num_classes, **kwargs)
    # How to rebuild it: checkpoints store this so `mhkd eval` needs no code from the user.
    model.zoo_spec = {
        "name": name.lower(),
        "num_classes": num_classes,
        "kwargs": dict(kwargs),
        "zoo": ZOO_VERSION,
    }
    return model


def from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model (weights not loaded) from the ``zoo_spec`` a checkpoint recorded.

    A spec with ``pruned_channels`` gets those layer sizes; a spec from before ``"zoo"`` was
    recorded uses that generation's names.
    """
    name = spec["name"]
    if "zoo" not in spec:
        name = _RENAMED_SINCE_V1.get(name, name)
    model = create(name, spec["num_classes"], **spec.get("kwargs", {}))
    pruned = spec.get("pruned_channels")
    return resize(model, pruned) if pruned else model
