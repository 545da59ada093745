"""The training loop: learning, the run directory, exact resume, NaN handling."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import TinyNet
from torch import Tensor

from mhkd import api, checkpoint
from mhkd.methods import Method, register
from mhkd.train import NonFiniteLossError, TrainConfig, Trainer, weighted_sum


def test_training_learns_and_writes_a_run_directory(tmp_path, tiny_data, fast):
    out = tmp_path / "run"
    torch.manual_seed(0)  # the module is built here, before the run's own seeding
    summary = api.train(TinyNet(), tiny_data, out=out, epochs=3, **fast)

    assert summary["test_acc"] > 60, summary  # 4 classes: chance is 25 %
    assert summary["best_test_acc"] >= summary["test_acc"]
    assert summary["params"] == sum(p.numel() for p in TinyNet().parameters())
    assert summary["macs"] > 0 and summary["data"] == "synthetic" and summary["epochs"] == 3
    assert summary["num_classes"] == 4 and summary["seconds"] > 0

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    for line in lines:
        assert {"lr", "loss_ce", "test_acc", "images_per_s"} <= set(line)
    assert lines[-1]["test_acc"] == summary["test_acc"]
    assert json.loads((out / "summary.json").read_text()) == summary
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["epochs"] == 3 and config["method"] == "ce" and config["milestones"] == [2, 2, 3]

    best = checkpoint.load(out / "checkpoints" / "best.pt")
    model = TinyNet()
    model.load_state_dict(best["model"])  # the bare model, nothing extra
    assert best["test_acc"] == summary["best_test_acc"]
    assert "optimizer" not in best


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, tiny_data, fast):
    teacher = TinyNet(width=12)
    common = dict(teacher=teacher, method="kd", epochs=3, **fast)

    def student() -> TinyNet:
        torch.manual_seed(1)
        return TinyNet()

    straight = api.trainer(student(), tiny_data, out=tmp_path / "a", **common)
    straight.fit()

    interrupted = api.trainer(student(), tiny_data, out=tmp_path / "b", **common)
    interrupted.fit(until_epoch=2)  # as if killed after epoch 2
    resumed = api.trainer(TinyNet(), tiny_data, out=tmp_path / "b", resume=True, **common)
    assert resumed.epoch == 2
    resumed.fit()

    a, b = straight.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_resume_without_a_checkpoint_is_an_error(tmp_path, tiny_data, fast):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        api.trainer(TinyNet(), tiny_data, out=tmp_path, resume=True, epochs=1, **fast)


@register
class _PoisonAfterFirstEpoch(Method):
    """Test method: a loss term that turns NaN from the second epoch on."""

    name = "test_poison"
    weights = {"poison": 1.0}
    needs_teacher = False

    def __init__(self, ctx):
        super().__init__(ctx)
        self.epoch = 0

    def start_epoch(self, epoch: int) -> dict[str, float]:
        self.epoch = epoch
        return {}

    def forward(self, student, teacher, batch) -> dict[str, Tensor]:
        bad = float("nan") if self.epoch >= 1 else 0.0
        return {"poison": student.logits.sum() * 0 + bad}


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data, fast):
    run = api.trainer(TinyNet(), tiny_data, method="test_poison", out=tmp_path, epochs=3, **fast)
    with pytest.raises(NonFiniteLossError, match="'poison'"):
        run.fit()
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "summary.json").exists()


def test_teacher_with_other_class_count_is_refused(tiny_data, fast):
    with pytest.raises(ValueError, match="teacher predicts 7 classes but the data set has 4"):
        api.trainer(TinyNet(), tiny_data, teacher=TinyNet(num_classes=7), method="kd", **fast)


def test_weighted_sum_and_unknown_terms():
    terms = {"ce": torch.tensor(2.0), "kd": torch.tensor(3.0)}
    assert weighted_sum(terms, {"ce": 0.1, "kd": 0.9}).item() == pytest.approx(2.9)
    with pytest.raises(ValueError, match="no weight for loss term"):
        weighted_sum(terms, {"ce": 1.0})
    with pytest.raises(ValueError, match="nothing to train"):
        weighted_sum(terms, {"ce": 0.0, "kd": 0.0})


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


def test_unknown_weight_term_is_refused(tiny_data, fast):
    with pytest.raises(ValueError, match="unknown loss term"):
        Trainer(TinyNet(), tiny_data, TrainConfig(weights={"kdd": 1.0}, **fast))


def test_a_fresh_run_refuses_an_occupied_directory_unless_told_to_overwrite(
    tmp_path, tiny_data, fast
):
    api.train(TinyNet(), tiny_data, out=tmp_path, epochs=1, **fast)
    with pytest.raises(ValueError, match="already holds a run"):
        api.train(TinyNet(), tiny_data, out=tmp_path, epochs=2, **fast)
    summary = api.train(TinyNet(), tiny_data, out=tmp_path, epochs=2, overwrite=True, **fast)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]  # nothing of the old run
    assert summary["epochs"] == 2
