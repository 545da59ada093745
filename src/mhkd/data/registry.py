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
from mhkd.data.imagefolder import load_imagefolder
from mhkd.data.svhn import load_svhn

_LOADERS: dict[str, Callable[..., DataSplits]] = {
    "cifar10": partial(load_cifar, CIFAR10),
    "cifar100": partial(load_cifar, CIFAR100),
    "svhn": load_svhn,
    "imagefolder": load_imagefolder,
    "digits": load_digits,
    "synthetic": load_synthetic,
}


def available() -> list[str]:
    return sorted(_LOADERS)


def default_root() -> Path:
    """``$MHKD_DATA`` if set, else ``~/.cache/mhkd/data``: one place all runs share."""
    return Path(os.environ.get("MHKD_DATA") or "~/.cache/mhkd/data").expanduser()


def load(
    name: str, root: str | Path | None = None, download: bool = True, **options: Any
) -> DataSplits:
    """Load a data set's train and test splits as uint8 tensors with normalisation stats.

    ``root`` is the folder holding the official files (for ``imagefolder``: the folder with
    ``train/`` and ``test/``); ``options`` are the data set's own settings, e.g. ``image_size``.
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
    return loader(
        Path(root).expanduser() if root is not None else default_root(), download, **options
    )
