"""SVHN (cropped digits) from the official train_32x32.mat and test_32x32.mat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch

from mhkd.data.base import DataError, DataSplits, ImageSet, make_splits
from mhkd.data.download import Remote, ensure

_BASE_URL = "http://ufldl.stanford.edu/housenumbers/"
TRAIN = Remote("train_32x32.mat", _BASE_URL + "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373")
TEST = Remote("test_32x32.mat", _BASE_URL + "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")


def _read_mat(path: Path) -> ImageSet:
    """X is H×W×C×N; the digit 0 is labelled 10 in the official files."""
    try:
        mat = scipy.io.loadmat(path)
        images = np.asarray(mat["X"], dtype=np.uint8)
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except NotImplementedError:  # scipy reads MATLAB v4-v7.2 files; v7.3 is HDF5
        raise DataError(
            f"{path} is a MATLAB v7.3 (HDF5) file; the official SVHN files are v5: download "
            "them again, or re-save this one with scipy.io.savemat"
        ) from None
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if images.ndim != 4 or images.shape[2] != 3 or images.shape[3] != len(labels):
        raise DataError(f"{path}: X of shape {images.shape} does not fit {len(labels)} labels")
    labels[labels == 10] = 0
    return ImageSet(
        torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1))),
        torch.from_numpy(labels),
    )


def load_svhn(root: Path, download: bool) -> DataSplits:
    ensure("svhn", root, [TRAIN, TEST], download)
    return make_splits(
        "svhn", _read_mat(root / TRAIN.filename), _read_mat(root / TEST.filename), 10
    )
