"""The user-model example and every command of the README, on a shrunken data set."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

import mhkd.data
from mhkd.cli import build_parser, main

from conftest import FAST

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "user_models.py"
#: Tour commands this file only parses; the named test files run them end to end.
RUN_ELSEWHERE = {"models": "test_cli.py", "prune": "test_prune.py"}
CLI_FAST = ["--epochs", "1", "--batch-size", "32", "--precision", "fp32", "--device", "cpu",
            "--quiet"]  # fmt: skip


def load_example():
    spec = importlib.util.spec_from_file_location("user_models", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TOUR.read_text(), flags=re.S)


def tour_commands() -> list[list[str]]:
    """The shell commands of the tour, continuation lines joined and comments dropped."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def mhkd_argv(words: list[str]) -> list[str] | None:
    """The ``mhkd`` arguments of a tour command (``torchrun ... -m mhkd ARGS`` included)."""
    if words[0] == "mhkd":
        return words[1:]
    if words[0] == "torchrun":
        at = words.index("-m")
        assert words[at + 1] == "mhkd"
        return words[at + 2 :]
    return None


def needs_user_files(argv: list[str]) -> bool:
    """Commands on a user's own data (``--data-dir /data/...``) are only parsed here."""
    return any(word.startswith("/data/") for word in argv)


@pytest.fixture
def shrunken_data(monkeypatch):
    """Every data set name gives a tiny synthetic set of that name and class count."""
    original = mhkd.data.registry.load

    def tiny(name, root=None, download=True, **options):
        classes = 100 if name == "cifar100" else 10
        splits = original("synthetic", num_train=64, num_test=32, num_classes=classes,
                          image_size=16)  # fmt: skip
        return dataclasses.replace(splits, name=name)

    monkeypatch.setattr(mhkd.data.registry, "load", tiny)
    monkeypatch.setattr(mhkd.data, "load", tiny)


def test_user_models_example_distills_and_exports(tmp_path, tiny_data):
    example = load_example()
    small_heads = {"mhkd": {"head_width": 16, "head_fcs": 1}}
    for method in ("kd", "mhkd"):
        options = small_heads if method == "mhkd" else {}
        summary = example.distill_and_export(tiny_data, method, epochs=1, out=tmp_path / method,
                                             options=options, **FAST)  # fmt: skip
        assert summary["method"] == method and summary["model"] == "Student"
        assert summary["teacher"] == "Teacher" and summary["params"] < summary["teacher_params"]
        assert summary["onnx"].is_file()


def test_tour_python_is_the_tested_example():
    example_lines = {line.strip() for line in EXAMPLE.read_text().splitlines()}
    for block in code_blocks("python"):
        for line in block.splitlines():
            assert not line.strip() or line.strip() in example_lines, line


def test_every_tour_command_parses():
    parser = build_parser()
    kinds = set()
    for words in tour_commands():
        argv = mhkd_argv(words)
        if argv is not None:
            parser.parse_args(argv)  # exits (fails the test) on an unknown option
            kinds.add(argv[0])
        else:
            assert words == ["pytest"] or words[:2] in (
                ["pip", "install"],
                ["python", str(EXAMPLE.relative_to(ROOT))],
            )
    for command, file in RUN_ELSEWHERE.items():
        assert command in kinds and f'["{command}", ' in (ROOT / "tests" / file).read_text()


def test_tour_commands_run_end_to_end(tmp_path, monkeypatch, shrunken_data, capsys):
    """The tour's commands in order, in an empty folder, one epoch each on tiny data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("mhkd.pipelines.quickstart.EPOCHS", {"teacher": 1, "student": 1})
    monkeypatch.setattr("mhkd.pipelines.quickstart.LABELLED", 2)  # the tiny set has few a class
    monkeypatch.setattr("mhkd.pipelines.quickstart.BATCH", {"teacher": 64, "student": 8})
    small_heads = ["--mhkd.head-width", "16", "--mhkd.head-fcs", "1"]
    overrides = {
        "train": CLI_FAST,
        "distill": [*CLI_FAST, *small_heads],
        "recipe": [*CLI_FAST, "--milestones", "1", *small_heads],
        "eval": ["--device", "cpu"],
        "export": ["--image-size", "16", "--max-drop", "100"],  # one epoch: int8 may lose it
        "qat": [
            "--epochs",
            "1",
            "--max-drop",
            "100",
            "--calibration-images",
            "16",
            "--no-latency",
            "--quiet",
        ],  # fmt: skip
    }
    ran = []
    for words in tour_commands():
        argv = mhkd_argv(words)
        if words[0] == "python":
            load_example().main([*words[2:], "--epochs", "1"])
            ran.append("example")
        elif argv is not None and argv[0] not in RUN_ELSEWHERE and not needs_user_files(argv):
            if argv[0] == "recipe":  # recipe files live in the repository, not the run folder
                argv = ["recipe", str(ROOT / argv[1]), *argv[2:]]
            assert main([*argv, *overrides.get(argv[0], [])]) == 0, words
            ran.append(argv[0])
    assert ran == ["quickstart", "train", "recipe", "train", "distill", "distill", "eval",
                   "example", "report", "export", "export", "qat",
                   "distill", "distill"]  # fmt: skip
    printed = capsys.readouterr().out
    assert "CPU latency, batch 64" in printed
    rows = [line.split("  ")[0] for line in printed.splitlines()]
    for row in ("teacher resnet32", *(f"student resnet8 ({m})" for m in ("CE", "KD", "MHKD"))):
        assert row in rows, row  # the quickstart's four rows
    assert list(Path("runs/mhkd-resnet20-s0/tensorboard").glob("events.out.tfevents.*"))
    report = Path("report/report.md").read_text()
    assert "| cifar100 | resnet56 | resnet20 | mhkd | 2 (0, 1) |" in report
    assert Path("resnet20.onnx").is_file()
