"""Pipelines, registered like methods: which one runs a configuration, and with which tree.

A pipeline is a sequence of runs of the builder (each an ordinary run directory) behind one
function ``run(config, out, *, student, teacher, splits, resume, overwrite) -> summary``. It
may own a section of the configuration tree (information flow's proxy teacher owns ``aux``):
its dataclass is registered with :mod:`mhkd.config`, so the section gets its flags and keywords
like the core ones, and a tree holding it is built as the pipeline's configuration class.
:func:`run` (what ``mhkd.api.run`` and the CLI call) hands a configuration to the first
registered pipeline that takes it, else to a plain run of the builder.

Add a pipeline::

    register(Pipeline("name", run_name, takes=lambda config: ..., config=NameRunConfig,
                      section=("name", NameSettings)))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mhkd import config as cfg
from mhkd.config import RunConfig
from mhkd.pipelines.builder import fit
from mhkd.rundir import require_resumable


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A registered pipeline: its name, its entry point, which configurations it takes, the
    configuration class it reads and the section of the tree it owns (if any)."""

    name: str
    run: Callable[..., dict[str, Any]]
    takes: Callable[[Any], bool]
    config: type = RunConfig
    section: tuple[str, type] | None = None


_PIPELINES: dict[str, Pipeline] = {}


def register(pipeline: Pipeline) -> Pipeline:
    """Add ``pipeline``. The section of a pipeline that extends a training run (the proxy's
    ``aux``) gets flat flags and keywords; one with a configuration of its own (pruning) keeps
    its flags on its command."""
    if pipeline.name in _PIPELINES:
        raise ValueError(f"pipeline {pipeline.name!r} is registered twice")
    if pipeline.section is not None and issubclass(pipeline.config, RunConfig):
        cfg.register_section(*pipeline.section)  # flags and keywords beside the core ones
    _PIPELINES[pipeline.name] = pipeline
    return pipeline


def registered() -> list[Pipeline]:
    return list(_PIPELINES.values())


def config_class(tree: dict[str, Any]) -> type:
    """The configuration class of ``tree``: that of the pipeline whose section it holds."""
    owners = [p for p in _PIPELINES.values() if p.section is not None and p.section[0] in tree]
    return owners[0].config if owners else RunConfig


def build_config(tree: dict[str, Any], where: str = "") -> RunConfig:
    """The configuration of a training or distillation tree (recipe, flags or keywords)."""
    return cfg.build(tree, where, config_class(tree))


def read_recipe(path: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """A recipe file's configuration (of its pipeline's class) and its notes."""
    tree, notes = cfg.read_recipe(path, cls=None)
    return build_config(tree, str(path)), notes


def select(config: Any) -> Pipeline | None:
    """The registered pipeline that takes ``config``; ``None``: a plain run of the builder."""
    taking = [p for p in _PIPELINES.values() if p.takes(config)]
    if len(taking) > 1:
        raise cfg.ConfigError(
            f"this configuration asks for {' and '.join(p.name for p in taking)}, each a "
            "pipeline of its own stages; run one of them"
        )
    return taking[0] if taking else None


def run(config: Any, out: str | Path | None = None, *, resume: bool = False,
        **objects: Any) -> dict[str, Any]:  # fmt: skip
    """Run ``config`` into ``out`` through the pipeline that takes it; returns the summary."""
    if resume:
        require_resumable(out)  # before any stage starts afresh in an empty folder
    pipeline = select(config)
    if pipeline is None:
        return fit(config, out, resume=resume, **objects)
    return pipeline.run(config, out, resume=resume, **objects)
