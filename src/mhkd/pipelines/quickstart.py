"""``mhkd quickstart``: the whole story on real data in a few minutes on a laptop CPU.

A teacher is trained on scikit-learn's bundled handwritten digits; a student a fraction of its
size is then trained three times: plain cross-entropy, Hinton KD, and MHKD (auxiliary heads on
both networks' stages). Each is an ordinary run directory under ``OUT``.

The teacher learns from the whole training split; the students see ``LABELLED`` images per
class (the same ones for all three), the setting where a teacher has something to pass on:
on the whole split a ResNet-8 comes within a few images of the teacher by itself. The digits
are 8×8 images and are kept at that size (``IMAGE_SIZE``): upsampling them to the data set's
default 32×32 adds 16× the arithmetic and no information, and on a CPU without bf16 units
(most laptops) made the quickstart take about 9 minutes. At 8×8 the crop-and-flip
augmentation is off: its 4-pixel crop shift is half a digit, and a flipped digit is another
symbol. MHKD's six auxiliary heads are most of the remaining work.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mhkd import config as cfg
from mhkd.data import subset_per_class
from mhkd.pipelines.builder import build_run
from mhkd.pipelines.loading import load_data
from mhkd.preemption import RunInterrupted
from mhkd.rundir import RunDirectory, RunDirectoryError

TEACHER, STUDENT = "resnet32", "resnet8"
IMAGE_SIZE = 8  # the digits' own size
LABELLED = 30  # training images per class the students see (the teacher sees all 1347)
EPOCHS = {"teacher": 15, "student": 40}
BATCH = {"teacher": 64, "student": 32}
SETTINGS = {"lr": 0.05, "schedule": "cosine", "image_size": IMAGE_SIZE, "augment": False}
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
    total = 1 + len(STUDENTS)

    def config(**values: Any) -> cfg.RunConfig:
        return cfg.build(cfg.from_keywords(**common, **values))

    say(f"[1/{total}] teacher {TEACHER} on digits")
    teacher_config = config(student=TEACHER, epochs=EPOCHS["teacher"], batch_size=BATCH["teacher"])
    splits = load_data(teacher_config)
    teacher = build_run(teacher_config, out / "teacher", splits=splits, overwrite=overwrite)
    teacher_summary = teacher.fit()
    rows = [("teacher " + TEACHER, teacher_summary)]
    labelled = subset_per_class(splits, LABELLED, seed)
    for i, (label, method, options) in enumerate(STUDENTS, 2):
        say(f"[{i}/{total}] student {STUDENT}, {label}, {LABELLED} labelled images per class")
        student_config = config(
            student=STUDENT, epochs=EPOCHS["student"], batch_size=BATCH["student"],
            train_per_class=LABELLED, method=method, options=options,
        )  # fmt: skip
        run = build_run(
            student_config, out / f"student-{method}",
            teacher=None if method == "ce" else teacher.student, splits=labelled,
            overwrite=overwrite,
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
