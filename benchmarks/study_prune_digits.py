"""Study: cascaded pruning vs no assistants vs plain magnitude pruning, on scikit-learn digits.

Scaled down to run in minutes on 2 shared CPU cores: narrow VGG-16 and ResNet-56
(``--width``), a short teacher schedule and 3 + 3 pruning epochs (the paper: 80 + 80 on CIFAR).
Every method gets the same epoch count: cascade and no-assistants run stage 1 + stage 2,
the baseline fine-tunes with cross-entropy for both. Teachers are trained once (seed 0);
pruning runs differ by seed. Writes a markdown table and the raw summaries.

    python benchmarks/study_prune_digits.py --out runs/study-prune
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from common import machine

METHODS = {  # label -> prune() options
    "cascade (3 TAs)": {"assistants": 3},
    "no assistants": {"assistants": 0},
    "magnitude + FT": {"baseline": "magnitude"},
}


def _teacher(name: str, width: float, epochs: int, out: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    from mhkd import api, models

    model = models.create(name, num_classes=10, width_mult=width)
    run = out / f"teacher-{name}"
    summary = api.train(
        model, "digits", epochs=epochs, schedule="cosine", out=run, quiet=True, precision="fp32"
    )
    return {**summary, "checkpoint": str(run / "checkpoints" / "last.pt")}


def _prune(checkpoint: str, label: str, seed: int, args: argparse.Namespace, out: Path):
    torch.set_num_threads(1)
    from mhkd.pipelines.prune import prune

    started = time.perf_counter()
    summary = prune(
        checkpoint,
        "digits",
        keep=args.keep,
        epochs=args.epochs,
        finetune_epochs=args.epochs,
        seed=seed,
        precision="fp32",
        quiet=True,
        latency_repeats=5,
        out=out / f"{Path(checkpoint).parts[-3]}-{label.split()[0]}-s{seed}",
        **METHODS[label],
    ).summary
    return {**summary, "label": label, "wall_s": time.perf_counter() - started}


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/study-prune")
    parser.add_argument("--models", default="vgg16:0.125,resnet56:0.25", help="name:width,...")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keep", type=float, default=0.4)
    parser.add_argument("--epochs", type=int, default=3, help="per stage")
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", default="benchmarks/results/prune.md")
    args = parser.parse_args()
    out = Path(args.out)
    specs = [(n, float(w)) for n, w in (item.split(":") for item in args.models.split(","))]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        trained = [pool.submit(_teacher, n, w, args.teacher_epochs, out) for n, w in specs]
        teachers = {name: job.result() for (name, _), job in zip(specs, trained, strict=True)}
        jobs = [
            pool.submit(_prune, teachers[name]["checkpoint"], label, seed, args, out)
            for name, _ in specs
            for seed in range(args.seeds)
            for label in METHODS
        ]
        runs = [job.result() for job in jobs]
    minutes = (time.perf_counter() - started) / 60
    (out / "study.json").write_text(json.dumps({"teachers": teachers, "runs": runs}, indent=1))

    lines = [
        "# Channel pruning on digits: cascade vs no assistants vs magnitude pruning",
        "",
        f"Machine: {machine()} (one thread per run, {args.workers} runs in parallel on a shared "
        f"2-core host). Whole study: {minutes:.1f} min.",
        "",
        f"Scaled down to run in minutes: width multipliers {args.models}, teachers "
        f"{args.teacher_epochs} epochs (CE, cosine lr 0.05); pruning to keep = {args.keep} of "
        f"the channels with {args.epochs} + {args.epochs} epochs (paper: 80 + 80 on CIFAR); the "
        f"baseline fine-tunes {2 * args.epochs} epochs with CE. Other settings are the spec's "
        "defaults (SGD Nesterov, lr 0.008 cosine, wd 4e-4, KD τ = 15, λ = 0.4, RMSProp scores). "
        f"Test accuracy (%) of the last epoch and of the best epoch, mean ± std over "
        f"{args.seeds} seeds (digits test split, 450 images). Params and MACs count conv and "
        "linear layers of the exported (physically pruned) student; latency is the median of "
        "5 eval forward passes on one CPU thread.",
        "",
        "| model | method | test acc (last) | test acc (best) | params kept | MACs kept "
        "| latency b1 before→after (ms) | latency b64 before→after (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, _ in specs:
        t = teachers[name]
        lines.append(
            f"| {name} | teacher (unpruned) | {t['test_acc']:.2f} | {t['best_test_acc']:.2f} "
            f"| {t['params']} | {t['macs'] / 1e6:.2f} M | | |"
        )
        for label in METHODS:
            rows = [r for r in runs if r["model"] == name and r["label"] == label]
            lat = [r["latency_ms"] for r in rows]

            def med(when: str, batch: str, lat: list = lat) -> float:
                return statistics.median(x[when][batch] for x in lat)

            lines.append(
                f"| {name} | {label} | {_mean_std([r['test_acc'] for r in rows])} "
                f"| {_mean_std([r['best_test_acc'] for r in rows])} "
                f"| {_mean_std([100 * r['params_kept'] for r in rows])} % "
                f"| {_mean_std([100 * r['macs_kept'] for r in rows])} % "
                f"| {med('before', 'batch1'):.2f} → {med('after', 'batch1'):.2f} "
                f"| {med('before', 'batch64'):.1f} → {med('after', 'batch64'):.1f} |"
            )
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
