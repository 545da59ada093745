"""A run directory: one run's files, owned by one process at a time.

::

    OUT/.lock                 who runs here: pid, host, start time, command line
    OUT/config.yaml           the resolved configuration, written once when the run starts
    OUT/metrics.jsonl         one line per epoch, "epoch" 1-based (as printed and as best_epoch)
    OUT/summary.json          written when the run ends (shape: RunSummary, "schema": 1)
    OUT/checkpoints/last.pt   everything needed to resume exactly
    OUT/checkpoints/best.pt   the deployable student at its best test accuracy

A run claims its folder before anything else is written, by the lock protocol of
:mod:`mhkd.lock`: one process at a time, a second claimer told who runs there, a lock left on
this host by a process that no longer runs taken over and named.

Text files are replaced atomically (a temporary file and a rename) so a full disk or a kill
never leaves half a config or summary, and they are created like any other file (mode 0o666
less the umask). Checkpoints go through :func:`mhkd.checkpoint.save`. A stage of a pipeline
(``OUT/stage1``, ``OUT/aux/ce``) is a run directory of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from mhkd import checkpoint, lock
from mhkd.config import without_default_sections

LOCK = lock.NAME
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
#: What makes a folder a run's: a fresh run refuses a folder holding any of these (or a
#: checkpoint ``checkpoints/*.pt``) unless told to overwrite, which removes them.
ARTEFACT_FILES = (CONFIG, METRICS, SUMMARY)
ARTEFACT_FOLDERS = ("tensorboard",)
#: Settings (dotted paths of config.yaml) that do not change what a run computes, so a resumed
#: run may give other values: where the data lives, how it is decoded and logged, evaluation's
#: batch size (BatchNorm evaluates with its running statistics), the memory layout, compiling,
#: reading a teacher cache from disk or memory, and the device (a preempted run may continue
#: on another machine). Every other setting must equal the stored one (see ``record_config``).
RESUME_MAY_DIFFER = (
    "data.dir", "data.workers", "optim.eval_batch_size", "runtime.device",
    "runtime.channels_last", "runtime.compile", "runtime.teacher_cache_mmap",
    "runtime.tensorboard", "runtime.quiet", "resolved.device", "resolved.channels_last",
    "prune.latency_repeats",
)  # fmt: skip


class RunDirectoryError(ValueError):
    """The folder cannot be used as asked: it holds a run, or another process runs in it."""


class RunDirectoryAccessError(OSError):
    """A run file cannot be created or written (permissions, a read-only or full disk)."""


def _warn(message: str) -> None:
    print(f"mhkd: warning: {message}", file=sys.stderr)


# ---- the summary schema ------------------------------------------------------------------
SCHEMA_VERSION = 1
#: Fields without which a summary.json is not a training run's (the report's tables need them).
REQUIRED_FIELDS = ("test_acc", "best_test_acc", "params", "macs", "seed", "seconds")


@dataclass(kw_only=True)
class RunSummary:
    """What every run writes to ``summary.json`` when it ends.

    Every field must be given; ``None`` where it does not apply (``teacher`` of a teacher's own
    training, ``peak_gpu_memory_mb`` off CUDA) or where a summary from an older release lacked
    it. Method- and pipeline-specific values (``teacher_params``, a pruning run's
    ``params_before``) go in ``extra``; on disk they sit at the top level beside the declared
    fields, so summary.json stays one flat object.
    """

    test_acc: float
    best_test_acc: float
    best_epoch: int | None  # 1-based, as printed; None in summaries written before schema 1
    params: int
    macs: int
    model: str | None
    teacher: str | None
    method: str | None
    data: str | None
    num_classes: int | None
    epochs: int | None
    seed: int
    seconds: float
    precision: str | None
    channels_last: bool | None
    world_size: int | None
    peak_host_memory_mb: float | None
    peak_gpu_memory_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def declared(cls) -> tuple[str, ...]:
        """The names of the declared fields (all but ``extra``)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of summary.json: ``schema``, the declared fields, then ``extra``."""
        names = self.declared()
        clash = sorted(set(self.extra) & {"schema", *names})
        if clash:
            raise ValueError(f"summary extra field(s) {', '.join(clash)} shadow declared fields")
        return {
            "schema": SCHEMA_VERSION,
            **{name: getattr(self, name) for name in names},
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "summary") -> RunSummary:
        """Read a summary object; one without ``schema`` (older releases) reads the same way."""
        if not isinstance(data, dict):
            raise ValueError(f"{source} is not a JSON object")
        schema = data.get("schema", 0)
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise ValueError(
                f"{source} has summary schema {schema!r}; this mhkd reads up to {SCHEMA_VERSION}"
            )
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        if missing:
            raise ValueError(f"{source} has no {', '.join(missing)}: not a training run's summary")
        names = cls.declared()
        return cls(
            **{name: data.get(name) for name in names},
            extra={k: v for k, v in data.items() if k not in names and k != "schema"},
        )

    def get(self, key: str, default: Any = None) -> Any:
        """A declared field or an ``extra`` value by name; ``default`` where absent or None."""
        value = getattr(self, key) if key in self.declared() else self.extra.get(key)
        return default if value is None else value


# ---- the run directory -------------------------------------------------------------------
class RunFiles:
    """A run's folder as files to read: configuration, metrics, checkpoints and summary (a
    finished run for a report, a stage whose result the next stage reads). Writing is
    :class:`RunDirectory`'s, which claims the folder first."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def path(self, *parts: str) -> Path:
        """A path inside the run directory."""
        if self.root is None:
            raise ValueError("this run has no directory (out)")
        return self.root.joinpath(*parts)

    def artefacts(self) -> list[Path]:
        """The run files and folders present (config, metrics, summary, checkpoints, ...)."""
        if self.root is None:
            return []
        found = [self.path(name) for name in ARTEFACT_FILES if self.path(name).is_file()]
        found += sorted(self.path(CHECKPOINTS).glob("*.pt"))
        found += [self.path(name) for name in ARTEFACT_FOLDERS if self.path(name).is_dir()]
        return found

    def orphans(self) -> list[Path]:
        """Temporary files of atomic writes that never finished (``.last.pt.x1y2z3`` ...)."""
        if self.root is None:
            return []
        found = []
        for folder in (self.root, self.path(CHECKPOINTS)):
            if not folder.is_dir():
                continue
            for path in checkpoint.orphaned_temp_files(folder):
                target = checkpoint.temp_target(path.name) or ""
                if target in ARTEFACT_FILES or target.endswith(".pt"):
                    found.append(path)
        return found

    def read_config(self) -> dict[str, Any]:
        """The resolved configuration; ``{}`` when the run has none."""
        path = self.path(CONFIG)
        if not path.is_file():
            return {}
        try:
            tree = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: {str(exc).splitlines()[0]}") from None
        if tree is None:
            return {}
        if not isinstance(tree, dict):
            raise ValueError(f"{path} is not a YAML mapping")
        return tree

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every epoch record, epochs 1-based; a last line cut short by a kill is ignored.

        Releases before the run-directory schema counted epochs from 0; such a file (its
        first record is epoch 0) is renumbered so that reports read old and new runs alike.
        """
        path = self.path(METRICS)
        if not path.is_file():
            return []
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ValueError(f"{path}:{number} is not JSON") from None
        if records and records[0].get("epoch") == 0:
            records = [{**r, "epoch": r["epoch"] + 1} for r in records]
        return records

    def has_last(self) -> bool:
        """Whether ``checkpoints/last.pt`` exists (a run to resume)."""
        return self.root is not None and self.path(CHECKPOINTS, "last.pt").is_file()

    def load_last(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The resumable state (every rank reads it)."""
        path = self.path(CHECKPOINTS, "last.pt")
        if not path.is_file():
            raise checkpoint.CheckpointError(self._nothing_to_resume())
        return checkpoint.read_state(path, map_location=map_location)

    def check_resumable(self) -> None:
        """Refuse a resume without ``last.pt`` before anything of the run is written."""
        if self.root is not None and not self.has_last():
            raise checkpoint.CheckpointError(self._nothing_to_resume())

    def _nothing_to_resume(self) -> str:
        path = self.path(CHECKPOINTS, "last.pt")
        if self.artefacts():
            return f"--resume: no checkpoint at {path} (start over with --overwrite)"
        return f"--resume: {self.root} holds no run to continue; start one without --resume"

    def read_summary(self) -> RunSummary | None:
        """The run's summary; ``None`` while the run has not ended."""
        path = self.path(SUMMARY)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{path} is not JSON") from None
        return RunSummary.from_dict(data, path)


