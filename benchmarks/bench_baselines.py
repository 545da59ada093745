"""Train-step cost of the baselines (FitNet, AT, SP, CC, RKD, PKT, DKD, CRD, NST, VID, KDSVD,
OFD, ReviewKD, AB, FSP, FT) against KD.

    python benchmarks/bench_baselines.py [--steps 7] [--batch 64] [--threads 1]
                                         [--precision fp32] [--out FILE]

For wrn_40_2→wrn_16_2 at CIFAR-100 shape it times mhkd's own training step (loader with
augmentation, teacher forward without a graph, taps, student forward and backward, the methods'
loss terms, SGD) for every method, steps of all methods taken in turn so machine load hits all
alike, median after a warm-up. The data set has N = 50 000 training images (random pixels),
so CRD's memory banks have their CIFAR-100 size. CRD's extra memory is measured apart, in two
fresh processes (peak resident memory of a few KD steps vs a few CRD steps), and listed with
the exact size of its state.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, mhkd_runner, write_results  # noqa: E402

from mhkd import config as cfg  # noqa: E402
from mhkd import hardware, models  # noqa: E402
from mhkd.data.base import DataSplits, ImageSet  # noqa: E402
from mhkd.pipelines.builder import Run, build_run  # noqa: E402

PAIR = ("wrn_40_2", "wrn_16_2")
FEATURE_METHODS = ("fitnet", "at", "sp", "cc", "rkd", "pkt")
#: AB and FSP time their pre-training step (their training proper is a CE step), FT its
#: paraphraser's stage (a run without --ft.paraphraser)
FIELD_METHODS = ("nst", "vid", "kdsvd", "ofd", "reviewkd", "ab", "fsp", "ft")
METHODS = ("kd", *FEATURE_METHODS, "dkd", "crd", *FIELD_METHODS)
NUM_TRAIN = 50_000  # CIFAR-100's training set: sizes CRD's memory banks
TARGET = 1.2


def cifar100_shaped(num_train: int) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_train, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (num_train,), generator=g)
    test = ImageSet(images[:64].clone(), labels[:64].clone())
    return DataSplits(
        "synthetic", ImageSet(images, labels), test, 100, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    )


def build(method: str, splits: DataSplits, batch: int, precision: str, device) -> Run:
    torch.manual_seed(0)
    config = cfg.build(cfg.from_keywords(
        data="synthetic", batch_size=batch, method=method, precision=precision,
        device=str(device), quiet=True,
    ))  # fmt: skip
    run = build_run(
        config,
        student=models.create(PAIR[1], num_classes=100),
        teacher=models.create(PAIR[0], num_classes=100),
        splits=splits,
    )
    run.step.prepare(fresh=True)  # methods' one-off work, as the loop does before epoch 1
    return run


def interleaved(runners: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall seconds, CPU seconds of this process) per call, runners taken in turn.

    CPU time counts the work of all of this process's threads; on a machine shared with other
    jobs it moves less than wall time, so the report gives both.
    """
    for run in runners.values():  # warm-up: allocations, kernel selection
        run()
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            w, c = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in runners}


def extras(run: Run) -> int:
    return sum(p.numel() for p in run.step.methods.parameters() if p.requires_grad)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def probe(method: str, batch: int, precision: str, threads: int) -> dict:
    """Run in a fresh process: a few steps of one method; its peak resident memory."""
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    trainer = build(method, cifar100_shaped(NUM_TRAIN), batch, precision, device)
    step = mhkd_runner(trainer)
    for _ in range(3):
        step()
    state = sum(b.numel() * b.element_size() for b in trainer.step.methods.buffers())
    return {"peak_mb": peak_rss_mb(), "state_mb": state / 1e6, "extras": extras(trainer)}


