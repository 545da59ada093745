"""Train-step speed of mhkd against a bare PyTorch loop of the same models, in one run.

    python benchmarks/bench_speed.py --out benchmarks/results/speed.md \
        [--pairs wrn_40_2:wrn_16_2 resnet32x4:resnet8x4 vgg13:mobilenetv2] \
        [--methods ce kd mhkd crd] [--batch-sizes 64 256] [--precisions fp32 bf16] \
        [--channels-last on off] [--compile off on] [--steps 3]

Every combination is timed on synthetic CIFAR-100-shaped data. Three runners per row:

* ``mhkd``: mhkd's own loop — the next batch from its device loader (batched crop/flip
  augmentation), taps, every loss term, backward, SGD step;
* ``bare`` (ce and kd): the minimal loop a user writes by hand — tensors already on the device,
  forward (plus a no-grad teacher forward for kd), loss, backward, SGD step;
* ``models``: only the models' own work — teacher forward and student forward + backward on a
  ready tensor — so ``outside`` = 1 − models/mhkd is the share of a step spent on data,
  augmentation, losses, extras such as heads, and the optimizer.

Figures are images/s from the median of ``--steps`` timed steps after one warm-up step; the
runners of a row alternate so that load drifts hit them alike.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import command, interleaved_medians, machine, mhkd_runner, write_results  # noqa: E402

from mhkd import config as cfg  # noqa: E402
from mhkd import data, hardware, losses, models  # noqa: E402
from mhkd.pipelines.builder import build_run  # noqa: E402

NUM_CLASSES = 100
CRD_SAMPLES = 16_385  # enough training samples for CRD's full 16384 negatives


def bare_runner(student, teacher, x, y, precision, device):
    """The minimal loop a user would write by hand."""
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

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


def models_runner(student, teacher, x, y, precision, device):
    """Only the networks: teacher forward, student forward and backward."""

    def step():
        with hardware.autocast(device, precision):
            if teacher is not None:
                with torch.no_grad():
                    teacher(x)
            loss = F.cross_entropy(student(x).float(), y)
        loss.backward()

    return step


def measure(pair, method, batch, precision, channels_last, compile_, steps, device):
    teacher_name, student_name = pair
    samples = CRD_SAMPLES if method == "crd" else batch * 2
    splits = data.load("synthetic", num_train=samples, num_test=64, num_classes=NUM_CLASSES)
    config = cfg.build(cfg.from_keywords(
        data="synthetic", batch_size=batch, method=method, precision=precision,
        channels_last=channels_last, compile=compile_ == "on", device=str(device), quiet=True,
    ))  # fmt: skip
    run = build_run(
        config,
        student=models.create(student_name, num_classes=NUM_CLASSES),
        teacher=models.create(teacher_name, num_classes=NUM_CLASSES) if method != "ce" else None,
        splits=splits,
    )
    run.step.prepare(fresh=True)  # methods' one-off work, as the loop does before epoch 1
    fmt = torch.channels_last if run.loop.train_loader.channels_last else torch.contiguous_format
    student = models.create(student_name, num_classes=NUM_CLASSES).to(device, memory_format=fmt)
    teacher = run.step.teacher  # already on the device, frozen, compiled if asked
    if compile_ == "on":
        student.compile()
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    runners = {"mhkd": mhkd_runner(run)}
    if method in ("ce", "kd"):
        runners["bare"] = bare_runner(student, teacher, x, y, precision, device)
    runners["models"] = models_runner(student, teacher, x, y, precision, device)
    medians = interleaved_medians(runners, device, steps)
    return {name: batch / seconds for name, seconds in medians.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["wrn_40_2:wrn_16_2", "resnet32x4:resnet8x4",
                                                       "vgg13:mobilenetv2"])  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=["ce", "kd", "mhkd", "crd"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument(
        "--channels-last", nargs="+", default=["auto"], choices=("auto", "on", "off")
    )
    parser.add_argument("--compile", nargs="+", default=["off"], choices=("off", "on"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    device = hardware.default_device()
    fast_bf16 = hardware.resolve_precision("auto", device) == "bf16"
    precisions = [p for p in args.precisions if p == "fp32" or fast_bf16]

    lines = [
        f"Machine: {machine()}. bf16 units detected: {fast_bf16}.",
        f"Command: `{command()}`",
        "",
        "| pair | method | batch | precision | channels_last | compile | mhkd img/s | "
        "bare img/s | mhkd / bare | outside models |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for pair, method, batch, precision, cl, comp in itertools.product(
        args.pairs, args.methods, args.batch_sizes, precisions, args.channels_last, args.compile
    ):
        r = measure(tuple(pair.split(":")), method, batch, precision, cl, comp, args.steps, device)
        bare = f"{r['bare']:.1f} | {r['mhkd'] / r['bare']:.2f}" if "bare" in r else "— | —"
        row = (
            f"| {pair.replace(':', '→')} | {method} | {batch} | {precision} | {cl} | {comp} | "
            f"{r['mhkd']:.1f} | {bare} | {100 * (1 - r['mhkd'] / r['models']):.0f} % |"
        )
        print(row, flush=True)
        lines.append(row)
    if args.out:  # rows were printed as they came
        write_results(lines, args.out)


if __name__ == "__main__":
    main()
