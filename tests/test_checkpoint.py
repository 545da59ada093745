"""Checkpoint files as a shared cluster expects: umask modes, a full disk loses nothing, a killed
write is found, and NaN or infinite weights are named instead of used."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mhkd import api, checkpoint, data, loop, models


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoints_honour_the_umask(tmp_path: Path, umask, mask: int, mode: int):
    umask(mask)
    checkpoint.save({"model": {"w": torch.ones(2)}}, tmp_path / "last.pt")
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == mode


def previous_checkpoint(path: Path) -> bytes:
    checkpoint.save({"model": {"w": torch.arange(4.0)}}, path)
    return path.read_bytes()


def assert_nothing_lost(path: Path, before: bytes, message: str) -> None:
    assert path.read_bytes() == before  # the previous checkpoint, intact
    assert list(path.parent.iterdir()) == [path]  # and no temporary file beside it
    assert "\n" not in message and str(path) in message
    assert "No space left on device" in message


def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"
    before = previous_checkpoint(path)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.save({"model": {"w": torch.zeros(4)}}, path)
    assert_nothing_lost(path, before, str(caught.value))


class FillsUp(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, fd: int, room: int):
        self.fd, self.room = fd, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return os.write(self.fd, data)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def test_disk_filling_up_mid_write_is_named_not_a_traceback(tmp_path: Path, monkeypatch):
    """torch reports the failing write as a RuntimeError; the OS reason must still come out."""
    path = tmp_path / "last.pt"
    before = previous_checkpoint(path)
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: io.BufferedWriter(FillsUp(fd, 50_000)))
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.save({"model": {"w": torch.zeros(100_000)}}, path)
    assert_nothing_lost(path, before, str(caught.value))


def test_unwritable_folder_is_one_line(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(checkpoint.CheckpointError, match="cannot write checkpoint .*last.pt"):
        checkpoint.save({"model": {}}, blocker / "last.pt")


def test_a_write_killed_before_the_rename_leaves_a_findable_temp_file(tmp_path: Path):
    path = tmp_path / "last.pt"
    before = previous_checkpoint(path)
    killed = (  # the process dies right before the rename, as under kill -9
        "import os, sys, torch; from mhkd import checkpoint; "
        "os.replace = lambda *a: os._exit(9); "
        "checkpoint.save({'model': {'w': torch.ones(3)}}, sys.argv[1])"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(checkpoint.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", killed, str(path)], env=env, check=False)
    assert done.returncode == 9
    assert path.read_bytes() == before
    (orphan,) = checkpoint.orphaned_temp_files(tmp_path)
    assert orphan.name.startswith(".last.pt.") and orphan.stat().st_size > 0
    assert checkpoint.orphaned_temp_files(tmp_path / "absent") == []


def poisoned_resnet8() -> torch.nn.Module:
    model = models.create("resnet8", num_classes=10)
    with torch.no_grad():
        model.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
        model.layer3[0].bn2.running_var[3] = float("inf")
    return model


def test_nonfinite_parameters_and_buffers_are_named():
    model = poisoned_resnet8()
    assert checkpoint.nonfinite_parameters(model.state_dict()) == [
        "layer2.0.conv1.weight",
        "layer3.0.bn2.running_var",
    ]
    assert checkpoint.nonfinite_parameters(models.create("resnet8").state_dict()) == []


def test_load_model_refuses_nonfinite_weights(tmp_path: Path):
    model = poisoned_resnet8()
    path = tmp_path / "best.pt"
    checkpoint.save({"arch": checkpoint.model_spec(model), "model": model.state_dict()}, path)
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.load_model(path)
    assert str(caught.value) == (
        f"{path}: NaN or infinite values in 2 tensors "
        "(layer2.0.conv1.weight, layer3.0.bn2.running_var)"
    )
    loaded, _ = checkpoint.load_model(path, check_finite=False)  # inspecting a broken run
    assert torch.isnan(loaded.layer2[0].conv1.weight[0, 0, 0, 0])

    foreign = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    foreign.parent.mkdir()
    theirs = {k.replace("classifier", "fc").replace("shortcut", "downsample"): v
              for k, v in model.state_dict().items()}  # fmt: skip
    torch.save({"model": theirs}, foreign)
    with pytest.raises(checkpoint.CheckpointError, match="NaN or infinite values in 2 tensors"):
        checkpoint.load_model(foreign)


def test_a_runs_last_checkpoint_serves_as_a_model(tmp_path: Path, tiny_data, fast):
    """Users pass ``last.pt`` where ``best.pt`` is meant (a teacher, a model to prune): it holds
    the network of the last finished epoch, which must come back as that network."""
    summary = api.train("resnet8", tiny_data, out=tmp_path / "run", epochs=2, **fast)
    model, meta = checkpoint.load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (meta["epoch"], meta["data"], meta["arch"]["name"]) == (2, "synthetic", "resnet8")
    assert meta["test_acc"] == pytest.approx(summary["test_acc"])
    _, test_loader = data.make_loaders(tiny_data, batch_size=64)
    assert loop.evaluate(model, test_loader, torch.device("cpu")) == pytest.approx(
        summary["test_acc"]
    )


def test_a_resume_file_without_a_network_of_its_own_is_named(tmp_path: Path):
    path = tmp_path / "stage1" / "checkpoints" / "last.pt"
    checkpoint.save({"format": checkpoint.RESUME_FORMAT, "step": {"model": {}}}, path)
    with pytest.raises(checkpoint.CheckpointError, match="resume checkpoint whose network"):
        checkpoint.load_model(path)
