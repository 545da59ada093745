"""Side by side: bench_speed.py tables of two checkouts taken in alternating rounds.

    python benchmarks/compare_speed.py --before B1.md B2.md --after A1.md A2.md \
        --out benchmarks/results/builder_speed.md

Each input is a table ``bench_speed.py --out`` wrote (one round of one checkout, run in its own
process, the rounds alternating before, after, before, after). Per row it lists the mhkd
runner's images/s of every round, the ratio of the medians (after / before), and the
in-process ratio mhkd / bare of each side (the load-independent figure where a bare loop
exists). Nothing is measured here: the figures are the inputs', the commands theirs.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def read_table(path: Path) -> tuple[dict[tuple[str, str], dict[str, str]], list[str]]:
    """The rows of a bench_speed table keyed by (pair, method), and its Machine/Command lines."""
    rows, header, context = {}, None, []
    for line in path.read_text().splitlines():
        if line.startswith(("Machine:", "Command:")):
            context.append(line)
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
            continue
        row = dict(zip(header, cells, strict=True))
        rows[(row["pair"], row["method"])] = row
    return rows, context


def ratio(row: dict[str, str]) -> str:
    return row.get("mhkd / bare", "—")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", nargs="+", type=Path, required=True)
    parser.add_argument("--after", nargs="+", type=Path, required=True)
    parser.add_argument("--title", default="Train step before and after the run builder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    before = [read_table(p) for p in args.before]
    after = [read_table(p) for p in args.after]
    lines = [f"# {args.title}", ""]
    for side, tables, paths in (("before", before, args.before), ("after", after, args.after)):
        for (_, context), path in zip(tables, paths, strict=True):
            lines.append(f"- {side}, `{path.name}`: " + " ".join(context))
    lines.append("")
    lines += [
        "| pair | method | img/s before (rounds) | img/s after (rounds) | after / before "
        "| mhkd / bare before | mhkd / bare after |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in before[0][0]:
        b = [float(t[key]["mhkd img/s"]) for t, _ in before]
        a = [float(t[key]["mhkd img/s"]) for t, _ in after]
        change = statistics.median(a) / statistics.median(b)
        lines.append(
            f"| {key[0]} | {key[1]} | {', '.join(f'{v:.1f}' for v in b)} "
            f"| {', '.join(f'{v:.1f}' for v in a)} | {change:.3f} "
            f"| {', '.join(ratio(t[key]) for t, _ in before)} "
            f"| {', '.join(ratio(t[key]) for t, _ in after)} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
