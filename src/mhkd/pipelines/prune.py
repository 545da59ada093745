"""Cascaded channel pruning (Miles & Mikolajczyk 2020) as a two-stage pipeline.

Stage 1 (``OUT/stage1/``): the cascade of teaching assistants (sharing the original's weights)
trains jointly in the one loop, masks recomputed from the scores every step; at its end the
masks freeze and every model is exported physically smaller (``stage1/student.pt``,
``stage1/assistant*.pt``). Stage 2 (``OUT/``): the exported student is fine-tuned with KD, an
ordinary training run whose teacher moves one assistant up whenever the student beats it.
Fine-tuning the exported student equals fine-tuning the masked one with frozen masks (the
removed channels are constant zeros). The baselines replace stage 1 by a one-shot pruning
(magnitude or Taylor scores) and fine-tune with cross-entropy for both stages' epochs.

>>> from mhkd.pipelines.prune import prune
>>> result = prune("runs/teacher/checkpoints/best.pt", "digits", keep=0.4, assistants=3)
>>> result.model        # physically smaller network; result.summary has sizes and latency
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mhkd import checkpoint, hardware
from mhkd import config as cfg
from mhkd.config import OptimConfig, RunConfig, ScheduleConfig
from mhkd.data import DataSplits, make_loaders
from mhkd.data.batch import Batch
from mhkd.distill import input_shape
from mhkd.loop import EpochLoop, StepOutput, evaluate, set_seed, weighted_sum
from mhkd.methods.base import option
from mhkd.models import resize
from mhkd.models.complexity import profile
from mhkd.pipelines.training import TrainingRun, load_data, load_model, resolve_device
from mhkd.prune.baselines import BASELINES, baseline_scores
from mhkd.prune.cascade import Cascade, cascade_keeps, cascade_loss, hint_loss
from mhkd.prune.export import export, latency_ms
from mhkd.prune.groups import ModelLayout, PruneError, find_layout
from mhkd.prune.masks import MaskedNet, check_keep, magnitude_scores
from mhkd.rundir import RunDirectory, RunSummary, require_resumable
from mhkd.taps import Taps

STAGE1 = "stage1"
#: Teaching assistants a cascade may have (each is a masked copy of the model in memory).
ASSISTANTS = (0, 16)
#: Stage 1's outcome (exported sizes and accuracies), written once its exports are saved.
STAGE1_RECORD = "stage1.json"


@dataclass
class PruneSettings:
    """What to prune and how; stage 1's epochs are ``--epochs``, its lr ``--lr`` (cosine)."""

    arch: str | None = option(
        None,
        "the --model checkpoint's architecture when the file does not say (foreign "
        "RepDistiller/mdistiller checkpoints, e.g. resnet56, ResNet50)",
    )
    keep: float = option(0.4, "fraction of channels kept, in (0, 1]")
    assistants: int = option(3, "teaching assistants (0: the student learns from the original)")
    baseline: str | None = option(None, "magnitude or taylor: prune once, fine-tune with CE")
    finetune_epochs: int | None = option(None, "stage-2 epochs (default: as many as --epochs)")
    score_optimizer: str = option("rmsprop", "rmsprop or sgd, for the channel scores")
    score_lr: float = option(1e-3, "learning rate of the channel scores")
    temperature: float = option(15.0, "KD temperature")
    kd_weight: float = option(0.4, "weight of the KD term")
    hint_weight: float = option(0.0, "weight of hint losses on the last 3 shared layers (0: off)")
    hint_layers: list[str] | None = option(None, "layers of the hint losses")
    taylor_batches: int = option(10, "batches of Taylor scoring")
    latency_repeats: int = option(10, "timed forward passes per latency figure")

    def __post_init__(self) -> None:
        for name in ("keep", "score_lr", "temperature", "kd_weight", "hint_weight"):
            if not math.isfinite(getattr(self, name)):
                raise PruneError(f"--{name.replace('_', '-')} must be a finite number, "
                                 f"got {getattr(self, name)}")  # fmt: skip
        check_keep(self.keep)
        cfg.check_range("--assistants", self.assistants, *ASSISTANTS)
        cfg.check_range("--taylor-batches", self.taylor_batches, 1, 100_000)
        cfg.check_range("--latency-repeats", self.latency_repeats, 1, 100_000)
        cascade_keeps(self.keep, self.assistants)
        if self.finetune_epochs is not None and self.finetune_epochs < 0:
            raise PruneError("--finetune-epochs must be at least 0")
        if self.score_optimizer not in ("rmsprop", "sgd"):
            raise PruneError(f"unknown score optimizer {self.score_optimizer!r}; rmsprop or sgd")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise PruneError(f"unknown baseline {self.baseline!r}; choose from magnitude, taylor")


