"""Train-step cost of MHKD's auxiliary heads: MHKD against Hinton KD, side by side in one run.

    python benchmarks/bench_mhkd.py [--steps 3] [--batch 64] [--threads 1] [--out FILE]

For wrn_40_2→wrn_16_2 on synthetic CIFAR-100-shaped data it times mhkd's own training step
(loader, augmentation, taps, loss terms, backward, SGD) for ``kd``, ``mhkd`` with jointly
trained teacher heads and ``mhkd`` with pre-fitted (fixed) teacher heads, in each precision the
machine runs fast; steps of the three alternate so machine load hits all alike. It also lists
the multiply-accumulates of every head beside those of the two networks, which is what the
time ratio follows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import mhkd_step  # noqa: E402
from common import interleaved_medians, machine, write_results  # noqa: E402

from mhkd import data, hardware, models  # noqa: E402
from mhkd.models.complexity import count_macs  # noqa: E402
from mhkd.taps import infer_shapes  # noqa: E402
from mhkd.train import TrainConfig, Trainer  # noqa: E402

PAIR = ("wrn_40_2", "wrn_16_2")
VARIANTS = {
    "kd": ("kd", {}),
    "mhkd (joint)": ("mhkd", {}),
    "mhkd (prefit)": ("mhkd", {"mhkd": {"head_mode": "prefit", "prefit_epochs": 0}}),
}


def trainers(batch: int, precision: str, device: torch.device) -> dict[str, Trainer]:
    splits = data.load("synthetic", num_train=batch * 4, num_test=64, num_classes=100)
    built = {}
    for label, (method, options) in VARIANTS.items():
        torch.manual_seed(0)
        built[label] = Trainer(
            models.create(PAIR[1], num_classes=100),
            splits,
            TrainConfig(batch_size=batch, method=method, precision=precision,
                        device=str(device), quiet=True),
            teacher=models.create(PAIR[0], num_classes=100),
            method_options=options,
        )
    return built


def head_macs(trainer: Trainer) -> list[str]:
    """Rows naming every head's MACs per image next to those of the teacher and student."""
    method = trainer.methods.methods["mhkd"]
    rows = [
        f"| teacher {PAIR[0]} | — | {count_macs(trainer.teacher) / 1e6:.1f} |",
        f"| student {PAIR[1]} | — | {count_macs(trainer.student) / 1e6:.1f} |",
    ]
    for role, heads, layers, model in (
        ("teacher", method.teacher_heads, method.teacher_layers, trainer.teacher),
        ("student", method.student_heads, method.student_layers, trainer.student),
    ):
        shapes = infer_shapes(model, layers)
        for j, (head, name) in enumerate(zip(heads, layers, strict=True), 1):
            macs = count_macs(head, tuple(shapes[name]))
            rows.append(f"| {role} head {j} on `{name}` {tuple(shapes[name])} | "
                        f"{sum(p.numel() for p in head.parameters()):,} | {macs / 1e6:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the markdown report here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = hardware.default_device()
    precisions = ["fp32"]
    if hardware.resolve_precision("auto", device) == "bf16":
        precisions.append("bf16")

    lines = [
        f"Machine: {machine()}",
        "",
        f"MHKD vs KD train step, {PAIR[0]}→{PAIR[1]}, batch {args.batch}, CIFAR-100 shape; "
        f"median of {args.steps} interleaved steps after a warm-up.",
        "",
        "| precision | method | step (s) | img/s | step / KD step |",
        "|---|---|---|---|---|",
    ]
    for precision in precisions:
        built = trainers(args.batch, precision, device)
        medians = interleaved_medians(
            {label: mhkd_step(t) for label, t in built.items()}, device, args.steps
        )
        for label, seconds in medians.items():
            row = (f"| {precision} | {label} | {seconds:.3f} | {args.batch / seconds:.0f} | "
                   f"{seconds / medians['kd']:.2f} |")
            print(row, flush=True)
            lines.append(row)
    lines += ["", "Where the time goes (multiply-accumulates per image, forward):", "",
              "| module | params | MMACs |", "|---|---|---|", *head_macs(built["mhkd (joint)"])]
    write_results(lines, args.out)


if __name__ == "__main__":
    main()