class RunDirectory(RunFiles):
    """One run's folder, owned by this process: claim, then configuration, metrics,
    checkpoints and summary written atomically.

    ``writes=False`` (every rank but 0 of a distributed run, or ``root=None``: a run without a
    folder) makes every write a no-op while reads still work. Use it as a context manager so
    the lock is released however the run ends::

        with RunDirectory(out).claim(overwrite=False, resume=False) as run:
            run.write_config(tree)
            ...
    """

    def __init__(
        self,
        root: str | Path | None,
        *,
        writes: bool = True,
        warn: Callable[[str], None] = _warn,
    ):
        super().__init__(root)
        self.writes = writes and self.root is not None
        self.warn = warn
        self._holder: lock.LockHolder | None = None
        self._created = False  # the claim made the folder

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.root)!r}, writes={self.writes})"

    def claim(self, overwrite: bool = False, resume: bool = False) -> RunDirectory:
        """Lock the folder for this process, then make it ready for a fresh or resumed run.

        A fresh run refuses a folder holding any run artefact unless ``overwrite``, which
        removes them; ``resume`` keeps them. Temporary files of interrupted writes are removed
        and named. Returns ``self``; without ``writes`` nothing happens.
        """
        if overwrite and resume:
            raise ValueError("--overwrite and --resume exclude each other")
        if not self.writes or self._holder is not None:
            return self
        with self._os_errors(f"cannot claim run directory {self.root}"):
            self._created = not self.root.exists()
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock()
        try:
            self._prepare(overwrite, resume)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Release the lock (if this process still holds it)."""
        if self._holder is None:
            return
        lock.release(self.root, self._holder)
        self._holder = None
        if self._created:  # e.g. a --resume into a mistyped folder: leave nothing behind
            self._created = False
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only if empty

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _lock(self) -> None:
        try:
            self._holder = lock.acquire(self.root, self.warn)
        except lock.LockBusy as busy:
            doing = "being claimed by" if busy.guard else "in use by"
            raise RunDirectoryError(
                f"run directory {self.root} is {doing} {busy.who} {busy.hint}"
            ) from None

    def _prepare(self, overwrite: bool, resume: bool) -> None:
        found = self.artefacts()
        if found and not resume:
            names = ", ".join(str(p.relative_to(self.root)) for p in found)
            if not overwrite:
                if self.has_last():
                    raise RunDirectoryError(
                        f"{self.root} already holds a run ({names}): continue it with --resume, "
                        "start over with --overwrite, or choose another --out"
                    )
                raise RunDirectoryError(
                    f"{self.root} already holds a run ({names}) without a checkpoint to resume: "
                    "start over with --overwrite, or choose another --out"
                )
            with self._os_errors(f"cannot clear run directory {self.root}"):
                for path in found:
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
        orphans = self.orphans()
        if orphans:
            with self._os_errors(f"cannot clear run directory {self.root}"):
                for path in orphans:
                    path.unlink(missing_ok=True)
            names = ", ".join(str(p.relative_to(self.root)) for p in orphans)
            self.warn(f"removed temporary file(s) left by an interrupted write: {names}")

    def record_config(self, tree: dict[str, Any], resume: bool) -> None:
        """A fresh run writes config.yaml; a resumed one checks ``tree`` against it instead.

        config.yaml is written once, when the run starts, so it always says how the run was
        computed: a resume with any other setting (but :data:`RESUME_MAY_DIFFER`) is refused
        naming the differing keys, before anything is written. That includes ``--epochs``:
        training longer would change the learning-rate schedule of epochs already trained
        (milestones, cosine), so a longer run is a new run. Every rank checks, so all refuse.
        A pipeline's section at its defaults counts as absent on both sides
        (:func:`mhkd.config.without_default_sections`).
        """
        if self.root is None:
            return
        if resume and self.path(CONFIG).is_file():
            stored = self.read_config()
            wanted = yaml.safe_load(yaml.safe_dump(tree, sort_keys=False))  # as stored
            differ = config_differences(
                without_default_sections(stored), without_default_sections(wanted)
            )
            if differ:
                longer = any(d.startswith("schedule.epochs ") for d in differ)
                why = " (more epochs would change the schedule of those trained)" if longer else ""
                raise RunDirectoryError(
                    f"--resume: {self.root} was run with other settings: {'; '.join(differ)}"
                    f"{why}. "
                    "A resumed run is the run it continues: give the stored values (see "
                    f"{self.path(CONFIG)}), or start a new run with --overwrite or another --out"
                )
            return
        self.write_config(tree)

    def write_config(self, tree: dict[str, Any]) -> None:
        """Write the resolved configuration as YAML (safe types only)."""
        if self.writes:
            self._write_text(self.path(CONFIG), yaml.safe_dump(tree, sort_keys=False))

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one epoch's record as a line of JSON."""
        if self.writes:
            path = self.path(METRICS)
            with self._os_errors(f"cannot write {path}"), path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def trim_metrics(self, done: int) -> None:
        """Keep the records of the first ``done`` epochs: a resumed run logs later ones again."""
        if self.writes and self.path(METRICS).is_file():
            kept = [r for r in self.read_metrics() if r["epoch"] <= done]
            self._write_text(self.path(METRICS), "".join(json.dumps(r) + "\n" for r in kept))

    def save_last(self, state: dict[str, Any]) -> None:
        """Write the resumable state, atomically."""
        if self.writes:
            self._save(state, self.path(CHECKPOINTS, "last.pt"))

    def save_best(self, state: dict[str, Any]) -> None:
        """Write the deployable model at its best epoch, atomically."""
        if self.writes:
            self._save(state, self.path(CHECKPOINTS, "best.pt"))

    def write_summary(self, summary: RunSummary) -> None:
        """Write summary.json (the run has ended)."""
        if self.writes:
            self._write_text(self.path(SUMMARY), json.dumps(summary.to_dict(), indent=2) + "\n")

    def _save(self, state: dict[str, Any], path: Path) -> None:
        try:
            checkpoint.save(state, path)
        except OSError as exc:
            if str(path) in str(exc):
                raise
            raise _access_error(f"cannot write {path}", exc) from None

    def _write_text(self, path: Path, text: str) -> None:
        """Replace ``path`` by ``text`` via a temporary file created with the umask's mode."""
        with self._os_errors(f"cannot write {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.temp_path(path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    @contextlib.contextmanager
    def _os_errors(self, what: str) -> Iterator[None]:
        """Turn an OSError into one line saying what could not be done, and why."""
        try:
            yield
        except RunDirectoryAccessError:
            raise
        except OSError as exc:
            raise _access_error(what, exc) from None


def config_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``key stored (now wanted)`` for every leaf that differs, but :data:`RESUME_MAY_DIFFER`."""
    old, new = _leaves(stored), _leaves(wanted)
    absent = "(absent)"
    return [
        f"{key} {old.get(key, absent)} (now {new.get(key, absent)})"
        for key in sorted(set(old) | set(new))
        if old.get(key, absent) != new.get(key, absent)
        and not any(key == k or key.startswith(f"{k}.") for k in RESUME_MAY_DIFFER)
    ]


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        leaves.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def require_resumable(root: str | Path | None) -> None:
    """Refuse ``--resume`` into a folder that is missing or holds no run, writing nothing."""
    if root is None:
        raise RunDirectoryError("--resume needs the run directory (--out)")
    root = Path(root)
    if not root.is_dir() or not any(p.name != LOCK for p in root.iterdir()):
        raise RunDirectoryError(
            f"--resume: {root} holds no run to continue; start one there without --resume"
        )


def _access_error(what: str, exc: OSError) -> RunDirectoryAccessError:
    error = RunDirectoryAccessError(f"{what}: {exc.strerror or exc}")
    error.errno = exc.errno
    return error
