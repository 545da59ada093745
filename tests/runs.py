"""Test helpers: build a training run from flat settings, and stop it like a killed job."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from mhkd import api, data
from mhkd.pipelines.builder import Run, build_run
from mhkd.preemption import RunInterrupted


def training_run(
    student: str | nn.Module,
    splits: data.DataSplits,
    *,
    teacher: str | Path | nn.Module | None = None,
    method: str = "ce",
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    **settings: Any,
) -> Run:
    """A built, not yet fitted run, from the same flat settings as ``mhkd.api``."""
    config, objects = api.configure(student, splits, teacher, method, **settings)
    return build_run(config, out, resume=resume, overwrite=overwrite, **objects)


def stop_after(run: Run, epoch: int) -> RunInterrupted:
    """Fit ``run`` until SIGTERM stops it at the end of ``epoch`` (1-based), as a scheduler
    would: ``last.pt`` holds that epoch, there is no summary."""

    def send(record: dict[str, Any]) -> None:
        if record["epoch"] == epoch:
            os.kill(os.getpid(), signal.SIGTERM)

    run.loop.loggers.append(send)
    with pytest.raises(RunInterrupted) as stopped:
        run.fit()
    assert stopped.value.epoch == epoch and stopped.value.step is None
    return stopped.value


class _SignalAtStep:
    """The run's training loader, sending SIGTERM as step ``step`` of ``epoch`` begins."""

    def __init__(self, loader: Any, epoch: int, step: int):
        self.loader, self.epoch, self.step = loader, epoch, step
        self.current = 0

    def set_epoch(self, epoch: int) -> None:
        self.current = epoch + 1
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for index, batch in enumerate(self.loader, 1):
            if self.current == self.epoch and index == self.step:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch


def stop_during(run: Run, epoch: int, step: int) -> RunInterrupted:
    """Fit ``run`` until SIGTERM arrives just before step ``step`` of ``epoch`` (1-based): the
    epoch's earlier steps are lost and ``last.pt`` holds the epoch before."""
    run.loop.train_loader = _SignalAtStep(run.loop.train_loader, epoch, step)
    with pytest.raises(RunInterrupted) as stopped:
        run.fit()
    assert (stopped.value.epoch, stopped.value.step) == (epoch, step - 1)
    return stopped.value
