"""The command line: real runs end to end, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from mhkd.cli import main

SMALL = ["--data", "synthetic", "--epochs", "2", "--batch-size", "32", "--quiet",
         "--precision", "fp32", "--device", "cpu"]  # fmt: skip


@pytest.fixture(autouse=True)
def _small(small_synthetic):
    """Every test here runs the CLI on the small `synthetic` set."""


def error_of(capsys, argv) -> str:
    """Run the CLI expecting a user error; return its single stderr line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mhkd: error: "), err
    return err[0]


def test_train_distill_eval_end_to_end(tmp_path, capsys):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    assert main(["train", "--model", "resnet14", "--out", str(teacher_dir), *SMALL]) == 0
    teacher_ckpt = teacher_dir / "checkpoints" / "best.pt"
    assert teacher_ckpt.is_file()

    argv = ["distill", "--teacher", str(teacher_ckpt), "--student", "resnet8", "--method", "kd",
            "--out", str(student_dir), *SMALL]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((student_dir / "summary.json").read_text())
    assert summary["method"] == "kd" and summary["teacher"] == "resnet14"
    assert summary["model"] == "resnet8" and summary["epochs"] == 2
    metrics = (student_dir / "metrics.jsonl").read_text().splitlines()
    assert {"loss_ce", "loss_kd"} <= set(json.loads(metrics[0]))

    capsys.readouterr()
    assert main(["eval", str(student_dir / "checkpoints" / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert f"{summary['best_test_acc']:.2f}%" in out and "synthetic" in out


def test_models_lists_the_zoo(capsys):
    assert main(["models", "--num-classes", "100"]) == 0
    out = capsys.readouterr().out
    assert "resnet8x4" in out and "1.234" in out and "mobilenetv2" in out


def test_models_refuses_a_class_count_below_one(capsys):
    for bad in ("-1", "0"):
        message = error_of(capsys, ["models", "--num-classes", bad])
        assert f"--num-classes must be in 1..100000, got {bad}" in message


def test_unknown_names_list_the_valid_ones(capsys):
    assert "resnet20" in error_of(capsys, ["train", "--model", "resnet9", *SMALL])
    assert "cifar100" in error_of(capsys, ["train", "--model", "resnet8", "--data", "mnist"])


def test_bad_checkpoints_and_resume_are_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert "not found" in error_of(capsys, ["eval", str(missing)])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    assert "cannot read" in error_of(capsys, ["eval", str(corrupt)])
    argv = ["distill", "--teacher", str(corrupt), "--student", "resnet8", *SMALL]
    assert "cannot read" in error_of(capsys, argv)
    argv = ["train", "--model", "resnet8", "--out", str(tmp_path / "fresh"), "--resume", *SMALL]
    assert "holds no run to continue" in error_of(capsys, argv)


def test_teacher_trained_for_other_classes_is_refused(tmp_path, capsys):
    from mhkd import checkpoint, models

    teacher = models.create("resnet8", num_classes=100)
    path = tmp_path / "teacher100.pt"
    checkpoint.save({"arch": teacher.zoo_spec, "model": teacher.state_dict()}, path)
    line = error_of(capsys, ["distill", "--teacher", str(path), "--student", "resnet8", *SMALL])
    assert "100 classes but the data set has 10" in line


def test_unknown_method_and_bad_weight(tmp_path, capsys):
    from mhkd import checkpoint, models

    teacher = models.create("resnet8", num_classes=10)
    path = tmp_path / "t.pt"
    checkpoint.save({"arch": teacher.zoo_spec, "model": teacher.state_dict()}, path)
    base = ["distill", "--teacher", str(path), "--student", "resnet8", *SMALL]
    assert "choose from" in error_of(capsys, [*base, "--method", "kdd"])
    assert "TERM=NUMBER" in error_of(capsys, [*base, "--weight", "kd"])


def test_empty_image_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    argv = ["train", "--model", "resnet8", "--data", "imagefolder", "--data-dir", str(tmp_path)]
    assert str(tmp_path) in error_of(capsys, argv)
