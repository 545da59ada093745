"""int8 on digits: float32 against int8 after training (PTQ) and int8 after quantization-aware
distillation (QAT with KD), per student and seed.

    python benchmarks/study_int8.py [--students resnet8 resnet20 mobilenetv2 shufflenetv2]
        [--seeds 0 1 2] [--pruned] [--workers 2]

One resnet32 teacher is trained with cross-entropy on digits (seed 0). Per student and seed:

1. KD from the teacher (``--epochs``), the student's ``best.pt`` -> float32 and int8 PTQ
   graphs (``mhkd export --int8``: activations calibrated on 300 training images of the seed);
2. ``mhkd qat``: ``--qat-epochs`` more epochs of KD under simulated int8, exported the same way;
3. the control of 2: the same epochs of KD without the simulation, then PTQ, so that extra
   training is not taken for what the simulation brings.

``--pruned`` adds seed 0's KD resnet8 pruned by ``mhkd prune`` (cascade with one assistant,
keep 0.5) as one more student, through the same three graphs (its QAT teacher: the resnet32).
Accuracies are onnxruntime's on the 450 test images (one image = 0.22 points). Latency: after
the runs, one process times seed 0's float32 and int8 graphs of each student with onnxruntime
on one thread, interleaved.

Runs go to ``--runs``; every finished (student, seed) is appended to ``--jsonl`` and skipped by
a rerun, so an interrupted study resumes. The markdown table (``--table``) is rewritten after
every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import command, interleaved_medians, load_records, machine, run_study, stats  # noqa: E402

from mhkd import api  # noqa: E402
from mhkd.export import export_int8  # noqa: E402
from mhkd.pipelines.builder import fit  # noqa: E402
from mhkd.pipelines.prune import prune  # noqa: E402
from mhkd.pipelines.qat import qat_config, run_qat  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TEACHER = "resnet32"
PRUNED = "resnet8-pruned"
#: record fields -> table headings, in the order shown
ARMS = {
    "float": "float32",
    "ptq": "int8 PTQ",
    "qat": "int8 QAT+KD",
    "qat_float": "QAT+KD, float32",
    "ft_ptq": "KD fine-tune, int8 PTQ",
}


def settings(args: argparse.Namespace) -> dict:
    return {"image_size": args.image_size, "batch_size": args.batch_size, "lr": args.lr,
            "precision": "fp32", "quiet": True, "overwrite": True}  # fmt: skip


def teacher_ckpt(args: argparse.Namespace) -> Path:
    return Path(args.runs) / f"teacher-{TEACHER}" / "checkpoints" / "best.pt"


def train_teacher(args: argparse.Namespace, arch: str) -> dict:
    out = Path(args.runs) / f"teacher-{arch}"
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    again = (
        {"resume": True, "overwrite": False} if (out / "checkpoints" / "last.pt").is_file() else {}
    )
    return api.train(arch, "digits", out=out, epochs=args.teacher_epochs, seed=0,
                     **{**settings(args), **again})  # fmt: skip


def graphs(args: argparse.Namespace, folder: Path, name: str, seed: int) -> dict:
    """float32 and int8 PTQ graphs of ``folder``'s best.pt: their accuracies and sizes."""
    report = export_int8(folder / "checkpoints" / "best.pt", folder / name, seed=seed,
                         calibration_images=args.calibration_images, overwrite=True,
                         timed=False)  # fmt: skip
    f, q = report["graphs"]
    return {"float": f["accuracy"], "ptq": q["accuracy"], "float_bytes": f["bytes"],
            "int8_bytes": q["bytes"]}  # fmt: skip


def base_run(args: argparse.Namespace, student: str, seed: int, out: Path) -> None:
    """The student to quantize: KD from the teacher, or the teacher pruned by mhkd prune."""
    if (out / "summary.json").is_file():
        return
    if student == PRUNED:  # the KD resnet8 of the same seed, pruned to half its channels
        source = Path(args.runs) / f"resnet8-s{seed}" / "checkpoints" / "best.pt"
        prune(source, "digits", out=out, keep=0.5, assistants=1, seed=seed,
              epochs=args.prune_epochs, finetune_epochs=args.prune_epochs, latency_repeats=1,
              **settings(args))  # fmt: skip
    else:
        api.distill(teacher_ckpt(args), student, "digits", method="kd", out=out,
                    epochs=args.epochs, seed=seed, **settings(args))  # fmt: skip


