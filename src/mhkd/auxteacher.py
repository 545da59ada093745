"""The auxiliary (proxy) teacher of heterogeneous distillation (Passalis et al. 2020).

A teacher of another architecture family is a poor direct model for a student's intermediate
layers. The proxy is the student's own family and depth at about twice its width: it is trained
with cross-entropy, then distilled from the real teacher on the final representation only, and
then it teaches the student on every matched layer. Each phase is an ordinary run of the one
training loop, so the proxy is a run directory of its own (``OUT/aux/ce``, ``OUT/aux/distill``)
whose ``checkpoints/last.pt`` other students reuse (``--aux CKPT``); an interrupted phase
continues from its last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path
from typing import Any

from torch import nn

from mhkd import checkpoint, models
from mhkd.data import DataSplits

#: The proxy's width relative to the student, as in the paper ("about twice its width").
PROXY_WIDTH = 2.0


def build_proxy(student: nn.Module, width: float = PROXY_WIDTH) -> nn.Module:
    """A fresh zoo model of the student's family and depth, ``width`` times as wide."""
    spec = checkpoint.model_spec(student)
    if spec is None:
        raise ValueError(
            f"cannot build a proxy of {type(student).__name__}, which is not a zoo model; "
            "pass your own proxy module (aux=module) or a proxy checkpoint (--aux CKPT)"
        )
    if not width > 0:
        raise ValueError(f"proxy width must be positive, got {width}")
    kwargs = dict(spec.get("kwargs", {}))
    kwargs["width_mult"] = kwargs.get("width_mult", 1.0) * width
    return models.create(spec["name"], spec["num_classes"], **kwargs)


def proxy_checkpoint(out: str | Path) -> Path:
    """Where the proxy trained into run directory ``out`` is saved (its final weights)."""
    return Path(out) / "aux" / "distill" / "checkpoints" / "last.pt"


def train_proxy(
    proxy: nn.Module,
    teacher: nn.Module,
    data: DataSplits,
    config: Any,
    teacher_layer: str,
    proxy_layer: str,
    out: str | Path | None = None,
    ce_epochs: int | None = None,
    distill_epochs: int | None = None,
    method_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Train ``proxy``'s weights: CE, then infoflow from ``teacher`` on one layer pair.

    ``config`` is the :class:`~mhkd.train.TrainConfig` the phases copy (device, batch size, lr,
    seed ...); each phase runs ``ce_epochs``/``distill_epochs`` epochs (``None``: as many as
    ``config``; 0 skips the phase). ``method_options`` go to the distillation phase's infoflow.
    With ``out``, the phases are saved under ``out/aux/ce`` and ``out/aux/distill``.
    """
    from mhkd.train import Trainer

    # The loop leaves its forward hooks on the models it runs: it trains copies, so the
    # caller's proxy and teacher carry none, and the proxy receives the trained weights.
    work, teacher = copy.deepcopy(proxy).requires_grad_(True), copy.deepcopy(teacher)
    phases = (
        ("ce", ce_epochs, {}),
        ("distill", distill_epochs, {"infoflow": {**(method_options or {}), "aux": "none"}}),
    )
    for phase, epochs, options in phases:
        epochs = config.epochs if epochs is None else epochs
        if epochs < 1:
            continue
        phase_out = Path(out) / "aux" / phase if out is not None else None
        if not config.quiet:
            where = f" -> {phase_out}" if phase_out else ""
            print(f"infoflow: proxy teacher, {phase} phase, {epochs} epochs{where}",
                  file=sys.stderr)
        phase_config = dataclasses.replace(
            config,
            method="ce" if phase == "ce" else "infoflow",
            epochs=epochs,
            milestones=config.milestones if epochs == config.epochs else None,
            weights={},
        )
        distilling = phase == "distill"
        run = Trainer(
            work,
            data,
            phase_config,
            out=phase_out,
            teacher=teacher if distilling else None,
            teacher_layers=[teacher_layer] if distilling else None,
            student_layers=[proxy_layer] if distilling else None,
            method_options=options,
            extra_config={"aux_phase": phase, "proxy": checkpoint.model_spec(work)},
        )
        if phase_out is not None and (phase_out / "checkpoints" / "last.pt").is_file():
            run.resume()
        run.fit()
    proxy.load_state_dict(work.state_dict())
    return proxy
