"""The one training loop: teacher training (cross-entropy) and distillation alike.

A run is a directory::

    OUT/config.yaml          the resolved configuration
    OUT/metrics.jsonl        one line per epoch
    OUT/summary.json         written when the run ends
    OUT/checkpoints/last.pt  everything needed to resume exactly
    OUT/checkpoints/best.pt  the deployable student at its best test accuracy
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from mhkd import checkpoint, distributed, hardware
from mhkd.data import DataSplits, DeviceLoader, make_loaders
from mhkd.data.batch import Batch
from mhkd.methods import MethodContext, MethodSet, ModelOutput
from mhkd.models.complexity import profile
from mhkd.taps import Taps
from mhkd.teacher_cache import TeacherCache, build_cache, open_cache

#: The CIFAR recipes decay the learning rate at epochs 150, 180 and 210 of 240.
PAPER_MILESTONE_FRACTIONS = (0.625, 0.75, 0.875)
CHECK_FINITE_EVERY = 25


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything that defines a run besides the models and the data.

    ``milestones=None`` places the decays at 62.5/75/87.5 % of the epochs, the paper recipe's
    150/180/210 of 240.
    """

    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 512
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"
    milestones: list[int] | None = None
    gamma: float = 0.1
    seed: int = 0
    precision: str = "auto"
    channels_last: str = "auto"
    device: str | None = None
    method: str = "ce"
    weights: dict[str, float] = field(default_factory=dict)
    teacher_cache: str | None = None
    teacher_cache_topk: int | None = None
    teacher_cache_mmap: bool = False
    compile: bool = False
    augment: bool = True
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.schedule not in ("multistep", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose multistep or cosine")

    def resolved_milestones(self) -> list[int]:
        if self.milestones is not None:
            return list(self.milestones)
        return [max(1, round(self.epochs * f)) for f in PAPER_MILESTONE_FRACTIONS]


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class DistillStep(nn.Module):
    """One step's forward: the teacher without a graph, the student, and every loss term.

    Student and methods are submodules (their parameters train, DDP wraps this module); the
    teacher is held outside the module tree so it never enters the optimizer or a checkpoint.
    """

    def __init__(
        self,
        student: nn.Module,
        methods: MethodSet,
        teacher: nn.Module | None,
        cache: TeacherCache | None = None,
    ):
        super().__init__()
        self.student = student
        self.methods = methods
        self.cache = cache
        needs_forward = teacher is not None and methods.needs_teacher and cache is None
        self._teacher = [teacher] if needs_forward else []
        self._student_taps = Taps(student, methods.student_layers)
        self._teacher_taps = Taps(teacher, methods.teacher_layers) if self._teacher else None

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:  # type: ignore[override]
        teacher_out = None
        if self.cache is not None:
            teacher_out = ModelOutput(self.cache.lookup(batch.indices, batch.views), {})
        elif self.teacher is not None:
            with torch.no_grad():
                logits = self.teacher(batch.images)
                teacher_out = ModelOutput(logits, self._teacher_taps.pop())
        logits = self.student(batch.images)
        student_out = ModelOutput(logits, self._student_taps.pop())
        terms = {"ce": F.cross_entropy(logits.float(), batch.labels)}
        terms.update(self.methods(student_out, teacher_out, batch))
        return logits, terms


def weighted_sum(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """The training objective: every term times its weight; a term without weight is an error."""
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise ValueError(f"no weight for loss term(s) {', '.join(missing)}")
    weighted = [weights[name] * value for name, value in terms.items() if weights[name]]
    if not weighted:
        raise ValueError(f"every loss term ({', '.join(terms)}) has weight 0: nothing to train")
    return sum(weighted[1:], weighted[0])


class Trainer:
    """Train a student (alone, or taught by a teacher through methods) into a run directory."""

    def __init__(
        self,
        student: nn.Module,
        data: DataSplits,
        config: TrainConfig,
        out: str | Path | None = None,
        teacher: nn.Module | None = None,
        teacher_layers: Sequence[str] | None = None,
        student_layers: Sequence[str] | None = None,
        method_options: dict[str, dict[str, Any]] | None = None,
        extra_config: dict[str, Any] | None = None,
        loggers: Sequence[Callable[[dict[str, Any]], None]] = (),
        overwrite: bool = False,
    ):
        self.config = config
        self.overwrite = overwrite
        self.out = Path(out) if out is not None else None
        self.loggers = list(loggers)
        self.data = data
        device = torch.device(config.device) if config.device else None
        self.device = distributed.setup(device) or hardware.default_device()
        self.rank, self.world_size = distributed.world()
        self.writes = self.out is not None and self.rank == 0  # one process writes the run
        if config.batch_size % self.world_size:
            raise ValueError(
                f"batch size {config.batch_size} does not split evenly over "
                f"{self.world_size} processes"
            )
        self.precision = hardware.resolve_precision(config.precision, self.device)
        self.channels_last = hardware.resolve_channels_last(
            config.channels_last, self.device, self.precision
        )
        self.extra_config = extra_config or {}
        if teacher is not None:
            check_classes(teacher, data.num_classes, "teacher")
        check_classes(student, data.num_classes, "student")

        set_seed(config.seed)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.student = student.to(self.device, memory_format=memory_format)
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.device, memory_format=memory_format).eval().requires_grad_(False)
        if config.compile:  # in place: state-dict keys and forward hooks stay as they are
            for model in (self.student, teacher):
                if model is not None:
                    model.compile()
        ctx = MethodContext(
            student=self.student,
            teacher=teacher,
            num_classes=data.num_classes,
            num_samples=len(data.train.labels),
            epochs=config.epochs,
            input_shape=tuple(data.train.images.shape[1:]),
            teacher_layers=teacher_layers,
            student_layers=student_layers,
            out=self.out,
            data=data,
            config=config,
        )
        self.methods = MethodSet(config.method, ctx, method_options).to(self.device)
        if self.methods.needs_teacher and teacher is None:
            raise ValueError(f"method {config.method!r} needs a teacher")
        self.weights = {**self.methods.weights, **config.weights}
        unknown = sorted(set(config.weights) - set(self.methods.weights))
        if unknown:
            raise ValueError(
                f"--weight names unknown loss term(s) {', '.join(unknown)}; "
                f"terms are {', '.join(self.methods.weights)}"
            )
        self.cache = self._teacher_cache() if config.teacher_cache else None
        self.step_module = DistillStep(self.student, self.methods, teacher, self.cache)
        self.forward_step: nn.Module = self.step_module
        if self.world_size > 1:
            # Buffers stay per rank: broadcasting CRD's memory banks every step would be costly,
            # and methods that keep data-set-wide state synchronise it themselves.
            self.forward_step = nn.parallel.DistributedDataParallel(
                self.step_module,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.train_loader, self.test_loader = make_loaders(
            data,
            config.batch_size // self.world_size,
            device=self.device,
            seed=config.seed,
            rank=self.rank,
            world_size=self.world_size,
            channels_last=self.channels_last,
            eval_batch_size=config.eval_batch_size,
            augment=config.augment,
        )
        params = [p for p in self.step_module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
        if config.schedule == "cosine":
            self.scheduler: torch.optim.lr_scheduler.LRScheduler = (
                torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, config.epochs)
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, config.resolved_milestones(), config.gamma
            )
        self.epoch = 0
        self.best_test_acc = -1.0
        self.last_test_acc: float | None = None
        self.seconds = 0.0

    def _teacher_cache(self) -> TeacherCache:
        """Open the run's teacher cache, building it first (on rank 0) if it does not exist."""
        config = self.config
        if self.teacher is None or self.methods.teacher_inputs != "logits":
            raise ValueError(
                f"--teacher-cache serves methods that read only the teacher's logits (kd, dkd); "
                f"{config.method!r} reads more of the teacher"
            )
        root = Path(config.teacher_cache)
        if self.rank == 0 and not (root / "meta.json").is_file():
            build_cache(
                root, self.teacher, self.data, self.device, augment=config.augment,
                topk=config.teacher_cache_topk,
                precision=self.precision, channels_last=self.channels_last,
                quiet=config.quiet or not sys.stderr.isatty(),
            )  # fmt: skip
        distributed.barrier()
        cache = open_cache(root, self.teacher, self.data, self.device, config.teacher_cache_mmap)
        if cache.meta["topk"] != config.teacher_cache_topk:
            raise ValueError(
                f"teacher cache {root} keeps top-{cache.meta['topk']} logits, "
                f"not top-{config.teacher_cache_topk}"
            )
        return cache

    # ---- run directory -------------------------------------------------------------------
    def _path(self, *parts: str) -> Path:
        assert self.out is not None
        return self.out.joinpath(*parts)

    def _resolved_config(self) -> dict[str, Any]:
        return {
            **self.extra_config,
            **dataclasses.asdict(self.config),
            "milestones": self.config.resolved_milestones(),
            "weights": self.weights,
            "data": self.data.name,
            "num_classes": self.data.num_classes,
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
        }

    def _state(self) -> dict[str, Any]:
        return {
            "format": "mhkd/1",
            "arch": checkpoint.model_spec(self.student),
            "model": self.student.state_dict(),
            "method": self.methods.state_dict(),
            "method_spec": self.config.method,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "best_test_acc": self.best_test_acc,
            "test_acc": self.last_test_acc,
            "seconds": self.seconds,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "data": self.data.name,
            "num_classes": self.data.num_classes,
        }

    def _claim_run_directory(self) -> None:
        """A fresh run never mixes into, or silently replaces, a run already in ``out``."""
        if not self._path("checkpoints", "last.pt").is_file():
            return
        if not self.overwrite:
            raise ValueError(
                f"{self.out} already holds a run: continue it with --resume, start over with "
                "--overwrite, or choose another --out"
            )
        for name in ("metrics.jsonl", "summary.json"):
            self._path(name).unlink(missing_ok=True)
        for stale in self._path("checkpoints").glob("*.pt"):
            stale.unlink()

    def resume(self) -> None:
        """Continue from ``OUT/checkpoints/last.pt``: weights, optimizer, schedule, RNG, methods."""
        path = self._path("checkpoints", "last.pt")
        if not path.is_file():
            raise checkpoint.CheckpointError(f"--resume: no checkpoint at {path}")
        state = checkpoint.load(path, map_location=self.device)
        if state.get("method_spec") != self.config.method or state.get("data") != self.data.name:
            raise checkpoint.CheckpointError(
                f"{path} was written by method {state.get('method_spec')!r} on "
                f"{state.get('data')!r}, not {self.config.method!r} on {self.data.name!r}"
            )
        self.student.load_state_dict(state["model"])
        self.methods.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.best_test_acc = state["best_test_acc"]
        self.last_test_acc = state["test_acc"]
        self.seconds = state["seconds"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate(_as_tuple(state["rng"]["python"]))
        if self.writes:
            trim_metrics(self._path("metrics.jsonl"), self.epoch)

    # ---- the loop --------------------------------------------------------------------------
    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train up to ``until_epoch`` (default: all epochs); returns the summary."""
        last = min(until_epoch or self.config.epochs, self.config.epochs)
        if self.writes:
            if self.epoch == 0:
                self._claim_run_directory()
            self.out.mkdir(parents=True, exist_ok=True)
            self._path("config.yaml").write_text(
                yaml.safe_dump(self._resolved_config(), sort_keys=False)
            )
        if self.epoch == 0:
            self.methods.prepare(self.teacher, self.train_loader)
        while self.epoch < last:
            started = time.perf_counter()
            record = self._train_epoch()
            record["test_acc"] = self.evaluate(self.test_loader)
            self.seconds += time.perf_counter() - started
            self.epoch += 1
            improved = record["test_acc"] > self.best_test_acc
            self.best_test_acc = max(self.best_test_acc, record["test_acc"])
            self.last_test_acc = record["test_acc"]
            self._log(record)
            if self.writes:
                state = self._state()
                checkpoint.save(state, self._path("checkpoints", "last.pt"))
                if improved:
                    checkpoint.save(
                        _deployable(state, record["test_acc"]), self._path("checkpoints", "best.pt")
                    )
        summary = self.summary()
        if self.writes and self.epoch == self.config.epochs:
            self._path("summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _train_epoch(self) -> dict[str, Any]:
        epoch, config = self.epoch, self.config
        self.step_module.train()
        scheduled = self.methods.start_epoch(epoch)
        self.train_loader.set_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        sums: dict[str, Tensor] = {}
        correct = torch.zeros((), device=self.device)
        seen = 0
        started = time.perf_counter()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            leave=False,
            disable=config.quiet or self.rank != 0 or not sys.stderr.isatty(),
            dynamic_ncols=True,
        )
        for step, batch in enumerate(bar):
            logits, terms, loss = self.train_step(batch)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            correct += (logits.argmax(1) == batch.labels).sum()
            seen += len(batch.labels)
            if step % CHECK_FINITE_EVERY == 0:
                check_finite(sums, epoch)
                if not bar.disable:
                    rate = seen / (time.perf_counter() - started)
                    bar.set_postfix(
                        loss=f"{loss.item():.3f}",
                        acc=f"{100 * correct.item() / seen:.1f}",
                        img_s=f"{rate:.0f}",
                    )
        check_finite(sums, epoch)
        self.scheduler.step()
        elapsed = time.perf_counter() - started
        names = list(sums)
        totals = distributed.all_reduce_sum(
            torch.stack(
                [
                    *(sums[n] for n in names),
                    correct.float(),
                    torch.tensor(float(seen), device=self.device),
                ]
            )
        ).tolist()
        steps = max(1, len(self.train_loader)) * self.world_size
        seen_all = totals[-1]
        return {
            "epoch": epoch,
            "lr": lr,
            **{
                f"loss_{name}": total / steps
                for name, total in zip(names, totals[:-2], strict=True)
            },
            "train_acc": 100.0 * totals[-2] / max(1.0, seen_all),
            "images_per_s": seen_all / elapsed,
            "train_seconds": elapsed,
            **scheduled,
        }

    def train_step(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Forward, weighted loss, backward and optimizer step on one batch."""
        with hardware.autocast(self.device, self.precision):
            logits, terms = self.forward_step(batch)
        loss = weighted_sum(terms, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return logits, terms, loss

    def evaluate(self, loader: DeviceLoader) -> float:
        """Top-1 accuracy (%) of the student on ``loader``."""
        return evaluate(self.student, loader, self.device, self.precision)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.config.quiet and self.rank == 0:
            terms = " ".join(f"{k[5:]}={v:.3f}" for k, v in record.items() if k.startswith("loss_"))
            print(
                f"epoch {record['epoch'] + 1}/{self.config.epochs} lr={record['lr']:.4g} "
                f"{terms} train_acc={record['train_acc']:.2f} test_acc={record['test_acc']:.2f} "
                f"({record['images_per_s']:.0f} img/s)",
                file=sys.stderr,
            )
        if self.writes:
            with self._path("metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        for logger in self.loggers:
            logger(record)

    def summary(self) -> dict[str, Any]:
        sizes = profile(self.student, tuple(self.data.train.images.shape[1:]))
        return {
            "test_acc": self.last_test_acc,
            "best_test_acc": self.best_test_acc,
            "params": sizes["params"],
            "macs": sizes["macs"],
            "model": (checkpoint.model_spec(self.student) or {}).get("name", "custom"),
            "method": self.config.method,
            "data": self.data.name,
            "num_classes": self.data.num_classes,
            "epochs": self.epoch,
            "seed": self.config.seed,
            "seconds": round(self.seconds, 2),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "world_size": self.world_size,
            **peak_memory(self.device),
            **(
                {
                    "teacher_cache_bytes": self.cache.size_bytes(),
                    "teacher_cache_build_seconds": self.cache.meta["build_seconds"],
                }
                if self.cache is not None
                else {}
            ),
            **self.extra_config,
            **self.methods.summary(),
        }


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DeviceLoader, device: torch.device, precision: str = "fp32"
) -> float:
    """Top-1 accuracy (%) of ``model`` on every sample of ``loader``."""
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


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak resident host memory of this process (and GPU memory on CUDA), in MiB."""
    peak = {
        "peak_host_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    }
    if device.type == "cuda":
        peak["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def _deployable(state: dict[str, Any], test_acc: float) -> dict[str, Any]:
    """The part of a checkpoint a user deploys: the bare student, no heads or optimizer."""
    keep = ("format", "arch", "model", "epoch", "data", "num_classes")
    return {**{k: state[k] for k in keep}, "test_acc": test_acc}


def trim_metrics(path: Path, epoch: int) -> None:
    """Drop the epochs logged after the checkpoint a resumed run starts from."""
    if path.is_file():
        kept = [
            line
            for line in path.read_text().splitlines()
            if line and json.loads(line)["epoch"] < epoch
        ]
        path.write_text("".join(line + "\n" for line in kept))


def check_finite(sums: dict[str, Tensor], epoch: int) -> None:
    """Stop the run, naming the loss term, once a term's running sum is NaN or infinite."""
    for name, value in sums.items():
        if not math.isfinite(float(value)):
            raise NonFiniteLossError(
                f"loss term {name!r} became {float(value)} in epoch {epoch + 1}; "
                "stopped, the last good checkpoint is kept"
            )


def check_classes(model: nn.Module, num_classes: int, role: str) -> None:
    """Refuse a model whose classifier predicts another number of classes than the data has."""
    outputs = _output_classes(model)
    if outputs is not None and outputs != num_classes:
        raise ValueError(
            f"the {role} predicts {outputs} classes but the data set has {num_classes}"
        )


def _output_classes(model: nn.Module) -> int | None:
    name = getattr(model, "classifier_name", None)
    if name:
        return dict(model.named_modules())[name].out_features
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` needs tuples; a checkpoint round trip may give lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
