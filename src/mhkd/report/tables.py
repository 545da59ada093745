"""The report's tables: one row per group (or incomplete run), as Markdown and as HTML."""

from __future__ import annotations

import html
from collections.abc import Sequence

from mhkd.report.grouping import Group, teacher_info
from mhkd.report.reading import Run

COLUMNS = (
    "data", "teacher", "student", "method", "seeds", "test acc % (last)", "test acc % (best)",
    "params (M)", "MMACs", "compression %", "train time",
)  # fmt: skip
INCOMPLETE_COLUMNS = ("run", "data", "teacher", "student", "method", "seed", "last epoch",
                      "test acc % (last logged)")  # fmt: skip


def format_stat(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f}s"


def group_row(group: Group, groups: Sequence[Group]) -> list[str]:
    """A table row; compression is ``1 - params / teacher params`` when the latter is known.

    The method cell carries the group's differing fields, ``kd [batch_size=32]``, when other
    groups of the same comparison ran with other settings.
    """
    params, _ = group.stat("params")
    macs, _ = group.stat("macs")
    teacher = teacher_info(group, groups)
    compression = "-"
    if teacher is not None and teacher.params:
        compression = f"{100.0 * (1.0 - params / teacher.params):.1f}"
    seeds = sorted({int(run.summary.seed) for run in group.runs})
    return [
        group.data,
        group.teacher,
        group.student,
        f"{group.method} [{group.variant_text}]" if group.variant else group.method,
        f"{len(group.runs)} ({', '.join(map(str, seeds))})",
        format_stat(*group.stat("test_acc")),
        format_stat(*group.stat("best_test_acc")),
        f"{params / 1e6:.3f}",
        f"{macs / 1e6:.1f}",
        compression,
        format_seconds(group.stat("seconds")[0]),
    ]


def incomplete_row(run: Run) -> list[str]:
    last = run.metrics[-1] if run.metrics else {}
    epochs = run.get("epochs")
    logged = f"{int(last['epoch'])}/{epochs}" if last else f"none/{epochs}"
    return [
        str(run.path),
        *run.key,
        str(run.get("seed")),
        logged,
        f"{last['test_acc']:.2f}" if "test_acc" in last else "-",
    ]


def split_notes(groups: Sequence[Group]) -> list[str]:
    """One sentence per comparison whose runs were not pooled, naming every differing field."""
    notes = {}
    for group in groups:
        if group.variant:
            pair = group.label.split(" (")[0]
            notes[group.key] = (
                f"{pair} ({group.method}): runs not pooled, their configurations differ in "
                f"{', '.join(group.variant)}."
            )
    return list(notes.values())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"
