"""Train-step speed of mhkd's loop against a bare PyTorch loop of the same models.

    python benchmarks/bench_train.py [--steps 4] [--batch-sizes 64 256] [--out FILE]

For each teacher→student pair, batch size and precision it times, side by side in one run:
the bare loop (tensors already on the device, forward, loss, backward, SGD step — CE alone, and
KD with a no-grad teacher forward) and mhkd's own training step on synthetic CIFAR-shaped data
(loader, batched crop/flip augmentation, taps, loss terms, optimizer). Figures are images/s,
the median over ``--steps`` timed steps after a warm-up step; bare and mhkd steps alternate so
machine load affects both alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, machine  # noqa: E402

from mhkd import data, hardware, losses, models  # noqa: E402
from mhkd.train import TrainConfig, Trainer  # noqa: E402

PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet32x4", "resnet8x4")]


def bare_step(student, teacher, optimizer, x, y, precision, device):
    """The minimal loop a user would write by hand."""

    def step():
        with hardware.autocast(device, precision):
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
            logits = student(x)
            loss = F.cross_entropy(logits.float(), y)
            if teacher is not None:
                loss = 0.1 * loss + 0.9 * losses.kd(logits, t_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def mhkd_step(trainer: Trainer):
    """One iteration of mhkd's own loop: the next batch from its loader, then its train step."""
    batches = iter(())

    def step():
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            trainer.train_loader.set_epoch(0)
            batches = iter(trainer.train_loader)
            batch = next(batches)
        trainer.train_step(batch)

    return step


def measure(pair, batch, precision, method, steps, device):
    teacher_name, student_name = pair
    splits = data.load("synthetic", num_train=batch * 4, num_test=64, num_classes=100)
    teacher = models.create(teacher_name, num_classes=100) if method == "kd" else None
    channels_last = hardware.resolve_channels_last("auto", device, precision)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    trainer = Trainer(
        models.create(student_name, num_classes=100),
        splits,
        TrainConfig(
            batch_size=batch, method=method, precision=precision, device=str(device), quiet=True
        ),
        teacher=teacher,
    )
    student = models.create(student_name, num_classes=100).to(device, memory_format=fmt)
    bare_teacher = teacher  # already moved and frozen by the trainer
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch,), device=device)
    runners = {
        "bare": bare_step(student, bare_teacher, optimizer, x, y, precision, device),
        "mhkd": mhkd_step(trainer),
    }
    medians = interleaved_medians(runners, device, steps)
    return {name: batch / t for name, t in medians.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    args = parser.parse_args()
    device = hardware.default_device()
    precisions = [
        p
        for p in args.precisions
        if p == "fp32" or hardware.resolve_precision("auto", device) == "bf16"
    ]

    lines = [
        f"Machine: {machine()}",
        "",
        "| pair | batch | precision | method | bare img/s | mhkd img/s | mhkd / bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair in PAIRS:
        for batch in args.batch_sizes:
            for precision in precisions:
                for method in ("ce", "kd"):
                    r = measure(pair, batch, precision, method, args.steps, device)
                    row = (
                        f"| {pair[0]}→{pair[1]} | {batch} | {precision} | {method} | "
                        f"{r['bare']:.0f} | {r['mhkd']:.0f} | {r['mhkd'] / r['bare']:.2f} |"
                    )
                    print(row, flush=True)
                    lines.append(row)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
