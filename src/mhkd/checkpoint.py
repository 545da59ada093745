"""Checkpoints: written atomically, read without unpickling arbitrary objects."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or does not fit what it is used for."""


def save(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename.

    A run killed mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; any failure is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an mhkd checkpoint (no 'model' entry)")
    return state


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """How to rebuild ``model`` from the zoo, or ``None`` for a user's own module."""
    spec = getattr(model, "zoo_spec", None)
    return dict(spec) if spec else None


def build_model(state: dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the network a checkpoint describes and load its weights."""
    from mhkd import models

    spec = state.get("arch")
    if not spec:
        raise CheckpointError(
            f"{path} holds a user model's weights without an architecture; "
            "load it into your own module with the Python API"
        )
    try:
        model = models.from_spec(spec)
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: cannot rebuild its model: {str(exc).splitlines()[0]}"
        ) from None
    return model
