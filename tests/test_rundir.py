"""The run directory: one claimer at a time, no run clobbered, nothing half-written, umask kept."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from mhkd import checkpoint
from mhkd.rundir import (
    RunDirectory,
    RunDirectoryAccessError,
    RunDirectoryError,
    RunFiles,
    RunSummary,
)

from test_lock import dead_pid, write_lock

ARTEFACTS = ["config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt",
             "checkpoints/best.pt", "tensorboard/events.out.tfevents.1"]  # fmt: skip


def summary(**changes) -> RunSummary:
    fields = dict(
        test_acc=71.5, best_test_acc=72.0, best_epoch=3, params=1000, macs=20000,
        model="resnet8", teacher="resnet32", method="kd", data="digits", num_classes=10,
        epochs=4, seed=1, seconds=12.5, precision="fp32", channels_last=False, world_size=1,
        peak_host_memory_mb=300.0, extra={"teacher_params": 4000},
    )  # fmt: skip
    return RunSummary(**{**fields, **changes})


# ---- claiming ----------------------------------------------------------------------------
def test_a_second_claim_is_refused_naming_the_holder_and_the_lock_goes_on_close(tmp_path):
    out = tmp_path / "run"
    with RunDirectory(out).claim() as run:
        lock = json.loads((out / ".lock").read_text())
        assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
        assert lock["command"] and lock["started"]
        assert list(out.iterdir()) == [out / ".lock"]  # the lock comes before anything else
        with pytest.raises(RunDirectoryError) as refused:
            RunDirectory(out).claim(resume=True)
        message = str(refused.value)
        assert "\n" not in message
        assert f"in use by pid {os.getpid()}@{socket.gethostname()} since {lock['started']}" in (
            message
        )
        run.write_config({"lr": 0.1})
    assert not (out / ".lock").exists()
    RunDirectory(out).claim(resume=True).close()  # free again


def test_a_live_process_elsewhere_keeps_its_lock_until_it_ends(tmp_path):
    holder = subprocess.Popen(["sleep", "30"])
    try:
        write_lock(tmp_path, holder.pid)
        with pytest.raises(RunDirectoryError, match=f"pid {holder.pid}@"):
            RunDirectory(tmp_path).claim()
    finally:
        holder.kill()
        holder.wait()
    warnings = []
    with RunDirectory(tmp_path, warn=warnings.append).claim():
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and f"pid {holder.pid}@" in warnings[0]


def test_a_stale_lock_is_named_and_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    warnings = []
    run = RunDirectory(tmp_path, warn=warnings.append).claim()
    assert warnings == [
        f"took over the lock of {tmp_path} left by pid {pid}@{socket.gethostname()} since "
        "2026-01-02 03:04:05, which no longer runs"
    ]
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock.takeover").exists()
    run.close()
    assert not (tmp_path / ".lock").exists()


def test_an_earlier_process_with_this_pid_left_a_stale_lock(tmp_path):
    """A restarted container often runs the job under the same pid as before."""
    write_lock(tmp_path, os.getpid())
    warnings = []
    RunDirectory(tmp_path, warn=warnings.append).claim().close()
    assert len(warnings) == 1


def test_a_lock_from_another_host_or_garbled_is_refused_not_taken(tmp_path):
    write_lock(tmp_path, dead_pid(), host="node-that-is-not-here")
    with pytest.raises(RunDirectoryError, match="@node-that-is-not-here since .*delete .*lock"):
        RunDirectory(tmp_path).claim()
    (tmp_path / ".lock").write_text("")  # a claimer that died between create and write
    with pytest.raises(RunDirectoryError, match="in use by another process"):
        RunDirectory(tmp_path).claim()
    assert (tmp_path / ".lock").read_text() == ""


def _race(out: Path, start, done, results) -> None:
    start.wait()
    try:
        run = RunDirectory(out, warn=lambda message: None).claim()
    except RunDirectoryError:
        results.put("refused")
        return
    results.put("claimed")
    done.wait(10)  # hold the lock until every rival has tried
    run.close()


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale-lock"])
def test_of_processes_racing_for_one_folder_exactly_one_wins(tmp_path, stale):
    if stale:
        write_lock(tmp_path, dead_pid())
    ctx = multiprocessing.get_context("fork")
    start, done, results = ctx.Barrier(4), ctx.Event(), ctx.Queue()
    rivals = [ctx.Process(target=_race, args=(tmp_path, start, done, results)) for _ in range(4)]
    for rival in rivals:
        rival.start()
    outcomes = sorted(results.get(timeout=10) for _ in rivals)
    done.set()
    for rival in rivals:
        rival.join(10)
    assert outcomes == ["claimed", "refused", "refused", "refused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the winner released its lock


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(ZeroDivisionError), RunDirectory(tmp_path).claim():
        _ = 1 / 0
    assert not (tmp_path / ".lock").exists()


# ---- what a claim keeps, refuses and removes ---------------------------------------------
def make_artefact(root: Path, name: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("old run")
    return path


@pytest.mark.parametrize("name", ARTEFACTS)
def test_a_fresh_run_refuses_any_run_artefact(tmp_path, name):
    path = make_artefact(tmp_path, name)
    with pytest.raises(RunDirectoryError, match="already holds a run") as refused:
        RunDirectory(tmp_path).claim()
    message = str(refused.value)
    assert str(path.relative_to(tmp_path)).split("/")[0] in message and "--overwrite" in message
    assert ("--resume" in message) == (name == "checkpoints/last.pt")  # only then resumable
    assert path.read_text() == "old run"
    assert not (tmp_path / ".lock").exists()


def test_overwrite_removes_every_artefact_and_nothing_else(tmp_path):
    for name in ARTEFACTS:
        make_artefact(tmp_path, name)
    keep = [make_artefact(tmp_path, "notes.txt"), make_artefact(tmp_path, "stage1/summary.json")]
    with RunDirectory(tmp_path).claim(overwrite=True) as run:
        assert run.artefacts() == []
        for name in ARTEFACTS:
            assert not (tmp_path / name).exists()
        assert all(path.read_text() == "old run" for path in keep)


def test_resume_keeps_the_run_and_trims_the_epochs_it_repeats(tmp_path):
    for name in ARTEFACTS:
        make_artefact(tmp_path, name)
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "test_acc": 10.0 + e}) + "\n" for e in range(1, 5))
        + '{"epoch": 5, "te'  # cut short by a kill
    )
    with RunDirectory(tmp_path).claim(resume=True) as run:
        assert all((tmp_path / name).exists() for name in ARTEFACTS if name != "metrics.jsonl")
        assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3, 4]
        run.trim_metrics(2)  # last.pt holds 2 epochs done
        assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
        run.append_metrics({"epoch": 3, "test_acc": 50.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_metrics_of_releases_that_counted_epochs_from_zero_read_1_based(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "test_acc": 10.0 + e}) + "\n" for e in range(3))
    )
    records = RunFiles(tmp_path).read_metrics()
    assert [(r["epoch"], r["test_acc"]) for r in records] == [(1, 10.0), (2, 11.0), (3, 12.0)]


def test_a_failed_resume_into_a_new_folder_leaves_nothing_behind(tmp_path):
    with (
        pytest.raises(checkpoint.CheckpointError),
        RunDirectory(tmp_path / "typo").claim(resume=True) as run,
    ):
        run.load_last()
    assert list(tmp_path.iterdir()) == []


def test_overwrite_and_resume_together_are_an_error(tmp_path):
    with pytest.raises(ValueError, match="exclude each other"):
        RunDirectory(tmp_path).claim(overwrite=True, resume=True)


def test_temporary_files_of_interrupted_writes_are_removed_and_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    # what an atomic write (checkpoint or text file) leaves when killed before its rename
    last_tmp = checkpoint.temp_path(tmp_path / "checkpoints" / "last.pt")
    summary_tmp = checkpoint.temp_path(tmp_path / "summary.json")
    last_tmp.touch()
    summary_tmp.touch()
    unrelated = [make_artefact(tmp_path, ".hidden"), make_artefact(tmp_path, "checkpoints/.x.y")]
    warnings = []
    RunDirectory(tmp_path, warn=warnings.append).claim().close()
    assert not last_tmp.exists() and not summary_tmp.exists()
    assert all(path.exists() for path in unrelated)
    assert len(warnings) == 1
    assert f"checkpoints/{Path(last_tmp).name}" in warnings[0] and ".summary.json." in warnings[0]


# ---- files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_run_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with RunDirectory(tmp_path / "run").claim() as run:
            run.write_config({"lr": 0.1})
            run.append_metrics({"epoch": 1})
            run.trim_metrics(1)
            run.write_summary(summary())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.root.iterdir()}
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert modes == dict.fromkeys(
        [".lock", "config.yaml", "metrics.jsonl", "summary.json"], expected
    )


def test_files_round_trip(tmp_path):
    with RunDirectory(tmp_path).claim() as run:
        tree = {"data": {"name": "digits"}, "milestones": [2, 3], "lr": 0.1}
        run.write_config(tree)
        run.write_summary(summary())
        run.save_last({"model": {"w": torch.arange(3.0)}, "epoch": 2})
        run.save_best({"model": {"w": torch.ones(2)}})
    reader = RunFiles(tmp_path)
    assert reader.read_config() == tree
    assert reader.read_summary() == summary()
    assert torch.equal(reader.load_last()["model"]["w"], torch.arange(3.0))
    assert torch.equal(checkpoint.load(tmp_path / "checkpoints/best.pt")["model"]["w"],
                       torch.ones(2))  # fmt: skip
    assert not hasattr(reader, "write_config")  # reading a run cannot write into it
    with pytest.raises(checkpoint.CheckpointError, match="holds no run to continue"):
        RunFiles(tmp_path / "empty").load_last()


def test_non_writers_write_nothing(tmp_path):
    run = RunDirectory(tmp_path / "rank1", writes=False).claim()
    run.write_config({"a": 1})
    run.append_metrics({"epoch": 1})
    run.write_summary(summary())
    run.save_last({"model": {}})
    run.close()
    assert not (tmp_path / "rank1").exists()
    nowhere = RunDirectory(None).claim()  # a run without a folder
    nowhere.append_metrics({"epoch": 1})
    assert nowhere.artefacts() == [] and not nowhere.has_last()


def test_a_read_only_folder_is_one_line_naming_it(read_only_folder):
    out = read_only_folder
    with pytest.raises(RunDirectoryAccessError) as refused:
        RunDirectory(out).claim()
    assert str(refused.value) == f"cannot claim run directory {out}: Read-only file system"
    assert isinstance(refused.value, OSError) and refused.value.errno == errno.EROFS


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_without_write_permission_is_one_line_naming_it(tmp_path):
    out = tmp_path / "locked"
    out.mkdir(mode=0o555)
    try:
        with pytest.raises(RunDirectoryAccessError, match=f"^cannot claim run directory {out}: "):
            RunDirectory(out).claim()
    finally:
        out.chmod(0o755)


def test_a_full_disk_keeps_the_previous_summary_and_no_temporary_file(tmp_path, monkeypatch):
    with RunDirectory(tmp_path).claim() as run:
        run.write_summary(summary(test_acc=60.0))

        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(RunDirectoryAccessError) as failed:
            run.write_summary(summary(test_acc=70.0))
    path = tmp_path / "summary.json"
    assert str(failed.value) == f"cannot write {path}: No space left on device"
    assert RunFiles(tmp_path).read_summary().test_acc == 60.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# ---- the summary schema ----------------------------------------------------------------------
def test_summary_is_one_flat_object_with_a_schema_and_reads_back():
    written = summary().to_dict()
    assert written["schema"] == 1 and written["teacher_params"] == 4000
    assert written["peak_gpu_memory_mb"] is None and "extra" not in written
    assert RunSummary.from_dict(written) == summary()
    assert summary().get("teacher_params") == 4000 and summary().get("missing", 0) == 0
    with pytest.raises(ValueError, match=r"extra field\(s\) test_acc shadow declared"):
        summary(extra={"test_acc": 1.0}).to_dict()


def test_an_old_summary_without_schema_still_reads_and_a_foreign_one_is_named():
    old = {"test_acc": 70.0, "best_test_acc": 71.0, "params": 250, "macs": 4000, "seed": 0,
           "seconds": 90.0, "model": "resnet8", "prune": {"keep": 0.5}}  # fmt: skip
    read = RunSummary.from_dict(old, "old/summary.json")
    assert read.model == "resnet8" and read.precision is None and read.best_epoch is None
    assert read.extra == {"prune": {"keep": 0.5}}
    with pytest.raises(ValueError, match=r"^s\.json has no macs, seed: not a training run"):
        RunSummary.from_dict({"test_acc": 1, "best_test_acc": 1, "params": 1, "seconds": 1},
                             "s.json")  # fmt: skip
    with pytest.raises(ValueError, match="schema 2; this mhkd reads up to 1"):
        RunSummary.from_dict({**old, "schema": 2}, "new/summary.json")
