"""A folder's lock file: one process at a time works in the folder, and the lock names it.

::

    FOLDER/.lock            who holds it: pid, host, start time, command line (one JSON line)
    FOLDER/.lock.takeover   for an instant: a process removing a stale lock

Why a lock: two processes started on one folder (two runs on one ``--out``, two builds of one
teacher cache) would otherwise interleave and replace each other's files. :func:`acquire`
creates ``.lock`` with ``O_CREAT|O_EXCL`` before anything else is written, so exactly one
process wins; the lock names its holder, so a second claimer is told who holds it, and a lock
left on this host by a process that no longer runs (killed with -9, a node reboot) is
recognised, named and taken over. A lock written on another host cannot be checked from here:
it is refused, as is one that cannot be read (a claimer that died between creating and writing
it), and the caller's message says which file to delete.

Callers (``RunDirectory.claim``, the teacher cache's build) turn :class:`LockBusy` into their
own errors and words.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shlex
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NAME = ".lock"
GUARD = NAME + ".takeover"
#: Lock files this process holds, so a second claim from the same process is refused while a
#: lock naming this pid but not held (left by an earlier process that had the same pid, e.g. a
#: restarted container) is stale.
_HELD: set[str] = set()


@dataclass(frozen=True)
class LockHolder:
    """The process a ``.lock`` file names."""

    pid: int
    host: str
    started: str
    command: str
    token: str

    @classmethod
    def me(cls) -> LockHolder:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=time.strftime("%Y-%m-%d %H:%M:%S"),
            command=shlex.join(sys.argv),
            token=secrets.token_hex(8),
        )

    @classmethod
    def read(cls, path: Path) -> LockHolder | None:
        """The holder a lock file names; ``None`` when it is gone, empty or garbled."""
        try:
            fields = json.loads(path.read_text())
            holder = cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls)})
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return holder if isinstance(holder.pid, int) else None

    def describe(self) -> str:
        return f"pid {self.pid}@{self.host} since {self.started}"

    def is_stale(self, lock: Path) -> bool:
        """True when the holder ran on this host and no longer runs."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return _key(lock) not in _HELD  # an earlier process that had this pid
        return not _alive(self.pid)


class LockBusy(Exception):
    """The lock is held: by a live process, by one on another host, or its file cannot be read
    (``holder`` is then ``None``); or, where ``guard`` is set, another process is taking over
    the same stale lock right now."""

    def __init__(self, path: Path, holder: LockHolder | None, guard: Path | None = None):
        self.path = path
        self.holder = holder
        self.guard = guard
        super().__init__(f"{path} is held by {self.who} {self.hint}")

    @property
    def who(self) -> str:
        """The holder described, or "another process" where the lock names none."""
        return self.holder.describe() if self.holder is not None else "another process"

    @property
    def hint(self) -> str:
        """Which file to delete should the holder be gone, in parentheses."""
        if self.guard is not None:
            return f"(if none is, delete {self.guard})"
        return f"(if it no longer runs, delete {self.path})"


def acquire(folder: Path, warn: Callable[[str], None] | None = None) -> LockHolder:
    """Create ``folder/.lock`` naming this process, and return the holder it names.

    A stale lock (see :meth:`LockHolder.is_stale`) is removed, and named to ``warn``; any other
    lock, or a rival's takeover in progress, raises :class:`LockBusy`. An ``OSError`` (the
    folder missing or read-only, a full disk) leaves no lock behind.
    """
    path = Path(folder) / NAME
    me = LockHolder.me()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = LockHolder.read(path)
            if holder is None or not holder.is_stale(path):
                raise LockBusy(path, holder) from None
            _take_over(path, holder, warn)
            continue
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(dataclasses.asdict(me)) + "\n")
        except BaseException:
            path.unlink(missing_ok=True)  # a half-written lock would block every claim
            raise
        _HELD.add(_key(path))
        return me
    raise LockBusy(path, LockHolder.read(path))


def release(folder: Path, holder: LockHolder) -> None:
    """Remove ``folder/.lock`` if it still names ``holder`` (it may have been taken over)."""
    path = Path(folder) / NAME
    _HELD.discard(_key(path))
    if LockHolder.read(path) == holder:
        path.unlink(missing_ok=True)


def _take_over(path: Path, stale: LockHolder, warn: Callable[[str], None] | None) -> None:
    """Remove a stale lock; a guard file makes sure only one claimer removes it."""
    guard = path.with_name(GUARD)
    try:
        os.close(os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        raise LockBusy(path, None, guard) from None
    try:
        if LockHolder.read(path) == stale:  # not replaced meanwhile by a live claimer
            path.unlink(missing_ok=True)
            if warn is not None:
                warn(
                    f"took over the lock of {path.parent} left by {stale.describe()}, "
                    "which no longer runs"
                )
    finally:
        guard.unlink(missing_ok=True)


def _key(lock: Path) -> str:
    return os.path.realpath(lock)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
