"""Shared fixtures: a tiny two-stage CNN and small synthetic data, so tests stay fast."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from mhkd import data

torch.set_num_threads(1)  # several pytest workers or a busy machine: never oversubscribe


class TinyNet(nn.Module):
    """A user model in the zoo's shape: named stages, an embedding and a classifier."""

    stage_names = ("stage1", "stage2", "stage3")
    embedding_name = "flatten"
    classifier_name = "fc"

    def __init__(self, num_classes: int = 4, width: int = 8, batchnorm: bool = True):
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            norm = nn.BatchNorm2d(c_out) if batchnorm else nn.Identity()
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), norm, nn.ReLU())

        self.stage1 = block(3, width, 1)
        self.stage2 = block(width, 2 * width, 2)
        self.stage3 = block(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stage3(self.stage2(self.stage1(x))))))


@pytest.fixture(scope="session")
def tiny_data() -> data.DataSplits:
    return data.load("synthetic", num_train=256, num_test=128, num_classes=4, image_size=16)


#: Training settings for tiny, deterministic CPU runs.
FAST = {"batch_size": 32, "lr": 0.05, "quiet": True, "precision": "fp32", "device": "cpu"}


@pytest.fixture
def fast() -> dict:
    return dict(FAST)


@pytest.fixture
def small_synthetic(monkeypatch):
    """The CLI's `synthetic` data set at 256 training images, so end-to-end runs take seconds."""
    original = data.registry.load

    def small(name, root=None, download=True, **options):
        if name == "synthetic":
            options = {"num_train": 256, "num_test": 128, "num_classes": 10, **options}
        return original(name, root, download, **options)

    monkeypatch.setattr(data.registry, "load", small)
    monkeypatch.setattr("mhkd.data.load", small)


@pytest.fixture
def read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder in which creating any file fails as on a read-only file system (a
    chmod would not stop root, who runs the tests in CI)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(folder)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    return folder


class Batches(list):
    """A list of batches that a loop can iterate as a loader (one order every epoch)."""

    def set_epoch(self, epoch: int) -> None:
        pass


def bare_convnet() -> nn.Module:
    """Two convolutions (16×16 in: a 16×16 then a 4×4 map) and a classifier of 4 classes,
    declaring no stage_names: the layer probe must find its last map by itself."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, 4, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
