"""Helpers shared by the loss modules."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable)


def constant(x: Tensor) -> Tensor:
    """A teacher-side tensor as a constant: detached, so no gradient flows into it.

    Tensors made under ``torch.inference_mode`` cannot be saved for backward, so those are
    copied into ordinary tensors first.
    """
    x = x.detach()
    return x.clone() if x.is_inference() else x


def target(x: Tensor) -> Tensor:
    """A teacher-side tensor as a constant float32 target (see :func:`constant`)."""
    return constant(x).float()


def flat_features(x: Tensor) -> Tensor:
    """``(B, D)`` features: 2-D as they are, feature maps globally average-pooled."""
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    return x.flatten(1)


def float32_math(fn: F) -> F:
    """Run ``fn`` with autocast off, so its matrix products stay in float32 under bf16/fp16
    autocast (casting the inputs with ``.float()`` alone does not stop autocast from casting
    a matmul's operands back down)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        if not torch.is_autocast_enabled(device):
            return fn(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
