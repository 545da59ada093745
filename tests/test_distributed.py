"""torchrun-style data parallelism: 2 gloo processes match one process with the same batch."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mhkd import data
from mhkd.pipelines.prune import prune

from conftest import TinyNet
from runs import training_run

SETTINGS = {"epochs": 2, "batch_size": 32, "lr": 0.05, "quiet": True, "precision": "fp32",
            "device": "cpu", "seed": 3}  # fmt: skip


def _splits():
    return data.load("synthetic", num_train=256, num_test=100, num_classes=4, image_size=16)


def _models():
    """Same initial weights in every process. No BatchNorm: its batch statistics are per rank
    under DDP, which would make the two runs differ by design."""
    torch.manual_seed(0)
    teacher = TinyNet(width=12, batchnorm=False)
    return teacher, TinyNet(batchnorm=False)


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    teacher, student = _models()
    run = training_run(student, _splits(), teacher=teacher, method="kd", out=out, **SETTINGS)
    assert run.loop.world_size == 2 and run.loop.train_loader.batch_size == 16
    run.fit()
    if rank == 0:
        torch.save(run.student.state_dict(), os.path.join(out, "weights.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)

    teacher, student = _models()
    single = training_run(
        student, _splits(), teacher=teacher, method="kd", out=tmp_path / "one", **SETTINGS
    )
    summary = single.fit()

    ddp_weights = torch.load(tmp_path / "ddp" / "weights.pt", weights_only=True)
    for name, value in single.student.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=1e-5)
    ddp_summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp_summary["world_size"] == 2
    assert ddp_summary["test_acc"] == summary["test_acc"]  # evaluation reduced over both shards
    ddp_lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    one_lines = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    assert len(ddp_lines) == 2  # written once, by rank 0
    for ddp_line, one_line in zip(ddp_lines, one_lines, strict=True):
        ddp_record, one_record = json.loads(ddp_line), json.loads(one_line)
        for key in ("loss_ce", "loss_kd", "train_acc"):  # train metrics reduced over ranks
            assert abs(ddp_record[key] - one_record[key]) < 1e-4, key


def _prune_rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    _prune(out)
    dist.destroy_process_group()


def _prune(out: str):
    settings = {k: v for k, v in SETTINGS.items() if k != "epochs"}
    return prune(_models()[0], _splits(), keep=0.5, assistants=1, epochs=2, finetune_epochs=0,
                 latency_repeats=1, out=out, **settings)  # fmt: skip


def test_pruning_stage1_under_two_gloo_processes_matches_one_process(tmp_path):
    """Stage 1 is a run of the builder: rank-aware loaders and its cascade wrapped for DDP."""
    mp.spawn(_prune_rank_main, args=(_free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    _prune(str(tmp_path / "one"))
    ddp = torch.load(tmp_path / "ddp/stage1/student.pt", weights_only=True)
    one = torch.load(tmp_path / "one/stage1/student.pt", weights_only=True)
    assert ddp["pruned_channels"] == one["pruned_channels"]
    for name, value in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-4, atol=1e-5)
    stage1 = json.loads((tmp_path / "ddp/stage1/summary.json").read_text())
    assert stage1["world_size"] == 2
