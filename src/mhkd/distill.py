"""The distillation step: a student trained by cross-entropy and methods, taught by a teacher.

Teacher training is the same step with no method (``ce``). The teacher runs without a graph
and outside the module tree (never in the optimiser or a checkpoint); with a teacher cache it
does not run at all. The step plugs into :class:`mhkd.loop.EpochLoop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mhkd import checkpoint, distributed, hardware
from mhkd.data.batch import Batch
from mhkd.loop import StepOutput, evaluate, weighted_sum
from mhkd.methods import MethodSet, ModelOutput, Prefit, TeacherUse, Trained
from mhkd.models.complexity import profile
from mhkd.taps import Taps
from mhkd.teacher_cache import TeacherCache


def input_shape(data: Any) -> tuple[int, int, int]:
    """The shape of one training image of ``data`` (resident or streamed)."""
    shape = getattr(data, "input_shape", None)
    return tuple(shape) if shape is not None else tuple(data.train.images.shape[1:])


class DistillForward(nn.Module):
    """One step's forward: teacher outputs (run or cached), the student, every loss term.

    Student and methods are submodules (their parameters train, DDP wraps this module); the
    teacher is held in a list so it never enters the optimiser or a checkpoint.
    """

    def __init__(self, student: nn.Module, methods: MethodSet, teacher: nn.Module | None):
        super().__init__()
        self.student = student
        self.methods = methods
        runs_teacher = teacher is not None and methods.teacher_use > TeacherUse.NONE
        self._teacher = [teacher] if runs_teacher else []
        self._student_taps = Taps(student, methods.student_layers)
        self._teacher_taps = Taps(teacher, methods.teacher_layers) if runs_teacher else None
        self.cache: TeacherCache | None = None

    @property
    def teacher(self) -> nn.Module | None:
        """The teacher this forward runs (``None`` when no method reads it)."""
        return self._teacher[0] if self._teacher else None

    def teacher_output(self, batch: Batch) -> ModelOutput | None:
        if self.cache is not None:
            return self.cache.lookup(batch.indices, batch.views)
        if not self._teacher:
            return None
        with torch.no_grad():
            logits = self._teacher[0](batch.images)
        return ModelOutput(logits, self._teacher_taps.pop())

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:  # type: ignore[override]
        teacher = self.teacher_output(batch)
        logits = self.student(batch.images)
        student = ModelOutput(logits, self._student_taps.pop())
        terms = {"ce": F.cross_entropy(logits.float(), batch.labels)}
        terms.update(self.methods(student, teacher, batch))
        return logits, terms

    def close(self) -> None:
        """Remove the taps' hooks from student and teacher (for models that outlive it)."""
        self._student_taps.close()
        if self._teacher_taps is not None:
            self._teacher_taps.close()


