"""Fault injection on whole runs: concurrent runs on one folder, a kill during the first
checkpoint write, SIGTERM then resume, a full disk, a read-only folder. Each asserts that
nothing written before the fault was lost and that the user gets one line, not a traceback."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mhkd import checkpoint, cli
from mhkd.distill import DistillStep

#: A run small enough for a test: 160 synthetic 16×16 images, 5 steps an epoch.
TINY = ["--model", "resnet8", "--data", "synthetic", "--image-size", "16",
        "--train-per-class", "16", "--batch-size", "32", "--precision", "fp32",
        "--device", "cpu", "--quiet"]  # fmt: skip


def train(out: Path, epochs: int, *extra: str) -> int:
    return cli.main(["train", *TINY, "--epochs", str(epochs), "--out", str(out), *extra])


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.read_state(path)["step"]["model"]


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def subprocess_env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}


def test_a_second_run_on_a_claimed_folder_is_refused_and_the_first_is_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "mhkd", "train", *TINY, "--epochs", "200", "--out", str(out)],
        env=subprocess_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)  # the first run holds the folder once it has logged an epoch
        assert (out / "metrics.jsonl").is_file(), "the first run never started"
        for flags in ([], ["--overwrite"], ["--resume"]):
            assert train(out, 2, *flags) == 2
            (line,) = error_lines(capsys)
            assert line.startswith("mhkd: error: ") and str(first.pid) in line, line
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert "--resume" in err and "Traceback" not in err
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(epochs[0], epochs[0] + len(epochs)))  # one run's lines only
    assert checkpoint.read_state(out / "checkpoints" / "last.pt")["loop"]["epoch"] >= 1


def test_sigterm_mid_epoch_then_resume_ends_bit_identical(tmp_path, monkeypatch, capsys):
    assert train(tmp_path / "whole", 3) == 0
    capsys.readouterr()

    calls = {"n": 0}
    real_call = DistillStep.__call__

    def preempted(self, batch):
        calls["n"] += 1
        if calls["n"] == 7:  # the 2nd step of epoch 2 (5 steps an epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_call(self, batch)

    monkeypatch.setattr(DistillStep, "__call__", preempted)
    cut = tmp_path / "cut"
    assert train(cut, 3) == 128 + signal.SIGTERM
    lines = error_lines(capsys)
    assert len(lines) == 1 and "--resume" in lines[0], lines
    assert checkpoint.read_state(cut / "checkpoints" / "last.pt")["loop"]["epoch"] == 1
    monkeypatch.setattr(DistillStep, "__call__", real_call)

    assert train(cut, 3, "--resume") == 0
    whole, resumed = (
        model_state(tmp_path / "whole/checkpoints/last.pt"),
        model_state(cut / "checkpoints/last.pt"),
    )
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    metrics = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3  # no epoch logged twice


def test_a_kill_during_the_first_checkpoint_write_loses_nothing_and_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    killed_after_writing = (  # dies with the temporary file written, before its rename
        "import os, sys, torch\n"
        "save = torch.save\n"
        "torch.save = lambda *a, **k: (save(*a, **k), os._exit(137))\n"
        "from mhkd.cli import main; sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["train", *TINY, "--epochs", "2", "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", killed_after_writing, *argv], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 137
    assert checkpoint.orphaned_temp_files(out / "checkpoints")  # what a kill leaves

    assert train(out, 2) == 2  # the folder holds a run's files: not silently reused
    stale, line = error_lines(capsys)
    assert stale.startswith("mhkd: warning: took over the lock") and "no longer runs" in stale
    assert line.startswith("mhkd: error: ") and "--overwrite" in line and str(out) in line
    assert train(out, 2, "--resume") == 2  # nothing to resume from: said so
    cleaned, line = error_lines(capsys)
    assert cleaned.startswith("mhkd: warning: removed temporary file(s) left by an interrupted")
    assert "last.pt" in line and "--overwrite" in line
    assert not checkpoint.orphaned_temp_files(out / "checkpoints")

    assert train(out, 2, "--overwrite") == 0
    assert not checkpoint.orphaned_temp_files(out / "checkpoints")
    assert checkpoint.read_state(out / "checkpoints" / "last.pt")["loop"]["epoch"] == 2


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    writes = {"n": 0}
    real_save = torch.save

    def disk_fills_up(obj, f, *args, **kwargs):
        writes["n"] += 1
        if writes["n"] > 2:  # epoch 1's last.pt and best.pt are written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    assert train(out, 3) == 2
    (line,) = error_lines(capsys)
    assert line == (
        f"mhkd: error: cannot write checkpoint {out / 'checkpoints' / 'last.pt'}: "
        "No space left on device"
    )
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.read_state(out / "checkpoints" / "last.pt")["loop"]["epoch"] == 1
    assert not checkpoint.orphaned_temp_files(out / "checkpoints")
    assert train(out, 3, "--resume") == 0  # and the run goes on from there


def test_a_read_only_output_folder_is_one_line_and_nothing_is_written(read_only_folder, capsys):
    out = read_only_folder
    assert train(out, 1) == 2
    (line,) = error_lines(capsys)
    assert line == f"mhkd: error: cannot claim run directory {out}: Read-only file system"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "flags, culprit",
    [
        (["--milestones", "3,2"], "--milestones"),
        (["--batch-size", "1000"], "--batch-size"),
        (["--device", "cuda:7"], "--device"),
        (["--epochs", "-1"], "--epochs"),
    ],
)
def test_values_that_would_train_nothing_or_wrongly_are_refused(flags, culprit, tmp_path, capsys):
    assert train(tmp_path / "run", 2, *flags) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("mhkd: error: ") and culprit in line, line
