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

from mhkd import checkpoint, distributed, hardware
from mhkd import config as cfg
from mhkd.config import (
    DataConfig,
    ModelsConfig,
    OptimConfig,
    RunConfig,
    RuntimeConfig,
    ScheduleConfig,
)
from mhkd.data import DataSplits
from mhkd.data.batch import Batch
from mhkd.distill import input_shape
from mhkd.loop import StepOutput, evaluate, set_seed, weighted_sum
from mhkd.methods.base import option
from mhkd.models import resize
from mhkd.models.complexity import profile
from mhkd.pipelines.builder import Hardware, Run, RunParts, build_run, claim
from mhkd.pipelines.loading import (
    check_classes,
    deployable_state,
    describe,
    load_data,
    load_model,
)
from mhkd.pipelines.registry import Pipeline, register
from mhkd.prune.baselines import BASELINES, baseline_scores
from mhkd.prune.cascade import Cascade, cascade_keeps, cascade_loss, hint_loss
from mhkd.prune.export import export, latency_ms
from mhkd.prune.groups import ModelLayout, PruneError, find_layout
from mhkd.prune.masks import MaskedNet, check_keep, magnitude_scores
from mhkd.rundir import RunSummary, require_resumable
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
class PruneRunConfig:
    """A pruning run: the core sections and the ``prune`` settings (no method: stage 1 steps
    the cascade, stage 2 is KD or CE by the settings). The model to prune is
    ``models.student`` (``prune.arch`` names a foreign checkpoint's architecture); the paper's
    CIFAR schedule (80 + 80 epochs, lr 0.008 cosine, weight decay 4e-4, Nesterov)."""

    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=0.008, weight_decay=4e-4, nesterov=True)
    )
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(80, "cosine"))
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    prune: PruneSettings = field(default_factory=PruneSettings)

    def __post_init__(self) -> None:
        cfg.validate(self)

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
    """Stage 1's step: the cascade's weights (SGD, cosine) and channel scores trained jointly."""

    def __init__(self, parts: RunParts, original: nn.Module, cascade: Cascade,
                 settings: PruneSettings, hint_layers: list[str]):  # fmt: skip
        self.original, self.cascade, self.settings = original, cascade, settings
        self.device, self.precision = parts.hardware.device, parts.hardware.precision
        self.input_shape = parts.input_shape
        self.hint_layers = hint_layers
        self.teacher_taps = Taps(original, hint_layers)
        self.model = parts.distributed(cascade)
        cosine = dataclasses.replace(parts.config.schedule, kind="cosine")
        self.optimizer, self.scheduler = parts.optimizer(cascade.weight_parameters(),
                                                         schedule=cosine)  # fmt: skip
        scores, p = cascade.score_parameters(), settings
        self.score_optimizer: torch.optim.Optimizer = (
            torch.optim.RMSprop(scores, lr=p.score_lr)
            if p.score_optimizer == "rmsprop"
            else torch.optim.SGD(scores, lr=p.score_lr, momentum=0.9)
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
            logits = self.model(batch.images)
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
        """The original's sizes: the stage trains masked copies of it."""
        return {**profile(self.original, self.input_shape), "precision": self.precision}

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
    """One pruning run; ``run()`` does whichever stages the run directory does not have yet.

    Both stages are runs of the builder: stage 1 steps with :class:`CascadeStep` (or, for a
    baseline, trains nothing), stage 2 is an ordinary KD (or CE) training run.
    """

    def __init__(self, original: nn.Module, splits: DataSplits, config: PruneRunConfig,
                 out: str | Path | None, resume: bool, overwrite: bool):  # fmt: skip
        check_classes(original, splits.num_classes, "model to prune")
        self.config, self.settings = config, config.prune
        self.splits = splits
        self.out = Path(out) if out is not None else None
        self.resume, self.overwrite = resume, overwrite
        self.hardware = Hardware.resolve(config.runtime)
        self.input_shape = input_shape(splits)
        self.original = original.to(self.hardware.device)
        self.layout: ModelLayout = find_layout(self.original, self.input_shape)
        self.original.eval().requires_grad_(False)
        self.keeps = cascade_keeps(
            self.settings.keep, 0 if self.settings.baseline else self.settings.assistants
        )

    def _stage1(self, *parts: str) -> Path | None:
        return self.out.joinpath(STAGE1, *parts) if self.out is not None else None

    def _describe(self) -> dict[str, Any]:
        return {
            "prune": dataclasses.asdict(self.settings),
            "model": describe(self.original),
            "keeps": self.keeps,
            "prunable_groups": len(self.layout.groups),
            "prunable_channels": sum(g.size for g in self.layout.groups),
        }

    def run(self) -> PruneResult:
        if self.resume and self._stage1(STAGE1_RECORD) is not None and \
                self._stage1(STAGE1_RECORD).is_file():  # fmt: skip
            with self._stage1_run(None, resume=True):  # checks the stored settings
                student, ladder, stage1 = self._load_stage1()
        else:
            student, ladder, stage1 = self._run_stage1()
        return self._run_stage2(student, ladder, stage1)

    # ---- stage 1 ---------------------------------------------------------------------------
    def _stage1_run(self, step: Any, resume: bool, finish: Any = None) -> Run:
        """Stage 1 as a run of the builder in ``OUT/stage1``; config.yaml is the whole pruning
        configuration and what it resolved to."""
        uncompiled = dataclasses.replace(  # the cascade deep-copies the original: not compiled
            self.config, runtime=dataclasses.replace(self.config.runtime, compile=False)
        )
        return build_run(
            uncompiled, self._stage1(), step=step, student=self.original, splits=self.splits,
            overwrite=self.overwrite, resume=resume, label="stage 1 epoch",
            record={**cfg.to_dict(self.config), "resolved": self._describe()},
            identity={"keeps": self.keeps, "data": self.splits.name},
            facts={**self._describe(), "method": "cascade"}, finish=finish,
        )  # fmt: skip

    def _run_stage1(self) -> tuple[nn.Module, list[nn.Module], dict[str, Any]]:
        started = self.resume and self._stage1() is not None and \
            self._stage1("checkpoints", "last.pt").is_file()  # fmt: skip
        if self.settings.baseline:
            s = self.settings
            with self._stage1_run(None, resume=self.resume) as run:
                scores = baseline_scores(s.baseline, self.original, self.layout.groups,
                                         run.parts.train_loader, s.taylor_batches)  # fmt: skip
                masked = [MaskedNet(copy.deepcopy(self.original), self.layout.groups, s.keep,
                                    scores, True)]  # fmt: skip
                return self._export(masked, {}, run.parts.test_loader)
        cascades: list[Cascade] = []
        results: list[tuple[nn.Module, list[nn.Module], dict[str, Any]]] = []

        def export_trained(summary: dict[str, Any]) -> dict[str, Any]:
            results.append(self._export(list(cascades[0].models), summary, run.parts.test_loader))
            return summary

        run = self._stage1_run(lambda parts: self._cascade_step(parts, cascades), started,
                               finish=export_trained)  # fmt: skip
        run.fit()
        return results[0]

    def _cascade_step(self, parts: RunParts, built: list[Cascade]) -> CascadeStep:
        s = self.settings
        hint_layers = (s.hint_layers or list(self.layout.shared[-3:])) if s.hint_weight else []
        scores = magnitude_scores(self.original, self.layout.groups)
        cascade = Cascade(self.original, self.layout, self.keeps, scores, hint_layers)
        cascade.to(parts.hardware.device).requires_grad_(True).train()
        built.append(cascade)
        return CascadeStep(parts, self.original, cascade, s, hint_layers)

    def _export(self, masked: list[MaskedNet], summary: dict[str, Any],
                test_loader: Any) -> tuple[nn.Module, list[nn.Module], dict[str, Any]]:  # fmt: skip
        """Freeze the masks, export every model physically smaller and save them (the stage's
        run still holds ``OUT/stage1``), with stage 1's record."""
        device, precision = self.hardware.device, self.hardware.precision
        for net in masked:
            net.frozen = True
            net.eval()
        exported = [export(m, self.input_shape).to(device) for m in masked]
        for net in exported:
            net.requires_grad_(True)
        probe = next(iter(test_loader)).images
        with torch.no_grad():
            diff = (masked[0](probe) - exported[0].eval()(probe)).abs().max().item()
        accuracies = [evaluate(m, test_loader, device, precision) for m in exported]
        stage1 = {
            **summary,
            "test_acc_models": accuracies,
            "kept_fractions": [m.kept_fraction() for m in masked],
            "export_max_abs_diff": diff,
            "ladder_test_acc": accuracies[1:] + [evaluate(self.original, test_loader, device,
                                                          precision)],  # fmt: skip
        }
        if self.out is not None and distributed.world()[0] == 0:
            for i, net in enumerate(exported):
                name = "student.pt" if i == 0 else f"assistant{i}.pt"
                checkpoint.save(_exported_state(net, self.splits), self._stage1(name))
            _write_json(self._stage1(STAGE1_RECORD), stage1)
        return exported[0], exported[1:], stage1

    def _load_stage1(self) -> tuple[nn.Module, list[nn.Module], dict[str, Any]]:
        stage1 = json.loads(self._stage1(STAGE1_RECORD).read_text())
        nets = []
        for i in range(len(stage1["test_acc_models"])):
            name = "student.pt" if i == 0 else f"assistant{i}.pt"
            state = checkpoint.load(self._stage1(name), map_location=self.hardware.device)
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

        def finish(summary: dict[str, Any]) -> dict[str, Any]:
            return self._pipeline_summary(student, stage1, summary, teacher)

        if epochs == 0:  # the exported student as stage 1 left it, under stage 1's facts
            accuracy = stage1["test_acc_models"][0]
            unchanged = {
                **{k: stage1[k] for k in RunSummary.declared() if k in stage1},
                "test_acc": accuracy, "best_test_acc": accuracy, "best_epoch": None,
                **profile(student, self.input_shape),
            }  # fmt: skip
            summary = RunSummary.from_dict(finish(unchanged))  # as a run's summary reads
            directory = claim(self.out, overwrite=self.overwrite, resume=self.resume, check=False)
            if directory is not None:
                with directory:
                    directory.write_summary(summary)
            return PruneResult(student, summary.to_dict())
        started = self.resume and self.out is not None and \
            (self.out / "checkpoints" / "last.pt").is_file()  # fmt: skip
        run = build_run(
            self._stage2_config(epochs), self.out, student=student, teacher=teacher,
            splits=self.splits, overwrite=self.overwrite, resume=started,
            loggers=[teacher.observe] if teacher is not None else [],
            facts=self._describe(), finish=finish,
        )  # fmt: skip
        if started and teacher is not None:
            teacher.replay(run.directory.read_metrics())
        return PruneResult(run.student, run.fit())

    def _stage2_config(self, epochs: int) -> RunConfig:
        """Stage 2 is a plain training run: KD from the ladder (CE for the baselines)."""
        c, s = self.config, self.settings
        return RunConfig(
            data=c.data,
            models=dataclasses.replace(c.models, student=None, teacher=None),
            method="ce" if s.baseline else "kd",
            options={} if s.baseline else {"kd": {"temperature": s.temperature}},
            weights={} if s.baseline else {"ce": 1.0, "kd": s.kd_weight},
            optim=c.optim,
            schedule=dataclasses.replace(c.schedule, epochs=epochs, kind="cosine"),
            runtime=dataclasses.replace(c.runtime, channels_last="off"),
        )

    def _pipeline_summary(self, student: nn.Module, stage1: dict[str, Any],
                          summary: dict[str, Any], teacher: TeacherLadder | None
                          ) -> dict[str, Any]:  # fmt: skip
        """The pruning run's summary: stage 2's (or stage 1's), sizes and latency before and
        after, the final teacher."""
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
        return {
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


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def _exported_state(net: nn.Module, splits: DataSplits) -> dict[str, Any]:
    return deployable_state(net, pruned_channels=net.pruned_channels, data=splits.name,
                            num_classes=splits.num_classes)  # fmt: skip


def _run_pipeline(config: PruneRunConfig, out: str | Path | None = None, *,
                  student: nn.Module | None = None, teacher: nn.Module | None = None,
                  splits: DataSplits | None = None, resume: bool = False,
                  overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """The registry's entry: ``student`` is the model to prune; the original teaches."""
    if teacher is not None:
        raise ValueError("pruning takes no teacher: the original model and its assistants teach")
    return run_prune(config, out, resume=resume, overwrite=overwrite, model=student,
                     splits=splits).summary  # fmt: skip


register(Pipeline("prune", _run_pipeline, lambda config: isinstance(config, PruneRunConfig),
                  PruneRunConfig, ("prune", PruneSettings)))  # fmt: skip
