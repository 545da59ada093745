"""The proxy teacher of heterogeneous distillation (Passalis et al. 2020), as a pipeline.

A teacher of another architecture family is a poor direct model for a student's intermediate
layers. The proxy is the student's own family and depth at about twice its width. Three
stages, each an ordinary run directory resumable on its own:

1. ``OUT/aux/ce``: the proxy trained with cross-entropy;
2. ``OUT/aux/distill``: the proxy distilled from the real teacher by infoflow on the final
   representation only; the result is saved as ``OUT/aux/proxy.pt`` (reuse it with
   ``--aux OUT/aux/proxy.pt`` for other students);
3. ``OUT``: the student distilled with the configured method(s) from the proxy.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from torch import nn

from mhkd import checkpoint, models
from mhkd.config import ConfigError, RunConfig, check_range, refuse_unused
from mhkd.methods.base import expand, option
from mhkd.methods.layers import final_layer
from mhkd.pipelines.builder import fit_stage, load_teacher, stage_inputs
from mhkd.pipelines.loading import deployable_state, load_model
from mhkd.pipelines.registry import Pipeline, register

#: The proxy's width relative to the student, as in the paper ("about twice its width").
PROXY_WIDTH = 2.0


@dataclasses.dataclass
class AuxConfig:
    """Information flow's proxy teacher (Passalis et al. 2020), trained before the student.

    ``mode``: ``none`` (the real teacher teaches every layer), ``auto`` (a proxy of the
    student's family at ``width`` times its width: CE, then infoflow from the teacher on the
    final layer, in ``OUT/aux/``), or a checkpoint of a proxy trained before.
    """

    mode: str = option(
        "none",
        "infoflow's teacher of the layers: auto, a proxy checkpoint, or none (the real teacher)",
        flag="aux",
    )
    width: float = option(PROXY_WIDTH, "proxy width relative to the student", flag="aux-width")
    epochs: int | None = option(
        None, "proxy CE epochs (default: --epochs; 0 skips)", flag="aux-epochs"
    )
    distill_epochs: int | None = option(
        None, "proxy distillation epochs (default: --epochs; 0 skips)", flag="aux-distill-epochs"
    )

    def __post_init__(self) -> None:
        check_range("--aux-epochs", self.epochs, 0, 100_000)
        check_range("--aux-distill-epochs", self.distill_epochs, 0, 100_000)
        if not self.width > 0:  # also refuses NaN
            raise ConfigError(f"--aux-width must be positive, got {self.width}")
        if self.mode == "none":
            defaults = AuxConfig.__dataclass_fields__
            refuse_unused(
                (getattr(self, name) != defaults[name].default, f"--aux-{flag}",
                 "it needs --aux (a proxy teacher)")
                for name, flag in (("width", "width"), ("epochs", "epochs"),
                                   ("distill_epochs", "distill-epochs"))
            )  # fmt: skip


@dataclasses.dataclass
class ProxyRunConfig(RunConfig):
    """A run whose student is taught by a proxy teacher (the ``aux`` section)."""

    aux: AuxConfig = dataclasses.field(default_factory=AuxConfig)


def plain(config: RunConfig) -> RunConfig:
    """The run of ``config`` without a pipeline's sections: what one stage is."""
    return RunConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(RunConfig)})


def build_proxy(student: nn.Module, width: float = PROXY_WIDTH) -> nn.Module:
    """A fresh zoo model of the student's family and depth, ``width`` times as wide."""
    spec = checkpoint.model_spec(student)
    if spec is None:
        raise ValueError(
            f"cannot build a proxy of {type(student).__name__}, which is not a zoo model; "
            "train your own proxy and pass its checkpoint (--aux CKPT)"
        )
    if not width > 0:
        raise ValueError(f"--aux-width must be positive, got {width}")
    kwargs = dict(spec.get("kwargs", {}))
    kwargs["width_mult"] = kwargs.get("width_mult", 1.0) * width
    return models.create(spec["name"], spec["num_classes"], **kwargs)


def proxy_checkpoint(out: str | Path) -> Path:
    """Where the proxy trained for run directory ``out`` is saved (its final weights)."""
    return Path(out) / "aux" / "proxy.pt"


