"""The one epoch loop: every run (teacher training, distillation, pruning's stages) goes here.

The loop knows nothing of models or losses: a :class:`Step` owns those and does one optimiser
step per batch; the loop owns the epochs, the progress bar, the finite-loss check, metrics,
evaluation, checkpoints and resume in a :class:`~mhkd.rundir.RunDirectory`, and stops cleanly
on SIGTERM/SIGINT (the epoch in progress is replayed by ``--resume``).
"""

from __future__ import annotations

import math
import random
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from mhkd import checkpoint, distributed, hardware
from mhkd.data.batch import Batch
from mhkd.preemption import StopOnSignal
from mhkd.progress import Progress, duration
from mhkd.rundir import RunDirectory, RunSummary

CHECK_FINITE_EVERY = 25


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message says which checkpoint, if any, is kept."""


class StepOutput(NamedTuple):
    """One step's student logits and its (unweighted) loss terms."""

    logits: Tensor
    terms: dict[str, Tensor]


class Step(Protocol):
    """What the loop drives: one kind of training (distillation, a pruning cascade ...)."""

    def prepare(self, fresh: bool) -> None:
        """Before the first epoch this process runs (``fresh``: not resumed)."""

    def start_epoch(self, epoch: int) -> dict[str, Any]:
        """Train mode and per-epoch schedules; returns scalars to log (lr ...)."""

    def __call__(self, batch: Batch) -> StepOutput:
        """Forward, loss, backward and optimiser step on one batch."""

    def end_epoch(self) -> None:
        """After the epoch's last step (learning-rate schedules)."""

    def evaluate(self, loader: Iterable[Batch]) -> dict[str, Any]:
        """``{"test_acc": %, ...}`` on ``loader``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def deployable(self) -> dict[str, Any] | None:
        """What ``best.pt`` holds: the bare model a user deploys (``None``: no best.pt)."""

    def summary(self) -> dict[str, Any]:
        """The step's fields of ``summary.json`` (model, sizes, method facts)."""