@dataclass
class PruneRunConfig(RunConfig):
    """A pruning run: the model to prune is ``models.student`` (``prune.arch`` names a foreign
    checkpoint's architecture); the paper's CIFAR schedule (80 + 80 epochs, lr 0.008 cosine,
    weight decay 4e-4, Nesterov)."""

    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=0.008, weight_decay=4e-4, nesterov=True)
    )
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(80, "cosine"))
    prune: PruneSettings = field(default_factory=PruneSettings)

    @property
    def stage2_epochs(self) -> int:
        p = self.prune
        return self.schedule.epochs if p.finetune_epochs is None else p.finetune_epochs


def add_prune_flags(parser: argparse.ArgumentParser) -> None:
    """``mhkd prune``'s generated flags: the model, data, optimisation, schedule, runtime and
    the prune settings."""
    cfg.add_flags(
        parser,
        sections=("data", "models", "optim", "schedule", "runtime", "prune"),
        renames={"models.student": "model"},
        methods=False,
        skip=("models.teacher", "models.teacher_arch", "models.teacher_layers",
              "models.student_layers", "runtime.teacher_cache", "runtime.teacher_cache_topk",
              "runtime.teacher_cache_mmap", "schedule.milestones", "schedule.gamma",
              "schedule.kind"),
        section_types={"prune": PruneSettings},
    )  # fmt: skip


@dataclass
class PruneResult:
    """The fine-tuned, physically pruned student and the run's summary."""

    model: nn.Module
    summary: dict[str, Any]


class TeacherLadder(nn.Module):
    """The stage-2 teacher: the smallest rung first, one rung up when the student beats it."""

    def __init__(self, teachers: list[nn.Module], accuracies: list[float]):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        self.accuracies = list(accuracies)
        self.index = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teachers[self.index](x)

    def observe(self, record: dict[str, Any]) -> None:
        """Loop logger: move up after an epoch whose test accuracy beats the teacher's."""
        if record["test_acc"] > self.accuracies[self.index] and self.index + 1 < len(self.teachers):
            self.index += 1

    def replay(self, records: list[dict[str, Any]]) -> None:
        """Recover the rung after a resume from the epochs already logged."""
        self.index = 0
        for record in records:
            self.observe(record)