class DistillStep:
    """One SGD step on the student and the methods' extras; see the module docstring.

    Everything around the step is built by :mod:`mhkd.pipelines.builder`: the optimiser,
    the data-parallel wrapper (``wrapped``, ``forward`` itself in one process), what the
    methods fit first (``prefit``, fresh runs only) and the teacher cache (``open_cache``,
    called after it: the cache holds the pre-fitted heads' logits too). ``trained`` says on
    what and how the student runs (data, device, precision), which is also how the methods
    judge it at the end (:meth:`~mhkd.methods.Method.report`).
    """

    def __init__(
        self,
        forward: DistillForward,
        *,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        weights: dict[str, float],
        trained: Trained,
        wrapped: nn.Module | None = None,
        open_cache: Callable[[], TeacherCache] | None = None,
        prefit: Callable[[], None] | None = None,
    ):
        self.forward, self.ddp = forward, wrapped if wrapped is not None else forward
        self.student, self.methods = forward.student, forward.methods
        self.teacher = forward.teacher
        self.optimizer, self.scheduler = optimizer, scheduler
        self.weights = weights
        self.trained = trained  # the student's data, device, precision: one record of them
        self.device, self.precision, self.data = trained.device, trained.precision, trained.data
        self._open_cache, self._prefit = open_cache, prefit
        self.cache: TeacherCache | None = None

    # ---- the Step protocol ---------------------------------------------------------------
    def prepare(self, fresh: bool) -> None:
        """Methods' one-off work (fresh runs only), then the teacher cache, which needs it."""
        if fresh and self._prefit is not None:
            self._prefit()
        if self._open_cache is not None:
            self.cache = self.forward.cache = self._open_cache()
    def start_epoch(self, epoch: int) -> dict[str, Any]:
        self.forward.train()
        return {"lr": self.optimizer.param_groups[0]["lr"], **self.methods.start_epoch(epoch)}

    def __call__(self, batch: Batch) -> StepOutput:
        with hardware.autocast(self.device, self.precision):
            logits, terms = self.ddp(batch)
        loss = weighted_sum(terms, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return StepOutput(logits, terms)

    def end_epoch(self) -> None:
        self.scheduler.step()

    def evaluate(self, loader: Any) -> dict[str, Any]:
        return {"test_acc": evaluate(self.student, loader, self.device, self.precision)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.student.state_dict(),
            "arch": checkpoint.model_spec(self.student),
            "method": self.methods.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["model"])
        self.methods.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def deployable(self) -> dict[str, Any]:
        return {
            "format": checkpoint.MODEL_FORMAT,
            "arch": checkpoint.model_spec(self.student),
            "model": self.student.state_dict(),
            "data": self.data.name,
            "input_shape": list(input_shape(self.data)),
        }

    def summary(self) -> dict[str, Any]:
        sizes = profile(self.student, input_shape(self.data))
        extra: dict[str, Any] = {
            "params": sizes["params"],
            "macs": sizes["macs"],
            "precision": self.precision,
        }
        if self.cache is not None:
            extra["teacher_cache_bytes"] = self.cache.size_bytes()
            extra["teacher_cache_build_seconds"] = self.cache.meta["build_seconds"]
        return {**extra, **self.methods.summary(), **self.methods.report(self.trained)}


class PrefitStep:
    """Fits a method's :class:`~mhkd.methods.Prefit` (MHKD's teacher heads) on the frozen
    teacher: the sum of its predictions' CE, SGD from the builder. Per-prediction training
    accuracy is counted on the device and read once, when the fit ends."""

    def __init__(self, prefit: Prefit, teacher: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler):  # fmt: skip
        self.prefit, self.teacher = prefit, teacher
        self.optimizer, self.scheduler = optimizer, scheduler
        self.taps = Taps(teacher, prefit.teacher_layers)
        self.correct: Tensor | None = None
        self.seen = 0

    def prepare(self, fresh: bool) -> None:
        self.prefit.module.requires_grad_(True)
        self.teacher.eval()

    def start_epoch(self, epoch: int) -> dict[str, Any]:
        self.prefit.module.train()
        self.correct, self.seen = None, 0
        return {"lr": self.optimizer.param_groups[0]["lr"]}

    def _logits(self, images: Tensor) -> list[Tensor]:
        with torch.no_grad():
            self.teacher(images)
        return self.prefit.logits(self.taps.pop())

    def __call__(self, batch: Batch) -> StepOutput:
        logits = self._logits(batch.images)
        loss = sum(F.cross_entropy(z.float(), batch.labels) for z in logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        hits = torch.stack([(z.argmax(1) == batch.labels).sum() for z in logits])
        self.correct = hits if self.correct is None else self.correct + hits
        self.seen += len(batch.labels)
        return StepOutput(logits[-1], {"prefit": loss})

    def end_epoch(self) -> None:
        self.scheduler.step()

    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, Any]:
        """Test accuracy of each prediction; ``test_acc`` is the last (deepest) one's."""
        self.prefit.module.eval()
        correct, seen = None, 0
        for batch in loader:
            hits = torch.stack([(z.argmax(1) == batch.labels).sum()
                                for z in self._logits(batch.images)])  # fmt: skip
            correct = hits if correct is None else correct + hits
            seen += len(batch.labels)
        totals = distributed.all_reduce_sum(torch.cat([correct.float(),
                                                       correct.new_tensor([seen]).float()]))
        accuracies = (100.0 * totals[:-1] / totals[-1].clamp(min=1)).tolist()
        return {"test_acc": accuracies[-1], "test_acc_heads": accuracies}

    def train_accuracies(self) -> list[float]:
        """Each prediction's training accuracy (%) in the last epoch."""
        if self.correct is None:
            return []
        return [round(100.0 * c / max(1, self.seen), 2) for c in self.correct.tolist()]

    def state_dict(self) -> dict[str, Any]:
        return {}  # a pre-fit never resumes: it precedes the run's first epoch

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def deployable(self) -> None:
        return None

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.taps.close()
