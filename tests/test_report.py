"""`mhkd report` on tiny real runs: grouping, mean ± std by hand, incomplete runs, valid PNGs."""

from __future__ import annotations

import dataclasses
import json
import statistics
from html import escape
from pathlib import Path

import pytest
import yaml

from mhkd import api, data
from mhkd import config as cfg
from mhkd.cli import main
from mhkd.report import RUNTIME_FIELDS, Run, find_runs, group_runs, read_run, write_report
from mhkd.report.grouping import setting
from mhkd.rundir import RunDirectory, RunSummary

from conftest import FAST
from runs import stop_after, training_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A teacher, two seeds of a KD student, a killed third seed, and one run on other data."""
    root = tmp_path_factory.mktemp("runs")
    splits = data.load("synthetic", num_train=128, num_test=64, num_classes=4, image_size=16)
    other = dataclasses.replace(splits, name="synthetic-b")
    api.train("resnet14", splits, out=root / "teacher", epochs=1, **FAST)
    teacher = root / "teacher" / "checkpoints" / "best.pt"
    for seed in (0, 1):
        api.distill(teacher, "resnet8", splits, out=root / f"kd-s{seed}", epochs=2, seed=seed,
                    **FAST)  # fmt: skip
    killed = training_run("resnet8", splits, teacher=teacher, method="kd", out=root / "kd-s2",
                          epochs=2, seed=2, **FAST)  # fmt: skip
    stop_after(killed, 1)  # stops like a killed run: metrics and checkpoints, no summary
    api.distill(teacher, "resnet8", other, out=root / "other" / "kd", epochs=1, **FAST)
    return root


def summaries(*dirs: Path) -> list[dict]:
    return [json.loads((d / "summary.json").read_text()) for d in dirs]


def row_of(markdown: str, *cells: str) -> list[str]:
    """The table row whose leading cells are ``cells``."""
    for line in markdown.splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if parts[: len(cells)] == list(cells):
            return parts
    raise AssertionError(f"no row starting with {cells} in\n{markdown}")


def test_tables_pool_seeds_and_keep_data_sets_apart(runs: Path, tmp_path: Path):
    result = write_report([runs], tmp_path / "report")
    md = result["markdown"].read_text()
    kd = summaries(runs / "kd-s0", runs / "kd-s1")
    (teacher,) = summaries(runs / "teacher")

    row = row_of(md, "synthetic", "resnet14", "resnet8", "kd")
    last = [s["test_acc"] for s in kd]
    best = [s["best_test_acc"] for s in kd]
    assert row[4] == "2 (0, 1)"  # the killed seed 2 is not pooled
    assert row[5] == f"{statistics.mean(last):.2f} ± {statistics.stdev(last):.2f}"
    assert row[6] == f"{statistics.mean(best):.2f} ± {statistics.stdev(best):.2f}"
    assert row[7] == f"{kd[0]['params'] / 1e6:.3f}" and row[8] == f"{kd[0]['macs'] / 1e6:.1f}"
    assert row[9] == f"{100 * (1 - kd[0]['params'] / teacher['params']):.1f}"
    assert kd[0]["teacher_params"] == teacher["params"]  # recorded at distillation time

    row = row_of(md, "synthetic", "-", "resnet14", "ce")
    assert row[4] == "1 (0)" and row[5] == f"{teacher['test_acc']:.2f}" and row[9] == "-"

    (other,) = summaries(runs / "other" / "kd")
    row = row_of(md, "synthetic-b", "resnet14", "resnet8", "kd")
    assert row[4] == "1 (0)" and row[5] == f"{other['test_acc']:.2f}"
    assert [g.key for g in result["groups"]] == [
        ("synthetic", "-", "resnet14", "ce"),
        ("synthetic", "resnet14", "resnet8", "kd"),
        ("synthetic-b", "resnet14", "resnet8", "kd"),
    ]

    html = result["html"].read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<table>") == 3
    assert f"{statistics.mean(last):.2f} ± {statistics.stdev(last):.2f}" in html


def test_incomplete_run_is_listed_with_its_last_epoch(runs: Path, tmp_path: Path):
    result = write_report([runs / "kd-s2", runs / "kd-s0"], tmp_path / "report")
    assert [r.path.name for r in result["incomplete"]] == ["kd-s2"]
    md = result["markdown"].read_text()
    first_epoch = json.loads((runs / "kd-s2" / "metrics.jsonl").read_text().splitlines()[0])
    row = row_of(md, str(runs / "kd-s2"))
    assert row[1:] == ["synthetic", "resnet14", "resnet8", "kd", "2", "1/2",
                       f"{first_epoch['test_acc']:.2f}"]  # fmt: skip
    # without the teacher's run, compression comes from the size recorded in the summary
    (kd,) = summaries(runs / "kd-s0")
    row = row_of(md, "synthetic", "resnet14", "resnet8", "kd")
    assert row[4] == "1 (0)" and row[9] == f"{100 * (1 - kd['params'] / kd['teacher_params']):.1f}"


def test_plots_are_valid_pngs(runs: Path, tmp_path: Path):
    import matplotlib.image

    result = write_report([runs], tmp_path / "report")
    names = sorted(p.name for p in result["plots"])
    assert names == [
        "accuracy_curves_synthetic-b.png",
        "accuracy_curves_synthetic.png",
        "accuracy_vs_macs_synthetic-b.png",
        "accuracy_vs_macs_synthetic.png",
    ]
    for path in result["plots"]:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # something was drawn
        assert f"]({path.name})" in result["markdown"].read_text()


def test_cli_accepts_a_parent_folder(runs: Path, tmp_path: Path, capsys):
    out = tmp_path / "cli-report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    assert "4 complete run(s) in 3 group(s), 1 incomplete" in capsys.readouterr().out
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert len(find_runs([runs])) == 5


def test_cut_metrics_line_is_ignored_and_bad_input_is_one_line(tmp_path: Path, capsys):
    run = tmp_path / "cut"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 50.0}\n{"epoch": 2, "te')
    assert [r["epoch"] for r in read_run(run).metrics] == [1]

    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mhkd: error: not a directory: {tmp_path / 'missing'}"
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_pruning_run_is_compared_with_its_original_and_stage1_is_part_of_it(tmp_path: Path):
    run = tmp_path / "runs" / "prune"
    (run / "stage1").mkdir(parents=True)
    (run / "stage1" / "summary.json").write_text('{"kept_fractions": [0.5]}')  # not a trainer's
    summary = {"test_acc": 70.0, "best_test_acc": 71.0, "params": 250, "macs": 4000, "seed": 0,
               "seconds": 90.0, "model": "resnet8", "method": "kd", "data": "digits",
               "prune": {"keep": 0.5, "assistants": 2, "baseline": None},
               "params_before": 1000, "macs_before": 9000}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    result = write_report([tmp_path / "runs"], tmp_path / "report")
    row = row_of(result["markdown"].read_text(), "digits", "resnet8", "resnet8 pruned")
    assert row[3:] == ["prune (cascade, 2 assistants, keep 0.5)", "1 (0)", "70.00", "71.00",
                       "0.000", "0.0", "75.0", "1m 30s"]  # fmt: skip


def fake_run(path: Path, seed: int, test_acc: float, **settings) -> None:
    """A finished run's config.yaml and summary.json, shaped as a training run writes them
    (the resolved configuration tree); ``settings`` are flat names as in ``mhkd.api``."""
    settings = {"epochs": 2, "batch_size": 64, "lr": 0.05, "precision": "fp32", "seed": seed,
                "weights": {"ce": 0.1, "kd": 0.9}, "data": "digits", "method": "kd",
                "teacher": "t.pt", "student": "resnet8", "device": "cpu", "quiet": False,
                **settings}  # fmt: skip
    config = cfg.to_dict(cfg.build(cfg.from_keywords(**settings)))
    config["resolved"] = {"device": settings["device"], "teacher": "resnet32",
                          "student": "resnet8", "num_classes": 10}  # fmt: skip
    summary = RunSummary(
        test_acc=test_acc, best_test_acc=test_acc + 1, best_epoch=2, params=1000, macs=2000,
        model="resnet8", teacher="resnet32", method="kd", data="digits", num_classes=10,
        epochs=2, seed=seed, seconds=10.0, precision=settings["precision"], channels_last=False,
        world_size=1, peak_host_memory_mb=100.0,
    )  # fmt: skip
    with RunDirectory(path).claim() as run:
        run.write_config(config)
        run.write_summary(summary)


def test_only_runs_that_differ_by_seed_alone_are_pooled(tmp_path: Path):
    root = tmp_path / "runs"
    fake_run(root / "a0", 0, 60.0)
    fake_run(root / "a1", 1, 64.0, device="cuda:1", quiet=True, tensorboard=True)  # runtime only
    fake_run(root / "b0", 0, 70.0, batch_size=32)
    fake_run(root / "c0", 0, 80.0, precision="bf16", weights={"ce": 0.5, "kd": 0.9})
    result = write_report([root], tmp_path / "report")
    md = result["markdown"].read_text()

    assert [[r.path.name for r in g.runs] for g in result["groups"]] == [["b0"], ["c0"],
                                                                          ["a0", "a1"]]  # fmt: skip
    base = ["digits", "resnet32", "resnet8"]
    row = row_of(md, *base, "kd [optim.batch_size=64, runtime.precision=fp32, weights.ce=0.1]")
    assert row[4:6] == ["2 (0, 1)", f"62.00 ± {statistics.stdev([60.0, 64.0]):.2f}"]
    row = row_of(md, *base, "kd [optim.batch_size=32, runtime.precision=fp32, weights.ce=0.1]")
    assert row[4:6] == ["1 (0)", "70.00"]
    row = row_of(md, *base, "kd [optim.batch_size=64, runtime.precision=bf16, weights.ce=0.5]")
    assert row[4:6] == ["1 (0)", "80.00"]
    note = ("resnet32 -> resnet8 (kd): runs not pooled, their configurations differ in "
            "optim.batch_size, runtime.precision, weights.ce.")  # fmt: skip
    assert note in md and escape(note) in result["html"].read_text()
    assert result["groups"][0].label == "resnet32 -> resnet8 (kd; optim.batch_size=32, "\
        "runtime.precision=fp32, weights.ce=0.1)"  # fmt: skip


def test_settings_ignore_runtime_fields_at_any_depth_and_name_missing_ones():
    config = {"seed": 3, "runtime": {"device": "cuda:0", "out": "runs/x"},
              "optim": {"lr": 0.1, "milestones": [2, 3]}, "method": "kd"}  # fmt: skip
    assert setting(config) == (
        ("method", "kd"),
        ("optim.lr", "0.1"),
        ("optim.milestones", "[2, 3]"),
    )
    assert {"seed", "out", "resume", "overwrite", "quiet", "tensorboard"} <= RUNTIME_FIELDS
    groups, _ = group_runs(
        [
            Run(Path("a"), {"lr": 0.1}, [], RunSummary.from_dict(OLD_SUMMARY)),
            Run(Path("b"), {"lr": 0.1, "gamma": 0.2}, [], RunSummary.from_dict(OLD_SUMMARY)),
        ]
    )
    assert [g.variant for g in groups] == [{"gamma": "0.2"}, {"gamma": "unset"}]


OLD_SUMMARY = {"test_acc": 70.0, "best_test_acc": 71.0, "params": 250, "macs": 4000, "seed": 0,
               "seconds": 90.0, "model": "resnet8", "method": "kd", "data": "digits"}  # fmt: skip


def test_a_default_pipeline_section_of_an_older_release_does_not_split_a_group(tmp_path):
    """Older releases wrote ``aux`` (mode none) into every config.yaml; it is read as absent,
    while a proxy run's ``aux`` is kept."""
    old, new, proxy = tmp_path / "old", tmp_path / "new", tmp_path / "proxy"
    tree = {"data": {"name": "digits"}, "method": "kd", "optim": {"lr": 0.1}}
    default = {"mode": "none", "width": 2.0, "epochs": None, "distill_epochs": None}
    for folder, extra in ((old, {"aux": default}), (new, {}),
                          (proxy, {"aux": {**default, "mode": "auto"}})):  # fmt: skip
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump({**tree, **extra}))
    assert read_run(old).config == read_run(new).config == tree
    assert setting(read_run(old).config) == setting(read_run(new).config)
    assert read_run(proxy).config["aux"]["mode"] == "auto"
