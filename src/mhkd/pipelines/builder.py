"""The one run builder: every run of the project is assembled here, once.

:func:`build_run` turns a configuration into a :class:`Run` — hardware (device, precision,
channels_last), seeding, data and rank-aware loaders, the student and the teacher, the run
directory's claim, ``config.yaml``, the summary's facts, loggers and the epoch loop — and asks
a **step factory** for the one thing that differs between runs: what a training step does.
The factory receives :class:`RunParts` (the models placed on the device, the loaders, the
optimiser factory, the data-parallel wrapper) and returns a :class:`~mhkd.loop.Step`.

Training and distillation use :func:`distill_step` (the default); pruning's cascade, the
pre-training stages, the proxy teacher's stages, quantization-aware fine-tuning and the
quickstart's runs are all built here with their own factory or settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mhkd import data, distributed, hardware, optim
from mhkd.config import (
    ConfigError,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    resolved_tree,
)
from mhkd.distill import DistillForward, DistillStep, PrefitStep, input_shape
from mhkd.loop import EpochLoop, Step, set_seed
from mhkd.methods import MethodContext, MethodSet, Prefit, TeacherUse, Trained
from mhkd.models.complexity import profile
from mhkd.pipelines.loading import (
    check_classes,
    check_output,
    describe,
    load_data,
    load_model,
)
from mhkd.rundir import RunDirectory
from mhkd.teacher_cache import TeacherCache, build_cache, cached_outputs, open_cache
from mhkd.tensorboard import TensorBoardLogger

Logger = Callable[[dict[str, Any]], None]


# ---- hardware -----------------------------------------------------------------------------------
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


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Where and how a run computes: the device, the precision and the memory layout."""

    device: torch.device
    precision: str
    channels_last: bool

    @classmethod
    def resolve(cls, runtime: Any) -> Hardware:
        device = resolve_device(runtime.device)
        precision = hardware.resolve_precision(runtime.precision, device)
        return cls(device, precision, hardware.resolve_channels_last(
            runtime.channels_last, device, precision))  # fmt: skip

    @property
    def layout(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def facts(self) -> dict[str, Any]:
        """What ``config.yaml`` records under ``resolved``."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "world_size": distributed.world()[1],
        }


# ---- what a step is built from ------------------------------------------------------------------
@dataclasses.dataclass
class RunParts:
    """Everything a step factory builds its step from; the models are on the device already
    (the teacher frozen in eval mode)."""

    config: Any
    hardware: Hardware
    splits: Any
    student: nn.Module
    teacher: nn.Module | None
    train_loader: Any
    test_loader: Any

    @property
    def input_shape(self) -> tuple[int, ...]:
        return input_shape(self.splits)

    @property
    def num_samples(self) -> int:
        splits = self.splits
        return splits.num_train if hasattr(splits, "num_train") else len(splits.train.labels)

    def optimizer(
        self,
        params: Iterable[nn.Parameter],
        optim_config: OptimConfig | None = None,
        schedule: ScheduleConfig | None = None,
    ) -> tuple[torch.optim.SGD, optim.Scheduler]:
        """The one optimiser factory, on the run's settings unless others are given."""
        return optim.sgd(params, optim_config or self.config.optim,
                         schedule or self.config.schedule)  # fmt: skip

    def distributed(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped for data-parallel training when torchrun runs several processes.

        Buffers stay per rank: methods with data-set-wide state (CRD's memory banks)
        synchronise it themselves, and broadcasting them every step would be costly.
        """
        if distributed.world()[1] == 1:
            return module
        device = self.hardware.device
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[device] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )  # fmt: skip


StepFactory = Callable[[RunParts], Step]


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


def method_context(config: RunConfig, parts: RunParts) -> MethodContext:
    """What the run's methods may look at when they build their extras."""
    return MethodContext(
        student=parts.student, teacher=parts.teacher, num_classes=parts.splits.num_classes,
        num_samples=parts.num_samples, epochs=config.schedule.epochs,
        input_shape=parts.input_shape, teacher_layers=config.models.teacher_layers,
        student_layers=config.models.student_layers,
    )  # fmt: skip


def distill_step(parts: RunParts) -> DistillStep:
    """Training or distillation: cross-entropy and the configured methods (the default)."""
    config, hw = parts.config, parts.hardware
    methods, weights = build_methods(config, method_context(config, parts), hw.device)
    if methods.teacher_use > TeacherUse.NONE and parts.teacher is None:
        raise ValueError(f"method {methods.spec!r} needs a teacher (--teacher)")
    forward = DistillForward(parts.student, methods, parts.teacher)
    optimizer, scheduler = parts.optimizer(p for p in forward.parameters() if p.requires_grad)
    cache = (lambda: teacher_cache(parts, methods)) if config.runtime.teacher_cache else None

    def prefit() -> None:  # fresh runs, before the first epoch
        for stage in methods.prefits():
            fit_prefit(stage, parts.teacher, parts.train_loader, parts.test_loader,
                       parts.config.runtime.quiet)  # fmt: skip

    trained = Trained(parts.student, parts.splits, hw.device, hw.precision,
                      config.optim.batch_size // distributed.world()[1], hw.channels_last)
    return DistillStep(
        forward, optimizer=optimizer, scheduler=scheduler, weights=weights, trained=trained,
        wrapped=parts.distributed(forward), open_cache=cache, prefit=prefit,
    )  # fmt: skip


#: How a method's pre-fit trains (MHKD's teacher heads): SGD with momentum, weight decay,
#: cosine over its epochs; only the learning rate and the epochs are the method's options.
PREFIT_OPTIM = OptimConfig(momentum=0.9, weight_decay=5e-4)


def fit_prefit(prefit: Prefit, teacher: nn.Module, train_loader: Any, test_loader: Any,
               quiet: bool = True) -> None:  # fmt: skip
    """A method's pre-fit as a loop of its own over the run's loaders, on the frozen teacher
    (no run directory: it is the run's preparation, redone if the run is started again)."""
    optimizer, scheduler = optim.sgd(
        prefit.module.parameters(), dataclasses.replace(PREFIT_OPTIM, lr=prefit.lr),
        ScheduleConfig(prefit.epochs, "cosine"),
    )  # fmt: skip
    step = PrefitStep(prefit, teacher, optimizer, scheduler)
    loop = EpochLoop(step, train_loader, test_loader, prefit.epochs, quiet=quiet,
                     label=f"{prefit.name}: pre-fit epoch")  # fmt: skip
    try:
        loop.train()
    finally:
        step.close()
    prefit.finished(step.train_accuracies())


def teacher_cache(parts: RunParts, methods: MethodSet) -> TeacherCache:
    """The run's teacher cache, built by rank 0 on first use, then opened by every rank."""
    runtime, teacher, splits = parts.config.runtime, parts.teacher, parts.splits
    if teacher is None:
        raise ValueError("--teacher-cache needs a teacher")
    outputs = cached_outputs(methods)  # refuses methods that read live features
    if not getattr(splits, "resident", True):
        raise ValueError(
            "--teacher-cache needs a data set held in memory: a streamed set's random "
            "resized crops are not a finite set of views"
        )
    root, device = Path(runtime.teacher_cache), parts.hardware.device
    if distributed.world()[0] == 0 and not (root / "meta.json").is_file():
        build_cache(
            root, teacher, splits, device, outputs=outputs, augment=parts.config.data.augment,
            topk=runtime.teacher_cache_topk, precision=parts.hardware.precision,
            channels_last=parts.hardware.channels_last, quiet=runtime.quiet,
        )  # fmt: skip
    distributed.barrier()
    cache = open_cache(root, teacher, splits, device, runtime.teacher_cache_mmap, outputs=outputs)
    if cache.meta["topk"] != runtime.teacher_cache_topk:
        raise ValueError(
            f"teacher cache {root} keeps top-{cache.meta['topk']} logits, "
            f"not top-{runtime.teacher_cache_topk}"
        )
    return cache


# ---- the run ------------------------------------------------------------------------------------
class Run:
    """A built run: :meth:`fit` trains the epochs left and closes it; :attr:`student` is the
    trained student. Use it as a context manager (or call :meth:`close`) when not fitting, so
    the run directory's lock is released."""

    def __init__(self, parts: RunParts, step: Step | None, loop: EpochLoop | None,
                 directory: RunDirectory | None):  # fmt: skip
        self.parts, self.step, self.loop, self.directory = parts, step, loop, directory

    @property
    def config(self) -> Any:
        return self.parts.config

    @property
    def student(self) -> nn.Module:
        return self.parts.student

    @property
    def splits(self) -> Any:
        return self.parts.splits

    @property
    def device(self) -> torch.device:
        return self.parts.hardware.device

    def fit(self) -> dict[str, Any]:
        try:
            self.summary = self.loop.fit()
            return self.summary
        finally:
            self.close()

    def close(self) -> None:
        close = getattr(self.step, "close", None)
        if close is not None:
            close()
        if self.directory is not None:
            self.directory.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def claim(
    out: str | Path | None, *, overwrite: bool = False, resume: bool = False, check: bool = True
) -> RunDirectory | None:
    """The run directory ``out`` claimed by this process (rank 0 writes), or ``None``;
    ``resume`` keeps what is there and (with ``check``) needs a ``last.pt`` to continue."""
    if out is None:
        return None
    directory = RunDirectory(out, writes=distributed.world()[0] == 0)
    directory.claim(overwrite=overwrite, resume=resume)
    if resume and check:
        try:
            directory.check_resumable()
        except BaseException:
            directory.close()
            raise
    return directory


def build_run(
    config: Any,
    out: str | Path | None = None,
    *,
    step: StepFactory | None = distill_step,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    splits: Any = None,
    overwrite: bool = False,
    resume: bool = False,
    loggers: Sequence[Logger] = (),
    facts: dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    label: str = "epoch",
    finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Run:
    """Build the run ``config`` describes, into ``out`` (``None``: no files), stepping with
    the step ``step`` builds.

    ``student``/``teacher``/``splits`` replace what the configuration names; ``facts`` are
    added to the summary and to ``config.yaml`` (whose tree is ``record`` when given, else the
    resolved configuration); ``identity`` (default: method, data, model) must match on
    resume; ``finish`` amends the summary before ``summary.json`` is written, while the run
    still holds its directory. ``resume`` continues the run in ``out``. With ``step=None``
    the run trains nothing (a one-shot stage): its folder is claimed and its configuration
    recorded, its models and loaders are ready; close it when done.
    """
    world = distributed.world()[1]
    if config.optim.batch_size % world:
        raise ValueError(
            f"--batch-size {config.optim.batch_size} does not split evenly over {world} processes"
        )
    if resume and out is None:
        raise ValueError("--resume needs the run directory (out)")
    hw = Hardware.resolve(config.runtime)
    directory = claim(out, overwrite=overwrite, resume=resume, check=step is not None)
    try:
        splits = splits if splits is not None else load_data(config)
        parts = _place_models(config, hw, splits, student, teacher)
        parts.train_loader, parts.test_loader = _loaders(config, hw, splits)
        built = step(parts) if step is not None else None
        extra = dict(facts or {})
        if directory is not None:
            _record_config(directory, parts, record, extra, resume)
        if built is None:
            return Run(parts, None, None, directory)
        loop = EpochLoop(
            built, parts.train_loader, parts.test_loader, config.schedule.epochs,
            run=directory, identity=identity if identity is not None else _identity(config, parts),
            loggers=[*loggers, *_tensorboard(config, directory)], quiet=config.runtime.quiet,
            label=label, finish=finish,
            facts={**_facts(config, parts), "channels_last": hw.channels_last, **extra},
        )  # fmt: skip
        run = Run(parts, built, loop, directory)
        if resume:
            loop.resume()
    except BaseException:
        if directory is not None:
            directory.close()
        raise
    return run


def _record_config(directory: RunDirectory, parts: RunParts, record: dict[str, Any] | None,
                   extra: dict[str, Any], resume: bool) -> None:  # fmt: skip
    """config.yaml: the resolved configuration (or ``record``), what it resolved to (device,
    precision, layout, models) and the run's extra facts; checked instead on resume."""
    tree = dict(record) if record is not None else resolved_tree(parts.config)
    tree["resolved"] = {**tree.get("resolved", {}), **parts.hardware.facts(),
                        **_model_facts(parts)}  # fmt: skip
    if record is None:
        tree.update(extra)
    directory.record_config(tree, resume=resume)


def _place_models(config: Any, hw: Hardware, splits: Any, student: nn.Module | None,
                  teacher: nn.Module | None) -> RunParts:  # fmt: skip
    """Student and teacher loaded, checked against the data, seeded and on the device."""
    num_classes, seed = splits.num_classes, config.runtime.seed
    set_seed(seed)  # zoo models are initialised from the run's seed
    student = load_model(student if student is not None else config.models.student, num_classes)
    source = teacher if teacher is not None else getattr(config.models, "teacher", None)
    teacher = (
        load_model(source, num_classes, config.models.teacher_arch, "--teacher")
        if source is not None
        else None
    )
    shape = input_shape(splits)
    for model, role in ((student, "student"), (teacher, "teacher")):
        if model is not None:
            check_classes(model, num_classes, role)
            check_output(model, role, shape, num_classes)
    set_seed(seed)
    student = student.to(hw.device, memory_format=hw.layout)
    if teacher is not None:
        teacher.to(hw.device, memory_format=hw.layout).eval().requires_grad_(False)
    if config.runtime.compile:  # in place: state-dict keys and forward hooks stay as they are
        for model in (student, teacher):
            if model is not None:
                model.compile()
    return RunParts(config, hw, splits, student, teacher, None, None)


def _loaders(config: Any, hw: Hardware, splits: Any) -> tuple[Any, Any]:
    """Training and test loaders, each rank its share of every batch."""
    rank, world = distributed.world()
    options = {"workers": config.data.workers} if config.data.workers else {}
    return data.make_loaders(
        splits, config.optim.batch_size // world, device=hw.device, seed=config.runtime.seed,
        rank=rank, world_size=world, channels_last=hw.channels_last,
        eval_batch_size=config.optim.eval_batch_size, augment=config.data.augment, **options,
    )  # fmt: skip


def _model_facts(parts: RunParts) -> dict[str, Any]:
    return {
        "teacher": describe(parts.teacher),
        "student": describe(parts.student),
        "num_classes": parts.splits.num_classes,
    }


def _facts(config: Any, parts: RunParts) -> dict[str, Any]:
    """The summary's facts about the run (the step adds its own: sizes, method facts)."""
    teacher = parts.teacher
    facts: dict[str, Any] = {
        "model": describe(parts.student),
        "teacher": describe(teacher),
        "method": getattr(config, "method", None),
        "data": parts.splits.name,
        "num_classes": parts.splits.num_classes,
        "seed": config.runtime.seed,
    }
    if teacher is not None:
        sizes = profile(teacher, parts.input_shape)
        facts.update(teacher_params=sizes["params"], teacher_macs=sizes["macs"])
    return facts


def _identity(config: Any, parts: RunParts) -> dict[str, Any]:
    return {
        "method": getattr(config, "method", None),
        "data": parts.splits.name,
        "model": describe(parts.student),
    }


def _tensorboard(config: Any, directory: RunDirectory | None) -> list[Logger]:
    if not config.runtime.tensorboard:
        return []
    if directory is None:
        raise ValueError("--tensorboard needs a run directory (out)")
    return [TensorBoardLogger(directory.path("tensorboard"))]


def fit(config: Any, out: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Build and fit one run (see :func:`build_run` for ``options``); returns its summary."""
    return build_run(config, out, **options).fit()


# ---- stages of a pipeline -----------------------------------------------------------------------
def fit_stage(config: Any, out: Path | None, *, resume: bool = False, **options: Any) -> Run:
    """Fit one stage of a pipeline into ``out``, or continue it; returns the fitted run.

    With ``resume`` a stage that has started is continued and one that has not starts; a
    finished stage is resumed too, which trains nothing but checks its stored settings.
    """
    started = resume and out is not None and (Path(out) / "checkpoints" / "last.pt").is_file()
    run = build_run(config, out, resume=started, **options)
    run.fit()
    return run


def stage_inputs(
    config: Any, splits: Any = None, student: nn.Module | None = None
) -> tuple[Any, nn.Module]:
    """The data and the student a multi-stage pipeline shares between its stages, loaded
    once; a zoo student is initialised from the run's seed, as a single run does."""
    splits = splits if splits is not None else load_data(config)
    set_seed(config.runtime.seed)
    source = student if student is not None else config.models.student
    return splits, load_model(source, splits.num_classes)


def load_teacher(
    config: Any, teacher: nn.Module | None, num_classes: int, needed_by: str
) -> nn.Module:
    """The given teacher module or the configuration's trained teacher (frozen, eval mode);
    ``needed_by`` names what asks for it when there is none."""
    source = teacher if teacher is not None else config.models.teacher
    if source is None:
        raise ConfigError(f"{needed_by}: pass --teacher")
    model = load_model(source, num_classes, config.models.teacher_arch, "--teacher")
    return model.requires_grad_(False).eval()
