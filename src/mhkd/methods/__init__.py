"""Distillation methods, one file each, registered by name; ``"a+b"`` composes them."""

from mhkd.methods import (
    ab,  # noqa: F401  (registers the method)
    at,  # noqa: F401  (registers the method)
    cc,  # noqa: F401  (registers the method)
    crd,  # noqa: F401  (registers the method)
    dkd,  # noqa: F401  (registers the method)
    fitnet,  # noqa: F401  (registers the method)
    fsp,  # noqa: F401  (registers the method)
    ft,  # noqa: F401  (registers the method)
    infoflow,  # noqa: F401  (registers the method)
    kd,  # noqa: F401  (registers the method)
    kdsvd,  # noqa: F401  (registers the method)
    mhkd,  # noqa: F401  (registers mhkd and ohkd)
    nst,  # noqa: F401  (registers the method)
    ofd,  # noqa: F401  (registers the method)
    pkt,  # noqa: F401  (registers the method)
    reviewkd,  # noqa: F401  (registers the method)
    rkd,  # noqa: F401  (registers the method)
    sp,  # noqa: F401  (registers the method)
    vid,  # noqa: F401  (registers the method)
)
from mhkd.methods.base import (
    Method,
    MethodContext,
    MethodSet,
    ModelOutput,
    NoOptions,
    Prefit,
    TeacherUse,
    Trained,
    available,
    method_class,
    register,
    registered,
)

__all__ = [
    "Method",
    "MethodContext",
    "MethodSet",
    "ModelOutput",
    "NoOptions",
    "Prefit",
    "TeacherUse",
    "Trained",
    "available",
    "method_class",
    "register",
    "registered",
]
