"""`--tensorboard`: event files under RUN/tensorboard/ holding every epoch field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator

from mhkd import api, models
from mhkd.tensorboard import TensorBoardLogger, tag

from conftest import FAST
from runs import stop_after, training_run


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``log_dir``: tag -> [(step, value), ...]."""
    reader = event_accumulator.EventAccumulator(str(log_dir))
    reader.Reload()
    return {
        name: [(event.step, event.value) for event in reader.Scalars(name)]
        for name in reader.Tags()["scalars"]
    }


def test_every_epoch_field_is_logged_and_readable(tmp_path: Path, tiny_data):
    out = tmp_path / "run"
    teacher = models.create("resnet8", num_classes=tiny_data.num_classes)  # a module: as given
    api.distill(teacher, "resnet8", tiny_data, method="kd", out=out, epochs=2,
                tensorboard=True, **FAST)  # fmt: skip
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(path.stat().st_size > 0 for path in events)

    logged = scalars(out / "tensorboard")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected_tags = {
        "loss/ce", "loss/kd", "lr", "accuracy/train", "accuracy/test", "speed/images_per_s",
        "speed/train_seconds",
    }  # fmt: skip
    assert set(logged) == expected_tags
    for record in records:
        for key, value in record.items():
            if key != "epoch":
                assert dict(logged[tag(key)])[record["epoch"]] == pytest.approx(value, rel=1e-6)


def test_resumed_run_appends_and_without_a_run_directory_is_refused(tmp_path: Path, tiny_data):
    out = tmp_path / "run"
    stop_after(training_run("resnet8", tiny_data, out=out, epochs=2, tensorboard=True, **FAST), 1)
    assert [step for step, _ in scalars(out / "tensorboard")["accuracy/test"]] == [1]
    api.train("resnet8", tiny_data, out=out, epochs=2, tensorboard=True, resume=True, **FAST)
    assert [step for step, _ in scalars(out / "tensorboard")["accuracy/test"]] == [1, 2]

    with pytest.raises(ValueError, match="--tensorboard needs a run directory"):
        api.train("resnet8", tiny_data, epochs=1, tensorboard=True, **FAST)


def test_epochs_repeated_after_a_resume_replace_the_old_points(tmp_path: Path):
    first = TensorBoardLogger(tmp_path)
    for epoch, acc in enumerate([10.0, 20.0, 30.0], 1):  # killed before epoch 3's checkpoint
        first({"epoch": epoch, "test_acc": acc})
    first.close()
    second = TensorBoardLogger(tmp_path)  # resumed from the checkpoint of epoch 2
    second({"epoch": 3, "test_acc": 33.0})
    second.close()
    assert scalars(tmp_path)["accuracy/test"] == [(1, 10.0), (2, 20.0), (3, 33.0)]


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("mhkd.tensorboard.world", lambda: (1, 2))
    TensorBoardLogger(tmp_path / "tb")({"epoch": 1, "test_acc": 1.0})
    assert not (tmp_path / "tb").exists()


def test_tags_name_their_family():
    assert tag("loss_mhkd") == "loss/mhkd" and tag("test_acc") == "accuracy/test"
    assert tag("infoflow_alpha_final") == "method/infoflow_alpha_final"
