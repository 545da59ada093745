"""Epoch time of KD with the teacher run online against KD served from a teacher cache.

    python benchmarks/bench_cache.py --out benchmarks/results/cache.md \
        [--teacher resnet32x4 --student resnet8x4] [--samples 1024] [--epochs 2]

Both runs train the same student from the same start on the same synthetic CIFAR-100-shaped
data. To keep the build affordable on a CPU, augmentation is off, so the cache holds one view
per sample; a lookup costs the same whatever the number of views stored, so the epoch speed-up
carries over to the 162-view CIFAR cache, whose build time and size are extrapolated from the
measured per-image cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import command, machine, write_results  # noqa: E402

from mhkd import api, data, models  # noqa: E402
from mhkd.data import NUM_VIEWS  # noqa: E402

CIFAR_TRAIN = 50_000


def epoch_seconds(run_dir: Path) -> list[float]:
    """Per-epoch training seconds from a run's metrics."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_seconds"] for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    splits = data.load("synthetic", num_train=args.samples, num_test=64, num_classes=100)
    torch.manual_seed(0)
    teacher = models.create(args.teacher, num_classes=100)
    common = {"epochs": args.epochs, "batch_size": args.batch_size, "augment": False,
              "quiet": True, "seed": 0}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        online = api.distill(teacher, args.student, splits, "kd", out=tmp / "online", **common)
        cached = api.distill(teacher, args.student, splits, "kd", out=tmp / "cached",
                             teacher_cache=str(tmp / "cache"), **common)  # fmt: skip
        api.distill(teacher, args.student, splits, "kd", out=tmp / "again",
                            teacher_cache=str(tmp / "cache"), **common)  # fmt: skip
        t_online = min(epoch_seconds(tmp / "online"))
        t_cached = min(epoch_seconds(tmp / "cached") + epoch_seconds(tmp / "again"))
    build = cached["teacher_cache_build_seconds"]
    per_image = build / args.samples
    classes = splits.num_classes
    lines = [
        f"Machine: {machine()}; precision {online['precision']}, "
        f"channels_last {online['channels_last']}.",
        f"Command: `{command()}`",
        "",
        f"KD {args.teacher}→{args.student}, {args.samples} synthetic 32×32 images, batch "
        f"{args.batch_size}, fastest of {args.epochs} epochs (cached: of both runs that reuse "
        "one cache).",
        "",
        "| | epoch (s) | speed-up |",
        "|---|---|---|",
        f"| online teacher | {t_online:.2f} | 1.00× |",
        f"| teacher cache | {t_cached:.2f} | {t_online / t_cached:.2f}× |",
        "",
        f"Cache build: {build:.1f} s for {args.samples} images × 1 view "
        f"({1e3 * per_image:.1f} ms per image-view), {cached['teacher_cache_bytes'] / 1e6:.2f} MB "
        f"(fp16, {classes} classes), built once and reused by the third run.",
        "",
        f"Extrapolated full CIFAR-100 cache ({CIFAR_TRAIN} images × {NUM_VIEWS} crop/flip "
        f"views): {CIFAR_TRAIN * NUM_VIEWS * classes * 2 / 1e9:.2f} GB fp16 "
        f"(top-10: {CIFAR_TRAIN * NUM_VIEWS * 10 * 4 / 1e9:.2f} GB), build ≈ "
        f"{CIFAR_TRAIN * NUM_VIEWS * per_image / 3600:.1f} h at this machine's per-image cost "
        f"— the teacher forwards of {NUM_VIEWS} epochs, "
        "paid back over a 240-epoch run and reused by every later student of that teacher.",
    ]
    write_results(lines, args.out)


if __name__ == "__main__":
    main()
