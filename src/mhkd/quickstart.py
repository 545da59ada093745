"""``mhkd quickstart``: the whole story on real data in a few minutes on a laptop CPU.

A teacher is trained on scikit-learn's bundled handwritten digits; a student a fraction of its
size is then trained twice, with plain cross-entropy and with Hinton KD from the teacher.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mhkd import api

TEACHER, STUDENT = "resnet32", "resnet8"
EPOCHS = {"teacher": 15, "student": 15}
SETTINGS = {"batch_size": 64, "lr": 0.05, "schedule": "cosine"}


def quickstart(out: str | Path = "runs/quickstart", seed: int = 0, quiet: bool = False) -> list:
    """Run teacher, CE student and KD student; print and return the comparison rows."""
    out = Path(out)
    data = api.load_data("digits")
    common = {"seed": seed, "quiet": quiet, "overwrite": True, **SETTINGS}
    say = (lambda *_: None) if quiet else (lambda text: print(text, file=sys.stderr))

    say(f"[1/3] teacher {TEACHER} on digits")
    teacher = api.trainer(TEACHER, data, out=out / "teacher", epochs=EPOCHS["teacher"], **common)
    teacher_summary = teacher.fit()
    say(f"[2/3] student {STUDENT}, cross-entropy only")
    ce = api.train(STUDENT, data, out=out / "student-ce", epochs=EPOCHS["student"], **common)
    say(f"[3/3] student {STUDENT}, distilled from the teacher (kd)")
    kd = api.distill(
        teacher.student, STUDENT, data, method="kd", out=out / "student-kd",
        epochs=EPOCHS["student"], **common,
    )  # fmt: skip
    rows = [
        ("teacher " + TEACHER, teacher_summary),
        ("student " + STUDENT + " (CE)", ce),
        ("student " + STUDENT + " (KD)", kd),
    ]
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
