"""The two-stage baselines of the CRD benchmark (AB, FSP, FT) as a pipeline.

Their reference code (RepDistiller ``helper/pretrain.py``) trains something on the method's
loss alone before distillation proper. Here both stages are ordinary run directories,
resumable on their own:

1. ``OUT/pretrain``: ``init_epochs`` (30) epochs at a constant learning rate (``init_lr``,
   default ``--lr``) with the method's term alone (CE weight 0). AB trains the student's
   layers and its connectors, FSP the student's layers, FT the paraphraser (student frozen;
   saved as ``OUT/pretrain/paraphraser.pt``);
2. ``OUT``: the student of stage 1 (AB, FSP: trained with CE, plus any other method of the
   spec, e.g. ``ab+kd``) or the fresh student (FT: with the translator and the frozen
   paraphraser, the method's usual terms).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path
from typing import Any

from torch import nn

from mhkd import checkpoint
from mhkd.config import ConfigError, RunConfig
from mhkd.methods.base import expand, method_class
from mhkd.pipelines.builder import fit_stage, load_teacher, stage_inputs
from mhkd.pipelines.registry import Pipeline, register
from mhkd.rundir import RunFiles

#: Methods with a pre-training stage, and whether stage 2 keeps the method (FT) or drops it.
PRETRAINED = {"ab": False, "fsp": False, "ft": True}
#: The term each one trains on in stage 1.
STAGE_TERM = {"ab": "ab", "fsp": "fsp", "ft": "ft_paraphrase"}


def pretraining_method(config: RunConfig) -> str | None:
    """The spec's method that needs a pre-training stage (at most one), or ``None``; FT with a
    paraphraser already given needs none."""
    names = [n for n in expand(config.method) if n in PRETRAINED]
    if len(names) > 1:
        raise ConfigError(f"method {config.method!r} combines {' and '.join(names)}, each with "
                          "its own pre-training stage; run one of them")  # fmt: skip
    if not names or (names[0] == "ft" and config.options["ft"].paraphraser is not None):
        return None
    return names[0]


def paraphraser_path(out: Path) -> Path:
    return out / "pretrain" / "paraphraser.pt"


def _stage_one_config(config: RunConfig, name: str) -> RunConfig:
    options = config.options[name]
    schedule = dataclasses.replace(config.schedule, epochs=options.init_epochs, milestones=[])
    optim = dataclasses.replace(config.optim, lr=options.init_lr or config.optim.lr)
    weights = {"ce": 0.0, STAGE_TERM[name]: 1.0}
    return dataclasses.replace(config, method=name, options={name: options}, weights=weights,
                               schedule=schedule, optim=optim)  # fmt: skip


def _stage_two_config(config: RunConfig, name: str, out: Path | None) -> RunConfig:
    if PRETRAINED[name]:
        options = dict(config.options)
        options[name] = dataclasses.replace(options[name], paraphraser=str(paraphraser_path(out)))
        return dataclasses.replace(config, options=options)
    rest = [n for n in expand(config.method) if n != name]
    dropped = set(method_class(name).weights)
    models = config.models
    if not rest:  # CE alone uses no teacher: a recipe's teacher file would be refused as unused
        models = dataclasses.replace(models, teacher=None, teacher_arch=None, teacher_layers=None,
                                     student_layers=None)  # fmt: skip
    return dataclasses.replace(
        config,
        models=models,
        method="+".join(rest) or "ce",
        options={n: config.options[n] for n in rest},
        weights={k: v for k, v in config.weights.items() if k not in dropped},
    )


def _save_paraphraser(stage_out: Path, target: Path) -> None:
    state = RunFiles(stage_out).load_last()["step"]["method"]
    prefix = "methods.ft.paraphraser."
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    checkpoint.save({"format": checkpoint.MODEL_FORMAT, "paraphraser": weights}, target)


def run_with_pretraining(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    splits: Any = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Stage 1 then stage 2 (see the module docstring); returns stage 2's summary."""
    name = pretraining_method(config)
    if out is None and PRETRAINED[name]:
        raise ConfigError(f"{name}'s paraphraser stage needs a run directory (out)")
    out = Path(out) if out is not None else None
    splits, student = stage_inputs(config, splits, student)
    teacher = load_teacher(config, teacher, splits.num_classes,
                           f"method {name} distils from a teacher")  # fmt: skip
    stage_out = out / "pretrain" if out is not None else None
    if not config.runtime.quiet:
        where = f" -> {stage_out}" if stage_out else ""
        print(f"{name}: pre-training stage, {config.options[name].init_epochs} epochs{where}",
              file=sys.stderr)  # fmt: skip
    first = copy.deepcopy(student).requires_grad_(False) if PRETRAINED[name] else student
    trained = fit_stage(_stage_one_config(config, name), stage_out, student=first,
                        teacher=teacher, splits=splits, resume=resume,
                        overwrite=overwrite).student  # fmt: skip
    if PRETRAINED[name]:
        _save_paraphraser(stage_out, paraphraser_path(out))
    else:
        student = trained
    facts = {"pretrain_method": name, "pretrain_dir": str(stage_out) if stage_out else None,
             "pretrain_epochs": config.options[name].init_epochs}  # fmt: skip
    return fit_stage(
        _stage_two_config(config, name, out), out, student=student, teacher=teacher,
        splits=splits, resume=resume, overwrite=overwrite, facts=facts,
    ).summary  # fmt: skip


def _takes(config: Any) -> bool:
    return isinstance(config, RunConfig) and pretraining_method(config) is not None


register(Pipeline("pretrain", run_with_pretraining, _takes))
