"""The lock protocol: one holder, named; stale locks on this host taken over; others refused."""

from __future__ import annotations

import ast
import dataclasses
import errno
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from mhkd import lock
from mhkd.lock import LockBusy, LockHolder


def write_lock(folder: Path, pid: int, host: str | None = None) -> LockHolder:
    holder = LockHolder(pid, host or socket.gethostname(), "2026-01-02 03:04:05", "mhkd x", "t0")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".lock").write_text(json.dumps(dataclasses.asdict(holder)))
    return holder


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def sleeper():
    process = subprocess.Popen(["sleep", "30"])
    yield process.pid
    process.kill()
    process.wait()


def test_the_lock_is_created_once_naming_this_process_and_released(tmp_path):
    me = lock.acquire(tmp_path)
    try:
        fields = json.loads((tmp_path / ".lock").read_text())
        assert fields == dataclasses.asdict(me)
        assert list(fields) == ["pid", "host", "started", "command", "token"]
        assert (me.pid, me.host) == (os.getpid(), socket.gethostname())
        with pytest.raises(LockBusy) as refused:  # this process holds it: not stale
            lock.acquire(tmp_path)
        assert refused.value.holder == me and refused.value.path == tmp_path / ".lock"
        assert refused.value.hint == f"(if it no longer runs, delete {tmp_path / '.lock'})"
        assert (tmp_path / ".lock").read_text() == json.dumps(dataclasses.asdict(me)) + "\n"
    finally:
        lock.release(tmp_path, me)
    assert list(tmp_path.iterdir()) == []
    again = lock.acquire(tmp_path)  # free again
    assert again.token != me.token
    lock.release(tmp_path, again)


def test_a_live_holder_is_refused_by_name(tmp_path, sleeper):
    holder = write_lock(tmp_path, sleeper)
    warnings = []
    with pytest.raises(LockBusy) as refused:
        lock.acquire(tmp_path, warnings.append)
    assert refused.value.holder == holder
    assert refused.value.who == f"pid {sleeper}@{socket.gethostname()} since 2026-01-02 03:04:05"
    assert warnings == []
    assert LockHolder.read(tmp_path / ".lock") == holder


def test_a_stale_lock_on_this_host_is_taken_over_with_a_warning(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    warnings = []
    me = lock.acquire(tmp_path, warnings.append)
    assert warnings == [
        f"took over the lock of {tmp_path} left by pid {pid}@{socket.gethostname()} since "
        "2026-01-02 03:04:05, which no longer runs"
    ]
    assert LockHolder.read(tmp_path / ".lock") == me
    assert not (tmp_path / ".lock.takeover").exists()
    lock.release(tmp_path, me)
    assert not (tmp_path / ".lock").exists()


def test_a_lock_naming_this_pid_but_not_held_is_an_earlier_process_s(tmp_path):
    write_lock(tmp_path, os.getpid())
    warnings = []
    lock.release(tmp_path, lock.acquire(tmp_path, warnings.append))
    assert len(warnings) == 1 and f"pid {os.getpid()}@" in warnings[0]


def test_a_rival_taking_over_the_same_stale_lock_is_not_raced(tmp_path):
    stale = write_lock(tmp_path, dead_pid())
    (tmp_path / ".lock.takeover").touch()
    with pytest.raises(LockBusy) as refused:
        lock.acquire(tmp_path)
    assert refused.value.guard == tmp_path / ".lock.takeover"
    assert (refused.value.holder, refused.value.who) == (None, "another process")
    assert refused.value.hint == f"(if none is, delete {tmp_path / '.lock.takeover'})"
    assert LockHolder.read(tmp_path / ".lock") == stale  # the rival's to remove
    assert (tmp_path / ".lock.takeover").exists()  # not ours to remove either


def test_a_stale_lock_that_keeps_coming_back_is_refused_after_three_tries(tmp_path, monkeypatch):
    stale = write_lock(tmp_path, dead_pid())
    tries = []
    monkeypatch.setattr(lock, "_take_over", lambda path, holder, warn: tries.append(holder))
    with pytest.raises(LockBusy) as refused:
        lock.acquire(tmp_path)
    assert tries == [stale] * 3 and refused.value.holder == stale


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    holder = write_lock(tmp_path, dead_pid(), host="node-that-is-not-here")
    with pytest.raises(LockBusy) as refused:
        lock.acquire(tmp_path, warnings := [])
    assert refused.value.holder == holder and "@node-that-is-not-here since" in refused.value.who
    assert warnings == [] and LockHolder.read(tmp_path / ".lock") == holder


@pytest.mark.parametrize(
    "text",
    ["", "{", "[1]", '{"pid": 1}', json.dumps({"pid": "1", "host": "h", "started": "s",
                                               "command": "c", "token": "t"})],
    ids=["empty", "cut-short", "not-an-object", "missing-fields", "pid-not-a-number"],
)  # fmt: skip
def test_a_garbled_lock_is_refused_as_another_process_s_and_kept(tmp_path, text):
    (tmp_path / ".lock").write_text(text)
    assert LockHolder.read(tmp_path / ".lock") is None
    with pytest.raises(LockBusy) as refused:
        lock.acquire(tmp_path)
    assert refused.value.holder is None and refused.value.who == "another process"
    assert (tmp_path / ".lock").read_text() == text


def test_only_the_holder_releases(tmp_path):
    me = lock.acquire(tmp_path)
    lock.release(tmp_path, dataclasses.replace(me, token="someone-else"))
    assert LockHolder.read(tmp_path / ".lock") == me  # not theirs to remove
    successor = write_lock(tmp_path, os.getpid() + 10**6)  # e.g. taken over meanwhile
    lock.release(tmp_path, me)
    assert LockHolder.read(tmp_path / ".lock") == successor  # no longer ours: kept
    (tmp_path / ".lock").unlink()
    write_lock(tmp_path, os.getpid())
    warnings = []
    lock.release(tmp_path, lock.acquire(tmp_path, warnings.append))  # released: stale now
    assert len(warnings) == 1


def test_a_failed_write_leaves_no_lock(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lock.json, "dumps", disk_full)
    with pytest.raises(OSError, match="No space left"):
        lock.acquire(tmp_path)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    lock.release(tmp_path, lock.acquire(tmp_path))


def test_the_lock_module_imports_nothing_of_mhkd():
    tree = ast.parse(Path(lock.__file__).read_text())
    imported = [
        name
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import)
            else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        )
    ]  # fmt: skip
    assert imported and not [name for name in imported if name.split(".")[0] == "mhkd"]
