"""Quantization-aware distillation: a stage after a finished distillation run.

``run_qat(RUN, OUT)`` fine-tunes RUN's best student under simulated int8
(:class:`mhkd.fakequant.QuantSim`) while RUN's teacher keeps teaching with RUN's method, options
and loss weights (its ``config.yaml``): an ordinary training run in its own directory ``OUT``,
resumable and preemptible like any other. Only the schedule changes (a few cosine epochs at a
small learning rate) and the teacher cache is not reused. Each epoch starts by recalibrating
the simulated activation ranges on a fixed, seeded sample of training images, as the int8
exporter will; each epoch's test accuracy is the simulated int8 one, so ``best.pt`` is the
epoch whose int8 graph should score best. The CLI then exports ``OUT/checkpoints/best.pt``
with :func:`mhkd.export.export_int8`.

A method's own trained state (MHKD's heads, CRD's memory) is not in RUN's ``best.pt``; it starts
afresh here, as after any change of student.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from mhkd import config as cfg
from mhkd.data import Batch
from mhkd.distill import DistillStep
from mhkd.fakequant import QuantSim
from mhkd.loop import StepOutput
from mhkd.pipelines.builder import Run, RunParts, build_run, distill_step
from mhkd.quantize import calibration_sample


class QuantAwareStep:
    """A :class:`~mhkd.distill.DistillStep` whose student runs under ``sim``; ranges are
    recalibrated on ``calibration`` images at each epoch's start."""

    def __init__(self, step: DistillStep, sim: QuantSim, calibration: torch.Tensor):
        self.step, self.sim, self.calibration = step, sim, calibration

    def start_epoch(self, epoch: int) -> dict[str, Any]:
        self.sim.calibrate(self.step.student, self.calibration)
        return self.step.start_epoch(epoch)

    def __call__(self, batch: Batch) -> StepOutput:
        return self.step(batch)

    def __getattr__(self, name: str) -> Any:  # prepare, evaluate, state_dict ... unchanged
        return getattr(self.step, name)


def qat_config(
    source: str | Path,
    epochs: int = 5,
    lr: float = 0.005,
    quiet: bool = False,
    teacher: str | Path | None = None,
) -> cfg.RunConfig:
    """RUN's configuration with its best student as the student, and the fine-tuning schedule.

    ``teacher`` replaces RUN's (a pruning run's fine-tuning names none: its teachers were
    modules, the pruned original's assistants)."""
    source = Path(source)
    best = source / "checkpoints" / "best.pt"
    if not best.is_file():
        raise ValueError(f"{source} is not a finished mhkd run: {best} is missing")
    tree = cfg.read_yaml(source / "config.yaml", "run configuration")
    fields = {f.name for f in dataclasses.fields(cfg.RunConfig)}
    tree = {key: value for key, value in tree.items() if key in fields}
    if epochs < 1 or lr <= 0:
        raise ValueError(
            f"quantization-aware training needs epochs >= 1 and lr > 0, got {epochs}, {lr}"
        )
    tree["models"]["student"] = str(best)
    tree["schedule"] = {"epochs": epochs, "kind": "cosine"}
    tree["optim"]["lr"] = lr
    tree["runtime"].update(teacher_cache=None, quiet=quiet)
    if teacher is not None:
        tree["models"]["teacher"] = str(teacher)
    return cfg.build(tree, str(source / "config.yaml"))


def build_qat(
    config: cfg.RunConfig,
    out: str | Path,
    *,
    calibration_images: int = 300,
    reduce_range: bool = True,
    **options: Any,
) -> Run:
    """The stage as a built :class:`~mhkd.pipelines.builder.Run` whose student runs under
    simulated int8 (``run.step.sim``; call ``run.step.sim.remove()`` when done) with 7-bit
    weights unless not ``reduce_range`` (as the int8 export will write them); ``options`` as
    :func:`~mhkd.pipelines.builder.build_run`'s."""
    bits = 7 if reduce_range else 8
    facts = {"qat": {"calibration_images": calibration_images, "weight_bits": bits}}

    def step(parts: RunParts) -> QuantAwareStep:
        inner = distill_step(parts)
        images, _ = calibration_sample(parts.splits, calibration_images, config.runtime.seed)
        sim = QuantSim(parts.student, reduce_range)
        return QuantAwareStep(inner, sim, images.to(parts.hardware.device))

    return build_run(config, out, step=step, facts=facts, **options)


def run_qat(config: cfg.RunConfig, out: str | Path, **options: Any) -> dict[str, Any]:
    """Build and fit the stage (see :func:`build_qat`); returns its summary."""
    run = build_qat(config, out, **options)
    try:
        return run.fit()
    finally:
        run.step.sim.remove()
