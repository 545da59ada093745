"""Cached teacher targets: run the teacher once per (sample, augmentation view), reuse forever.

Online distillation pays a teacher forward pass for every student step, for hundreds of
epochs. Logit-based methods (KD, DKD) need nothing from the teacher but its logits, and the
loader's augmentation is a finite set of views (CIFAR crop+flip: 2×9×9 = 162), so the teacher's
output for every sample and view can be computed once and looked up afterwards. The lookup is
exact: the student always sees the very view the teacher was run on.

A cache is a directory holding ``meta.json`` and ``logits.npy`` (fp16, N × V × K; or, with
``topk``, ``values.npy`` and ``classes.npy`` of N × V × k) — plain arrays, no pickle. It records
fingerprints of the teacher's weights and of the training set, and refuses to serve any other.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from mhkd import hardware
from mhkd.data import IDENTITY_VIEW, NUM_VIEWS, DataSplits, apply_views, normalize

FORMAT = "mhkd-teacher-cache/1"


class CacheError(ValueError):
    """The cache does not belong to this teacher or data set, or cannot be read."""


def fingerprint_model(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, shapes and bytes), independent of its device."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        tensor = value.detach().cpu().contiguous()
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint_data(splits: DataSplits) -> str:
    """SHA-256 of the training images and labels (the cache is indexed by their positions)."""
    digest = hashlib.sha256(splits.name.encode())
    digest.update(splits.train.images.contiguous().numpy().tobytes())
    digest.update(splits.train.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


class TeacherCache:
    """Teacher logits per (training sample, view), served as float32 batches on a device."""

    def __init__(self, root: str | Path, meta: dict[str, Any], device: torch.device, mmap: bool):
        self.root = Path(root)
        self.meta = meta
        self.device = device
        mode = "r" if mmap else None
        names = ("values", "classes") if meta["topk"] else ("logits",)
        try:
            self.arrays = [np.load(self.root / f"{n}.npy", mmap_mode=mode) for n in names]
        except (OSError, ValueError) as exc:
            raise CacheError(f"cannot read teacher cache {self.root}: {exc}") from None
        if not mmap:  # resident: serve batches from device memory
            self.arrays = [torch.from_numpy(a).to(device) for a in self.arrays]
        slots = torch.full((NUM_VIEWS,), -1, dtype=torch.long)
        slots[torch.tensor(meta["views"])] = torch.arange(len(meta["views"]))
        self.view_slots = slots.to(device)

    def lookup(self, indices: Tensor, views: Tensor | None) -> Tensor:
        """Teacher logits (float32, B × K) for the samples ``indices`` seen as ``views``."""
        if views is None:
            views = torch.full_like(indices, IDENTITY_VIEW)
        slots = self.view_slots[views]
        if bool((slots < 0).any()):
            raise CacheError(
                f"teacher cache {self.root} holds views {self.meta['views'][:4]}... only; "
                "rebuild it for the augmentation this run uses"
            )
        parts = [self._gather(a, indices, slots) for a in self.arrays]
        if not self.meta["topk"]:
            return parts[0].float()
        values, classes = parts[0].float(), parts[1].long()
        # Classes outside the top k get the smallest kept logit: their share of the softened
        # distribution is approximated, the top k are exact.
        full = values.min(dim=1, keepdim=True).values.expand(-1, self.meta["num_classes"])
        return full.clone().scatter_(1, classes, values)

    def _gather(self, array: Any, indices: Tensor, slots: Tensor) -> Tensor:
        if isinstance(array, Tensor):
            return array[indices, slots]
        rows = array[indices.cpu().numpy(), slots.cpu().numpy()]
        return torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)

    def size_bytes(self) -> int:
        names = ("values", "classes") if self.meta["topk"] else ("logits",)
        return sum((self.root / f"{n}.npy").stat().st_size for n in names)


def open_cache(
    root: str | Path,
    teacher: nn.Module,
    splits: DataSplits,
    device: torch.device,
    mmap: bool = False,
) -> TeacherCache:
    """Open an existing cache after checking it belongs to ``teacher`` and ``splits``."""
    root = Path(root)
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"no readable teacher cache in {root}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CacheError(f"{root} is not an mhkd teacher cache")
    if meta["teacher"] != fingerprint_model(teacher):
        raise CacheError(f"teacher cache {root} was built from another teacher checkpoint")
    if meta["data"] != fingerprint_data(splits):
        raise CacheError(f"teacher cache {root} was built on other data than {splits.name!r}")
    return TeacherCache(root, meta, device, mmap)


@torch.inference_mode()
def build_cache(
    root: str | Path,
    teacher: nn.Module,
    splits: DataSplits,
    device: torch.device,
    *,
    augment: bool = True,
    topk: int | None = None,
    batch_size: int = 512,
    precision: str = "fp32",
    channels_last: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run ``teacher`` on every training sample in every view and store its logits.

    Returns the cache's metadata, including its size on disk and the build time.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    views = list(range(NUM_VIEWS)) if augment else [IDENTITY_VIEW]
    images, n = splits.train.images, len(splits.train.labels)
    k = splits.num_classes if not topk else min(topk, splits.num_classes)
    if topk and splits.num_classes > 2**15:
        raise ValueError("top-k caches store class ids as int16: at most 32768 classes")
    shape = (n, len(views), k)
    targets = (
        [np.lib.format.open_memmap(root / "values.npy.part", "w+", np.float16, shape),
         np.lib.format.open_memmap(root / "classes.npy.part", "w+", np.int16, shape)]
        if topk
        else [np.lib.format.open_memmap(root / "logits.npy.part", "w+", np.float16, shape)]
    )  # fmt: skip
    mean = torch.tensor(splits.mean, device=device)
    std = torch.tensor(splits.std, device=device)
    teacher.eval()
    started = time.perf_counter()
    chunks = range(0, n, batch_size)
    progress = tqdm(total=n * len(views), desc="teacher cache", unit="img", disable=quiet)
    for start in chunks:
        batch = images[start : start + batch_size].to(device)
        for slot, view in enumerate(views):
            shown = apply_views(batch, torch.full((len(batch),), view, device=device))
            with hardware.autocast(device, precision):
                logits = teacher(normalize(shown, mean, std, channels_last)).float()
            if topk:
                values, classes = logits.topk(k, dim=1)
                targets[0][start : start + len(batch), slot] = values.half().cpu().numpy()
                targets[1][start : start + len(batch), slot] = classes.short().cpu().numpy()
            else:
                targets[0][start : start + len(batch), slot] = logits.half().cpu().numpy()
            progress.update(len(batch))
    progress.close()
    for array in targets:
        array.flush()
    for name in ("values", "classes") if topk else ("logits",):
        (root / f"{name}.npy.part").replace(root / f"{name}.npy")
    meta = {
        "format": FORMAT,
        "teacher": fingerprint_model(teacher),
        "data": fingerprint_data(splits),
        "data_name": splits.name,
        "num_samples": n,
        "num_classes": splits.num_classes,
        "views": views,
        "topk": topk,
        "precision": precision,
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    meta["size_bytes"] = sum(p.stat().st_size for p in root.glob("*.npy"))
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # written last: complete
    return meta
