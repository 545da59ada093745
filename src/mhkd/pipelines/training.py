"""One training run from a :class:`~mhkd.config.RunConfig`: teacher training or distillation.

Resolves the tree into objects — data, models, methods, loaders, the distillation step and
the run directory — and drives :class:`~mhkd.loop.EpochLoop`. Every other pipeline (proxy
teacher, pruning, quickstart) is built from runs of this kind or of the same loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mhkd import checkpoint, data, distributed, hardware, models
from mhkd.config import RunConfig, resolved_tree
from mhkd.distill import DistillStep, input_shape
from mhkd.loop import EpochLoop, set_seed
from mhkd.methods import MethodContext, MethodSet
from mhkd.models.complexity import profile
from mhkd.rundir import RunDirectory
from mhkd.tensorboard import TensorBoardLogger


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


def resolve_device(name: str | None) -> torch.device:
    """``--device`` as a torch device, refused in one line when this machine lacks it."""
    try:
        device = torch.device(name) if name else None
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device")
    count = torch.cuda.device_count()
    if device is not None and device.type == "cuda" and (device.index or 0) >= count:
        raise ValueError(f"--device {name}: this machine has {count} CUDA device(s)")
    return distributed.setup(device) or hardware.default_device()


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


def build_methods(
    config: RunConfig, ctx: MethodContext, device: torch.device
) -> tuple[MethodSet, dict[str, float]]:
    """The run's methods on ``device`` and the weight of every loss term: the methods'
    defaults, then ``--weight``, whose names must be terms the methods return."""
    methods = MethodSet(config.method, ctx, config.options).to(device)
    unknown = sorted(set(config.weights) - set(methods.weights))
    if unknown:
        raise ValueError(
            f"--weight names unknown loss term(s) {', '.join(unknown)}; "
            f"terms are {', '.join(methods.weights)}"
        )
    return methods, {**methods.weights, **config.weights}


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


class TrainingRun:
    """A built run: call :meth:`fit` (after :meth:`resume` to continue one)."""

    def __init__(
        self,
        config: RunConfig,
        out: str | Path | None = None,
        *,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
        splits: data.DataSplits | None = None,
        overwrite: bool = False,
        resume: bool = False,
        loggers: Sequence[Callable[[dict[str, Any]], None]] = (),
        extra_config: dict[str, Any] | None = None,
    ):
        self.config = config
        rt = config.runtime
        self.device = resolve_device(rt.device)
        rank, world = distributed.world()
        if config.optim.batch_size % world:
            raise ValueError(
                f"--batch-size {config.optim.batch_size} does not split evenly over {world} "
                "processes"
            )
        self.run = RunDirectory(out, writes=rank == 0) if out is not None else None
        self.resuming = resume
        if self.run is not None:
            self.run.claim(overwrite=overwrite, resume=resume)
        try:
            if resume:
                if self.run is None:
                    raise ValueError("--resume needs the run directory (out)")
                self.run.check_resumable()
            self._build(student, teacher, splits, loggers, extra_config or {})
            if resume:
                self.loop.resume()
        except BaseException:
            self.close()
            raise

    def _build(self, student, teacher, splits, loggers, extra_config) -> None:
        config, rt = self.config, self.config.runtime
        self.splits = splits if splits is not None else load_data(config)
        num_classes = self.splits.num_classes
        set_seed(rt.seed)  # zoo models are initialised from the run's seed
        student = load_model(student if student is not None else config.models.student, num_classes)
        teacher_source = teacher if teacher is not None else config.models.teacher
        teacher = (
            load_model(teacher_source, num_classes, config.models.teacher_arch, "--teacher")
            if teacher_source is not None
            else None
        )
        shape = input_shape(self.splits)
        for model, role in ((student, "student"), (teacher, "teacher")):
            if model is not None:
                check_classes(model, num_classes, role)
                check_output(model, role, shape, num_classes)
        precision = hardware.resolve_precision(rt.precision, self.device)
        channels_last = hardware.resolve_channels_last(rt.channels_last, self.device, precision)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        set_seed(rt.seed)
        student = student.to(self.device, memory_format=layout)
        if teacher is not None:
            teacher.to(self.device, memory_format=layout).eval().requires_grad_(False)
        if rt.compile:  # in place: state-dict keys and forward hooks stay as they are
            for model in (student, teacher):
                if model is not None:
                    model.compile()
        ctx = MethodContext(
            student=student,
            teacher=teacher,
            num_classes=num_classes,
            num_samples=self.splits.num_train
            if hasattr(self.splits, "num_train")
            else len(self.splits.train.labels),
            epochs=config.schedule.epochs,
            input_shape=shape,
            teacher_layers=config.models.teacher_layers,
            student_layers=config.models.student_layers,
        )
        methods, weights = build_methods(config, ctx, self.device)
        rank, world = distributed.world()
        loader_options = {"workers": config.data.workers} if config.data.workers else {}
        train_loader, test_loader = data.make_loaders(
            self.splits, config.optim.batch_size // world, device=self.device, seed=rt.seed,
            rank=rank, world_size=world, channels_last=channels_last,
            eval_batch_size=config.optim.eval_batch_size, augment=config.data.augment,
            **loader_options,
        )  # fmt: skip
        step = DistillStep(
            student, methods, teacher, config.optim, config.schedule, rt, self.device, weights,
            train_loader, self.splits,
        )  # fmt: skip
        teacher_facts = {}
        if teacher is not None:
            sizes = profile(teacher, shape)
            teacher_facts = {"teacher_params": sizes["params"], "teacher_macs": sizes["macs"]}
        facts = {
            "model": describe(student),
            "teacher": describe(teacher),
            "method": config.method,
            "data": self.splits.name,
            "num_classes": num_classes,
            "seed": rt.seed,
            "channels_last": channels_last,
            **teacher_facts,
            **extra_config,
        }
        if self.run is not None:
            resolved = resolved_tree(config)  # what --print-config shows, and the facts:
            resolved["resolved"] = {
                "device": str(self.device),
                "precision": precision,
                "channels_last": channels_last,
                "world_size": world,
                "teacher": describe(teacher),
                "student": describe(student),
                "num_classes": num_classes,
            }
            resolved.update(extra_config)
            self.run.record_config(resolved, resume=self.resuming)
        loggers = list(loggers)
        if rt.tensorboard:
            if self.run is None:
                raise ValueError("--tensorboard needs a run directory (out)")
            loggers.append(TensorBoardLogger(self.run.path("tensorboard")))
        identity = {"method": config.method, "data": self.splits.name, "model": describe(student)}
        self.loop = EpochLoop(
            step, train_loader, test_loader, config.schedule.epochs, self.run, identity,
            loggers, rt.quiet, facts=facts,
        )  # fmt: skip
        self.step = step

    @property
    def student(self) -> nn.Module:
        return self.step.student

    def fit(self) -> dict[str, Any]:
        try:
            return self.loop.fit()
        finally:
            self.close()

    def close(self) -> None:
        if self.run is not None:
            self.run.close()


def run_training(config: RunConfig, out: str | Path | None = None, **options: Any) -> dict:
    """Build and fit one run; returns its summary (see :class:`TrainingRun` for ``options``)."""
    with contextlib.closing(TrainingRun(config, out, **options)) as run:
        return run.fit()
