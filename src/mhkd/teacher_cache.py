"""Cached teacher targets: run the teacher once per (sample, augmentation view), reuse forever.

Online distillation pays a teacher forward pass for every student step, for hundreds of
epochs. Methods of ``TeacherUse.OUTPUTS`` need nothing from the teacher but its logits and
what fixed modules compute from its features (MHKD's pre-fitted teacher heads), and the
loader's augmentation is a finite set of views (CIFAR crop+flip: 2×9×9 = 162), so those outputs
for every sample and view can be computed once and looked up afterwards. The lookup is exact:
the student always sees the very view the teacher was run on.

A cache is a directory holding ``meta.json``, ``logits.npy`` (fp16, N × V × K; or, with
``topk``, ``values.npy`` and ``classes.npy`` of N × V × k) and one ``extra-<i>.npy`` (fp16,
N × V × shape) per named extra output — plain arrays, no pickle. It records fingerprints of the
teacher's weights, of the training set and of the fixed modules that computed the extras, and
refuses to serve any other.

Order in a run: methods' :meth:`~mhkd.methods.base.Method.prepare` first (MHKD pre-fits its
teacher heads there), *then* build or open the cache, so the extras come from the fitted
heads; a cache built from other heads is refused by its fingerprint. The loop::

    outputs = cached_outputs(methods)      # ValueError if a method needs live features
    if not (root / "meta.json").is_file():
        build_cache(root, teacher, splits, device, outputs=outputs, augment=..., topk=...,
                    precision=..., channels_last=...)
    cache = open_cache(root, teacher, splits, device, mmap, outputs=outputs)
    ...
    teacher_out = cache.lookup(batch.indices, batch.views)   # a ModelOutput, per step

Extra outputs are stored whole (``topk`` applies to the logits only): MHKD's three pre-fitted
CIFAR-100 heads add 3 × 100 fp16 values per sample and view, 4.9 GB over 50 000 × 162.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from mhkd import hardware, lock
from mhkd.data import IDENTITY_VIEW, NUM_VIEWS, DataSplits, apply_views, normalize
from mhkd.methods.base import MethodSet, ModelOutput, TeacherUse
from mhkd.preemption import RunInterrupted
from mhkd.progress import Progress
from mhkd.taps import Taps

FORMAT = "mhkd-teacher-cache/2"


class CacheError(ValueError):
    """The cache does not belong to this teacher or data set, or cannot be read."""


def _hash_state(items: Iterable[tuple[str, Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(items, key=lambda item: item[0]):
        digest.update(name.encode())
        tensor = value.detach().cpu().contiguous()
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint_model(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, shapes and bytes), independent of its device."""
    return _hash_state(model.state_dict().items())


def fingerprint_fixed(module: nn.Module) -> str:
    """SHA-256 of the state of ``module``'s fixed parts: every submodule that has parameters
    and none that trains (``requires_grad``), with its buffers (e.g. MHKD's pre-fitted teacher
    heads and their BatchNorm statistics)."""
    fixed: list[str] = []
    for name, sub in module.named_modules():
        params = list(sub.parameters())
        inside = any(not f or name.startswith(f"{f}.") for f in fixed)
        if params and not inside and not any(p.requires_grad for p in params):
            fixed.append(name)
    modules = dict(module.named_modules())
    return _hash_state(
        (f"{name}.{key}", value)
        for name in fixed
        for key, value in modules[name].state_dict().items()
    )


class CachedOutputs(NamedTuple):
    """What a cache stores beside the teacher's logits: the per-sample tensors ``derive``
    computes from the teacher's output with ``layers`` tapped, and a ``fingerprint`` of the
    fixed modules that compute them."""

    layers: tuple[str, ...]
    derive: Callable[[ModelOutput], dict[str, Tensor]]
    fingerprint: str


