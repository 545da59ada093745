"""AB, FSP and FT's pre-training stage as a pipeline: ``OUT/pretrain`` then ``OUT``, each an
ordinary run directory that resumes on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mhkd import api, checkpoint, data, models
from mhkd.methods.fsp import stem_name
from mhkd.rundir import RunDirectory, RunFiles

from conftest import TinyNet

ROOT = Path(__file__).resolve().parents[1]

FAST = dict(epochs=1, batch_size=32, lr=0.05, quiet=True, precision="fp32", device="cpu")


class _Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def _splits():
    return data.load("synthetic", num_train=64, num_test=32, num_classes=4, image_size=16)


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _distill(out, method, **extra):
    torch.manual_seed(0)
    teacher = TinyNet(width=8).eval()
    options = {method: {"init_epochs": 2}}
    return api.distill(teacher, TinyNet(width=8), _splits(), method=method, out=out,
                       options=options, **FAST, **extra)  # fmt: skip


@pytest.mark.parametrize("method", ["ab", "fsp"])
def test_the_pretraining_stage_resumes_on_its_own(tmp_path, method, monkeypatch):
    reference = _distill(tmp_path / "reference", method)
    assert reference["pretrain_method"] == method and reference["method"] == "ce"
    out = tmp_path / "run"
    save_last = RunDirectory.save_last

    def killed_in_pretrain(self, state):
        save_last(self, state)
        if self.root == out / "pretrain":
            raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(RunDirectory, "save_last", killed_in_pretrain)
        with pytest.raises(_Killed):
            _distill(out, method)
    assert [r["epoch"] for r in _metrics(out / "pretrain" / "metrics.jsonl")] == [1]
    assert not (out / "metrics.jsonl").exists()

    summary = _distill(out, method, resume=True)
    stage = _metrics(out / "pretrain" / "metrics.jsonl")
    assert [r["epoch"] for r in stage] == [1, 2]
    assert stage[1][f"loss_{method}"] < stage[0][f"loss_{method}"]
    expected = _metrics(tmp_path / "reference" / "pretrain" / "metrics.jsonl")
    assert stage[1][f"loss_{method}"] == expected[1][f"loss_{method}"]
    # stage 2 starts from the pre-trained student: it ends as the uninterrupted run's
    assert (
        _metrics(out / "metrics.jsonl")[0]["loss_ce"]
        == _metrics(tmp_path / "reference" / "metrics.jsonl")[0]["loss_ce"]
    )
    assert summary["test_acc"] == reference["test_acc"]


def test_ft_trains_the_paraphraser_alone_then_transfers(tmp_path):
    out = tmp_path / "run"
    summary = _distill(out, "ft")
    assert summary["method"] == "ft" and summary["pretrain_method"] == "ft"
    stage = RunFiles(out / "pretrain").load_last()["step"]
    torch.manual_seed(0)
    TinyNet(width=8)  # the teacher's draw
    fresh = TinyNet(width=8).state_dict()
    for key, value in stage["model"].items():  # the student is frozen in stage 1
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, fresh[key]), key
    saved = checkpoint.read_state(out / "pretrain" / "paraphraser.pt")["paraphraser"]
    final = RunFiles(out).load_last()["step"]["method"]
    for key, value in saved.items():  # frozen in stage 2
        assert torch.equal(final[f"methods.ft.paraphraser.{key}"], value), key
    assert _metrics(out / "metrics.jsonl")[0]["loss_ft"] > 0

    # a given paraphraser skips the first stage
    other = tmp_path / "reuse"
    torch.manual_seed(0)
    api.distill(TinyNet(width=8), TinyNet(width=8), _splits(), method="ft", out=other,
                options={"ft": {"paraphraser": str(out / "pretrain" / "paraphraser.pt")}},
                **FAST)  # fmt: skip
    assert not (other / "pretrain").exists()


def test_fsp_starts_from_the_stem():
    assert stem_name(models.create("resnet8", num_classes=4), "layer1") == "relu"
    assert stem_name(models.create("wrn_16_2", num_classes=4), "block1") == "conv1"
    assert stem_name(models.create("vgg8", num_classes=4), "block0") is None
    # RepDistiller's VGG feat[0] is block0's map, before pool0 (found by benchmarks/parity.py)
    assert stem_name(models.create("vgg8", num_classes=4), "block1") == "block0"


@pytest.mark.parametrize("name", ["ab", "fsp"])
def test_a_recipes_stage_two_drops_the_teacher_file_it_no_longer_uses(name):
    """A recipe names its teacher as a file; stage 2 of AB/FSP is CE alone, which refuses an
    unused --teacher, so stage 2 must drop it (found by benchmarks/parity.py)."""
    from mhkd import config as cfg
    from mhkd.pipelines.pretrain import _stage_one_config, _stage_two_config

    recipe = ROOT / "recipes" / "baselines" / f"{name}_cifar100_resnet110-resnet20.yaml"
    config = cfg.build(cfg.read_recipe(recipe)[0], str(recipe))
    assert _stage_one_config(config, name).models.teacher == config.models.teacher
    stage_two = _stage_two_config(config, name, None)
    models = stage_two.models
    assert (stage_two.method, models.teacher, models.teacher_arch) == ("ce", None, None)
    assert stage_two.models.student == config.models.student
    assert stage_two.weights.get("ce", 1.0) == 1.0 and name not in stage_two.weights