class CascadeStep:
    """Stage 1's step: the cascade's weights (SGD) and channel scores trained jointly."""

    def __init__(self, original: nn.Module, cascade: Cascade, config: PruneRunConfig,
                 device: torch.device, hint_layers: list[str], keeps: list[float],
                 data_name: str):  # fmt: skip
        self.original, self.cascade, self.device = original, cascade, device
        self.settings = config.prune
        self.precision = hardware.resolve_precision(config.runtime.precision, device)
        self.hint_layers = hint_layers
        self.teacher_taps = Taps(original, hint_layers)
        self.keeps, self.data_name = keeps, data_name
        o, p = config.optim, config.prune
        self.optimizer = torch.optim.SGD(
            cascade.weight_parameters(), lr=o.lr, momentum=o.momentum,
            weight_decay=o.weight_decay, nesterov=o.nesterov and o.momentum > 0,
        )  # fmt: skip
        scores = cascade.score_parameters()
        self.score_optimizer: torch.optim.Optimizer = (
            torch.optim.RMSprop(scores, lr=p.score_lr)
            if p.score_optimizer == "rmsprop"
            else torch.optim.SGD(scores, lr=p.score_lr, momentum=0.9)
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, config.schedule.epochs
        )
        self.weights = {"ce": 1.0, "kd": p.kd_weight, "hint": p.hint_weight}

    def prepare(self, fresh: bool) -> None:
        """Nothing to do: the cascade starts from the original's weights and magnitudes."""

    def start_epoch(self, epoch: int) -> dict[str, Any]:
        self.cascade.train()
        return {"lr": self.optimizer.param_groups[0]["lr"]}

    def __call__(self, batch: Batch) -> StepOutput:
        with hardware.autocast(self.device, self.precision):
            with torch.no_grad():
                teacher_logits = self.original(batch.images)
            logits = self.cascade(batch.images)
        terms = cascade_loss(logits, teacher_logits, batch.labels, self.settings.temperature)
        if self.hint_layers:
            terms["hint"] = hint_loss(self.cascade.hint_features(), self.teacher_taps.pop())
        loss = weighted_sum(terms, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.score_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.cascade.cascade_score_grads()
        self.optimizer.step()
        self.score_optimizer.step()
        return StepOutput(logits[0], terms)

    def end_epoch(self) -> None:
        self.scheduler.step()

    def evaluate(self, loader: Any) -> dict[str, Any]:
        accuracies = [evaluate(m, loader, self.device, self.precision) for m in self.cascade.models]
        return {"test_acc": accuracies[0], "test_acc_models": accuracies}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.cascade.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "score_optimizer": self.score_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cascade.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.score_optimizer.load_state_dict(state["score_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def deployable(self) -> None:
        """Masked networks are not deployed: the export at the end of stage 1 is."""
        return None

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.cascade.close_taps()
        self.teacher_taps.close()


def prune(
    model: str | Path | nn.Module,
    data: str | DataSplits = "digits",
    *,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    **settings: Any,
) -> PruneResult:
    """Prune ``model`` (a trained checkpoint, zoo name or module) to ``keep`` of its channels.

    ``settings`` are flat names as the flags (``keep``, ``assistants``, ``epochs``, ``lr`` ...).
    """
    prune_fields = {f.name for f in dataclasses.fields(PruneSettings)}
    tree = cfg.from_keywords(**{k: v for k, v in settings.items() if k not in prune_fields})
    tree["prune"] = {k: v for k, v in settings.items() if k in prune_fields}
    splits = data if isinstance(data, DataSplits) else None
    tree.setdefault("data", {})["name"] = splits.name if splits is not None else data
    if not isinstance(model, nn.Module):
        tree.setdefault("models", {})["student"] = str(model)
    config = cfg.build(tree, cls=PruneRunConfig)
    module = model if isinstance(model, nn.Module) else None
    return run_prune(config, out, resume=resume, overwrite=overwrite, model=module, splits=splits)


def run_prune(
    config: PruneRunConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    model: nn.Module | None = None,
    splits: DataSplits | None = None,
) -> PruneResult:
    """Both stages of ``config`` into ``out``; each stage that is finished there is kept."""
    if resume:
        require_resumable(out)
    splits = splits if splits is not None else load_data(config)
    set_seed(config.runtime.seed)
    source = model if model is not None else config.models.student
    if source is None:
        raise cfg.ConfigError("mhkd prune needs --model CKPT")
    original = load_model(source, splits.num_classes, config.prune.arch)
    return Pruning(original, splits, config, out, resume, overwrite).run()


class Pruning:
    """One pruning run; ``run()`` does whichever stages the run directory does not have yet."""

    def __init__(self, original: nn.Module, splits: DataSplits, config: PruneRunConfig,
                 out: str | Path | None, resume: bool, overwrite: bool):  # fmt: skip
        from mhkd.pipelines.training import check_classes

        check_classes(original, splits.num_classes, "model to prune")
        self.config, self.settings = config, config.prune
        self.splits = splits
        self.out = Path(out) if out is not None else None
        self.resume, self.overwrite = resume, overwrite
        self.device = resolve_device(config.runtime.device)
        self.precision = hardware.resolve_precision(config.runtime.precision, self.device)
        self.input_shape = input_shape(splits)
        self.original = original.to(self.device)
        self.layout: ModelLayout = find_layout(self.original, self.input_shape)
        self.original.eval().requires_grad_(False)
        self.keeps = cascade_keeps(
            self.settings.keep, 0 if self.settings.baseline else self.settings.assistants
        )

    def _stage1(self, *parts: str) -> Path | None:
        return self.out.joinpath(STAGE1, *parts) if self.out is not None else None

    def _describe(self) -> dict[str, Any]:
        spec = checkpoint.model_spec(self.original)
        return {
            "prune": dataclasses.asdict(self.settings),
            "model": spec["name"] if spec else type(self.original).__name__,
            "keeps": self.keeps,
            "prunable_groups": len(self.layout.groups),
            "prunable_channels": sum(g.size for g in self.layout.groups),
        }

    def _stage1_config(self) -> dict[str, Any]:
        """Stage 1's config.yaml: the whole pruning configuration and what it resolved to."""
        return {**cfg.to_dict(self.config), "resolved": self._describe()}

    def run(self) -> PruneResult:
        done = self._stage1(STAGE1_RECORD)
        if self.resume and done is not None and done.is_file():
            RunDirectory(self._stage1()).record_config(self._stage1_config(), resume=True)
            student, ladder, stage1 = self._load_stage1()
        else:
            student, ladder, stage1 = self._run_stage1()
        return self._run_stage2(student, ladder, stage1)

    # ---- stage 1 ---------------------------------------------------------------------------
    def _loaders(self):
        c = self.config
        return make_loaders(self.splits, c.optim.batch_size, device=self.device,
                            seed=c.runtime.seed, eval_batch_size=c.optim.eval_batch_size,
                            augment=c.data.augment)  # fmt: skip

    def _run_stage1(self) -> tuple[nn.Module, list[nn.Module], dict[str, Any]]:
        settings = self.settings
        train_loader, test_loader = self._loaders()
        run = RunDirectory(self._stage1(), writes=True) if self.out is not None else None
        try:
            if run is not None:
                run.claim(overwrite=self.overwrite, resume=self.resume)
                run.record_config(self._stage1_config(), resume=self.resume)
            if settings.baseline:
                scores = baseline_scores(settings.baseline, self.original, self.layout.groups,
                                         train_loader, settings.taylor_batches)  # fmt: skip
                masked = [MaskedNet(copy.deepcopy(self.original), self.layout.groups,
                                    settings.keep, scores, True)]  # fmt: skip
                summary: dict[str, Any] = {}
            else:
                cascade, summary = self._train_cascade(run, train_loader, test_loader)
                masked = list(cascade.models)
            for net in masked:
                net.frozen = True
                net.eval()
            exported = [export(m, self.input_shape).to(self.device) for m in masked]
            for net in exported:
                net.requires_grad_(True)
            probe = next(iter(test_loader)).images
            with torch.no_grad():
                diff = (masked[0](probe) - exported[0].eval()(probe)).abs().max().item()
            accuracies = [evaluate(m, test_loader, self.device, self.precision) for m in exported]
            stage1 = {
                **summary,
                "test_acc_models": accuracies,
                "kept_fractions": [m.kept_fraction() for m in masked],
                "export_max_abs_diff": diff,
                "ladder_test_acc": accuracies[1:]
                + [evaluate(self.original, test_loader, self.device, self.precision)],
            }
            if run is not None:
                for i, net in enumerate(exported):
                    name = "student.pt" if i == 0 else f"assistant{i}.pt"
                    checkpoint.save(_exported_state(net, self.splits), self._stage1(name))
                _write_json(self._stage1(STAGE1_RECORD), stage1)
        finally:
            if run is not None:
                run.close()
        return exported[0], exported[1:], stage1

    def _train_cascade(self, run: RunDirectory | None, train_loader, test_loader):
        s = self.settings
        hint_layers = (s.hint_layers or list(self.layout.shared[-3:])) if s.hint_weight else []
        scores = magnitude_scores(self.original, self.layout.groups)
        cascade = Cascade(self.original, self.layout, self.keeps, scores, hint_layers)
        cascade.to(self.device).requires_grad_(True).train()
        step = CascadeStep(self.original, cascade, self.config, self.device, hint_layers,
                           self.keeps, self.splits.name)  # fmt: skip
        sizes = profile(self.original, self.input_shape)
        facts = {**self._describe(), "data": self.splits.name, "seed": self.config.runtime.seed,
                 "method": "cascade", "teacher": None, "num_classes": self.splits.num_classes,
                 "precision": self.precision, "channels_last": False,
                 "params": sizes["params"], "macs": sizes["macs"]}  # fmt: skip
        loop = EpochLoop(
            step, train_loader, test_loader, self.config.schedule.epochs, run,
            identity={"keeps": self.keeps, "data": self.splits.name},
            quiet=self.config.runtime.quiet, label="stage 1 epoch", facts=facts,
        )  # fmt: skip
        try:
            if self.resume and run is not None and run.path("checkpoints", "last.pt").is_file():
                loop.resume()
            summary = loop.fit()
        finally:
            step.close()
        return cascade, summary

    def _load_stage1(self) -> tuple[nn.Module, list[nn.Module], dict[str, Any]]:
        stage1 = json.loads(self._stage1(STAGE1_RECORD).read_text())
        nets = []
        for i in range(len(stage1["test_acc_models"])):
            name = "student.pt" if i == 0 else f"assistant{i}.pt"
            state = checkpoint.load(self._stage1(name), map_location=self.device)
            net = resize(copy.deepcopy(self.original), state["pruned_channels"])
            net.load_state_dict(state["model"])
            nets.append(net.requires_grad_(True))
        return nets[0], nets[1:], stage1

    # ---- stage 2 ---------------------------------------------------------------------------
    def _run_stage2(
        self, student: nn.Module, ladder: list[nn.Module], stage1: dict[str, Any]
    ) -> PruneResult:
        c, s = self.config, self.settings
        epochs = c.schedule.epochs + c.stage2_epochs if s.baseline else c.stage2_epochs
        teacher = None
        if not s.baseline:
            teacher = TeacherLadder([*ladder, self.original], stage1["ladder_test_acc"])
        if epochs == 0:  # the exported student as stage 1 left it, under stage 1's facts
            accuracy = stage1["test_acc_models"][0]
            sizes = profile(student, self.input_shape)
            unchanged = {
                **{k: stage1[k] for k in RunSummary.declared() if k in stage1},
                "test_acc": accuracy, "best_test_acc": accuracy, "best_epoch": None,
                "params": sizes["params"], "macs": sizes["macs"],
            }  # fmt: skip
            return self._finish(student, stage1, unchanged, teacher)
        stage2 = dataclasses.replace(
            c,
            method="ce" if s.baseline else "kd",
            options={} if s.baseline else {"kd": {"temperature": s.temperature}},
            weights={} if s.baseline else {"ce": 1.0, "kd": s.kd_weight},
            schedule=dataclasses.replace(c.schedule, epochs=epochs, kind="cosine"),
            runtime=dataclasses.replace(c.runtime, channels_last="off"),
            models=dataclasses.replace(c.models, student=None, teacher=None),
        )
        tree = cfg.to_dict(stage2)
        del tree["prune"]
        stage2 = cfg.build(tree)  # a plain RunConfig: stage 2 is a training run
        resume = self.resume and self.out is not None and \
            (self.out / "checkpoints" / "last.pt").is_file()  # fmt: skip
        run = TrainingRun(
            stage2, self.out, student=student, teacher=teacher, splits=self.splits,
            overwrite=self.overwrite, resume=resume,
            loggers=[teacher.observe] if teacher is not None else [],
            extra_config=self._describe(),
        )  # fmt: skip
        if resume and teacher is not None:
            teacher.replay(run.run.read_metrics())
        summary = run.fit()
        return self._finish(run.student, stage1, summary, teacher)

    def _finish(self, student: nn.Module, stage1: dict[str, Any], summary: dict[str, Any],
                teacher: TeacherLadder | None) -> PruneResult:  # fmt: skip
        before = profile(self.original, self.input_shape)
        after = profile(student, self.input_shape)
        repeats = self.settings.latency_repeats
        latency = {
            name: {
                f"batch{b}": round(latency_ms(net, self.input_shape, b, repeats), 3)
                for b in (1, 64)
            }
            for name, net in (("before", self.original), ("after", student))
        }
        summary = {
            **summary,
            **self._describe(),
            "stage1": stage1,
            "params_before": before["params"],
            "macs_before": before["macs"],
            "params_after": after["params"],
            "macs_after": after["macs"],
            "params_kept": after["params"] / before["params"],
            "macs_kept": after["macs"] / before["macs"],
            "latency_ms": latency,
            "latency_threads": torch.get_num_threads(),
            "final_teacher": None if teacher is None else teacher.index,
        }
        if self.out is not None:
            RunDirectory(self.out).write_summary(RunSummary.from_dict(summary))
        return PruneResult(student, summary)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def _exported_state(net: nn.Module, splits: DataSplits) -> dict[str, Any]:
    return {
        "format": checkpoint.MODEL_FORMAT,
        "arch": checkpoint.model_spec(net),
        "model": net.state_dict(),
        "pruned_channels": net.pruned_channels,
        "data": splits.name,
        "num_classes": splits.num_classes,
    }