def cached_outputs(methods: MethodSet) -> CachedOutputs | None:
    """What ``methods`` read of the teacher, as a cache must hold it (None: its logits only).

    Raises ``ValueError`` when a method needs live teacher features, which no cache can serve.
    Call it after the methods' pre-fit: the fingerprint is of the fixed modules as they are now.
    """
    if methods.teacher_use > TeacherUse.OUTPUTS:
        live = [n for n, m in methods.methods.items() if m.teacher_use > TeacherUse.OUTPUTS]
        raise ValueError(
            f"--teacher-cache serves methods that read the teacher's outputs only (kd, dkd, "
            f"mhkd with --mhkd.head-mode prefit); {', '.join(live)} of {methods.spec!r} "
            "read live teacher features"
        )
    if not methods.teacher_layers:
        return None
    return CachedOutputs(
        tuple(methods.teacher_layers), methods.cached_teacher_outputs, fingerprint_fixed(methods)
    )


def fingerprint_data(splits: DataSplits) -> str:
    """SHA-256 of the training images and labels (the cache is indexed by their positions)."""
    digest = hashlib.sha256(splits.name.encode())
    digest.update(splits.train.images.contiguous().numpy().tobytes())
    digest.update(splits.train.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


class TeacherCache:
    """Teacher logits and extra outputs per (training sample, view), served as float32
    batches on a device."""

    def __init__(self, root: str | Path, meta: dict[str, Any], device: torch.device, mmap: bool):
        self.root = Path(root)
        self.meta = meta
        self.device = device
        mode = "r" if mmap else None
        try:
            self.arrays = [
                np.load(self.root / f"{n}.npy", mmap_mode=mode) for n in _logit_files(meta)
            ]
            self.extras = {
                name: np.load(self.root / f"extra-{i}.npy", mmap_mode=mode)
                for i, name in enumerate(meta["extras"])
            }
        except (OSError, ValueError) as exc:
            raise CacheError(f"cannot read teacher cache {self.root}: {exc}") from None
        if not mmap:  # resident: serve batches from device memory
            self.arrays = [torch.from_numpy(a).to(device) for a in self.arrays]
            self.extras = {n: torch.from_numpy(a).to(device) for n, a in self.extras.items()}
        slots = torch.full((NUM_VIEWS,), -1, dtype=torch.long)
        slots[torch.tensor(meta["views"])] = torch.arange(len(meta["views"]))
        self.view_slots = slots.to(device)

    def lookup(self, indices: Tensor, views: Tensor | None) -> ModelOutput:
        """The teacher's output for the samples ``indices`` seen as ``views``: float32 logits
        (B × K) and the extra outputs by name in ``features``."""
        if views is None:
            views = torch.full_like(indices, IDENTITY_VIEW)
        slots = self.view_slots[views]
        if bool((slots < 0).any()):
            raise CacheError(
                f"teacher cache {self.root} holds views {self.meta['views'][:4]}... only; "
                "rebuild it for the augmentation this run uses"
            )
        extras = {n: self._gather(a, indices, slots).float() for n, a in self.extras.items()}
        parts = [self._gather(a, indices, slots) for a in self.arrays]
        if not self.meta["topk"]:
            return ModelOutput(parts[0].float(), extras)
        values, classes = parts[0].float(), parts[1].long()
        # Classes outside the top k get the smallest kept logit: their share of the softened
        # distribution is approximated, the top k are exact.
        full = values.min(dim=1, keepdim=True).values.expand(-1, self.meta["num_classes"])
        return ModelOutput(full.clone().scatter_(1, classes, values), extras)

    def _gather(self, array: Any, indices: Tensor, slots: Tensor) -> Tensor:
        if isinstance(array, Tensor):
            return array[indices, slots]
        rows = array[indices.cpu().numpy(), slots.cpu().numpy()]
        return torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)

    def size_bytes(self) -> int:
        return sum((self.root / f"{n}.npy").stat().st_size for n in _files(self.meta))


def _logit_files(meta: dict[str, Any]) -> list[str]:
    return ["values", "classes"] if meta["topk"] else ["logits"]


def _files(meta: dict[str, Any]) -> list[str]:
    return [*_logit_files(meta), *(f"extra-{i}" for i in range(len(meta["extras"])))]


