"""Opt-in TensorBoard logging (``--tensorboard``): an epoch logger writing ``RUN/tensorboard/``.

Every numeric field of an epoch record becomes a scalar at step ``epoch`` (1-based, the epoch
number the loop prints): ``loss/<term>``, ``lr``, ``accuracy/train``, ``accuracy/test``,
``speed/images_per_s``, ``speed/train_seconds``, and a method's scheduled values under
``method/<name>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mhkd.distributed import world

#: Tags of the fixed record fields; loss terms and method values are tagged by prefix.
TAGS = {
    "lr": "lr",
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/test",
    "images_per_s": "speed/images_per_s",
    "train_seconds": "speed/train_seconds",
}


def tag(key: str) -> str:
    """The TensorBoard tag of an epoch-record field."""
    if key.startswith("loss_"):
        return "loss/" + key.removeprefix("loss_")
    return TAGS.get(key, f"method/{key}")


class TensorBoardLogger:
    """Write each epoch record as scalars; pass an instance in ``EpochLoop(loggers=[...])``.

    The writer opens at the first record with ``purge_step`` set to that epoch, so a resumed
    run hides the epochs it repeats instead of drawing them twice.
    """

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "--tensorboard needs the tensorboard package: pip install 'mhkd[tensorboard]'"
            ) from None
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        if world()[0] != 0:
            return  # every rank gets the same reduced record; rank 0 writes it
        step = int(record["epoch"])
        if self.writer is None:
            self.writer = self._writer_class(str(self.log_dir), purge_step=step)
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(key), value, step)
        self.writer.flush()  # visible in TensorBoard while the run goes on

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
