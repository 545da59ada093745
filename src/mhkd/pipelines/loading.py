"""What a run is built from: the data set and the models a configuration names, loaded and
checked against each other (the classifier's classes, one logits tensor per batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mhkd import checkpoint, data, models
from mhkd.config import RunConfig


def load_data(config: RunConfig) -> data.DataSplits:
    """The data set the configuration names (subset, image size and streaming applied)."""
    d = config.data
    options: dict[str, Any] = {}
    if d.image_size is not None:
        options["image_size"] = d.image_size
    if d.train_per_class is not None:
        options["train_per_class"] = d.train_per_class
        options["subset_seed"] = config.runtime.seed
    if d.streaming is not None:
        options["streaming"] = d.streaming
    if d.skip_bad_images:
        options["skip_bad"] = True
    return data.load(d.name, root=d.dir, **options)


def load_model(
    model: str | Path | nn.Module,
    num_classes: int,
    arch: str | None = None,
    trained: str | None = None,
) -> nn.Module:
    """A module as given, a checkpoint (mhkd's or a foreign one) with its weights, or a fresh
    zoo model by name. ``trained`` (the flag, e.g. ``--teacher``) refuses a name: a teacher
    must have learnt something, and a zoo name would silently give random weights."""
    if isinstance(model, nn.Module):
        return model
    text = str(model)
    if text.endswith((".pt", ".pth", ".tar")) or Path(text).is_file():
        return checkpoint.load_model(text, arch=arch)[0]
    if trained:
        hint = f" (train it first: mhkd train --model {text})" if text in models.available() else ""
        raise ValueError(f"{trained} {text} is not a checkpoint file: it must be trained{hint}")
    return models.create(text, num_classes=num_classes)


def classifier_outputs(model: nn.Module) -> int | None:
    """How many classes ``model`` predicts: its declared classifier's, else its last linear
    layer's outputs (``None`` when it has no linear layer)."""
    name = getattr(model, "classifier_name", None)
    if name:
        return dict(model.named_modules())[name].out_features
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def check_classes(model: nn.Module, num_classes: int, role: str) -> None:
    """Refuse a model whose classifier predicts another number of classes than the data has."""
    outputs = classifier_outputs(model)
    if outputs is not None and outputs != num_classes:
        raise ValueError(
            f"the {role} predicts {outputs} classes but the data set has {num_classes}"
        )


@torch.no_grad()
def check_output(model: nn.Module, role: str, shape: tuple[int, ...], num_classes: int) -> None:
    """A dry run (batch of 2, eval mode): the model must return one logits tensor 2×classes.

    A module returning a tuple or a dict (logits and features) would otherwise fail deep in
    a loss; methods tap intermediate layers by name, so the model returns logits only.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, *shape, device=device))
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the {role} ({type(model).__name__}) must return one logits tensor of shape "
            f"batch × {num_classes} classes, but returned a {got}; return the logits only "
            "(methods tap the layers they need by name: teacher_layers/student_layers)"
        )


def describe(model: nn.Module | None) -> str | None:
    """The zoo name of ``model``, or its class name for a user's module."""
    if model is None:
        return None
    spec = checkpoint.model_spec(model)
    return spec["name"] if spec else type(model).__name__


def deployable_state(model: nn.Module, **fields: Any) -> dict[str, Any]:
    """A model file (:data:`~mhkd.checkpoint.MODEL_FORMAT`): the bare model and ``fields``."""
    return {
        "format": checkpoint.MODEL_FORMAT,
        "arch": checkpoint.model_spec(model),
        "model": model.state_dict(),
        **fields,
    }
