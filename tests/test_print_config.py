"""``--print-config``: the resolved tree as YAML, equal to the run's config.yaml, nothing made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mhkd.cli import main

SMALL = ["--data", "synthetic", "--epochs", "1", "--batch-size", "32", "--quiet",
         "--precision", "fp32", "--device", "cpu"]  # fmt: skip
RECIPE = Path(__file__).parents[1] / "recipes" / "mhkd" / "cifar100_wrn_40_2-wrn_16_2.yaml"


@pytest.fixture(autouse=True)
def _small(small_synthetic):
    """Every test here runs the CLI on the small `synthetic` set."""


def printed(capsys, argv: list[str], where: Path) -> dict:
    """The tree ``argv --print-config`` prints, checking it exits 0 and creates nothing."""
    before = sorted(where.rglob("*"))
    capsys.readouterr()
    assert main([*argv, "--print-config"]) == 0
    assert sorted(where.rglob("*")) == before  # no run directory, no data, no cache
    out = capsys.readouterr().out
    tree = yaml.safe_load(out)
    assert isinstance(tree, dict) and out.startswith("data:")
    return tree


def written(out: Path, name: str = "config.yaml") -> dict:
    """A run's config.yaml less the facts it found at run time."""
    tree = yaml.safe_load((out / name).read_text())
    for facts in ("resolved", "model", "keeps", "prunable_groups", "prunable_channels"):
        tree.pop(facts, None)
    return tree


def test_train_and_distill_print_what_their_runs_write(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MHKD_DATA", str(tmp_path / "data"))
    teacher = ["train", "--model", "resnet8", *SMALL, "--out", "teacher"]
    tree = printed(capsys, teacher, tmp_path)
    assert tree["models"]["student"] == "resnet8" and tree["weights"] == {"ce": 1.0}
    assert main(teacher) == 0
    assert tree == written(tmp_path / "teacher")

    student = ["distill", "--teacher", "teacher/checkpoints/best.pt", "--student", "resnet8",
               "--method", "kd+at", "--weight", "at=10", "--kd.temperature", "2",
               "--milestones", "1", *SMALL, "--out", "student"]  # fmt: skip
    tree = printed(capsys, student, tmp_path)
    assert tree["weights"] == {"ce": 0.1, "kd": 0.9, "at": 10.0}  # defaults spelled out
    assert tree["options"]["kd"]["temperature"] == 2.0 and "p" in tree["options"]["at"]
    assert main(student) == 0
    assert tree == written(tmp_path / "student")


def test_recipe_prints_without_its_teacher_and_round_trips(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree = printed(capsys, ["recipe", str(RECIPE), "--epochs", "8", "--schedule", "cosine"],
                   tmp_path)  # fmt: skip
    assert not Path(tree["models"]["teacher"]).exists()  # a run would refuse; printing does not
    assert tree["schedule"] == {"epochs": 8, "kind": "cosine", "milestones": [5, 6, 7],
                                "gamma": 0.1}  # fmt: skip
    assert tree["method"] == "mhkd" and tree["options"]["mhkd"]["beta"] == 0.5
    again = tmp_path / "printed.yaml"
    again.write_text(yaml.safe_dump(tree))
    assert sorted(os.listdir(tmp_path)) == ["printed.yaml"]
    assert printed(capsys, ["recipe", str(again)], tmp_path) == tree  # itself a recipe


def test_prune_prints_what_its_stage1_writes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["prune", "--model", "resnet8", *SMALL, "--keep", "0.5",
            "--assistants", "1", "--finetune-epochs", "0", "--latency-repeats", "1",
            "--out", "pruned"]  # fmt: skip
    tree = printed(capsys, argv, tmp_path)
    assert tree["prune"]["keep"] == 0.5 and tree["optim"]["nesterov"] is True
    assert main(argv) == 0
    assert tree == written(tmp_path / "pruned" / "stage1")


def test_bad_values_are_refused_before_printing(capsys):
    assert main(["train", "--model", "resnet8", "--epochs", "0", "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--epochs must be in 1..100000" in captured.err
