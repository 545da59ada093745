"""Operator profile and CPU/wall time of mhkd's train step, for any mhkd checkout.

Used to find why CRD's step on wrn_40_2→wrn_16_2 was slower after the renovation (issue 22,
item 6; benchmarks/RESULTS.md, "CRD step before and after the renovation: the cause"). It
drives only each checkout's public API, so the same file measures old and new code:
``mhkd.train.Trainer`` (before the renovation, f845101) or
``mhkd.pipelines.training.TrainingRun`` (52b2d46 to b7f6100) or ``mhkd.pipelines.builder.build_run``
(from the run builder on), with bench_speed.py's settings:
synthetic CIFAR-100-shaped data of N = 16 385 training images (CRD's banks and its full
16 384 negatives), batch 64, one thread. A step is what bench_speed.py's ``mhkd`` runner
times: the next batch from mhkd's loader, then the train step.

One checkout (run from a checkout of the code to measure, or point PYTHONPATH at one)::

    PYTHONPATH=src python benchmarks/profile_step.py ops --pair wrn_40_2:wrn_16_2 \
        --method crd --out ops.json            # torch.profiler: operators per step
    PYTHONPATH=src python benchmarks/profile_step.py time --pair wrn_40_2:wrn_16_2 \
        --method crd --steps 9                 # CPU and wall time per step (JSON on stdout)

Several checkouts side by side::

    python benchmarks/profile_step.py diff A.json B.json [C.json]   # the operator lists, diffed
    python benchmarks/profile_step.py rounds --checkouts DIR_A DIR_B --rounds 4 \
        --pair wrn_40_2:wrn_16_2 --method crd   # alternating rounds, one process each

``ops`` profiles ``--steps`` steps after ``--warmup`` steps and writes, per operator (name and
input shapes), the calls and the self CPU time per step. Calls are independent of machine load,
self times are not. ``rounds`` runs ``time`` in a fresh process per checkout (``PYTHONPATH`` set
to ``DIR/src``), A, B, A, B, ...; each process reports the median CPU time
(``time.process_time``) and wall time of its timed steps, and the rounds' medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command, loop_runner, machine, write_results

NUM_CLASSES = 100
CRD_SAMPLES = 16_385  # bench_speed.py's N: enough training samples for 16384 negatives


def _run_builder():
    """The checkout's way to build a run: the run builder, the renovation's ``TrainingRun``, or
    ``None`` before the renovation (one ``Trainer``)."""
    try:
        from mhkd.pipelines.builder import build_run

        return build_run
    except ImportError:
        pass
    try:
        from mhkd.pipelines.training import TrainingRun

        return TrainingRun
    except ImportError:
        return None


def build(pair: str, method: str, batch: int, precision: str, channels_last: str, samples: int):
    """``(step, info)``: a callable running one train step of the checkout on PYTHONPATH."""
    import torch

    from mhkd import data, models

    torch.manual_seed(0)
    teacher_name, student_name = pair.split(":")
    splits = data.load("synthetic", num_train=samples, num_test=64, num_classes=NUM_CLASSES)
    student = models.create(student_name, num_classes=NUM_CLASSES)
    teacher = models.create(teacher_name, num_classes=NUM_CLASSES) if method != "ce" else None
    make_run = _run_builder()
    if make_run is None:  # before the renovation: one Trainer class
        from mhkd.train import TrainConfig, Trainer

        trainer = Trainer(
            student, splits, teacher=teacher,
            config=TrainConfig(
                batch_size=batch, method=method, precision=precision,
                channels_last=channels_last, device="cpu", quiet=True,
            ),
        )  # fmt: skip
        trainer.methods.prepare(trainer.teacher, trainer.train_loader)  # as train() does
        loader, train_step = trainer.train_loader, trainer.train_step
        api, resolved_cl = "Trainer", trainer.channels_last
    else:
        from mhkd import config as cfg

        config = cfg.build(cfg.from_keywords(
            data="synthetic", batch_size=batch, method=method, precision=precision,
            channels_last=channels_last, device="cpu", quiet=True,
        ))  # fmt: skip
        run = make_run(config, student=student, teacher=teacher, splits=splits)
        run.step.prepare(fresh=True)  # methods' one-off work, as the loop does before epoch 1
        loader, train_step = run.loop.train_loader, run.step
        api, resolved_cl = make_run.__name__, loader.channels_last
    step = loop_runner(loader, train_step)  # bench_speed.py's mhkd runner

    info = {
        "api": api,
        "channels_last": bool(resolved_cl),
        "threads": torch.get_num_threads(),
    }
    return step, info


def setup(args: argparse.Namespace):
    import torch

    torch.set_num_threads(args.threads)
    step, info = build(
        args.pair,
        args.method,
        args.batch,
        args.precision,
        args.channels_last,
        args.samples,
    )
    for _ in range(args.warmup):
        step()
    return step, info


def python_calls(step, steps: int) -> dict[str, float]:
    """Python-level calls per step (cProfile), by ``file:function`` (mhkd's files relative)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    calls: dict[str, float] = defaultdict(float)
    for (file, _, func), (_, ncalls, *_) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        file = file.split("/src/mhkd/")[-1] if "/src/mhkd/" in file else Path(file).name
        calls[f"{file}:{re.sub(r' at 0x[0-9a-f]+', '', func)}"] += ncalls / steps
    return dict(calls)


def cmd_ops(args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile

    step, info = setup(args)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    ops: dict[str, dict[str, float]] = {}
    for evt in prof.key_averages(group_by_input_shape=True):
        key = f"{evt.key} {evt.input_shapes}"
        entry = ops.setdefault(key, {"calls": 0.0, "self_us": 0.0})
        entry["calls"] += evt.count / args.steps
        entry["self_us"] += evt.self_cpu_time_total / args.steps
    result = {**vars(args), **info, "machine": machine(), "ops": ops}
    result["python_calls"] = python_calls(step, args.steps)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    total = sum(v["self_us"] for v in ops.values())
    calls = sum(v["calls"] for v in ops.values())
    print(f"{info}: {calls:.0f} operator calls, {total / 1e3:.1f} ms self CPU per step")


def cmd_time(args: argparse.Namespace) -> None:
    import resource

    step, info = setup(args)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.steps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), os.times()
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        samples["cpu_s"].append(time.process_time() - c0)
        samples["wall_s"].append(time.perf_counter() - w0)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), os.times()
        samples["sys_s"].append(t1.system - t0.system)  # kernel time: page faults, mostly
        samples["minor_faults"].append(r1.ru_minflt - r0.ru_minflt)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(json.dumps({**info, **medians}))


