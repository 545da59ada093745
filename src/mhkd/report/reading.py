"""Find run directories below folders and read each one (config, metrics, summary)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mhkd.pipelines  # noqa: F401  (registers the pipelines' sections)
from mhkd.config import SECTIONS, flat_names, without_default_sections
from mhkd.rundir import CONFIG, METRICS, SUMMARY, RunFiles, RunSummary

RUN_FILES = (SUMMARY, METRICS, CONFIG)
UNKNOWN = "?"
NO_TEACHER = "-"


@dataclass
class Run:
    """One run directory as read from disk; ``summary`` is ``None`` while it is incomplete."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: RunSummary | None

    def get(self, key: str, default: Any = UNKNOWN) -> Any:
        """A field of the summary, else of the resolved config (by its flat name)."""
        if self.summary is not None and self.summary.get(key) is not None:
            return self.summary.get(key)
        value = flat_config(self.config).get(key)
        return default if value is None else value

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(data set, teacher, student, method): what a report row compares.

        A ``mhkd prune`` run is the original network, pruned, taught by (and compared with)
        that original.
        """
        data = str(self.get("data"))
        prune = self.get("prune", None)
        if isinstance(prune, dict):
            model = str(self.get("model"))
            how = prune.get("baseline") or f"cascade, {prune.get('assistants')} assistants"
            return data, model, f"{model} pruned", f"prune ({how}, keep {prune.get('keep')})"
        student = self.get("student", None) or self.get("model")
        return data, str(self.get("teacher", NO_TEACHER)), str(student), str(self.get("method"))


def flat_config(tree: dict[str, Any]) -> dict[str, Any]:
    """config.yaml by flat names, as the flags name them (``data``, ``epochs``, ``seed``).

    A config tree's section fields go by their flat names and its ``resolved`` values (zoo
    names of ``teacher`` and ``student``) take precedence; other top-level keys (``method``,
    ``weights``, a pruning run's ``prune``) and the flat files of older releases stay as they
    are.
    """
    flat = {k: v for k, v in tree.items() if not (k in SECTIONS and isinstance(v, dict))}
    for name, path in flat_names().items():
        section, leaf = path.split(".")
        node = tree.get(section)
        if isinstance(node, dict) and leaf in node:
            flat[name] = node[leaf]
    resolved = tree.get("resolved")
    if isinstance(resolved, dict):
        flat.update(resolved)
    return flat


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories among ``paths`` and below them (a directory with any run file).

    The search does not descend into a run: folders inside one (e.g. a pruning run's
    ``stage1/``) belong to it.
    """
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise ValueError(f"not a directory: {path}")
        runs = []
        for folder, subfolders, _ in os.walk(path):
            if _is_run(Path(folder)):
                runs.append(Path(folder))
                subfolders.clear()
            subfolders.sort()
        if not runs:
            raise ValueError(f"no run directories (with {' or '.join(RUN_FILES)}) in {path}")
        found.update(dict.fromkeys(runs))
    return list(found)


def _is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def read_run(path: str | Path) -> Run:
    """Read a run directory; a last metrics line cut short by a kill is ignored."""
    run = RunFiles(path)
    config = without_default_sections(run.read_config())
    return Run(Path(path), config, run.read_metrics(), run.read_summary())

