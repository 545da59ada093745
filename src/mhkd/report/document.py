"""Assemble the report: ``report.md``, ``report.html`` and the PNG plots, one section per data
set."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any

from mhkd.report.grouping import group_runs
from mhkd.report.plots import plot_accuracy_vs_macs, plot_curves, slug
from mhkd.report.reading import find_runs, read_run
from mhkd.report.tables import (
    COLUMNS,
    INCOMPLETE_COLUMNS,
    group_row,
    html_table,
    incomplete_row,
    markdown_table,
    split_notes,
)

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
    "Accuracy: mean ± sample std over seeds, at the last epoch and at the best epoch; runs "
    "are pooled only when their configurations match apart from the seed. Params "
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
            for note in split_notes(mine):
                md += [note, ""]
                sections.append(f'<p class="note">{html.escape(note)}</p>')
        if unfinished:
            rows = [incomplete_row(run) for run in unfinished]
            md += ["Incomplete runs (no summary.json yet):", "", markdown_table(
                INCOMPLETE_COLUMNS, rows), ""]  # fmt: skip
            sections += ["<h3>Incomplete runs (no summary.json yet)</h3>",
                         html_table(INCOMPLETE_COLUMNS, rows)]  # fmt: skip
        names = [f"accuracy_curves_{slug(data)}.png"]
        plot_curves(data, mine, unfinished, out / names[0])
        if mine:
            names.append(f"accuracy_vs_macs_{slug(data)}.png")
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
