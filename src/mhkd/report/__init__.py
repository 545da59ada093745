"""``mhkd report RUN_DIR...``: compare runs at a glance in ``report.md``, ``report.html`` and plots.

Runs are grouped by (data set, teacher, student, method), so seeds of one setting are pooled and
different data sets never are. A group shows accuracy mean ± std over its seeds at the last and
the best epoch (std: sample standard deviation, n-1), params and MACs of the deployable student,
compression against the teacher's params, and train time. A run directory without
``summary.json`` (still running, or killed) is listed as incomplete with its last logged epoch.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import yaml

RUN_FILES = ("summary.json", "metrics.jsonl", "config.yaml")
#: Fields of a trainer's summary.json that the tables read.
SUMMARY_FIELDS = ("test_acc", "best_test_acc", "params", "macs", "seed", "seconds")
UNKNOWN = "?"
NO_TEACHER = "-"


@dataclass
class Run:
    """One run directory as read from disk; ``summary`` is ``None`` while it is incomplete."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None

    def get(self, key: str, default: Any = UNKNOWN) -> Any:
        """A field of the summary, else of the resolved config."""
        for source in (self.summary or {}, self.config):
            if source.get(key) is not None:
                return source[key]
        return default

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(data set, teacher, student, method): runs with equal keys differ only by seed.

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


