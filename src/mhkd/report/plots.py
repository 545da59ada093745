"""The report's plots, drawn on Agg figures without pyplot (no global state)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mhkd.report.grouping import Group, mean_std, teacher_info
from mhkd.report.reading import Run


def slug(text: str) -> str:
    """``text`` made safe for a file name."""
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
                by_epoch.setdefault(int(record["epoch"]), []).append(record["test_acc"])
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
        epochs = [int(r["epoch"]) for r in run.metrics]
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
