"""Shared helpers for the benchmarks: machine description and robust timing."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch


def machine() -> str:
    """One line naming the CPU (and GPU), cores and torch version the figures were taken on."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


def command() -> str:
    """The command line that is running, quoted so that it can be pasted back."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn``, with the device's queue drained on both sides."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved_medians(
    runners: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Median seconds per call of each runner, calling them in turn so load drifts hit all.

    Each runner is called once first as a warm-up (allocations, oneDNN kernel selection).
    """
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(seconds(run, device))
    return {name: statistics.median(t) for name, t in times.items()}


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` with two decimals (std 0 for a single value)."""
    mean, std, _ = stats(values)
    return f"{mean:.2f} ± {std:.2f}"


def write_results(lines: list[str], out: Path | None) -> None:
    """Print a results table and, when ``out`` is given, write it there as markdown."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def mhkd_runner(run) -> Callable[[], None]:
    """One iteration of mhkd's own loop (``run``: a :class:`mhkd.pipelines.builder.Run`)."""
    return loop_runner(run.loop.train_loader, run.step)


def loop_runner(loader, train_step) -> Callable[[], None]:
    """One iteration of a training loop: the next batch from ``loader`` (epoch 0 over and
    over), then ``train_step`` on it."""
    batches = iter(())

    def step() -> None:
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            loader.set_epoch(0)
            batches = iter(loader)
            batch = next(batches)
        train_step(batch)

    return step


def load_records(path: Path) -> list[dict]:
    """The records of a study's JSONL file (none when it does not exist yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stats(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and standard error of the mean."""
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std, std / math.sqrt(len(values))


def versus(values: dict[int, float], reference: dict[int, float]) -> str:
    """``values`` minus ``reference`` (both by seed): the difference of the means in standard
    errors of that difference (unpaired) and the mean per-seed difference over its standard
    error (paired over the shared seeds)."""
    if len(values) < 2 or len(reference) < 2:
        return ""
    m, _, se = stats(list(values.values()))
    m0, _, se0 = stats(list(reference.values()))
    delta = m - m0
    z = delta / math.hypot(se, se0) if se or se0 else float("nan")
    shared = sorted(set(values) & set(reference))
    paired = ""
    if len(shared) > 1:
        d = [values[s] - reference[s] for s in shared]
        dm, _, dse = stats(d)
        paired = f", paired {dm / dse:+.1f}" if dse else ""
    return f"{delta:+.2f} pts = {z:+.1f} SE{paired}"


def _one_thread() -> None:
    torch.set_num_threads(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Processes of one thread each for a study's runs. A worker that dies (killed, out of
    memory) breaks the pool with an error instead of leaving the study waiting forever, as
    ``multiprocessing.Pool`` would; the study's JSONL then resumes it."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread)


def completed(pool: ProcessPoolExecutor, fn: Callable, tasks: Iterable) -> Iterator:
    """``fn(task)`` for every task, yielded as each finishes. A task that raises is named on
    stderr and skipped, so one failed run costs that run, not the others' records."""
    futures = {pool.submit(fn, task): task for task in tasks}
    for future in as_completed(futures):
        try:
            yield future.result()
        except BrokenProcessPool:
            raise
        except Exception as exc:
            shown = [t for t in futures[future] if not isinstance(t, argparse.Namespace)]
            print(f"run {shown} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def run_study(
    args: argparse.Namespace,
    train_teacher: Callable[[argparse.Namespace, str], dict],
    teachers: list[str],
    job: Callable[[tuple], dict],
    tasks: list[tuple],
    keys: tuple[str, ...],
    table: Callable[[argparse.Namespace, list[dict], dict[str, dict]], str],
) -> None:
    """Train the ``teachers`` (names or specs), then run every task on ``args.workers``
    processes: each record is appended to ``args.jsonl`` as its run ends (a rerun skips what
    is there) and ``args.table`` is rewritten from all of them; ``keys`` name a run."""
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    with worker_pool(args.workers) as pool:
        trained = pool.map(train_teacher, [args] * len(teachers), teachers)
        summaries = dict(zip(teachers, trained, strict=True))
        for name, s in summaries.items():
            print(f"teacher {name}: last {s['test_acc']:.2f} best {s['best_test_acc']:.2f}",
                  flush=True)  # fmt: skip
        for record in completed(pool, job, tasks):
            with args.jsonl.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                " ".join(str(record[k]) for k in keys)
                + f": last {record['test_acc']:.2f} best {record['best_test_acc']:.2f} "
                f"({record['seconds']:.0f} s)",
                flush=True,
            )
            args.table.write_text(table(args, load_records(args.jsonl), summaries))
    text = table(args, load_records(args.jsonl), summaries)
    args.table.write_text(text)
    print(text)
