"""ONNX export: round trip through onnxruntime, dynamic batch, user models, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from mhkd import checkpoint, export, models
from mhkd.cli import main

from conftest import TinyNet


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})[0]


def save_deployable(model: nn.Module, path: Path) -> None:
    """A checkpoint shaped like the trainer's best.pt."""
    state = {"arch": checkpoint.model_spec(model), "model": model.state_dict(),
             "data": "synthetic", "num_classes": 4, "test_acc": 50.0}  # fmt: skip
    checkpoint.save(state, path)


def trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so eval-mode export differs from train mode."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    return model


def test_cli_round_trip_of_a_zoo_student(tmp_path: Path, capsys):
    torch.manual_seed(0)
    model = trained_like(models.create("resnet8", num_classes=4)).eval()
    ckpt, onnx_file = tmp_path / "best.pt", tmp_path / "student.onnx"
    save_deployable(model, ckpt)

    assert main(["export", str(ckpt), "--onnx", str(onnx_file), "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime matches PyTorch" in out
    assert "CPU latency, batch 1:" in out and "CPU latency, batch 64:" in out

    graph = onnx.load(str(onnx_file))
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # dynamic, not a fixed size
    meta = {p.key: json.loads(p.value) for p in graph.metadata_props}
    assert meta["mhkd.arch"]["name"] == "resnet8" and meta["mhkd.data"] == "synthetic"
    for size in (1, 5):
        x = torch.randn(size, 3, 16, 16)
        expected = model(x).detach().numpy()
        np.testing.assert_allclose(run_onnx(onnx_file, x), expected, atol=1e-4)


def test_user_model_through_the_python_api(tmp_path: Path):
    torch.manual_seed(0)
    model = trained_like(TinyNet(num_classes=4)).train()
    diff = export.to_onnx(model, tmp_path / "user.onnx", (3, 16, 16))
    assert diff <= export.TOLERANCE
    assert model.training  # the caller's module is left as it was
    x = torch.randn(7, 3, 16, 16)
    expected = model.eval()(x).detach().numpy()
    np.testing.assert_allclose(run_onnx(tmp_path / "user.onnx", x), expected, atol=1e-4)


def test_channel_shuffle_is_exported_exactly(tmp_path: Path):
    """ShuffleNet's channel shuffle has no built-in ONNX translation; ours must permute right."""
    shuffle = nn.ChannelShuffle(3)
    export.to_onnx(shuffle, tmp_path / "shuffle.onnx", (6, 2, 2))
    x = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 2, 2)
    np.testing.assert_array_equal(run_onnx(tmp_path / "shuffle.onnx", x), shuffle(x).numpy())
    diff = export.to_onnx(trained_like(models.create("shufflenetv2", num_classes=4)),
                          tmp_path / "shufflenetv2.onnx", (3, 16, 16))  # fmt: skip
    assert diff <= export.TOLERANCE


@pytest.fixture
def pruned_student() -> nn.Module:
    """A physically pruned resnet8 (half its channels), as `mhkd prune` exports it."""
    from mhkd import prune

    torch.manual_seed(0)
    model = trained_like(models.create("resnet8", num_classes=4))
    layout = prune.find_layout(model, (3, 16, 16))
    scores = [torch.rand(group.size) for group in layout.groups]
    masked = prune.MaskedNet(model, layout.groups, 0.5, scores).eval()
    return prune.export(masked, (3, 16, 16)).eval()


def test_pruned_student_through_the_python_api(tmp_path: Path, pruned_student: nn.Module):
    assert export.to_onnx(pruned_student, tmp_path / "p.onnx", (3, 16, 16)) <= export.TOLERANCE


def test_pruned_checkpoint_exports_from_the_cli(tmp_path: Path, pruned_student: nn.Module):
    save_deployable(pruned_student, tmp_path / "pruned.pt")
    argv = ["export", str(tmp_path / "pruned.pt"), "--onnx", str(tmp_path / "p.onnx"),
            "--image-size", "16", "--no-latency"]  # fmt: skip
    assert main(argv) == 0


def test_disagreeing_graph_is_refused(tmp_path: Path, monkeypatch):
    model = models.create("resnet8", num_classes=4)
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # any difference at all is too much
    with pytest.raises(export.ExportError, match="differs from PyTorch"):
        export.to_onnx(model, tmp_path / "m.onnx", (3, 16, 16))


def error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mhkd: error: "), err
    return err[0]


def test_missing_or_corrupt_checkpoint_is_a_one_line_error(tmp_path: Path, capsys):
    out = ["--onnx", str(tmp_path / "m.onnx")]
    assert "not found" in error_line(capsys, ["export", str(tmp_path / "nope.pt"), *out])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    assert "cannot read" in error_line(capsys, ["export", str(corrupt), *out])
    user = tmp_path / "user.pt"  # no architecture in it: the message points to the Python API
    save_deployable(TinyNet(), user)
    assert "Python API" in error_line(capsys, ["export", str(user), *out])
    assert not (tmp_path / "m.onnx").exists()


def test_nonfinite_weights_are_refused_not_exported(tmp_path: Path, capsys):
    model = models.create("resnet8", num_classes=4)
    with torch.no_grad():
        model.layer1[0].conv2.weight[0, 0, 1, 1] = float("nan")
    save_deployable(model, tmp_path / "best.pt")
    argv = ["export", str(tmp_path / "best.pt"), "--onnx", str(tmp_path / "m.onnx")]
    line = error_line(capsys, argv)
    assert "NaN or infinite values in 1 tensors (layer1.0.conv2.weight)" in line
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(export.ExportError, match="logits are NaN or infinite"):
        export.to_onnx(model, tmp_path / "user.onnx", (3, 16, 16))  # a user's module, too


def repdistiller_resnet8(path: Path) -> nn.Module:
    """A resnet8 saved as RepDistiller saves its teachers (their key names, nested, extras)."""
    torch.manual_seed(0)
    model = trained_like(models.create("resnet8", num_classes=100)).eval()
    theirs = {k.replace("classifier.", "fc.").replace(".shortcut.", ".downsample."): v
              for k, v in model.state_dict().items()}  # fmt: skip
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 240, "model": theirs, "accuracy": torch.tensor(70.1), "optimizer": {}},
               path)  # fmt: skip
    return model


def test_foreign_teacher_exports_its_own_logits(tmp_path: Path, capsys):
    ckpt = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    model = repdistiller_resnet8(ckpt)
    onnx_file = tmp_path / "teacher.onnx"
    assert main(["export", str(ckpt), "--onnx", str(onnx_file), "--no-latency"]) == 0
    x = torch.randn(3, 3, 32, 32)
    np.testing.assert_allclose(run_onnx(onnx_file, x), model(x).detach().numpy(), atol=1e-4)
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_file)).metadata_props}
    assert meta["mhkd.arch"]["name"] == "resnet8" and meta["mhkd.data"] == "cifar100"
    assert meta["mhkd.test_acc"] == pytest.approx(70.1)


def test_export_arch_flag_overrides_an_unhelpful_folder(tmp_path: Path, capsys):
    ckpt = tmp_path / "resnet56_vanilla" / "mine.pth"  # the folder is wrong about the model
    model = repdistiller_resnet8(ckpt)
    out = ["--onnx", str(tmp_path / "t.onnx"), "--no-latency"]
    assert "do not fit resnet56" in error_line(capsys, ["export", str(ckpt), *out])
    assert main(["export", str(ckpt), "--arch", "resnet8", *out]) == 0
    x = torch.randn(2, 3, 32, 32)
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(run_onnx(tmp_path / "t.onnx", x), expected, atol=1e-4)
