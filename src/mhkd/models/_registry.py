"""Name -> factory registry for the model zoo (timm-style: one ``create`` for every model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


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


def create(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    """Build the zoo model ``name`` (case-insensitive); ``kwargs`` go to its factory."""
    factory = _FACTORIES.get(name.lower())
    if factory is None:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(available())}")
    model = factory(num_classes=num_classes, **kwargs)
    # How to rebuild it: checkpoints store this so `mhkd eval` needs no code from the user.
    model.zoo_spec = {"name": name.lower(), "num_classes": num_classes, "kwargs": dict(kwargs)}
    return model


def from_spec(spec: dict) -> nn.Module:
    """Rebuild a model from the ``zoo_spec`` a checkpoint recorded (pruned ones too)."""
    if spec.get("pruned_channels"):
        from mhkd.prune.export import rebuild

        return rebuild(spec)
    return create(spec["name"], spec["num_classes"], **spec.get("kwargs", {}))
