"""Data sets by name: ``load("cifar100", root)`` and ``available()``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from mhkd.data.base import DataError, DataSplits
from mhkd.data.builtin import load_digits, load_synthetic
from mhkd.data.cifar import CIFAR10, CIFAR100, load_cifar
from mhkd.data.files import StreamingSplits
from mhkd.data.imagefolder import load_imagefolder
from mhkd.data.imagenet import load_imagenet
from mhkd.data.subset import subset_per_class
from mhkd.data.svhn import load_svhn

_LOADERS: dict[str, Callable[..., DataSplits | StreamingSplits]] = {
    "cifar10": partial(load_cifar, CIFAR10),
    "cifar100": partial(load_cifar, CIFAR100),
    "svhn": load_svhn,
    "imagefolder": load_imagefolder,
    "imagenet": load_imagenet,
    "digits": load_digits,
    "synthetic": load_synthetic,
}


def available() -> list[str]:
    return sorted(_LOADERS)


def default_root() -> Path:
    """``$MHKD_DATA`` if set, else ``~/.cache/mhkd/data``: one place all runs share."""
    return Path(os.environ.get("MHKD_DATA") or "~/.cache/mhkd/data").expanduser()


def load(
    name: str,
    root: str | Path | None = None,
    download: bool = True,
    *,
    train_per_class: int | None = None,
    subset_seed: int = 0,
    **options: Any,
) -> DataSplits | StreamingSplits:
    """Load a data set's train and test splits: uint8 tensors with normalisation stats, or, for
    ``imagenet`` and large ``imagefolder`` trees, file lists to stream.

    ``root`` is the folder holding the official files (for ``imagefolder``: the folder with
    ``train/`` and ``test/``; for ``imagenet``: with ``train/`` and ``val/``); ``options`` are
    the data set's own settings, e.g. ``image_size``, ``streaming``, ``skip_bad``.
    ``train_per_class`` keeps that many training images of each class, chosen by
    ``subset_seed`` (see :func:`~mhkd.data.subset.subset_per_class`).
    """
    key = name.lower()
    if key not in _LOADERS:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(available())}")
    loader = _LOADERS[key]
    accepted = list(inspect.signature(loader).parameters)[2:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(
            f"{key} takes no option(s) {', '.join(unknown)}; "
            f"it takes {', '.join(accepted) or 'none'}"
        )
    size = options.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"{key}: image_size must be a positive integer, got {size!r}")
    splits = loader(
        Path(root).expanduser() if root is not None else default_root(), download, **options
    )
    if train_per_class is not None:
        splits = subset_per_class(splits, train_per_class, subset_seed)
    return splits
