"""The two-stage schedule, as a resumable run directory, and the Python API ``prune``.

Stage 1 (``OUT/stage1/``): the cascade trains jointly, masks recomputed from the scores every
step; at its end the masks freeze and every model is exported physically smaller. Stage 2
(``OUT/``, the usual run layout of :class:`mhkd.train.Trainer`): the exported student is
fine-tuned with KD, its teacher moving one assistant up whenever the student beats it.
Fine-tuning the exported student equals fine-tuning the masked one with frozen masks (the
removed channels are constant zeros). The baselines replace stage 1 by a one-shot pruning
(magnitude or Taylor scores) and fine-tune with cross-entropy for both stages' epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mhkd import api, checkpoint, hardware
from mhkd.data import DataSplits, make_loaders
from mhkd.models.complexity import profile
from mhkd.prune.baselines import BASELINES, baseline_scores
from mhkd.prune.cascade import Cascade, cascade_keeps, cascade_loss, hint_loss
from mhkd.prune.export import export, latency_ms, resize
from mhkd.prune.groups import ModelLayout, PruneError, find_layout
from mhkd.prune.masks import MaskedNet, check_keep, magnitude_scores
from mhkd.taps import Taps
from mhkd.train import (
    CHECK_FINITE_EVERY,
    TrainConfig,
    Trainer,
    check_finite,
    evaluate,
    set_seed,
    trim_metrics,
    weighted_sum,
)

STAGE1 = "stage1"


@dataclass
class PruneConfig:
    """Settings of a pruning run; defaults follow the paper's CIFAR schedule (80 + 80 epochs).

    ``finetune_epochs=None`` means as many as ``epochs``. ``baseline`` ("magnitude" or
    "taylor") replaces the cascade by one-shot pruning and CE fine-tuning.
    """

    keep: float = 0.4
    assistants: int = 3
    epochs: int = 80
    finetune_epochs: int | None = None
    batch_size: int = 64
    eval_batch_size: int = 512
    lr: float = 0.008
    momentum: float = 0.9
    weight_decay: float = 4e-4
    score_optimizer: str = "rmsprop"
    score_lr: float = 1e-3
    temperature: float = 15.0
    kd_weight: float = 0.4
    hint_weight: float = 0.0
    hint_layers: list[str] | None = None
    baseline: str | None = None
    taylor_batches: int = 10
    latency_repeats: int = 10
    seed: int = 0
    precision: str = "auto"
    device: str | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        check_keep(self.keep)
        cascade_keeps(self.keep, self.assistants)
        if self.epochs < 1 or (self.finetune_epochs is not None and self.finetune_epochs < 0):
            raise PruneError("epochs must be at least 1 (fine-tuning epochs at least 0)")
        if self.score_optimizer not in ("rmsprop", "sgd"):
            raise PruneError(f"unknown score optimizer {self.score_optimizer!r}; rmsprop or sgd")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise PruneError(f"unknown baseline {self.baseline!r}; choose from magnitude, taylor")

    @property
    def stage2_epochs(self) -> int:
        return self.epochs if self.finetune_epochs is None else self.finetune_epochs


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
        """Trainer logger: move up after an epoch whose test accuracy beats the teacher's."""
        if record["test_acc"] > self.accuracies[self.index] and self.index + 1 < len(self.teachers):
            self.index += 1

    def replay(self, metrics: Path) -> None:
        """Recover the rung after a resume from the epochs already logged."""
        self.index = 0
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                if line:
                    self.observe(json.loads(line))


def prune(
    model: str | Path | nn.Module,
    data: str | DataSplits = "digits",
    *,
    out: str | Path | None = None,
    resume: bool = False,
    data_dir: str | Path | None = None,
    **config: Any,
) -> PruneResult:
    """Prune ``model`` (a trained checkpoint, zoo name or module) to ``keep`` of its channels.

    >>> mhkd.prune.prune("runs/teacher/checkpoints/best.pt", "digits", keep=0.4, assistants=3)
    """
    cfg = PruneConfig(**config)
    splits = api.load_data(data, data_dir)
    set_seed(cfg.seed)
    original = api.load_model(model, splits.num_classes)
    return Pruning(original, splits, cfg, out, resume).run()


