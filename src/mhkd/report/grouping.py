"""Which runs are seeds of one setting: group them, and say how the groups that are not differ.

Runs pool into one group only when they compare the same (data set, teacher, student, method)
and their resolved configurations (``config.yaml``) agree on every field but those in
:data:`RUNTIME_FIELDS`: the seed, and settings of where and how fast a run goes that leave what
it learns unchanged. Runs of one comparison that differ otherwise (batch size, schedule,
precision, loss weights, ...) form separate groups, each labelled with its values of the
differing fields.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mhkd.report.reading import NO_TEACHER, Run

#: Configuration fields that do not split a group. A name matches that field at any depth of
#: the configuration tree (``device`` matches ``runtime.device``); a dotted name matches the
#: field with that path only.
RUNTIME_FIELDS = frozenset(
    {
        "seed",  # what a group is pooled over
        "out", "resume", "overwrite", "quiet", "tensorboard", "data_dir",  # where, what is shown
        "device", "eval_batch_size", "compile", "channels_last",  # where and how fast: same math
        "teacher_cache", "teacher_cache_mmap",  # cached teacher logits equal the online ones
    }
)  # fmt: skip
#: At most this many differing fields are spelled out in a label; a note lists them all.
LABEL_FIELDS = 3
UNSET = "unset"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys (``{"weights": {"kd": 1}}`` -> weights.kd)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def is_runtime(name: str) -> bool:
    return name in RUNTIME_FIELDS or name.rsplit(".", 1)[-1] in RUNTIME_FIELDS


def setting(config: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The fields of a resolved configuration that define what a run learns, as sorted
    (name, value) pairs; values as text, strings bare and everything else as JSON."""
    return tuple(
        sorted(
            (name, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
            for name, value in flatten(config).items()
            if not is_runtime(name)
        )
    )


@dataclass
class Group:
    """The complete runs of one (data set, teacher, student, method) and one setting.

    ``variant`` holds this group's values of the fields in which it differs from the other
    groups of the same comparison (empty when there are none).
    """

    key: tuple[str, str, str, str]
    setting: tuple[tuple[str, str], ...] = ()
    runs: list[Run] = field(default_factory=list)
    variant: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> str:
        return self.key[0]

    @property
    def teacher(self) -> str:
        return self.key[1]

    @property
    def student(self) -> str:
        return self.key[2]

    @property
    def method(self) -> str:
        return self.key[3]

    @property
    def variant_text(self) -> str:
        """``batch_size=32, lr=0.1`` (at most :data:`LABEL_FIELDS` fields, then ``+N more``)."""
        items = [f"{name}={value}" for name, value in self.variant.items()]
        if len(items) > LABEL_FIELDS:
            items = [*items[:LABEL_FIELDS], f"+{len(items) - LABEL_FIELDS} more"]
        return ", ".join(items)

    @property
    def label(self) -> str:
        pair = self.student if self.teacher == NO_TEACHER else f"{self.teacher} -> {self.student}"
        variant = f"; {self.variant_text}" if self.variant else ""
        return f"{pair} ({self.method}{variant})"

    def values(self, key: str) -> list[float]:
        values = (run.summary.get(key) for run in self.runs)
        return [float(value) for value in values if value is not None]

    def stat(self, key: str) -> tuple[float, float | None]:
        """Mean and sample std (``None`` for a single run) of a summary field."""
        return mean_std(self.values(key))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` when there is one value)."""
    if not values:
        return float("nan"), None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def group_runs(runs: Iterable[Run]) -> tuple[list[Group], list[Run]]:
    """Complete runs grouped by comparison and setting (sorted), and the incomplete runs."""
    groups: dict[tuple[Any, ...], Group] = {}
    incomplete = []
    for run in runs:
        if run.summary is None:
            incomplete.append(run)
            continue
        config = setting(run.config)
        groups.setdefault((run.key, config), Group(run.key, config)).runs.append(run)
    by_key: dict[tuple[str, str, str, str], list[Group]] = {}
    for group in groups.values():
        by_key.setdefault(group.key, []).append(group)
    for siblings in by_key.values():
        names = differing_fields([g.setting for g in siblings])
        for group in siblings:
            values = dict(group.setting)
            group.variant = {name: values.get(name, UNSET) for name in names}
    return sorted(groups.values(), key=lambda g: (g.key, g.variant_text)), incomplete


def differing_fields(settings: Sequence[tuple[tuple[str, str], ...]]) -> list[str]:
    """The field names whose value (or presence) is not the same in all ``settings``."""
    maps = [dict(s) for s in settings]
    names = sorted({name for m in maps for name in m})
    return [name for name in names if len({m.get(name, UNSET) for m in maps}) > 1]


@dataclass
class TeacherInfo:
    """What is known of a group's teacher: size from the summaries, accuracy from its runs."""

    name: str
    params: float | None
    macs: float | None
    accuracy: float | None


def teacher_info(group: Group, groups: Sequence[Group]) -> TeacherInfo | None:
    """The teacher's params/MACs (recorded in the students' summaries or from the teacher's own
    runs among the reported ones, trained with ``ce`` on the same data) and its accuracy."""
    if group.teacher == NO_TEACHER:
        return None
    own = [
        g
        for g in groups
        if g.data == group.data and g.method == "ce" and g.teacher == NO_TEACHER
        and g.student == group.teacher
    ]  # fmt: skip
    runs = [run.summary for g in own for run in g.runs]
    params = (
        group.values("teacher_params")
        or group.values("params_before")  # a pruning run's original network
        or [float(s.params) for s in runs]
    )
    macs = (
        group.values("teacher_macs") or group.values("macs_before") or [float(s.macs) for s in runs]
    )
    accuracy = [float(s.test_acc) for s in runs]
    return TeacherInfo(
        group.teacher,
        statistics.fmean(params) if params else None,
        statistics.fmean(macs) if macs else None,
        statistics.fmean(accuracy) if accuracy else None,
    )