def cmd_rounds(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)  # as in the timed processes, for machine()'s line
    passed = [
        "--pair", args.pair, "--method", args.method, "--batch", str(args.batch),
        "--precision", args.precision, "--channels-last", args.channels_last,
        "--samples", str(args.samples), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--threads", str(args.threads),
    ]  # fmt: skip
    results: dict[str, list[dict]] = defaultdict(list)
    for r in range(args.rounds):
        for checkout in args.checkouts:
            env = {
                **os.environ,
                "PYTHONPATH": str(Path(checkout).resolve() / "src"),
                "OMP_NUM_THREADS": str(args.threads),
            }
            out = subprocess.run(
                [sys.executable, __file__, "time", *passed],
                env=env, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            record = json.loads(out.strip().splitlines()[-1])
            results[checkout].append(record)
            print(f"round {r + 1} {checkout}: cpu {record['cpu_s'] * 1e3:.1f} ms, "
                  f"wall {record['wall_s'] * 1e3:.1f} ms, sys {record['sys_s'] * 1e3:.0f} ms, "
                  f"{record['minor_faults']:.0f} minor faults", flush=True)  # fmt: skip
    first = statistics.median(x["cpu_s"] for x in results[args.checkouts[0]])
    table = [
        f"Machine: {machine()} (contended: other jobs shared its two cores). "
        f"{args.pair.replace(':', '→')}, {args.method}, batch {args.batch}, {args.precision}, "
        f"N = {args.samples}; per process {args.warmup} warm-up and {args.steps} timed steps.",
        f"Command: `{command()}`",
        "",
        "| checkout | API | channels_last | CPU ms/step, each round | median CPU ms/step "
        "| × the first | median wall ms/step | minor page faults/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for checkout, records in results.items():
        med = {k: statistics.median(x[k] for x in records) for k in records[0] if k.endswith(
            ("_s", "faults"))}  # fmt: skip
        print(
            f"{checkout}: median over {len(records)} rounds: cpu {med['cpu_s'] * 1e3:.1f} "
            f"ms/step ({med['cpu_s'] / first:.3f}× the first), wall {med['wall_s'] * 1e3:.1f} "
            f"ms/step, sys {med['sys_s'] * 1e3:.0f} ms/step, {med['minor_faults']:.0f} minor "
            f"faults/step; {records[0]['api']}, channels_last={records[0]['channels_last']}"
        )
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({"checkout": checkout, **vars(args), "rounds": records}) + "\n")
        table.append(
            f"| {Path(checkout).name} | {records[0]['api']} | {records[0]['channels_last']} | "
            + ", ".join(f"{x['cpu_s'] * 1e3:.0f}" for x in records)
            + f" | {med['cpu_s'] * 1e3:.0f} | {med['cpu_s'] / first:.3f} | "
            f"{med['wall_s'] * 1e3:.0f} | {med['minor_faults']:.0f} |"
        )
    if args.md:
        with open(args.md, "a") as f:
            f.write("\n".join(table) + "\n\n")


def cmd_diff(args: argparse.Namespace) -> None:
    loaded = [json.loads(Path(p).read_text()) for p in args.files]
    names = args.names or [Path(p).stem for p in args.files]
    lines = [
        f"Machine: {loaded[0]['machine']} (contended: other jobs shared its two cores).",
        f"Operators per step: `{command()}`, from "
        + ", ".join(f"`{Path(p).name}`" for p in args.files)
        + " (each written by `profile_step.py ops`).",
        "",
        "| checkout | API | channels_last | operator calls | distinct (operator, input shapes) "
        "| differing from the first | Python calls | self CPU ms (load-dependent) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    first = loaded[0]
    for n, d in zip(names, loaded, strict=True):
        keys = set(d["ops"]) | set(first["ops"])
        differ = sum(
            abs(d["ops"].get(k, {}).get("calls", 0.0) - first["ops"].get(k, {}).get("calls", 0.0))
            > 1e-9
            for k in keys
        )
        lines.append(
            f"| {n} | {d['api']} | {d['channels_last']} | "
            f"{sum(v['calls'] for v in d['ops'].values()):.1f} | {len(d['ops'])} | {differ} | "
            f"{sum(d['python_calls'].values()):.1f} | "
            f"{sum(v['self_us'] for v in d['ops'].values()) / 1e3:.0f} |"
        )
    rows = []
    for k in sorted(set().union(*(d["ops"] for d in loaded))):
        counts = [d["ops"].get(k, {}).get("calls", 0.0) for d in loaded]
        if max(counts) - min(counts) > 1e-9:
            rows.append(f"| `{k}` | " + " | ".join(f"{c:g}" for c in counts) + " |")
    if rows:
        lines += ["", "| operator (input shapes) | " + " | ".join(names) + " |"]
        lines += ["|---|" + "---|" * len(names), *rows]
    py = []
    for k in sorted(set().union(*(d["python_calls"] for d in loaded))):
        counts = [d["python_calls"].get(k, 0.0) for d in loaded]
        if max(counts) - min(counts) > 1e-9:
            py.append(f"| `{k}` | " + " | ".join(f"{c:g}" for c in counts) + " |")
    if py:
        lines += [
            "",
            "| Python function (calls per step that differ) | " + " | ".join(names),
        ]
        lines[-1] += " |"
        lines += ["|---|" + "---|" * len(names), *py]
    write_results(lines, args.md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("ops", "time", "rounds"):
        p = sub.add_parser(name)
        p.add_argument("--pair", default="wrn_40_2:wrn_16_2")
        p.add_argument("--method", default="crd")
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--precision", default="fp32")
        p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
        p.add_argument("--samples", type=int, default=CRD_SAMPLES)
        p.add_argument("--steps", type=int, default=9)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--threads", type=int, default=1)
        if name == "ops":
            p.add_argument("--out", required=True)
        if name == "rounds":
            p.add_argument("--checkouts", nargs="+", required=True)
            p.add_argument("--rounds", type=int, default=4)
            p.add_argument("--out", help="append each checkout's rounds here (JSON lines)")
            p.add_argument("--md", help="append the markdown table here")
    p = sub.add_parser("diff")
    p.add_argument("files", nargs="+")
    p.add_argument("--names", nargs="+", help="labels of the files (default: their stems)")
    p.add_argument("--md", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    {"ops": cmd_ops, "time": cmd_time, "rounds": cmd_rounds, "diff": cmd_diff}[args.command](args)


if __name__ == "__main__":
    main()
