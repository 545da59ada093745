"""``mhkd quickstart``: the whole story on real data in a few minutes on a laptop CPU.

A teacher is trained on scikit-learn's bundled handwritten digits; a student a fraction of its
size is then trained three times: plain cross-entropy, Hinton KD, and MHKD (auxiliary heads on
both networks' stages). Each is an ordinary run directory under ``OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mhkd import config as cfg
from mhkd.pipelines.training import TrainingRun, load_data
from mhkd.preemption import RunInterrupted
from mhkd.rundir import RunDirectory, RunDirectoryError

TEACHER, STUDENT = "resnet32", "resnet8"
EPOCHS = {"teacher": 15, "student": 15}
SETTINGS = {"batch_size": 64, "lr": 0.05, "schedule": "cosine"}
#: The students: (row label, method, method options).
STUDENTS = (
    ("CE", "ce", {}),
    ("KD", "kd", {}),
    ("MHKD", "mhkd", {}),
)


def quickstart(
    out: str | Path = "runs/quickstart", seed: int = 0, quiet: bool = False, overwrite: bool = False
) -> list:
    """Run the teacher and the three students; print and return the comparison rows.

    Runs already in ``OUT`` are refused before anything trains unless ``overwrite``. An
    interrupted quickstart is started again (it takes minutes), not resumed.
    """
    out = Path(out)
    folders = [out / "teacher", *(out / f"student-{method}" for _, method, _ in STUDENTS)]
    held = [str(folder) for folder in folders if RunDirectory(folder).artefacts()]
    if held and not overwrite:
        raise RunDirectoryError(
            f"{', '.join(held)} already hold{'s' if len(held) == 1 else ''} a run: "
            "replace with --overwrite, or choose another --out"
        )
    try:
        return _quickstart(out, seed, quiet, overwrite)
    except RunInterrupted as stop:
        raise stop.with_hint(f"start again with mhkd quickstart --out {out} --overwrite") from None


def _quickstart(out: Path, seed: int, quiet: bool, overwrite: bool) -> list:
    say = (lambda *_: None) if quiet else (lambda text: print(text, file=sys.stderr))
    common = {"data": "digits", "seed": seed, "quiet": quiet, **SETTINGS}
    splits = None
    total = 1 + len(STUDENTS)

    def config(**values: Any) -> cfg.RunConfig:
        return cfg.build(cfg.from_keywords(**common, **values))

    say(f"[1/{total}] teacher {TEACHER} on digits")
    teacher_config = config(student=TEACHER, epochs=EPOCHS["teacher"])
    splits = load_data(teacher_config)
    teacher = TrainingRun(teacher_config, out / "teacher", splits=splits, overwrite=overwrite)
    teacher_summary = teacher.fit()
    rows = [("teacher " + TEACHER, teacher_summary)]
    for i, (label, method, options) in enumerate(STUDENTS, 2):
        say(f"[{i}/{total}] student {STUDENT}, {label}")
        run = TrainingRun(
            config(student=STUDENT, epochs=EPOCHS["student"], method=method, options=options),
            out / f"student-{method}", teacher=None if method == "ce" else teacher.student,
            splits=splits, overwrite=overwrite,
        )  # fmt: skip
        rows.append((f"student {STUDENT} ({label})", run.fit()))
    print(format_table(rows, teacher_summary))
    print(f"runs written to {out}/")
    return rows


def format_table(rows: list[tuple[str, dict[str, Any]]], teacher: dict[str, Any]) -> str:
    """A plain-text table: accuracy (last and best epoch), size and compression vs the teacher."""
    lines = [
        f"{'model':<26} {'test acc %':>10} {'best %':>7} {'params':>9} {'MMACs':>7} "
        f"{'compression':>11}",
    ]
    for name, s in rows:
        compression = 100.0 * (1 - s["params"] / teacher["params"])
        lines.append(
            f"{name:<26} {s['test_acc']:>10.2f} {s['best_test_acc']:>7.2f} "
            f"{s['params'] / 1e6:>8.3f}M {s['macs'] / 1e6:>7.1f} {compression:>10.1f}%"
        )
    return "\n".join(lines)