def job(task: tuple) -> dict:
    """One (student, seed): the base run, its PTQ, QAT+KD and the KD fine-tuning control."""
    args, student, seed = task
    started = time.perf_counter()
    out = Path(args.runs) / f"{student}-s{seed}"
    base_run(args, student, seed, out)
    record = {"student": student, "seed": seed}
    record.update(graphs(args, out, "student.onnx", seed))
    config = qat_config(out, args.qat_epochs, args.qat_lr, True, teacher_ckpt(args))
    calibration = args.calibration_images
    qat = run_qat(config, out / "qat", calibration_images=calibration, overwrite=True)
    quantized = graphs(args, out / "qat", "student.onnx", seed)
    record.update(qat=quantized["ptq"], qat_float=quantized["float"], qat_sim=qat["best_test_acc"])
    fit(config, out / "finetune", overwrite=True)  # the control: no simulation
    control = graphs(args, out / "finetune", "student.onnx", seed)
    record.update(ft_float=control["float"], ft_ptq=control["ptq"])
    record["seconds"] = time.perf_counter() - started
    record["test_acc"] = record["best_test_acc"] = record["qat"]  # run_study's progress line
    return record


def time_graphs(args: argparse.Namespace, students: list[str]) -> dict:
    """Median onnxruntime latency (ms, one thread) of seed-0 float32 and int8 graphs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    result = {}
    for student in students:
        folder = Path(args.runs) / f"{student}-s{min(args.seeds)}"
        if not (folder / "student.int8.onnx").is_file():
            continue
        paths = {"float": folder / "student.onnx", "int8": folder / "student.int8.onnx"}
        result[student] = {}
        for batch in (1, 64):
            x = {"images": np.random.default_rng(0).standard_normal(
                (batch, 3, args.image_size, args.image_size), dtype=np.float32)}  # fmt: skip
            sessions = {k: onnxruntime.InferenceSession(str(p), options,
                        providers=["CPUExecutionProvider"]) for k, p in paths.items()}  # fmt: skip
            runners = {k: (lambda s=s, x=x: s.run(None, x)) for k, s in sessions.items()}
            medians = interleaved_medians(runners, torch.device("cpu"), args.repeats)
            result[student][batch] = {k: 1000.0 * v for k, v in medians.items()}
    return result


def weight_bits(args: argparse.Namespace, students: list[str]) -> dict:
    """Seed-0 students exported with 7- and 8-bit weights: int8 test accuracy, and the mean
    |logit| gap between ONNX Runtime's fused int8 kernels and the same graph run unoptimised
    (its QDQ arithmetic done exactly in float)."""
    import onnxruntime

    from mhkd import data, quantize

    splits = data.load("digits", image_size=args.image_size)
    test = data.normalize(splits.test.images, splits.mean, splits.std).numpy()
    exact = onnxruntime.SessionOptions()
    exact.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    result = {}
    for student in students:
        folder = Path(args.runs) / f"{student}-s{min(args.seeds)}"
        if not (folder / "checkpoints" / "best.pt").is_file():
            continue
        result[student] = {}
        for bits in (7, 8):
            onnx_file = folder / f"bits{bits}.onnx"
            report = export_int8(folder / "checkpoints" / "best.pt", onnx_file,
                                 seed=min(args.seeds), reduce_range=bits == 7,
                                 calibration_images=args.calibration_images, overwrite=True,
                                 timed=False)  # fmt: skip
            int8 = quantize.int8_path(onnx_file)
            session = onnxruntime.InferenceSession(str(int8), exact,
                                                   providers=["CPUExecutionProvider"])  # fmt: skip
            gap = np.abs(quantize.predict(int8, test) - session.run(None, {"images": test})[0])
            result[student][bits] = (report["graphs"][1]["accuracy"], float(gap.mean()))
        result[student]["float"] = report["graphs"][0]["accuracy"]
    return result


def table(
    args: argparse.Namespace, records: list[dict], teachers: dict, latency=None, bits=None
) -> str:
    teacher = teachers[TEACHER]
    lines = [
        "# int8 on digits: float32, int8 after training, int8 after quantization-aware KD",
        "",
        f"Machine: {machine()}, {args.workers} runs at a time. Last command (runs of earlier "
        f"commands are kept in the JSONL): `{command()}`",
        "",
        f"Teacher {TEACHER} (CE, {args.teacher_epochs} epochs, seed 0): test "
        f"{teacher['test_acc']:.2f}. Students: KD from it, {args.epochs} epochs, batch "
        f"{args.batch_size}, lr {args.lr}; digits at {args.image_size}×{args.image_size}, "
        f"450 test images (one image = 0.22 points). int8: ONNX Runtime QDQ, per-channel int8 "
        f"weights, int8 activations calibrated (MinMax) on {args.calibration_images} training "
        "images. "
        f"QAT+KD: {args.qat_epochs} more epochs of KD under simulated int8 (lr {args.qat_lr}, "
        f"cosine); the control runs the same epochs without the simulation, then PTQ. "
        f"{PRUNED}: `mhkd prune` of the seed's KD resnet8 (cascade, 1 assistant, keep 0.5, "
        f"{args.prune_epochs} + {args.prune_epochs} epochs). Accuracies are onnxruntime's, "
        "mean ± sample std over seeds; Δ are paired per seed.",
        "",
        "| student | seeds | "
        + " | ".join(ARMS.values())
        + " | PTQ − float | QAT − PTQ | QAT − control | float MB | int8 MB |",
        "|---|---|" + "---|" * (len(ARMS) + 5),
    ]
    for student in dict.fromkeys(r["student"] for r in records):
        rows = [r for r in records if r["student"] == student]
        cells = [f"{stats([r[k] for r in rows])[0]:.2f} ± {stats([r[k] for r in rows])[1]:.2f}"
                 for k in ARMS]  # fmt: skip

        def delta(a: str, b: str, rows=rows) -> str:
            mean, std, _ = stats([r[a] - r[b] for r in rows])
            return f"{mean:+.2f} ± {std:.2f}"

        lines.append(
            f"| {student} | {len(rows)} | "
            + " | ".join(cells)
            + f" | {delta('ptq', 'float')} | {delta('qat', 'ptq')} | {delta('qat', 'ft_ptq')} | "
            f"{rows[0]['float_bytes'] / 1e6:.3f} | {rows[0]['int8_bytes'] / 1e6:.3f} |"
        )
    sims = [r["qat_sim"] - r["qat"] for r in records]
    if sims:
        lines += ["", f"Simulated int8 accuracy of the QAT run's best epoch minus its exported "
                  f"int8 graph's: {statistics.mean(sims):+.2f} points on average, largest "
                  f"|difference| {max(abs(s) for s in sims):.2f} ({len(sims)} runs)."]  # fmt: skip
    if latency:
        lines += ["", f"Latency (onnxruntime, 1 thread, median of {args.repeats} interleaved "
                  "calls, seed-0 graphs; contended machine):", "",
                  "| student | float32 b1 ms | int8 b1 ms | float32 b64 ms | int8 b64 ms |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for student, by_batch in latency.items():
            lines.append(
                f"| {student} | {by_batch[1]['float']:.3f} | {by_batch[1]['int8']:.3f} | "
                f"{by_batch[64]['float']:.2f} | {by_batch[64]['int8']:.2f} |"
            )
    if bits:
        lines += ["", "Weights with 7 bits (the default) and 8 bits (`--full-range`), seed-0 "
                  "students: int8 test accuracy, and the mean |logit| gap between onnxruntime's "
                  "fused int8 kernels and the same graph's QDQ arithmetic (run unoptimised):", "",
                  "| student | float32 | int8, 7-bit weights | gap | int8, 8-bit weights | gap |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for student, row in bits.items():
            lines.append(
                f"| {student} | {row['float']:.2f} | {row[7][0]:.2f} | {row[7][1]:.4f} | "
                f"{row[8][0]:.2f} | {row[8][1]:.4f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="+", default=["resnet8", "resnet20"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pruned", action="store_true", help=f"add {PRUNED} (seed 0)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--qat-lr", type=float, default=0.005)
    parser.add_argument("--prune-epochs", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per graph")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="runs/int8")
    parser.add_argument("--jsonl", type=Path, default=RESULTS / "int8_epyc.jsonl")
    parser.add_argument("--table", type=Path, default=RESULTS / "int8_epyc.md")
    args = parser.parse_args()
    torch.set_num_threads(1)

    done = {(r["student"], r["seed"]) for r in load_records(args.jsonl)}
    wanted = [(s, seed) for seed in args.seeds for s in args.students]
    wanted += [(PRUNED, min(args.seeds))] if args.pruned else []
    tasks = [(args, s, seed) for s, seed in wanted if (s, seed) not in done]
    run_study(args, train_teacher, [TEACHER], job, tasks, ("student", "seed"), table)
    recorded = [r["student"] for r in load_records(args.jsonl)]  # earlier commands' too
    students = list(dict.fromkeys(recorded + [s for s, _ in wanted]))
    teachers = {TEACHER: train_teacher(args, TEACHER)}
    extras = time_graphs(args, students), weight_bits(args, students)
    text = table(args, load_records(args.jsonl), teachers, *extras)
    args.table.write_text(text)
    print(text[text.index("Latency") :] if "Latency" in text else "no graphs to time")


if __name__ == "__main__":
    main()
