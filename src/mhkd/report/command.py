"""``mhkd report RUN_DIR...``: the command-line hook the ``mhkd`` parser registers."""

from __future__ import annotations

import argparse
from typing import Any

from mhkd.report.document import write_report


def add_report_command(subparsers: Any) -> None:
    """Register ``mhkd report``."""
    parser = subparsers.add_parser(
        "report",
        help="tables and plots comparing runs (mean ± std over seeds)",
        description="Group runs by (data set, teacher, student, method) and configuration "
        "(pooling seeds only) and write report.md, report.html and PNG plots. Accepts run "
        "directories or folders holding them.",
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