def _describe(layers: list[str], fingerprint: str | None) -> str:
    if fingerprint is None:
        return "the logits only"
    return f"outputs of fixed modules on {', '.join(layers)} (state {fingerprint[:12]})"


def open_cache(
    root: str | Path,
    teacher: nn.Module,
    splits: DataSplits,
    device: torch.device,
    mmap: bool = False,
    *,
    outputs: CachedOutputs | None = None,
) -> TeacherCache:
    """Open an existing cache after checking it belongs to ``teacher`` and ``splits`` and holds
    the extra ``outputs`` the run's methods read (see :func:`cached_outputs`)."""
    root = Path(root)
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"no readable teacher cache in {root}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CacheError(
            f"{root} is not an mhkd teacher cache of this version ({FORMAT}); delete it to rebuild"
        )
    if meta["teacher"] != fingerprint_model(teacher):
        raise CacheError(f"teacher cache {root} was built from another teacher checkpoint")
    if meta["data"] != fingerprint_data(splits):
        raise CacheError(f"teacher cache {root} was built on other data than {splits.name!r}")
    held = (meta["extra_layers"], meta["extras_fingerprint"])
    wanted = (list(outputs.layers), outputs.fingerprint) if outputs else ([], None)
    if held != wanted:
        raise CacheError(
            f"teacher cache {root} holds {_describe(*held)}, but this run's methods read "
            f"{_describe(*wanted)} (e.g. other pre-fitted MHKD teacher heads); delete it to "
            "rebuild, or choose another cache directory"
        )
    return TeacherCache(root, meta, device, mmap)


