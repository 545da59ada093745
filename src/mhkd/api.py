"""The Python API: train a network, or distill a teacher into a student, into a run directory.

>>> import mhkd
>>> mhkd.train("resnet32", data="digits", epochs=10, out="runs/teacher")
>>> mhkd.distill("runs/teacher/checkpoints/best.pt", "resnet8", data="digits",
...              method="kd", epochs=10, out="runs/kd")

Models are zoo names, checkpoint paths or any ``nn.Module``; user models name the layers a
method taps with ``teacher_layers``/``student_layers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from mhkd import checkpoint, data, models
from mhkd.models.complexity import profile
from mhkd.tensorboard import TensorBoardLogger
from mhkd.train import TrainConfig, Trainer, set_seed


def load_data(dataset: str | data.DataSplits, data_dir: str | Path | None = None, **options):
    """A data set by name (see :func:`mhkd.data.available`), or a ``DataSplits`` as given."""
    if isinstance(dataset, data.DataSplits):
        return dataset
    return data.load(dataset, root=data_dir, **options)


def load_model(model: str | Path | nn.Module, num_classes: int) -> nn.Module:
    """A zoo name (built fresh), a checkpoint path (rebuilt with its weights) or a module."""
    if isinstance(model, nn.Module):
        return model
    text = str(model)
    if text.endswith(".pt") or Path(text).is_file():
        return checkpoint.build_model(checkpoint.load(text), text)
    return models.create(text, num_classes=num_classes)


def trainer(
    student: str | Path | nn.Module,
    data: str | data.DataSplits = "digits",
    *,
    teacher: str | Path | nn.Module | None = None,
    method: str = "ce",
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    resume: bool = False,
    teacher_layers: Sequence[str] | None = None,
    student_layers: Sequence[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    extra_config: dict[str, Any] | None = None,
    tensorboard: bool = False,
    overwrite: bool = False,
    **config: Any,
) -> Trainer:
    """Build a :class:`~mhkd.train.Trainer` (resumed from ``out`` when ``resume``).

    ``tensorboard`` logs every epoch to ``out/tensorboard/`` as well; ``overwrite`` lets a fresh
    run replace a finished or killed one in ``out`` (otherwise that is an error).
    """
    splits = load_data(data, data_dir)
    set_seed(config.get("seed", 0))  # zoo models are initialised from the run's seed
    student_model = load_model(student, splits.num_classes)
    teacher_model = load_model(teacher, splits.num_classes) if teacher is not None else None
    if tensorboard and out is None:
        raise ValueError("tensorboard logging needs the run directory (out)")
    run = Trainer(
        student_model,
        splits,
        TrainConfig(method=method, **config),
        out=out,
        teacher=teacher_model,
        teacher_layers=teacher_layers,
        student_layers=student_layers,
        method_options=options,
        extra_config={
            "teacher": _describe(teacher_model),
            "teacher_checkpoint": str(teacher) if isinstance(teacher, (str, Path)) else None,
            "student": _describe(student_model),
            **_teacher_size(teacher_model, splits),
            **(extra_config or {}),
        },
        loggers=[TensorBoardLogger(Path(out) / "tensorboard")] if tensorboard else [],
        overwrite=overwrite,
    )
    if resume:
        if out is None:
            raise ValueError("resume needs the run directory (out)")
        run.resume()
    return run


def train(model: str | Path | nn.Module, data: str | data.DataSplits = "digits", **kwargs: Any):
    """Train ``model`` with cross-entropy; returns the run's summary."""
    return trainer(model, data, method="ce", **kwargs).fit()


def distill(
    teacher: str | Path | nn.Module,
    student: str | Path | nn.Module,
    data: str | data.DataSplits = "digits",
    method: str = "kd",
    **kwargs: Any,
) -> dict[str, Any]:
    """Distill ``teacher`` into ``student`` with ``method`` (e.g. ``"kd"``, ``"crd+mhkd"``)."""
    return trainer(student, data, teacher=teacher, method=method, **kwargs).fit()


def _teacher_size(teacher: nn.Module | None, splits: data.DataSplits) -> dict[str, Any]:
    """The teacher's params and MACs, so a report can state compression without its run."""
    if teacher is None:
        return {}
    sizes = profile(teacher, tuple(splits.train.images.shape[1:]))
    return {"teacher_params": sizes["params"], "teacher_macs": sizes["macs"]}


def _describe(model: nn.Module | None) -> str | None:
    """The zoo name of ``model``, or its class name for a user's module."""
    if model is None:
        return None
    spec = checkpoint.model_spec(model)
    return spec["name"] if spec else type(model).__name__