@dataclass
class Group:
    """The complete runs of one (data set, teacher, student, method)."""

    key: tuple[str, str, str, str]
    runs: list[Run] = field(default_factory=list)

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
    def label(self) -> str:
        if self.teacher == NO_TEACHER:
            return f"{self.student} ({self.method})"
        return f"{self.teacher} -> {self.student} ({self.method})"

    def values(self, key: str) -> list[float]:
        return [float(run.summary[key]) for run in self.runs if run.summary.get(key) is not None]

    def stat(self, key: str) -> tuple[float, float | None]:
        """Mean and sample std (``None`` for a single run) of a summary field."""
        return mean_std(self.values(key))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` when there is one value)."""
    if not values:
        return float("nan"), None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


# ---- reading runs ------------------------------------------------------------------------
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
    path = Path(path)
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path / 'config.yaml'}: {str(exc).splitlines()[0]}") from None
    metrics = []
    if (path / "metrics.jsonl").is_file():
        lines = [line for line in (path / "metrics.jsonl").read_text().splitlines() if line]
        for number, line in enumerate(lines, 1):
            try:
                metrics.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ValueError(f"{path / 'metrics.jsonl'}:{number} is not JSON") from None
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{path / 'summary.json'} is not JSON") from None
        missing = [key for key in SUMMARY_FIELDS if key not in summary]
        if missing:
            raise ValueError(
                f"{path / 'summary.json'} has no {', '.join(missing)}: not a training run's summary"
            )
    return Run(path, config, metrics, summary)


def group_runs(runs: Iterable[Run]) -> tuple[list[Group], list[Run]]:
    """Complete runs grouped by key (sorted), and the incomplete runs."""
    groups: dict[tuple[str, str, str, str], Group] = {}
    incomplete = []
    for run in runs:
        if run.summary is None:
            incomplete.append(run)
        else:
            groups.setdefault(run.key, Group(run.key)).runs.append(run)
    return sorted(groups.values(), key=lambda g: g.key), incomplete


# ---- the teacher of a group --------------------------------------------------------------
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
    runs = [run for g in own for run in g.runs]
    params = (
        group.values("teacher_params")
        or group.values("params_before")  # a pruning run's original network
        or [float(r.summary["params"]) for r in runs]
    )
    macs = (
        group.values("teacher_macs")
        or group.values("macs_before")
        or [float(r.summary["macs"]) for r in runs]
    )
    accuracy = [float(r.summary["test_acc"]) for r in runs]
    return TeacherInfo(
        group.teacher,
        statistics.fmean(params) if params else None,
        statistics.fmean(macs) if macs else None,
        statistics.fmean(accuracy) if accuracy else None,
    )


# ---- tables ------------------------------------------------------------------------------
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
    """A table row; compression is ``1 - params / teacher params`` when the latter is known."""
    params, _ = group.stat("params")
    macs, _ = group.stat("macs")
    teacher = teacher_info(group, groups)
    compression = "-"
    if teacher is not None and teacher.params:
        compression = f"{100.0 * (1.0 - params / teacher.params):.1f}"
    seeds = sorted({int(run.summary["seed"]) for run in group.runs})
    return [
        group.data,
        group.teacher,
        group.student,
        group.method,
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
    logged = f"{int(last['epoch']) + 1}/{epochs}" if last else f"none/{epochs}"
    return [
        str(run.path),
        *run.key,
        str(run.get("seed")),
        logged,
        f"{last['test_acc']:.2f}" if "test_acc" in last else "-",
    ]


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


# ---- plots -------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "data"


def _figure() -> tuple[Any, Any]:
    """A figure and its axes without pyplot: no global state, the Agg canvas for PNG files."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("mhkd report draws with matplotlib: pip install 'mhkd[report]'") from None
    fig = Figure(figsize=(7, 4.5), layout="tight")
    return fig, fig.subplots()


def plot_curves(data: str, groups: Sequence[Group], incomplete: Sequence[Run], path: Path) -> None:
    """Test accuracy per epoch: each group's mean over seeds (band: ± std), incomplete runs
    dashed."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    for group in groups:
        by_epoch: dict[int, list[float]] = {}
        for run in group.runs:
            for record in run.metrics:
                by_epoch.setdefault(int(record["epoch"]) + 1, []).append(record["test_acc"])
        epochs = sorted(by_epoch)
        stats = [mean_std(by_epoch[e]) for e in epochs]
        means = [m for m, _ in stats]
        (line,) = ax.plot(epochs, means, ".-", label=f"{group.label}, n={len(group.runs)}")
        if len(group.runs) > 1:
            spread = [s or 0.0 for _, s in stats]
            low = [m - s for m, s in zip(means, spread, strict=True)]
            high = [m + s for m, s in zip(means, spread, strict=True)]
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
    for run in incomplete:
        epochs = [int(r["epoch"]) + 1 for r in run.metrics]
        ax.plot(epochs, [r["test_acc"] for r in run.metrics], ".--", label=f"{run.path.name} "
                "(incomplete)")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"Test accuracy per epoch: {data}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)


def plot_accuracy_vs_macs(data: str, groups: Sequence[Group], path: Path) -> None:
    """Last-epoch accuracy (mean ± std) against MACs for every student; teachers marked as
    stars (or, with unknown accuracy, a dotted line at their MACs)."""
    fig, ax = _figure()
    teachers = {}
    for group in groups:
        info = teacher_info(group, groups)
        if info is not None:
            teachers[info.name] = info
    for group in groups:
        if group.method == "ce" and group.student in teachers:
            continue  # drawn as a teacher
        mean, std = group.stat("test_acc")
        ax.errorbar(
            group.stat("macs")[0] / 1e6, mean, yerr=std or 0.0, fmt="o", capsize=3,
            label=group.label,
        )  # fmt: skip
    for info in teachers.values():
        if info.macs is None:
            continue
        if info.accuracy is None:
            ax.axvline(info.macs / 1e6, color="k", ls=":", label=f"teacher {info.name}")
        else:
            ax.plot(info.macs / 1e6, info.accuracy, "k*", ms=14, label=f"teacher {info.name}")
    macs = [g.stat("macs")[0] for g in groups] + [t.macs for t in teachers.values() if t.macs]
    log = max(macs) > 10 * min(macs)  # a log axis only where sizes span orders of magnitude
    if log:
        ax.set_xscale("log")
    ax.set(xlabel="MMACs (log scale)" if log else "MMACs", ylabel="test accuracy, last epoch (%)",
           title=f"Accuracy against compute: {data}")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)


# ---- the report --------------------------------------------------------------------------
HTML_TEMPLATE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mhkd report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f2f2f2; }
td:nth-child(-n+4) { text-align: left; }
img { max-width: 100%; margin: 0.5em 0; }
.note { color: #666; font-size: 0.9em; }
</style>
</head>
<body>
<h1>mhkd report</h1>
<p class="note">$note</p>
$sections
</body>
</html>
""")

NOTE = (
    "Accuracy: mean ± sample std over seeds, at the last epoch and at the best epoch. Params "
    "and MACs of the deployable student (heads removed); compression: 1 - student params / "
    "teacher params. Train time: mean per run."
)


def write_report(paths: Sequence[str | Path], out: str | Path = "report") -> dict[str, Any]:
    """Read the runs under ``paths`` and write the tables and plots into ``out``.

    Returns ``{"markdown": Path, "html": Path, "plots": [Path, ...], "groups": [Group, ...],
    "incomplete": [Run, ...]}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups, incomplete = group_runs(read_run(p) for p in find_runs(paths))
    data_sets = sorted({g.data for g in groups} | {run.key[0] for run in incomplete})
    md = ["# mhkd report", "", NOTE, ""]
    sections = []
    plots = []
    for data in data_sets:
        mine = [g for g in groups if g.data == data]
        unfinished = [run for run in incomplete if run.key[0] == data]
        md += [f"## {data}", ""]
        sections.append(f"<h2>{html.escape(data)}</h2>")
        if mine:
            rows = [group_row(g, mine) for g in mine]
            md += [markdown_table(COLUMNS, rows), ""]
            sections.append(html_table(COLUMNS, rows))
        if unfinished:
            rows = [incomplete_row(run) for run in unfinished]
            md += ["Incomplete runs (no summary.json yet):", "", markdown_table(
                INCOMPLETE_COLUMNS, rows), ""]  # fmt: skip
            sections += ["<h3>Incomplete runs (no summary.json yet)</h3>",
                         html_table(INCOMPLETE_COLUMNS, rows)]  # fmt: skip
        names = [f"accuracy_curves_{_slug(data)}.png"]
        plot_curves(data, mine, unfinished, out / names[0])
        if mine:
            names.append(f"accuracy_vs_macs_{_slug(data)}.png")
            plot_accuracy_vs_macs(data, mine, out / names[1])
        for name in names:
            md += [f"![{name}]({name})", ""]
            sections.append(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">')
        plots += [out / name for name in names]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(
        HTML_TEMPLATE.substitute(note=html.escape(NOTE), sections="\n".join(sections))
    )
    return {
        "markdown": out / "report.md",
        "html": out / "report.html",
        "plots": plots,
        "groups": groups,
        "incomplete": incomplete,
    }


# ---- command line ------------------------------------------------------------------------
def add_report_command(subparsers: Any) -> None:
    """Register ``mhkd report``."""
    parser = subparsers.add_parser(
        "report",
        help="tables and plots comparing runs (mean ± std over seeds)",
        description="Group runs by (data set, teacher, student, method) and write report.md, "
        "report.html and PNG plots. Accepts run directories or folders holding them.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or parents")
    parser.add_argument("--out", default="report", help="output folder (default: report)")
    parser.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    result = write_report(args.runs, args.out)
    runs = sum(len(g.runs) for g in result["groups"])
    print(
        f"{runs} complete run(s) in {len(result['groups'])} group(s), "
        f"{len(result['incomplete'])} incomplete -> {result['markdown']}, {result['html']}"
    )
    return 0
