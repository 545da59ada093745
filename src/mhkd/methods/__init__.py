"""Distillation methods, one file each, registered by name; ``"a+b"`` composes them."""

from mhkd.methods import (
    infoflow,  # noqa: F401  (registers the method)
    kd,  # noqa: F401  (registers the method)
    mhkd,  # noqa: F401  (registers mhkd and ohkd)
)
from mhkd.methods.base import (
    Method,
    MethodContext,
    MethodSet,
    ModelOutput,
    available,
    register,
)

__all__ = ["Method", "MethodContext", "MethodSet", "ModelOutput", "available", "register"]