class EpochLoop:
    """Run ``step`` over ``epochs`` epochs of ``train_loader`` into ``run`` (if any).

    ``identity`` (e.g. method and data) is stored in ``last.pt`` and must match on resume.
    ``loggers`` receive every epoch's record (TensorBoard, a teacher ladder ...); ``facts``
    (model, data, seed ...) go into the summary as they are; ``finish`` amends the summary
    before ``summary.json`` is written (a pipeline's own fields, while the run holds its folder).
    """

    def __init__(
        self,
        step: Step,
        train_loader: Any,
        test_loader: Any,
        epochs: int,
        run: RunDirectory | None = None,
        identity: dict[str, Any] | None = None,
        loggers: Sequence[Callable[[dict[str, Any]], None]] = (),
        quiet: bool = False,
        label: str = "epoch",
        facts: dict[str, Any] | None = None,
        finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ):
        self.step = step
        self.finish = finish
        self.train_loader, self.test_loader = train_loader, test_loader
        self.epochs = epochs
        self.run = run
        self.identity = dict(identity or {})
        self.loggers = list(loggers)
        self.rank, self.world_size = distributed.world()
        self.quiet = quiet or self.rank != 0
        self.label = label
        self.facts = dict(facts or {})
        self.epoch = 0
        self.best_test_acc = -1.0
        self.best_epoch: int | None = None
        self.last: dict[str, Any] = {}
        self.seconds = 0.0
        self.resumed = False
        self._device: torch.device | str = "cpu"

    # ---- resume ----------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from ``last.pt``: the step's state, the loop's counters, the RNG."""
        assert self.run is not None, "resume needs a run directory"
        state = self.run.load_last()
        if state.get("format") != checkpoint.RESUME_FORMAT:
            raise ValueError(
                f"--resume: {self.run.path('checkpoints', 'last.pt')} was written by an earlier "
                "mhkd release; finish it with that release or start over with --overwrite"
            )
        found = state.get("identity", {})
        if found != self.identity:
            differ = sorted(
                k for k in set(found) | set(self.identity) if found.get(k) != self.identity.get(k)
            )
            raise ValueError(
                f"--resume: {self.run.path('checkpoints', 'last.pt')} belongs to another run "
                + ", ".join(f"{k}={found.get(k)!r} (now {self.identity.get(k)!r})" for k in differ)
            )
        try:
            self.step.load_state_dict(state["step"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(
                f"--resume: {self.run.path('checkpoints', 'last.pt')} does not fit this run's "
                f"models: {str(exc).strip().splitlines()[0]}"
            ) from None
        loop = state["loop"]
        self.epoch, self.seconds = loop["epoch"], loop["seconds"]
        self.best_test_acc, self.best_epoch = loop["best_test_acc"], loop["best_epoch"]
        self.last = loop["last"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate(_as_tuple(state["rng"]["python"]))
        self.run.trim_metrics(self.epoch)
        self.resumed = True

    def _state(self) -> dict[str, Any]:
        return {
            "format": checkpoint.RESUME_FORMAT,
            "identity": self.identity,
            "step": self.step.state_dict(),
            "loop": {
                "epoch": self.epoch,
                "seconds": self.seconds,
                "best_test_acc": self.best_test_acc,
                "best_epoch": self.best_epoch,
                "last": self.last,
            },
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }

    # ---- the loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the summary, as summary.json holds it."""
        self.train()
        fields = self.summary()
        if self.finish is not None:
            fields = self.finish(fields)
        summary = RunSummary.from_dict(fields)  # the declared schema, run or no run
        if self.run is not None:
            self.run.write_summary(summary)
        return summary.to_dict()

    def train(self) -> None:
        """Train the remaining epochs, without a summary (a loop inside a run: a pre-fit)."""
        self.step.prepare(fresh=not self.resumed and self.epoch == 0)
        with StopOnSignal() as stop:
            while self.epoch < self.epochs:
                started = time.perf_counter()
                record = self._train_epoch(stop)
                record.update(self.step.evaluate(self.test_loader))
                seconds = time.perf_counter() - started
                self.seconds += seconds
                self.epoch += 1
                self._finish_epoch(record, seconds)
                if stop.requested_anywhere(self._device):
                    stop.check(self.epoch)  # at the boundary: last.pt holds this epoch

    def _finish_epoch(self, record: dict[str, Any], seconds: float) -> None:
        improved = record["test_acc"] > self.best_test_acc
        if improved:
            self.best_test_acc, self.best_epoch = record["test_acc"], self.epoch  # 1-based
        self.last = {k: v for k, v in record.items() if k.startswith("test_")}
        self._log(record, seconds)
        if self.run is not None:
            self.run.save_last(self._state())
            deployable = self.step.deployable() if improved else None
            if deployable is not None:
                self.run.save_best(
                    {**deployable, "epoch": self.epoch, "test_acc": record["test_acc"]}
                )

    def _train_epoch(self, stop: StopOnSignal) -> dict[str, Any]:
        epoch = self.epoch
        scheduled = self.step.start_epoch(epoch)
        self.train_loader.set_epoch(epoch)
        sums: dict[str, Tensor] = {}
        correct = None
        seen = 0
        started = time.perf_counter()
        try:
            total = len(self.train_loader)
        except TypeError:  # a loader that cannot tell its length
            total = None
        progress = Progress(total, f"{self.label} {epoch + 1}/{self.epochs}", "batch", self.quiet)
        steps = 0
        for steps, batch in enumerate(self.train_loader, 1):
            self._device = batch.labels.device
            every = self.world_size == 1 or steps % CHECK_FINITE_EVERY == 1
            if every and stop.requested_anywhere(self._device):
                stop.check(epoch + 1, steps - 1)  # last.pt (previous epoch) resumes exactly
            logits, terms = self.step(batch)
            for name, value in terms.items():  # summed on the device: no sync per step
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            hits = (logits.argmax(1) == batch.labels).sum()
            correct = hits if correct is None else correct + hits
            seen += len(batch.labels)
            if steps % CHECK_FINITE_EVERY == 1:
                check_finite(sums, epoch, self._kept())
                if progress.shown:
                    rate = seen / (time.perf_counter() - started)
                    progress.note(acc=f"{100 * correct.item() / seen:.1f}", img_s=f"{rate:.0f}")
            progress.update()
        progress.close()
        if steps == 0:
            raise ValueError(
                f"the training set gave no batch in epoch {epoch + 1}: it is smaller than one "
                "batch per process; lower --batch-size"
            )
        check_finite(sums, epoch, self._kept())  # before anything of this epoch is saved
        self.step.end_epoch()
        elapsed = time.perf_counter() - started
        names = list(sums)
        device = next(iter(sums.values())).device
        totals = distributed.all_reduce_sum(
            torch.stack(
                [
                    *(sums[n] for n in names),
                    correct.float(),
                    torch.tensor(float(seen), device=device),
                    torch.tensor(float(steps), device=device),
                ]
            )
        ).tolist()
        steps_all, seen_all = totals[-1], totals[-2]
        return {
            "epoch": epoch + 1,  # 1-based, as printed and as best_epoch and last.pt count
            **scheduled,
            **{f"loss_{n}": t / steps_all for n, t in zip(names, totals, strict=False)},
            "train_acc": 100.0 * totals[-3] / max(1.0, seen_all),
            "images_per_s": seen_all / elapsed,
            "train_seconds": elapsed,
        }

    def _kept(self) -> str:
        """What a stop now leaves to resume from, for the message."""
        if self.run is None or self.epoch == 0:
            return "no checkpoint was written (no epoch finished)"
        return f"{self.run.path('checkpoints', 'last.pt')} (epoch {self.epoch}) is kept"

    def _log(self, record: dict[str, Any], seconds: float) -> None:
        """The epoch's line, with its time (training and evaluation) and the run's time left."""
        if not self.quiet:
            terms = " ".join(f"{k[5:]}={v:.3f}" for k, v in record.items() if k.startswith("loss_"))
            lr = f" lr={record['lr']:.4g}" if "lr" in record else ""
            left = self.seconds / self.epoch * (self.epochs - self.epoch)
            print(
                f"{self.label} {record['epoch']}/{self.epochs}{lr} {terms} "
                f"train_acc={record['train_acc']:.2f} test_acc={record['test_acc']:.2f} "
                f"({record['images_per_s']:.0f} img/s, {duration(seconds)} this epoch, "
                f"~{duration(left)} left)",
                file=sys.stderr,
                flush=True,
            )
        if self.run is not None:
            self.run.append_metrics(record)
        for logger in self.loggers:
            logger(record)

    def summary(self) -> dict[str, Any]:
        return {
            "test_acc": self.last.get("test_acc"),
            "best_test_acc": self.best_test_acc,
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "seconds": round(self.seconds, 2),
            "world_size": self.world_size,
            **peak_memory(),
            **self.facts,
            **self.step.summary(),
            **{k: v for k, v in self.last.items() if k != "test_acc"},
        }


# ---- shared pieces ------------------------------------------------------------------------------
@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: Iterable[Batch], device: torch.device, precision: str = "fp32"
) -> float:
    """Top-1 accuracy (%) of ``model`` on every sample of ``loader`` (all ranks together)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    total = 0
    with hardware.autocast(device, precision):
        for batch in loader:
            correct += (model(batch.images).argmax(1) == batch.labels).sum()
            total += len(batch.labels)
    model.train(was_training)
    correct, total = distributed.all_reduce_sum(
        torch.stack([correct.float(), torch.tensor(float(total), device=device)])
    ).tolist()
    return 100.0 * correct / max(1.0, total)


def weighted_sum(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """The training objective: every term times its weight; a term without weight is an error."""
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise ValueError(f"no weight for loss term(s) {', '.join(missing)}")
    weighted = [weights[name] * value for name, value in terms.items() if weights[name]]
    if not weighted:
        raise ValueError(f"every loss term ({', '.join(terms)}) has weight 0: nothing to train")
    return sum(weighted[1:], weighted[0])


def check_finite(sums: dict[str, Tensor], epoch: int, kept: str) -> None:
    """Stop the run, naming the loss term and what is ``kept``, once a term's running sum is
    NaN or infinite."""
    for name, value in sums.items():
        if not math.isfinite(float(value)):
            raise NonFiniteLossError(
                f"loss term {name!r} became {float(value)} in epoch {epoch + 1}; stopped, {kept}"
            )


def peak_memory() -> dict[str, float]:
    """Peak resident host memory of this process (and GPU memory under CUDA), in MiB."""
    peak = {
        "peak_host_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` needs tuples; a checkpoint round trip may give lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
