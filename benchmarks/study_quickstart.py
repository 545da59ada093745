"""`mhkd quickstart` over several seeds: what it prints, as mean ± std, and how long it takes.

python benchmarks/study_quickstart.py --seeds 0 1 2 --out benchmarks/results/quickstart.md

Time is given twice: wall time, and CPU time (user + system of this process), which other
jobs sharing the machine's cores change much less than wall time; on one thread
(``OMP_NUM_THREADS=1``) it is close to the run's wall time on an idle core.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, machine, mean_std, write_results  # noqa: E402

from mhkd.pipelines.quickstart import quickstart  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {}
    minutes, cpu_minutes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            started, cpu_started = time.perf_counter(), cpu_seconds()
            for name, summary in quickstart(out=Path(tmp) / f"s{seed}", seed=seed, quiet=True):
                rows.setdefault(name, []).append(summary)
            minutes.append((time.perf_counter() - started) / 60)
            cpu_minutes.append((cpu_seconds() - cpu_started) / 60)
    lines = [
        f"Machine: {machine()}. Command: `{command()}`",
        "",
        f"`mhkd quickstart` (seeds {', '.join(map(str, args.seeds))}): wall time per run "
        f"{mean_std(minutes)} min, CPU time (user + sys) per run {mean_std(cpu_minutes)} min.",
        "",
        "| model | last-epoch test top-1 | best-epoch test top-1 | params | MMACs |",
        "|---|---|---|---|---|",
    ]
    for name, summaries in rows.items():
        lines.append(
            f"| {name} | {mean_std([s['test_acc'] for s in summaries])} | "
            f"{mean_std([s['best_test_acc'] for s in summaries])} | "
            f"{summaries[0]['params'] / 1e6:.3f}M | {summaries[0]['macs'] / 1e6:.1f} |"
        )
    write_results(lines, args.out)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
