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
:func:`run` takes a whole :class:`~mhkd.config.RunConfig` instead. :func:`loss_terms` shows
what the first training step of a configuration computes, term by term.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mhkd import config as cfg
from mhkd import data, pipelines
from mhkd.data.batch import Batch
from mhkd.distill import DistillForward
from mhkd.loop import set_seed, weighted_sum
from mhkd.methods import MethodContext
from mhkd.pipelines.builder import build_methods
from mhkd.pipelines.loading import check_classes, classifier_outputs, load_model
from mhkd.pipelines.loading import load_data as load_run_data

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
    (otherwise that is an error). A configuration a pipeline takes (a proxy teacher, a
    pre-training stage, pruning) runs through it (:mod:`mhkd.pipelines.registry`).
    """
    return pipelines.run(config, out, student=student, teacher=teacher, splits=splits,
                         resume=resume, overwrite=overwrite)  # fmt: skip


def load_data(dataset: str | data.DataSplits, **settings: Any) -> data.DataSplits:
    """A data set by name, loaded as a run would load it (``data_dir``, ``image_size``,
    ``train_per_class`` ...); splits pass through unchanged."""
    if isinstance(dataset, data.DataSplits):
        return dataset
    return load_run_data(pipelines.build_config(cfg.from_keywords(data=dataset, **settings)))


def configure(
    student: Model,
    dataset: str | data.DataSplits,
    teacher: Model | None = None,
    method: str = "ce",
    **settings: Any,
) -> tuple[cfg.RunConfig, dict[str, Any]]:
    """The run configuration of flat ``settings``, and the modules/splits passed beside it
    (``student=``, ``teacher=``, ``splits=`` for :func:`run` or a ``Run``)."""
    splits = dataset if isinstance(dataset, data.DataSplits) else None
    tree = cfg.from_keywords(method=method, **settings)
    tree.setdefault("data", {})["name"] = splits.name if splits is not None else dataset
    objects: dict[str, Any] = {"splits": splits}
    for role, model in (("student", student), ("teacher", teacher)):
        if isinstance(model, nn.Module):
            objects[role] = model
        elif model is not None:
            tree.setdefault("models", {})[role] = str(model)
    return pipelines.build_config(tree), objects


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


def loss_terms(
    config: cfg.RunConfig | str | Path,
    *,
    teacher: Model | None = None,
    student: Model | None = None,
    images: Tensor,
    labels: Tensor,
    indices: Tensor | None = None,
    num_classes: int | None = None,
    num_samples: int | None = None,
) -> dict[str, Tensor]:
    """Every weighted loss term of ``config``'s first training step on one batch, and
    ``"total"``, the objective that step back-propagates (the graph is attached).

    ``config`` is a recipe file or a :class:`~mhkd.config.RunConfig`; ``teacher`` and
    ``student`` default to the models it names (checkpoint paths, mhkd's or foreign, zoo names
    or modules). A zoo student and the methods' trainable extras are initialised from the
    configuration's seed exactly as a run initialises them. ``images`` are already normalised;
    they run in float32 without augmentation, the student in train mode, the teacher in eval
    mode, on the images' device. ``indices`` are the samples' positions in the training set
    (CRD's memory bank; default ``0..n-1``), ``num_samples`` its size (default: enough to hold
    them), ``num_classes`` is needed only when no model says it. One-off preparation a method
    does before the first epoch (MHKD's ``--mhkd.head-mode prefit``) is not run.
    """
    if not isinstance(config, cfg.RunConfig):
        config = pipelines.read_recipe(config)[0]
    device = images.device
    if indices is None:
        indices = torch.arange(len(labels), device=device)
    teacher_model, student_model = _step_models(config, teacher, student, num_classes, device)
    num_classes = classifier_outputs(student_model) or num_classes
    if num_classes is None:
        raise ValueError("loss_terms: the student does not say how many classes; pass num_classes")
    ctx = MethodContext(
        student=student_model, teacher=teacher_model, num_classes=num_classes,
        num_samples=num_samples or int(indices.max()) + 1, epochs=config.schedule.epochs,
        input_shape=tuple(images.shape[1:]), teacher_layers=config.models.teacher_layers,
        student_layers=config.models.student_layers,
    )  # fmt: skip
    methods, weights = build_methods(config, ctx, device)
    methods.train()
    methods.start_epoch(0)
    forward = DistillForward(student_model, methods, teacher_model)
    try:
        _, terms = forward(Batch(images.float(), labels, indices))
    finally:
        forward.close()
    weighted = {name: weights[name] * value for name, value in terms.items()}
    return {**weighted, "total": weighted_sum(terms, weights)}


def _step_models(
    config: cfg.RunConfig,
    teacher: Model | None,
    student: Model | None,
    num_classes: int | None,
    device: torch.device,
) -> tuple[nn.Module | None, nn.Module]:
    """Teacher (eval, frozen) and student (train) of :func:`loss_terms`; the zoo student is
    built from the seed as a run builds it, its class count taken from the teacher if unset."""
    source = teacher if teacher is not None else config.models.teacher
    teacher_model = None
    if source is not None:
        if num_classes is None and not isinstance(source, nn.Module) and _is_zoo_name(source):
            raise ValueError(f"loss_terms: teacher {source!r} is a zoo name; pass num_classes")
        teacher_model = load_model(source, num_classes or 0, config.models.teacher_arch)
        num_classes = num_classes or classifier_outputs(teacher_model)
    student = student if student is not None else config.models.student
    if num_classes is None and not isinstance(student, nn.Module):
        raise ValueError("loss_terms: no model says how many classes; pass num_classes")
    set_seed(config.runtime.seed)  # a run seeds, builds the student, then seeds again
    student_model = load_model(student, num_classes or 0)
    for model, role in ((student_model, "student"), (teacher_model, "teacher")):
        if model is not None and num_classes is not None:
            check_classes(model, num_classes, role)
    set_seed(config.runtime.seed)
    student_model.to(device).float().train()
    if teacher_model is not None:
        teacher_model.to(device).float().eval().requires_grad_(False)
    return teacher_model, student_model


def _is_zoo_name(model: str | Path) -> bool:
    text = str(model)
    return not (text.endswith((".pt", ".pth", ".tar")) or Path(text).is_file())
