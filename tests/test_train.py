"""The training loop: learning, the run directory, exact resume, NaN handling."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import Tensor

from mhkd import api, checkpoint
from mhkd import config as cfg
from mhkd.loop import NonFiniteLossError, weighted_sum
from mhkd.methods import Method, MethodContext, TeacherUse, register
from mhkd.rundir import RunFiles

from conftest import TinyNet
from runs import stop_after, stop_during, training_run


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
    assert [line["epoch"] for line in lines] == [1, 2, 3]  # 1-based, as printed
    for line in lines:
        assert {"lr", "loss_ce", "test_acc", "images_per_s"} <= set(line)
    assert lines[-1]["test_acc"] == summary["test_acc"]
    best_line = max(lines, key=lambda line: line["test_acc"])  # the first of equals, as the loop
    assert summary["best_epoch"] == best_line["epoch"]
    assert summary["best_test_acc"] == best_line["test_acc"]
    assert json.loads((out / "summary.json").read_text()) == summary  # what the API returns
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["schedule"]["epochs"] == 3 and config["method"] == "ce"
    assert config["schedule"]["milestones"] == [2, 3]  # 62.5 % and 75 % of 3 both round to 2

    best = checkpoint.load(out / "checkpoints" / "best.pt")
    model = TinyNet()
    model.load_state_dict(best["model"])  # the bare model, nothing extra
    assert best["test_acc"] == summary["best_test_acc"]
    assert best["epoch"] == summary["best_epoch"]
    assert "optimizer" not in best


@pytest.mark.parametrize("method", ["kd", "crd"])
@pytest.mark.parametrize("where", ["boundary", "mid-epoch"])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(
    tmp_path, tiny_data, fast, method, where
):
    """KD, and CRD with its memory banks, optimiser-trained embeddings and sampled negatives:
    stopped after epoch 2 or during epoch 3, the resumed run ends bit-identical."""
    teacher = TinyNet(width=12)
    common = dict(teacher=teacher, method=method, epochs=3, **fast)

    def student() -> TinyNet:
        torch.manual_seed(1)
        return TinyNet()

    straight = training_run(student(), tiny_data, out=tmp_path / "a", **common)
    straight_summary = straight.fit()

    interrupted = training_run(student(), tiny_data, out=tmp_path / "b", **common)
    if where == "boundary":
        stop_after(interrupted, 2)
    else:
        stop_during(interrupted, 3, step=4)  # 3 steps of epoch 3 done, then lost
    assert not (tmp_path / "b" / "summary.json").exists()
    resumed = training_run(TinyNet(), tiny_data, out=tmp_path / "b", resume=True, **common)
    assert resumed.loop.epoch == 2
    resumed_summary = resumed.fit()

    a, b = straight.step.state_dict(), resumed.step.state_dict()
    for part in ("model", "method"):  # the student and the method's extras and buffers
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    if method == "crd":  # its embeddings and memory banks were compared too
        assert any("embed" in k for k in b["method"]) and any("memory" in k for k in b["method"])
    one = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in two] == [1, 2, 3]
    speed = ("images_per_s", "train_seconds")
    assert [{k: v for k, v in r.items() if k not in speed} for r in two] == [
        {k: v for k, v in r.items() if k not in speed} for r in one
    ]
    for key in ("test_acc", "best_test_acc", "best_epoch", "epochs"):
        assert resumed_summary[key] == straight_summary[key], key


def test_resume_without_a_checkpoint_is_an_error(tmp_path, tiny_data, fast):
    with pytest.raises(checkpoint.CheckpointError, match="holds no run to continue"):
        training_run(TinyNet(), tiny_data, out=tmp_path, resume=True, epochs=1, **fast)
    assert list(tmp_path.iterdir()) == []  # and nothing was written


@register
class _PoisonAfterFirstEpoch(Method):
    """Test method: a loss term that turns NaN from the second epoch on."""

    name = "test_poison"
    weights = {"poison": 1.0}

    def __init__(self, ctx: MethodContext, options: object):
        super().__init__(TeacherUse.NONE)
        self.epoch = 0

    def start_epoch(self, epoch: int) -> dict[str, float]:
        self.epoch = epoch
        return {}

    def forward(self, student, teacher, batch) -> dict[str, Tensor]:
        bad = float("nan") if self.epoch >= 1 else 0.0
        return {"poison": student.logits.sum() * 0 + bad}


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data, fast):
    with pytest.raises(NonFiniteLossError, match="'poison' became nan in epoch 2"):
        run = training_run(TinyNet(), tiny_data, method="test_poison", out=tmp_path, epochs=3,
                           **fast)  # fmt: skip
        run.fit()
    state = RunFiles(tmp_path).load_last()
    assert state["loop"]["epoch"] == 1
    weights = state["step"]["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not (tmp_path / "summary.json").exists()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]  # nothing of the bad epoch


def test_teacher_with_other_class_count_is_refused(tiny_data, fast):
    with pytest.raises(ValueError, match="teacher predicts 7 classes but the data set has 4"):
        api.distill(TinyNet(num_classes=7), TinyNet(), tiny_data, method="kd", **fast)


def test_weighted_sum_and_unknown_terms():
    terms = {"ce": torch.tensor(2.0), "kd": torch.tensor(3.0)}
    assert weighted_sum(terms, {"ce": 0.1, "kd": 0.9}).item() == pytest.approx(2.9)
    with pytest.raises(ValueError, match="no weight for loss term"):
        weighted_sum(terms, {"ce": 1.0})
    with pytest.raises(ValueError, match="nothing to train"):
        weighted_sum(terms, {"ce": 0.0, "kd": 0.0})


def test_config_rejects_nonsense():
    with pytest.raises(cfg.ConfigError, match=r"--epochs must be in 1\.\.100000, got 0"):
        cfg.build({"schedule": {"epochs": 0}})
    with pytest.raises(cfg.ConfigError, match="schedule.kind must be one of"):
        cfg.build({"schedule": {"kind": "linear"}})
    with pytest.raises(cfg.ConfigError, match="unknown setting 'epoch'"):
        cfg.from_keywords(epoch=3)


def test_unknown_weight_term_is_refused(tiny_data, fast):
    with pytest.raises(ValueError, match="--weight names unknown loss term.* kdd"):
        api.train(TinyNet(), tiny_data, weights={"kdd": 1.0}, **fast)


def test_a_fresh_run_refuses_an_occupied_directory_unless_told_to_overwrite(
    tmp_path, tiny_data, fast
):
    api.train(TinyNet(), tiny_data, out=tmp_path, epochs=1, **fast)
    with pytest.raises(ValueError, match="already holds a run"):
        api.train(TinyNet(), tiny_data, out=tmp_path, epochs=2, **fast)
    summary = api.train(TinyNet(), tiny_data, out=tmp_path, epochs=2, overwrite=True, **fast)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # nothing of the old run
    assert summary["epochs"] == 2
