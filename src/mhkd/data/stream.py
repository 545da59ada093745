"""A loader that streams image files through DataLoader worker processes.

Each worker decodes and crops a whole batch (one message per batch) and sends it as uint8
N×H×W×3; the main process moves it to the training device (pinned and non-blocking on CUDA),
where it becomes float and is normalised. The order of each epoch and the rank's share of it
are the resident loader's (:mod:`.order`); each sample's crop and flip are drawn from
(seed, epoch, index) (:mod:`.decode`), so a batch does not depend on the number of workers.

An unreadable file never kills a worker or hangs the loop: the worker reports it with its
batch, and the main process raises a :class:`DataError` naming the file or, with
``skip_bad``, drops the sample, logs a warning naming the file the first time it is seen, and
counts it: ``skipped`` is the number dropped in the current (or last) pass over the data,
``bad_files`` the paths of every file found bad so far.

No position inside an epoch is kept: a run resumed from an epoch's checkpoint repeats the next
epoch from its start with the same (seed, epoch) order and crops, so it is exact up to the
device's nondeterministic kernels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mhkd.data.augment import normalize
from mhkd.data.base import DataError
from mhkd.data.batch import Batch
from mhkd.data.decode import RATIO, SCALE, eval_view, open_rgb, sample_rng, train_view
from mhkd.data.files import FileSet
from mhkd.data.order import epoch_generator, rank_slots

log = logging.getLogger(__name__)

MAX_DEFAULT_WORKERS = 8

# One decoded batch: images N×H×W×3 uint8, labels, global indices, (index, message) per bad file.
Decoded = tuple[Tensor, Tensor, Tensor, list[tuple[int, str]]]


def default_workers() -> int:
    """min(8, the CPUs this process may use shared among torchrun's ranks on this node)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(MAX_DEFAULT_WORKERS, cpus // max(1, local_ranks)))


class _BatchDecoder(Dataset):
    """Decodes the batch ``(epoch, indices)``; runs in the workers (or inline with 0)."""

    def __init__(
        self,
        files: FileSet,
        seed: int,
        augment: bool,
        image_size: int,
        resize_size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
    ) -> None:
        self.files = files
        self.seed = seed
        self.augment = augment
        self.image_size = image_size
        self.resize_size = resize_size
        self.scale = scale
        self.ratio = ratio

    def _view(self, epoch: int, index: int) -> np.ndarray:
        image = open_rgb(self.files.path(index))
        if self.augment:
            rng = sample_rng(self.seed, epoch, index)
            return train_view(image, rng, self.image_size, self.scale, self.ratio)
        return eval_view(image, self.resize_size, self.image_size)

    def __getitem__(self, key: tuple[int, list[int]]) -> Decoded:
        epoch, indices = key
        views, kept, bad = [], [], []
        for index in indices:
            try:
                views.append(self._view(epoch, index))
            except Image.DecompressionBombError as exc:
                path = self.files.path(index)
                bad.append((index, f"refusing to decode {path}, a decompression bomb? {exc}"))
                continue
            except Exception as exc:  # whatever a bad file makes Pillow raise: report it, live on
                path = self.files.path(index)
                bad.append((index, f"cannot read image {path}: {type(exc).__name__}: {exc}"))
                continue
            kept.append(index)
        size = self.image_size
        images = (
            torch.from_numpy(np.stack(views))
            if views
            else torch.empty((0, size, size, 3), dtype=torch.uint8)
        )
        positions = torch.tensor(kept, dtype=torch.int64)
        return images, self.files.labels[positions], positions, bad


class _EpochBatches:
    """The sampler: this rank's batches of global indices for the current epoch, with the epoch
    attached, since persistent workers never see ``set_epoch``."""

    def __init__(self, n: int, slots: list[Tensor], train: bool, seed: int) -> None:
        self.n = n
        self.slots = slots
        self.train = train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.slots)

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        if self.train:
            order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch))
        else:
            order = torch.arange(self.n)
        for slots in self.slots:
            yield self.epoch, order[slots].tolist()


def _as_is(decoded: Decoded) -> Decoded:
    return decoded


class StreamLoader:
    """Batches of normalised float32 images decoded from files by ``workers`` processes.

    The interface and the order of samples are :class:`~mhkd.data.loader.DeviceLoader`'s:
    ``batch_size`` is per rank, ``augment`` (random-resized crop and flip; otherwise resize
    and centre crop) and ``drop_last`` default to ``train``, ``set_epoch`` before each epoch.
    Batches carry global sample indices and ``views=None``. ``workers=0`` decodes inline.
    """

    def __init__(
        self,
        files: FileSet,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        image_size: int,
        resize_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        augment: bool | None = None,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        workers: int | None = None,
        skip_bad: bool = False,
        scale: tuple[float, float] = SCALE,
        ratio: tuple[float, float] = RATIO,
    ) -> None:
        if len(files) == 0:
            raise ValueError("need at least one image file")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.workers = default_workers() if workers is None else workers
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.augment = train if augment is None else augment
        self.seed = seed
        self.epoch = 0
        self.channels_last = channels_last
        self.skip_bad = skip_bad
        self.skipped = 0
        self.bad_files: set[str] = set()
        self._files = files
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device)
        drop_last = train if drop_last is None else drop_last
        slots = rank_slots(len(files), batch_size, rank, world_size, train, drop_last)
        self._batches = _EpochBatches(len(files), slots, train, seed)
        decoder = _BatchDecoder(files, seed, self.augment, image_size, resize_size, scale, ratio)
        self._loader = DataLoader(
            decoder,
            batch_size=None,
            sampler=self._batches,
            num_workers=self.workers,
            collate_fn=_as_is,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._batches.epoch = epoch

    def __len__(self) -> int:
        return len(self._batches)

    def _report(self, bad: list[tuple[int, str]], kept: int) -> None:
        if not self.skip_bad:
            raise DataError(bad[0][1])
        for index, message in bad:
            path = str(self._files.path(index))
            if path not in self.bad_files:
                self.bad_files.add(path)
                log.warning("skipping: %s", message)
        self.skipped += len(bad)
        if kept == 0:
            raise DataError(f"every image of a batch of {len(bad)} is unreadable, e.g. {bad[0][1]}")

    def __iter__(self) -> Iterator[Batch]:
        self.skipped = 0
        for images, labels, indices, bad in self._loader:
            if bad:
                self._report(bad, len(labels))
            images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            images = normalize(images, self._mean, self._std, self.channels_last)
            yield Batch(
                images if self.channels_last else images.contiguous(),
                labels.to(self.device, non_blocking=True),
                indices.to(self.device, non_blocking=True),
            )
