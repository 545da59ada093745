"""The Python API: train a network, or distill a teacher into a student, into a run directory.

>>> import mhkd.api
>>> mhkd.api.train("resnet32", data="digits", epochs=10, out="runs/teacher")
>>> mhkd.api.distill("runs/teacher/checkpoints/best.pt", "resnet8", data="digits",
...                  method="kd", epochs=10, out="runs/kd")

Models are zoo names, checkpoint paths (mhkd's or RepDistiller/mdistiller files) or any
``nn.Module``; data is a data-set name or a :class:`~mhkd.data.DataSplits`. Every other
keyword is a setting named as its command-line flag (``epochs``, ``lr``, ``batch_size``,
``data_dir``, ``train_per_class``, ``teacher_layers``, ``seed``, ``device`` ...), plus
``options={"mhkd": {"beta": 5}}`` and ``weights={"kd": 0.9}``; see :mod:`mhkd.config`.
:func:`run` takes a whole :class:`~mhkd.config.RunConfig` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mhkd import config as cfg
from mhkd import data
from mhkd.pipelines.proxy import run_with_proxy
from mhkd.pipelines.training import load_data as load_run_data
from mhkd.pipelines.training import run_training

Model = str | Path | nn.Module


def run(
    config: cfg.RunConfig,
    out: str | Path | None = None,
    *,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    splits: data.DataSplits | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run ``config`` into ``out``; returns the summary. Modules/splits replace the named ones.

    ``resume`` continues the run in ``out``; ``overwrite`` lets a fresh run replace one there
    (otherwise that is an error).
    """
    options = dict(student=student, teacher=teacher, splits=splits, resume=resume,
                   overwrite=overwrite)  # fmt: skip
    if config.aux.mode != "none":
        return run_with_proxy(config, out, **options)
    return run_training(config, out, **options)


def load_data(dataset: str | data.DataSplits, **settings: Any) -> data.DataSplits:
    """A data set by name, loaded as a run would load it (``data_dir``, ``image_size``,
    ``train_per_class`` ...); splits pass through unchanged."""
    if isinstance(dataset, data.DataSplits):
        return dataset
    return load_run_data(cfg.build(cfg.from_keywords(data=dataset, **settings)))


def configure(
    student: Model,
    dataset: str | data.DataSplits,
    teacher: Model | None = None,
    method: str = "ce",
    **settings: Any,
) -> tuple[cfg.RunConfig, dict[str, Any]]:
    """The run configuration of flat ``settings``, and the modules/splits passed beside it
    (``student=``, ``teacher=``, ``splits=`` for :func:`run` or a ``TrainingRun``)."""
    splits = dataset if isinstance(dataset, data.DataSplits) else None
    tree = cfg.from_keywords(method=method, **settings)
    tree.setdefault("data", {})["name"] = splits.name if splits is not None else dataset
    objects: dict[str, Any] = {"splits": splits}
    for role, model in (("student", student), ("teacher", teacher)):
        if isinstance(model, nn.Module):
            objects[role] = model
        elif model is not None:
            tree.setdefault("models", {})[role] = str(model)
    return cfg.build(tree), objects


def _run(student: Model, dataset: str | data.DataSplits, teacher: Model | None, method: str,
         settings: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    out = settings.pop("out", None)
    resume = settings.pop("resume", False)
    overwrite = settings.pop("overwrite", False)
    config, objects = configure(student, dataset, teacher, method, **settings)
    return run(config, out, resume=resume, overwrite=overwrite, **objects)


def train(model: Model, data: str | data.DataSplits = "digits", **settings: Any) -> dict:
    """Train ``model`` with cross-entropy; returns the run's summary."""
    return _run(model, data, None, "ce", settings)


def distill(
    teacher: Model,
    student: Model,
    data: str | data.DataSplits = "digits",
    method: str = "kd",
    **settings: Any,
) -> dict[str, Any]:
    """Distill ``teacher`` into ``student`` with ``method`` (e.g. ``"kd"``, ``"crd+mhkd"``)."""
    return _run(student, data, teacher, method, settings)
