"""Cascaded pruning on digits: where do teaching assistants help, from mild to extreme pruning?

    python benchmarks/study_prune_digits.py [--models vgg16:0.125:32 resnet56:0.25:16]
        [--keeps 0.4 0.2 0.1 0.05] [--seeds 0 1 2] [--epochs 20] [--workers 2]

Per model (``name:width:image_size``) one teacher is trained with cross-entropy on the full
digits training split (1347 images, seed 0). It is then pruned to each keep fraction by three
methods with the same epoch count: the cascade (3 teaching assistants, stage 1 + stage 2), its
ablation without assistants (the original teaches the student directly, stage 1 + stage 2) and
one-shot magnitude pruning fine-tuned with cross-entropy for both stages' epochs.

Runs go to ``--runs`` (one run directory each), ``--workers`` at a time as processes of one
thread. Every finished run is appended to ``--jsonl``; a rerun skips the runs found there, so
an interrupted study resumes where it stopped. The markdown table (``--table``) is rewritten
after every run. "half-way" is the stage-2 test accuracy at half its epochs: a schedule has
converged when it is close to the last epoch's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import command, load_records, machine, run_study, stats, versus  # noqa: E402

from mhkd import api  # noqa: E402
from mhkd.pipelines.prune import prune  # noqa: E402

RESULTS = Path(__file__).parent / "results"

#: label -> prune() options
METHODS: dict[str, dict] = {
    "cascade (3 TAs)": {"assistants": 3},
    "no assistants": {"assistants": 0},
    "magnitude + CE": {"baseline": "magnitude"},
}
#: Each method's row is compared with these (paired over seeds).
COMPARED = {"cascade (3 TAs)": "no assistants", "no assistants": "magnitude + CE"}


def parse_model(spec: str) -> tuple[str, float, int]:
    name, width, size = spec.split(":")
    return name, float(width), int(size)


def teacher_dir(args: argparse.Namespace, spec: str) -> Path:
    return Path(args.runs) / "teachers" / spec.replace(":", "-")


def train_teacher(args: argparse.Namespace, spec: str) -> dict:
    """The model to prune: trained once per spec, reused by every run and every rerun."""
    from mhkd import models

    out = teacher_dir(args, spec)
    summary = out / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    name, width, size = parse_model(spec)
    return api.train(
        models.create(name, num_classes=10, width_mult=width),
        "digits",
        out=out,
        epochs=args.teacher_epochs,
        schedule="cosine",
        seed=0,
        image_size=size,
        quiet=True,
        precision="fp32",
    )


def halfway_accuracy(run: Path) -> float | None:
    """The fine-tuning's test accuracy after half its epochs, from the run's metrics.jsonl
    (stage 2's epochs; the magnitude baseline's fine-tuning spans both stages' epochs)."""
    records = load_records(run / "metrics.jsonl")
    return records[max(1, len(records) // 2) - 1]["test_acc"] if records else None


def _finished_summary(out: Path, epochs: int) -> dict | None:
    """The summary of a run in ``out`` that finished with this schedule, else ``None``."""
    path = out / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())  # the magnitude baseline's epochs are both stages'
    return summary if summary.get("prune", {}).get("finetune_epochs") == epochs else None


def job(task: tuple) -> dict:
    """One pruning run; returns its JSONL record."""
    args, spec, keep, label, seed = task
    out = Path(args.runs) / spec.replace(":", "-") / f"keep{keep}" / f"{label.split()[0]}-s{seed}"
    summary = _finished_summary(out, args.epochs)
    if summary is None:  # a finished run whose record was lost is read back, not retrained
        summary = prune(
            teacher_dir(args, spec) / "checkpoints" / "last.pt",
            "digits",
            keep=keep,
            epochs=args.epochs,
            finetune_epochs=args.epochs,
            seed=seed,
            image_size=parse_model(spec)[2],
            precision="fp32",
            quiet=True,
            latency_repeats=5,
            out=out,
            overwrite=True,  # any other leftover is started over
            **METHODS[label],
        ).summary
    stage1 = summary.get("stage1") or {}
    return {
        "model": spec,
        "keep": keep,
        "method": label,
        "seed": seed,
        "test_acc": summary["test_acc"],
        "best_test_acc": summary["best_test_acc"],
        "halfway_acc": halfway_accuracy(out),
        "stage1_acc": stage1.get("test_acc"),
        "params_kept": summary["params_kept"],
        "macs_kept": summary["macs_kept"],
        "latency_ms": summary["latency_ms"],
        "seconds": summary["seconds"] + stage1.get("seconds", 0.0),
    }


def _cell(values: list[float]) -> str:
    mean, std, se = stats(values)
    return f"{mean:.2f} ± {std:.2f} | {se:.2f}"


def table(args: argparse.Namespace, records: list[dict], teachers: dict[str, dict]) -> str:
    lines = [
        "# Channel pruning on digits: cascade vs no assistants vs magnitude pruning",
        "",
        f"Machine: {machine()}, {args.workers} runs at a time. Last command (runs of earlier "
        "commands are kept in the JSONL): "
        f"`{command()}`",
        "",
        f"Teachers: CE on the full training split (1347 images), {args.teacher_epochs} epochs, "
        "cosine lr 0.05, seed 0. Pruning: the spec's settings (SGD Nesterov, lr 0.008 cosine, "
        "wd 4e-4, KD τ = 15, λ = 0.4, RMSProp channel scores, keeps of the assistants evenly "
        f"spaced up to 1.0) with {args.epochs} + {args.epochs} epochs (paper: 80 + 80 on "
        f"CIFAR); magnitude pruning fine-tunes {2 * args.epochs} epochs with CE. Test accuracy "
        "(%, 450 test images, one image = 0.22 points): mean ± sample std | standard error "
        "over seeds, last and best epoch; 'stage 1' is the exported student before "
        "fine-tuning; 'half-way' the fine-tuning's accuracy at half its epochs (convergence). "
        "s / run: training seconds of both stages (summary.json). Params and MACs count "
        "conv and linear layers of the exported student. Latency: "
        "median of 5 eval passes at batch 64 on one thread, before → after (noisy: another "
        "run shares the machine). 'vs': the row minus the method named, in standard errors "
        "of the difference (unpaired; paired over seeds).",
    ]
    specs = list(dict.fromkeys(r["model"] for r in records))
    for spec in specs:
        t = teachers.get(spec)
        name, width, size = parse_model(spec)
        lines += ["", f"### {name} (width × {width}, {size}×{size})", ""]
        if t:
            lines += [
                f"Teacher: last {t['test_acc']:.2f}, best {t['best_test_acc']:.2f}; "
                f"{t['params']} params, {t['macs'] / 1e6:.2f} M MACs.",
                "",
            ]
        lines += [
            "| keep | method | seeds | last | SE | best | SE | stage 1 | half-way "
            "| params kept | MACs kept | latency b64 (ms) | s / run | vs |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for keep in sorted({r["keep"] for r in records if r["model"] == spec}, reverse=True):
            rows = [r for r in records if r["model"] == spec and r["keep"] == keep]
            for label in METHODS:
                runs = [r for r in rows if r["method"] == label]
                if not runs:
                    continue
                stage1 = [r["stage1_acc"] for r in runs if r["stage1_acc"] is not None]
                half = [r["halfway_acc"] for r in runs if r["halfway_acc"] is not None]
                lat = [r["latency_ms"] for r in runs]
                ref = COMPARED.get(label)
                vs = ""
                if ref:
                    other = {r["seed"]: r["test_acc"] for r in rows if r["method"] == ref}
                    shown = versus({r["seed"]: r["test_acc"] for r in runs}, other)
                    vs = f"{shown} vs {ref}" if shown else ""
                lines.append(
                    f"| {keep} | {label} | {len(runs)} "
                    f"| {_cell([r['test_acc'] for r in runs])} "
                    f"| {_cell([r['best_test_acc'] for r in runs])} "
                    f"| {f'{statistics.mean(stage1):.2f}' if stage1 else '—'} "
                    f"| {f'{statistics.mean(half):.2f}' if half else '—'} "
                    f"| {100 * statistics.mean(r['params_kept'] for r in runs):.2f} % "
                    f"| {100 * statistics.mean(r['macs_kept'] for r in runs):.2f} % "
                    f"| {statistics.median(x['before']['batch64'] for x in lat):.1f} → "
                    f"{statistics.median(x['after']['batch64'] for x in lat):.1f} "
                    f"| {statistics.mean(r['seconds'] for r in runs):.0f} | {vs} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["vgg16:0.125:32", "resnet56:0.25:16"],
        help="name:width_mult:image_size",
    )  # fmt: skip
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.4, 0.2, 0.1, 0.05])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=20, help="per stage")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="runs/prune-digits")
    parser.add_argument("--jsonl", type=Path, default=RESULTS / "prune.jsonl")
    parser.add_argument("--table", type=Path, default=RESULTS / "prune.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in every worker, so machine() names what a run had
    for spec in args.models:
        parse_model(spec)  # a malformed spec fails before any run starts

    done = {(r["model"], r["keep"], r["method"], r["seed"]) for r in load_records(args.jsonl)}
    # seed-major: an interrupted study has every (model, keep, method) at its first seeds
    tasks = [
        (args, spec, keep, label, seed)
        for seed in args.seeds
        for spec in args.models
        for keep in args.keeps
        for label in args.methods
        if (spec, keep, label, seed) not in done
    ]
    keys = ("model", "keep", "method", "seed")
    run_study(args, train_teacher, args.models, job, tasks, keys, table)


if __name__ == "__main__":
    main()