def _no_cache(runtime: Any) -> Any:
    """The runtime of a teacherless stage: a teacher cache serves nothing there."""
    return dataclasses.replace(
        runtime, teacher_cache=None, teacher_cache_topk=None, teacher_cache_mmap=False
    )


def train_proxy(
    proxy: nn.Module,
    teacher: nn.Module,
    config: ProxyRunConfig,
    splits: Any,
    out: Path | None,
    resume: bool = False,
    overwrite: bool = False,
) -> nn.Module:
    """Stages 1 and 2 (see the module docstring); returns the trained proxy."""
    aux = config.aux
    teacher_layer = final_layer(teacher, "teacher", config.models.teacher_layers)
    proxy_layer = final_layer(proxy, "proxy")
    for phase, epochs in (("ce", aux.epochs), ("distill", aux.distill_epochs)):
        epochs = config.schedule.epochs if epochs is None else epochs
        if epochs < 1:
            continue
        distilling = phase == "distill"
        schedule = dataclasses.replace(
            config.schedule,
            epochs=epochs,
            milestones=config.schedule.milestones if epochs == config.schedule.epochs else None,
        )
        phase_config = dataclasses.replace(
            plain(config),
            method="infoflow" if distilling else "ce",
            options={"infoflow": config.options.get("infoflow")} if distilling else {},
            weights={},
            schedule=schedule,
            models=dataclasses.replace(
                config.models,
                teacher=None,
                teacher_layers=[teacher_layer] if distilling else None,
                student_layers=[proxy_layer] if distilling else None,
            ),
            runtime=config.runtime if distilling else _no_cache(config.runtime),
        )
        phase_out = out / "aux" / phase if out is not None else None
        if not config.runtime.quiet:
            where = f" -> {phase_out}" if phase_out else ""
            print(f"proxy teacher: {phase} phase, {epochs} epochs{where}", file=sys.stderr)
        proxy = fit_stage(phase_config, phase_out, student=proxy,
                          teacher=teacher if distilling else None, splits=splits, resume=resume,
                          overwrite=overwrite).student  # fmt: skip
    if out is not None:
        checkpoint.save(deployable_state(proxy), proxy_checkpoint(out))
    return proxy


def run_with_proxy(
    config: ProxyRunConfig,
    out: str | Path | None = None,
    *,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    splits: Any = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The student taught by a proxy (``config.aux.mode``: ``auto`` or a proxy checkpoint)."""
    if "infoflow" not in expand(config.method):
        raise ConfigError(
            f"--aux is information flow's proxy teacher; method {config.method!r} has no infoflow"
        )
    out = Path(out) if out is not None else None
    splits, student = stage_inputs(config, splits, student)  # the proxy is seeded after it
    mode = config.aux.mode
    if mode == "auto":
        real_teacher = load_teacher(config, teacher, splits.num_classes,
                                    "--aux auto trains the proxy from the teacher")  # fmt: skip
        proxy = train_proxy(build_proxy(student, config.aux.width), real_teacher, config, splits,
                            out, resume, overwrite)  # fmt: skip
        where = str(proxy_checkpoint(out)) if out is not None else None
    else:
        proxy = load_model(mode, splits.num_classes, trained="--aux")
        where = mode
    student_config = dataclasses.replace(  # config.yaml keeps the aux section
        config, models=dataclasses.replace(config.models, teacher=None)
    )
    facts = {
        "infoflow_aux": "auto" if mode == "auto" else "checkpoint",
        "infoflow_aux_checkpoint": where,
        "infoflow_aux_model": (checkpoint.model_spec(proxy) or {}).get("name"),
        "infoflow_aux_params": sum(p.numel() for p in proxy.parameters()),
    }
    return fit_stage(
        student_config, out, student=student, teacher=proxy.requires_grad_(False).eval(),
        splits=splits, resume=resume, overwrite=overwrite, facts=facts,
    ).summary  # fmt: skip


def _takes(config: Any) -> bool:
    return isinstance(config, ProxyRunConfig) and config.aux.mode != "none"


register(Pipeline("proxy", run_with_proxy, _takes, ProxyRunConfig, ("aux", AuxConfig)))