def run_probe(method: str, args) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--probe", method, "--batch", str(args.batch),
         "--precision", args.precision, "--threads", str(args.threads)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(methods, medians, built, batch: int) -> list[str]:
    kd_wall, kd_cpu = medians["kd"]
    lines = [
        "| method | step wall (ms) | img/s | wall / KD | step CPU (ms) | CPU / KD "
        "| trainable extras | within target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        wall, cpu = medians[m]
        if m == "kd":
            verdict = "reference"
        elif m == "crd":
            verdict = "reported apart"
        else:
            verdict = "yes" if max(wall / kd_wall, cpu / kd_cpu) <= TARGET else "NO"
        lines.append(
            f"| {m} | {1000 * wall:.0f} | {batch / wall:.0f} | {wall / kd_wall:.2f} | "
            f"{1000 * cpu:.0f} | {cpu / kd_cpu:.2f} | {extras(built[m]):,} | {verdict} |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per method")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads (default 1: on a machine shared with other jobs, OpenMP barriers "
        "turn their load into noise many times the methods' own cost)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "both"),
        default="both",
        help="both: fp32, and bf16 where this CPU runs it fast (mhkd's default there)",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--no-memory", action="store_true", help="skip CRD's memory probe")
    parser.add_argument("--out", type=Path, help="write the markdown report here too")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(args.probe, args.batch, args.precision, args.threads)))
        return

    device = torch.device("cpu")
    precisions = [args.precision] if args.precision != "both" else ["fp32"]
    if args.precision == "both" and hardware.resolve_precision("auto", device) == "bf16":
        precisions.append("bf16")
    methods = [m for m in args.methods.split(",") if m]
    if "kd" not in methods:
        methods.insert(0, "kd")
    splits = cifar100_shaped(NUM_TRAIN)
    load_before = os.getloadavg()[0]
    lines = [
        f"Machine: {machine()}",
        "",
        f"Train step of each method vs KD: {PAIR[0]}→{PAIR[1]}, batch {args.batch}, CPU, "
        f"N = {NUM_TRAIN:,} training samples (CIFAR-100's size, so CRD's banks have their real "
        f"size). mhkd's own step (loader and augmentation, teacher forward without a graph, taps, "
        f"student forward/backward, loss terms, SGD); median of {args.steps} steps per method, "
        "methods taken in turn, after a warm-up step; wall time and the process's CPU time. "
        f"Target: every feature method ≤ {TARGET}× the KD step.",
    ]
    crd_built = None
    for precision in precisions:
        built = {m: build(m, splits, args.batch, precision, device) for m in methods}
        medians = interleaved({m: mhkd_runner(t) for m, t in built.items()}, args.steps)
        lines += ["", f"**{precision}**", "", *table(methods, medians, built, args.batch)]
        crd_built = built.get("crd", crd_built)
        del built
    if crd_built is not None and not args.no_memory:
        memory = crd_built.methods.methods["crd"].memory
        args.precision = "fp32"
        kd_probe, crd_probe = run_probe("kd", args), run_probe("crd", args)
        lines += [
            "",
            "CRD's memory (fp32; peaks measured in fresh processes, 3 steps each):",
            "",
            f"- state: {memory.nbytes / 1e6:.1f} MB of buffers — two fp32 banks "
            f"{NUM_TRAIN:,} × {memory.dim} × 4 B = {2 * memory.student_bank.nbytes / 1e6:.1f} MB, "
            f"labels {memory.labels.nbytes / 1e6:.1f} MB — and {extras(crd_built):,} embedding "
            "parameters; checkpoints carry the buffers.",
            f"- peak resident memory: KD {kd_probe['peak_mb']:.0f} MB, CRD "
            f"{crd_probe['peak_mb']:.0f} MB: +{crd_probe['peak_mb'] - kd_probe['peak_mb']:.0f} MB "
            f"(the state, plus each step's scores of {args.batch} samples against "
            f"{memory.negatives:,} negatives in both directions).",
        ]
    lines[0] += (
        f"; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        "(other jobs on the machine)"
    )
    lines += ["", *NOTES]
    write_results(lines, args.out)


NOTES = [
    "Notes:",
    "",
    "- The feature methods add little work beside two networks: FitNet one 1×1 regressor, AT "
    "three channel reductions, SP one batch Gram matrix, CC/RKD/PKT batch-by-batch relations "
    "of 128-d features; DKD reads only logits.",
    "- CRD is reported apart: every step scores 64 samples against 16,384 negatives each, both "
    "ways, from N-row banks (computed as one 64×N product per side, cheaper than gathering "
    "64·16,385 rows when N ≤ 64·16,385), draws the negatives (other classes than the anchor) "
    "and updates the banks. That math is kept in fp32 (scores are divided by T = 0.07, where "
    "bf16 rounding would show), so its share grows when the networks run in bf16.",
    "- CRD's banks for CIFAR-100: 50,000 × 128 × 4 B × 2 banks = 51.2 MB fp32 (plus 0.4 MB of "
    "labels for class-aware negatives), saved in every checkpoint.",
    "- NST, VID, OFD, AB, FSP add per-stage work that is small beside the networks (channel "
    "Gram matrices, 1×1 convolutions at the stage maps). KDSVD decomposes every sample's "
    "(HW × C) stage maps (a batched SVD, forward and backward). AB and FSP time their "
    "pre-training step; their training proper is a CE step. FT times its paraphraser stage.",
    "- ReviewKD reviews the student's maps with one ABF per level: a 1×1 conv to min(512, C) "
    "mid channels, attention fusion and a 3×3 conv to the teacher's channels at each stage's "
    "full resolution; for wrn_16_2 ← wrn_40_2 at 32×32 that is about 74 MMACs per image "
    "(38 M of it the 3×3 conv at 32×32), 0.73× the student's own 101 MMACs, run forward and "
    "backward, and its activations (64 × 128 × 32 × 32 fp32 = 34 MB per map) raise the "
    "peak memory.",
    "- Threads: figures are for one intra-op thread by default. On a shared machine the "
    "other jobs' load stalls OpenMP barriers, which turns small parallel ops into noise far "
    "above the methods' own cost; `--threads 2` measures two threads on an idle machine.",
]


if __name__ == "__main__":
    main()