class Pruning:
    """One pruning run; ``run()`` does whichever stages the run directory does not have yet."""

    def __init__(
        self,
        original: nn.Module,
        splits: DataSplits,
        cfg: PruneConfig,
        out: str | Path | None = None,
        resume: bool = False,
    ):
        if resume and out is None:
            raise ValueError("resume needs the run directory (out)")
        self.cfg = cfg
        self.splits = splits
        self.out = Path(out) if out is not None else None
        self.resume = resume
        self.device = torch.device(cfg.device) if cfg.device else hardware.default_device()
        self.precision = hardware.resolve_precision(cfg.precision, self.device)
        self.input_shape = tuple(splits.train.images.shape[1:])
        self.original = original.to(self.device)
        self.layout: ModelLayout = find_layout(self.original, self.input_shape)
        self.original.eval().requires_grad_(False)
        self.keeps = cascade_keeps(cfg.keep, 0 if cfg.baseline else cfg.assistants)

    # ---- run directory ----------------------------------------------------------------------
    def _stage1(self, *parts: str) -> Path | None:
        return self.out.joinpath(STAGE1, *parts) if self.out is not None else None

    def _describe(self) -> dict[str, Any]:
        spec = checkpoint.model_spec(self.original)
        return {
            "prune": dataclasses.asdict(self.cfg),
            "model": spec["name"] if spec else type(self.original).__name__,
            "keeps": self.keeps,
            "prunable_groups": len(self.layout.groups),
            "prunable_channels": sum(g.size for g in self.layout.groups),
        }

    def run(self) -> PruneResult:
        if self.out is not None and not self.resume:
            for stale in (self._stage1("metrics.jsonl"), self.out / "metrics.jsonl"):
                stale.unlink(missing_ok=True)
        done = self._stage1("summary.json")
        if self.resume and done is not None and done.is_file():
            student, ladder, stage1 = self._load_stage1()
        else:
            student, ladder, stage1 = self._run_stage1()
        return self._run_stage2(student, ladder, stage1)

    # ---- stage 1 ---------------------------------------------------------------------------
    def _run_stage1(self) -> tuple[nn.Module, list[nn.Module], dict[str, Any]]:
        cfg = self.cfg
        train_loader, test_loader = self._loaders()
        if cfg.baseline:
            scores = baseline_scores(
                cfg.baseline, self.original, self.layout.groups, train_loader, cfg.taylor_batches
            )
            models = [
                MaskedNet(copy.deepcopy(self.original), self.layout.groups, cfg.keep, scores, True)
            ]
        else:
            models = list(self._train_cascade(train_loader, test_loader).models)
        for masked in models:
            masked.frozen = True
            masked.eval()
        exported = [export(m, self.input_shape).to(self.device) for m in models]
        for net in exported:
            net.requires_grad_(True)
        probe = next(iter(test_loader)).images
        with torch.no_grad():
            diff = (models[0](probe) - exported[0].eval()(probe)).abs().max().item()
        ladder = exported[1:]
        accuracies = [evaluate(m, test_loader, self.device, self.precision) for m in exported]
        stage1 = {
            "test_acc_models": accuracies,
            "kept_fractions": [m.kept_fraction() for m in models],
            "export_max_abs_diff": diff,
            "ladder_test_acc": accuracies[1:] + [self._original_accuracy(test_loader)],
        }
        if self.out is not None:
            for i, net in enumerate(exported):
                name = "student.pt" if i == 0 else f"assistant{i}.pt"
                checkpoint.save(_exported_state(net, self.splits), self._stage1(name))
            self._stage1("summary.json").write_text(json.dumps(stage1, indent=2) + "\n")
        return exported[0], ladder, stage1

    def _original_accuracy(self, test_loader) -> float:
        return evaluate(self.original, test_loader, self.device, self.precision)

    def _load_stage1(self) -> tuple[nn.Module, list[nn.Module], dict[str, Any]]:
        stage1 = json.loads(self._stage1("summary.json").read_text())
        nets = []
        for i in range(len(stage1["test_acc_models"])):
            name = "student.pt" if i == 0 else f"assistant{i}.pt"
            state = checkpoint.load(self._stage1(name), map_location=self.device)
            net = resize(copy.deepcopy(self.original), state["pruned_channels"])
            net.load_state_dict(state["model"])
            nets.append(net.requires_grad_(True))
        return nets[0], nets[1:], stage1

    def _loaders(self):
        return make_loaders(
            self.splits,
            self.cfg.batch_size,
            device=self.device,
            seed=self.cfg.seed,
            eval_batch_size=self.cfg.eval_batch_size,
        )

    def _train_cascade(self, train_loader, test_loader) -> Cascade:
        cfg = self.cfg
        hint_layers = (cfg.hint_layers or list(self.layout.shared[-3:])) if cfg.hint_weight else []
        scores = magnitude_scores(self.original, self.layout.groups)
        cascade = Cascade(self.original, self.layout, self.keeps, scores, hint_layers)
        cascade.to(self.device).requires_grad_(True).train()
        teacher_taps = Taps(self.original, hint_layers)
        optimizer = torch.optim.SGD(
            cascade.weight_parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
        )
        score_params = cascade.score_parameters()
        score_optimizer: torch.optim.Optimizer = (
            torch.optim.RMSprop(score_params, lr=cfg.score_lr)
            if cfg.score_optimizer == "rmsprop"
            else torch.optim.SGD(score_params, lr=cfg.score_lr, momentum=0.9)
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs)
        weights = {"ce": 1.0, "kd": cfg.kd_weight, "hint": cfg.hint_weight}
        epoch = 0
        last = self._stage1("checkpoints", "last.pt")
        if last is not None:
            last.parent.mkdir(parents=True, exist_ok=True)
            config = yaml.safe_dump(self._describe(), sort_keys=False)
            self._stage1("config.yaml").write_text(config)
        if self.resume and last is not None and last.is_file():
            state = checkpoint.load(last, map_location=self.device)
            if state.get("keeps") != self.keeps or state.get("data") != self.splits.name:
                raise checkpoint.CheckpointError(
                    f"{last} is a cascade with keeps {state.get('keeps')} on "
                    f"{state.get('data')!r}, not {self.keeps} on {self.splits.name!r}"
                )
            cascade.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            score_optimizer.load_state_dict(state["score_optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            epoch = state["epoch"]
            if self._stage1("metrics.jsonl") is not None:
                trim_metrics(self._stage1("metrics.jsonl"), epoch)
        while epoch < cfg.epochs:
            started = time.perf_counter()
            train_loader.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            sums: dict[str, torch.Tensor] = {}
            for step, batch in enumerate(train_loader):
                with hardware.autocast(self.device, self.precision):
                    with torch.no_grad():
                        teacher_logits = self.original(batch.images)
                    logits = cascade(batch.images)
                terms = cascade_loss(logits, teacher_logits, batch.labels, cfg.temperature)
                if hint_layers:
                    terms["hint"] = hint_loss(cascade.hint_features(), teacher_taps.pop())
                loss = weighted_sum(terms, weights)
                for name, value in terms.items():  # summed on the device: no sync per step
                    sums[name] = sums.get(name, 0.0) + value.detach().float()
                if step % CHECK_FINITE_EVERY == 0:
                    check_finite(sums, epoch)
                optimizer.zero_grad(set_to_none=True)
                score_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                cascade.cascade_score_grads()
                optimizer.step()
                score_optimizer.step()
            check_finite(sums, epoch)  # before anything of this epoch is saved
            scheduler.step()
            epoch += 1
            accuracies = [
                evaluate(m, test_loader, self.device, self.precision) for m in cascade.models
            ]
            record = {
                "stage": 1,
                "epoch": epoch - 1,
                "lr": lr,
                **{f"loss_{k}": v.item() / len(train_loader) for k, v in sums.items()},
                "test_acc": accuracies[0],
                "test_acc_models": accuracies,
                "seconds": time.perf_counter() - started,
            }
            self._log(record)
            if last is not None:
                state = {
                    "format": "mhkd-prune/1",
                    "model": cascade.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "score_optimizer": score_optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "keeps": self.keeps,
                    "data": self.splits.name,
                }
                checkpoint.save(state, last)
        cascade.close_taps()
        teacher_taps.close()
        return cascade

    def _log(self, record: dict[str, Any]) -> None:
        if not self.cfg.quiet:
            accs = " ".join(f"{a:.2f}" for a in record["test_acc_models"])
            print(
                f"stage 1 epoch {record['epoch'] + 1}/{self.cfg.epochs} lr={record['lr']:.4g} "
                f"ce={record['loss_ce']:.3f} kd={record['loss_kd']:.3f} test_acc={accs}",
                file=sys.stderr,
            )
        path = self._stage1("metrics.jsonl")
        if path is not None:
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    # ---- stage 2 ---------------------------------------------------------------------------
    def _run_stage2(
        self, student: nn.Module, ladder: list[nn.Module], stage1: dict[str, Any]
    ) -> PruneResult:
        cfg = self.cfg
        epochs = cfg.epochs + cfg.stage2_epochs if cfg.baseline else cfg.stage2_epochs
        teacher = None
        if not cfg.baseline:
            teacher = TeacherLadder([*ladder, self.original], stage1["ladder_test_acc"])
        if epochs == 0:
            unchanged = {"test_acc": stage1["test_acc_models"][0]}
            return self._finish(student, stage1, unchanged, teacher)
        trainer = Trainer(
            student,
            self.splits,
            TrainConfig(
                epochs=epochs,
                batch_size=cfg.batch_size,
                eval_batch_size=cfg.eval_batch_size,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=cfg.momentum > 0,
                schedule="cosine",
                seed=cfg.seed,
                precision=cfg.precision,
                channels_last="off",
                device=cfg.device,
                method="ce" if cfg.baseline else "kd",
                weights={} if cfg.baseline else {"ce": 1.0, "kd": cfg.kd_weight},
                quiet=cfg.quiet,
            ),
            out=self.out,
            teacher=teacher,
            method_options=None if cfg.baseline else {"kd": {"temperature": cfg.temperature}},
            extra_config=self._describe(),
            loggers=[teacher.observe] if teacher is not None else [],
        )
        if self.resume and self.out is not None and (self.out / "checkpoints/last.pt").is_file():
            trainer.resume()
            if teacher is not None:
                teacher.replay(self.out / "metrics.jsonl")
        summary = trainer.fit()
        return self._finish(trainer.student, stage1, summary, teacher)

    def _finish(
        self,
        student: nn.Module,
        stage1: dict[str, Any],
        summary: dict[str, Any] | None,
        teacher: TeacherLadder | None,
    ) -> PruneResult:
        before = profile(self.original, self.input_shape)
        after = profile(student, self.input_shape)
        repeats = self.cfg.latency_repeats
        latency = {
            name: {
                f"batch{b}": round(latency_ms(net, self.input_shape, b, repeats), 3)
                for b in (1, 64)
            }
            for name, net in (("before", self.original), ("after", student))
        }
        summary = {
            **(summary or {}),
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
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return PruneResult(student, summary)


def _exported_state(net: nn.Module, splits: DataSplits) -> dict[str, Any]:
    return {
        "format": "mhkd/1",
        "arch": checkpoint.model_spec(net),
        "model": net.state_dict(),
        "pruned_channels": net.pruned_channels,
        "data": splits.name,
        "num_classes": splits.num_classes,
    }
