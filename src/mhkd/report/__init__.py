"""``mhkd report RUN_DIR...``: compare runs at a glance in ``report.md``, ``report.html`` and plots.

Runs are grouped by (data set, teacher, student, method) and by configuration: only runs whose
``config.yaml`` match apart from the seed and runtime settings
(:data:`~mhkd.report.grouping.RUNTIME_FIELDS`) are pooled; runs of one comparison that differ
otherwise are separate rows, labelled with the differing fields. A group shows accuracy mean ±
std over its seeds at the last and the best epoch (std: sample standard deviation, n-1), params
and MACs of the deployable student, compression against the teacher's params, and train time. A
run directory without ``summary.json`` (still running, or killed) is listed as incomplete with
its last logged epoch.

Modules: ``reading`` (find and read run directories), ``grouping`` (which runs pool),
``tables``, ``plots``, ``document`` (write the files), ``command`` (the CLI hook).
"""

from mhkd.report.command import add_report_command
from mhkd.report.document import write_report
from mhkd.report.grouping import RUNTIME_FIELDS, Group, group_runs
from mhkd.report.reading import Run, find_runs, read_run

__all__ = [
    "RUNTIME_FIELDS",
    "Group",
    "Run",
    "add_report_command",
    "find_runs",
    "group_runs",
    "read_run",
    "write_report",
]
