"""Helpers of the report, TensorBoard, export and example tests (imported, not collected)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

#: Training settings for tiny, deterministic CPU runs.
FAST = {"batch_size": 32, "lr": 0.05, "quiet": True, "precision": "fp32", "device": "cpu"}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tests on one thread; import it into a test module to switch it on.

    On a busy 2-core machine two intra-op threads oversubscribe the cores and tiny convolutions
    run tens of times slower (measured: 1 s vs 55 s for the same two epochs).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