def build_cache(
    root: str | Path,
    teacher: nn.Module,
    splits: DataSplits,
    device: torch.device,
    *,
    outputs: CachedOutputs | None = None,
    augment: bool = True,
    topk: int | None = None,
    batch_size: int = 512,
    precision: str = "fp32",
    channels_last: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run ``teacher`` on every training sample in every view and store its logits, and the
    extra ``outputs`` derived from it (tapping ``outputs.layers``), all in fp16.

    Build it after the methods' ``prepare`` (their fixed modules must be final). Returns the
    cache's metadata, including its size on disk and the build time.

    One process builds a folder at a time (``ROOT/.lock``, taken over when its holder no
    longer runs). The arrays are written as ``.part`` files, their disk space reserved up
    front (a memory map over a sparse file would die of SIGBUS when the disk fills), renamed
    when complete, then ``meta.json`` is written atomically last. Whatever ends the build (an
    error, a full disk, SIGTERM or Ctrl-C) removes the ``.part`` files and the lock.
    """
    root = Path(root)
    if topk and splits.num_classes > 2**15:
        raise ValueError("top-k caches store class ids as int16: at most 32768 classes")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _build_lock(root), _stop_on_signal():
            try:
                return _build(root, teacher, splits, device, outputs, augment, topk,
                              batch_size, precision, channels_last, quiet)  # fmt: skip
            finally:
                for part in root.glob("*.part"):
                    part.unlink(missing_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot build teacher cache in {root}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """``ROOT/.lock`` naming this process for the build; a dead holder's lock is taken over."""
    try:
        holder = lock.acquire(root)
    except lock.LockBusy as busy:
        raise CacheError(f"teacher cache {root} is being built by {busy.who} {busy.hint}") from None
    try:
        yield
    finally:
        lock.release(root, holder)


@contextlib.contextmanager
def _stop_on_signal() -> Iterator[None]:
    """SIGTERM/SIGUSR1 during the build raise :class:`RunInterrupted`, so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        raise RunInterrupted(
            signum, 0, where="while building the teacher cache (nothing of it kept)",
            hint="start the run again (--overwrite, or --resume if it had finished epochs)",
        )  # fmt: skip

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _allocate(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A writable ``.npy`` memory map whose disk blocks are reserved now: a full disk is an
    ``OSError`` here rather than a SIGBUS at some later write into a sparse file."""
    array = np.lib.format.open_memmap(path, "w+", dtype, shape)
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:  # a file system without fallocate: write the zeros instead
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            f.seek(array.offset)
            zeros = bytes(2**20)
            for left in range(array.nbytes, 0, -len(zeros)):
                f.write(zeros[: min(left, len(zeros))])
            f.flush()
            os.fsync(f.fileno())
    return array


@torch.inference_mode()
def _build(root, teacher, splits, device, outputs, augment, topk, batch_size, precision,
           channels_last, quiet) -> dict[str, Any]:  # fmt: skip
    views = list(range(NUM_VIEWS)) if augment else [IDENTITY_VIEW]
    images, n = splits.train.images, len(splits.train.labels)
    k = splits.num_classes if not topk else min(topk, splits.num_classes)
    shape = (n, len(views), k)
    targets = (
        [_allocate(root / "values.npy.part", np.float16, shape),
         _allocate(root / "classes.npy.part", np.int16, shape)]
        if topk
        else [_allocate(root / "logits.npy.part", np.float16, shape)]
    )  # fmt: skip
    extras: dict[str, np.ndarray] = {}  # allocated at the first batch, when their shapes are known
    mean = torch.tensor(splits.mean, device=device)
    std = torch.tensor(splits.std, device=device)
    teacher.eval()
    started = time.perf_counter()
    progress = Progress(n * len(views), "teacher cache", "img", quiet)
    with Taps(teacher, outputs.layers if outputs else ()) as taps:
        for start in range(0, n, batch_size):
            batch = images[start : start + batch_size].to(device)
            rows = slice(start, start + len(batch))
            for slot, view in enumerate(views):
                shown = apply_views(batch, torch.full((len(batch),), view, device=device))
                with hardware.autocast(device, precision):
                    logits = teacher(normalize(shown, mean, std, channels_last))
                    derived = outputs.derive(ModelOutput(logits, taps.pop())) if outputs else {}
                logits = logits.float()
                if topk:
                    values, classes = logits.topk(k, dim=1)
                    targets[0][rows, slot] = values.half().cpu().numpy()
                    targets[1][rows, slot] = classes.short().cpu().numpy()
                else:
                    targets[0][rows, slot] = logits.half().cpu().numpy()
                for i, (name, value) in enumerate(derived.items()):
                    if name not in extras:
                        extras[name] = _allocate(
                            root / f"extra-{i}.npy.part", np.float16,
                            (n, len(views), *value.shape[1:]),
                        )  # fmt: skip
                    extras[name][rows, slot] = value.float().half().cpu().numpy()
                progress.update(len(batch))
    progress.close()
    for array in [*targets, *extras.values()]:
        array.flush()
    return _seal(root, teacher, splits, outputs, views, topk, extras, precision, started)


def _seal(root, teacher, splits, outputs, views, topk, extras, precision,
          started) -> dict[str, Any]:  # fmt: skip
    """Name the finished arrays and write meta.json last, atomically: its presence means the
    cache is complete."""
    n = len(splits.train.labels)
    meta = {
        "format": FORMAT,
        "teacher": fingerprint_model(teacher),
        "data": fingerprint_data(splits),
        "data_name": splits.name,
        "num_samples": n,
        "num_classes": splits.num_classes,
        "views": views,
        "topk": topk,
        "extras": {name: list(array.shape[2:]) for name, array in extras.items()},
        "extra_layers": list(outputs.layers) if outputs else [],
        "extras_fingerprint": outputs.fingerprint if outputs else None,
        "precision": precision,
    }
    for name in _files(meta):
        (root / f"{name}.npy.part").replace(root / f"{name}.npy")
    meta["build_seconds"] = round(time.perf_counter() - started, 2)
    meta["size_bytes"] = sum((root / f"{name}.npy").stat().st_size for name in _files(meta))
    part = root / "meta.json.part"
    part.write_text(json.dumps(meta, indent=2) + "\n")
    part.replace(root / "meta.json")
    return meta
