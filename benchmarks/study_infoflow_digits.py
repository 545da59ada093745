"""infoflow on scikit-learn's digits: CE, KD, PKT, infoflow from the real teacher and infoflow
through a proxy teacher, for one heterogeneous pair over several seeds.

    python benchmarks/study_infoflow_digits.py [--epochs 8] [--seeds 0 1 2] [--size 16] [--lr 0.05]

One teacher (seed 0) teaches every student. The proxy teacher (two phases: CE, then infoflow
from the teacher on the embedding) is trained once, inside the first seed's run (``--aux auto``),
and reused by the other seeds from its checkpoint (``--aux CKPT``), as a user would. Images
are resized to ``--size`` pixels (the digits are 8x8 originals) to fit a shared 2-core CPU.
Every run writes its directory under ``--out``; the table (last- and best-epoch test accuracy,
mean ± std over the seeds) goes to ``benchmarks/results/infoflow.md`` whatever it shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, mean_std  # noqa: E402

from mhkd import api, data  # noqa: E402

TEACHER, STUDENT = "resnet20", "mobilenetv2"
RESULTS = Path(__file__).parent / "results" / "infoflow.md"


def methods(epochs: int) -> dict[str, tuple[str, dict]]:
    """Study rows: label -> (method spec, proxy-teacher settings)."""
    return {
        "CE": ("ce", {}),
        "KD": ("kd", {}),
        "PKT": ("pkt", {}),
        "infoflow, real teacher": ("infoflow", {"aux": "none"}),
        "infoflow, proxy teacher": (
            "infoflow",
            {"aux": "auto", "aux_epochs": epochs, "aux_distill_epochs": epochs},
        ),
    }


def proxy_options(options: dict, first_run: Path) -> dict:
    """After the first seed trained the proxy, later seeds reuse its checkpoint."""
    proxy = first_run / "aux" / "proxy.pt"
    if options.get("aux") == "auto" and proxy.is_file():
        return {"aux": str(proxy)}
    return options


def run(args: argparse.Namespace) -> dict[str, list[dict]]:
    splits = data.load("digits", image_size=args.size)
    common = {
        "epochs": args.epochs,
        "batch_size": 64,
        "lr": args.lr,
        "schedule": "cosine",
        "quiet": True,
    }
    out = Path(args.out)
    started = time.perf_counter()
    teacher = api.train(TEACHER, splits, out=out / "teacher", seed=0, **common)
    teacher_ckpt = out / "teacher" / "checkpoints" / "last.pt"
    print(
        f"teacher {TEACHER}: {teacher['test_acc']:.2f}% ({time.perf_counter() - started:.0f} s)",
        file=sys.stderr,
    )
    rows: dict[str, list[dict]] = {"teacher": [teacher]}
    for label, (method, options) in methods(args.epochs).items():
        rows[label] = []
        tag = options.get("aux", "x")
        for seed in args.seeds:
            run_out = out / f"{method}-{tag}-s{seed}"
            options = proxy_options(options, out / f"{method}-{tag}-s{args.seeds[0]}")
            if method == "ce":
                summary = api.train(STUDENT, splits, out=run_out, seed=seed, **common)
            else:
                summary = api.distill(
                    teacher_ckpt,
                    STUDENT,
                    splits,
                    method=method,
                    out=run_out,
                    seed=seed,
                    **options,
                    **common,
                )
            proxy = run_out / "aux" / "distill" / "summary.json"
            if proxy.is_file():
                summary["proxy_test_acc"] = json.loads(proxy.read_text())["test_acc"]
            rows[label].append(summary)
            print(
                f"{label} seed {seed}: {summary['test_acc']:.2f}% "
                f"(best {summary['best_test_acc']:.2f}%, {summary['seconds']:.0f} s)",
                file=sys.stderr,
            )
    return rows


def table(rows: dict[str, list[dict]], args: argparse.Namespace, seconds: float) -> str:
    teacher = rows["teacher"][0]
    lines = [
        "# infoflow study on digits",
        "",
        f"Command: `python benchmarks/study_infoflow_digits.py --epochs {args.epochs} "
        f"--seeds {' '.join(map(str, args.seeds))} --size {args.size} --lr {args.lr}`  ",
        f"Machine: {machine()} (2 cores shared with other jobs); total {seconds / 60:.1f} min.",
        "",
        f"Heterogeneous pair: {TEACHER} (teacher, {teacher['params'] / 1e6:.3f}M params, "
        f"test {teacher['test_acc']:.2f}% last / {teacher['best_test_acc']:.2f}% best, seed 0) "
        f"-> {STUDENT} (student). Digits (1347 train / 450 test images) resized to "
        f"{args.size}x{args.size}; {args.epochs} epochs per run, batch 64, SGD lr {args.lr} "
        "cosine, "
        "the trainer's default precision (bf16 autocast where the CPU has AMX). Loss weights "
        "are each method's defaults (CE 0.1 + KD 0.9; PKT 30000 "
        "with CE 1; infoflow 1 with CE 1, critical periods 100·0.7^epoch). The proxy teacher is a "
        f"{STUDENT} at twice the width, trained once ({args.epochs} CE epochs, then "
        f"{args.epochs} epochs of infoflow from the teacher on the embedding alone) in the "
        "first seed's run and reused from its checkpoint by the other seeds.",
        "",
        "| method | last epoch (%) | best epoch (%) | per-seed last | mean s/run |",
        "|---|---|---|---|---|",
    ]
    for label, summaries in rows.items():
        if label == "teacher":
            continue
        last = [s["test_acc"] for s in summaries]
        best = [s["best_test_acc"] for s in summaries]
        secs = statistics.mean(s["seconds"] for s in summaries)
        lines.append(
            f"| {label} | {mean_std(last)} | {mean_std(best)} | "
            f"{', '.join(f'{v:.2f}' for v in last)} | {secs:.0f} |"
        )
    proxy = [s["proxy_test_acc"] for s in rows["infoflow, proxy teacher"] if "proxy_test_acc" in s]
    if proxy:
        lines += [
            "",
            f"Proxy teacher ({STUDENT} x2 width, seed {args.seeds[0]}) test accuracy "
            f"after both phases: {proxy[0]:.2f}%; its two phases are not counted in "
            "'mean s/run'.",
        ]
    lines += [
        "",
        "Best-epoch figures select on the test set and are optimistic; last-epoch "
        "figures are the honest ones. `seconds` are wall time under shared load.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument(
        "--lr",
        type=float,
        default=0.01,
        help="every run's initial lr (0.01: the benchmark's MobileNetV2 value)",
    )
    parser.add_argument("--out", default="runs/study-infoflow-digits")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = run(args)
    text = table(rows, args, time.perf_counter() - started)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
