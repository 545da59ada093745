"""int8: post-training quantization of exported graphs, its refusals, and quantization-aware
distillation (the simulated int8 agrees with ONNX Runtime's; the stage resumes exactly)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from mhkd import api, data, export, models, quantize
from mhkd.cli import main
from mhkd.fakequant import QuantSim
from mhkd.pipelines.qat import build_qat, qat_config

from conftest import FAST, TinyNet
from runs import stop_after
from test_export import error_line, save_deployable

SETTINGS = {**FAST, "image_size": 16}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A resnet8 teacher (CE, trained: ~99% on the test split) and a resnet8 student distilled
    from it for one epoch (KD), on synthetic 16×16 images, as ``mhkd train`` and ``mhkd
    distill`` leave them."""
    root = tmp_path_factory.mktemp("int8")
    api.train("resnet8", "synthetic", out=root / "teacher", epochs=3, **SETTINGS)
    teacher = root / "teacher" / "checkpoints" / "best.pt"
    api.distill(teacher, "resnet8", "synthetic", method="kd", out=root / "kd", epochs=1,
                seed=1, **SETTINGS)  # fmt: skip
    return root


def trained_tiny(splits: data.DataSplits, act: nn.Module | None = None) -> nn.Module:
    """TinyNet after a few hundred SGD steps on ``splits`` (``act`` after its first stage)."""
    torch.manual_seed(0)
    model = TinyNet(num_classes=splits.num_classes, width=16)
    if act is not None:
        model.stage1.append(act)
    images, labels = split_arrays(splits, train=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(80):
        batch = torch.arange(32) + 32 * step % (len(images) - 32)
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def split_arrays(splits: data.DataSplits, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    split = splits.train if train else splits.test
    return data.normalize(split.images, splits.mean, splits.std), split.labels


@pytest.fixture(scope="module")
def tiny_model(tiny_data) -> nn.Module:
    return trained_tiny(tiny_data)


def test_user_module_int8_keeps_accuracy_at_a_quarter_of_the_size(tmp_path, tiny_data, tiny_model):
    model = tiny_model
    calibration = quantize.calibration_sample(tiny_data, 64)
    path = tmp_path / "user.onnx"
    assert export.to_onnx(model, path, (3, 16, 16), int8=True, calibration=calibration) <= 1e-4
    int8 = tmp_path / "user.int8.onnx"
    images, labels = (t.numpy() for t in split_arrays(tiny_data))
    float_acc, int8_acc = (
        quantize.accuracy(path, images, labels),
        quantize.accuracy(int8, images, labels),
    )
    assert float_acc > 90.0 and abs(float_acc - int8_acc) <= 1.0
    graph = onnx.load(str(int8))
    weights = {t.name: t for t in graph.graph.initializer}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3 and {n.op_type for n in graph.graph.node} >= {"QuantizeLinear"}
    quantized_bytes = sum(
        t.ByteSize() for t in weights.values() if t.data_type == onnx.TensorProto.INT8
    )
    float_bytes = sum(t.ByteSize() for t in onnx.load(str(path)).graph.initializer)
    assert quantized_bytes < 0.3 * float_bytes  # int8 weights: a quarter, plus scales
    meta = {p.key: json.loads(p.value) for p in graph.metadata_props}
    assert meta["mhkd.int8"]["calibration_images"] == 64 and "mhkd.exporter" in meta


def test_calibration_of_another_shape_or_data_set_is_refused(tmp_path, tiny_data, tiny_model):
    model = tiny_model
    images, labels = quantize.calibration_sample(tiny_data, 32)
    with pytest.raises(quantize.QuantizeError, match=r"\(32, 3, 8, 8\) do not fit .*16, 16"):
        export.to_onnx(model, tmp_path / "a.onnx", (3, 16, 16), int8=True,
                       calibration=images[:, :, :8, :8])  # fmt: skip
    assert not (tmp_path / "a.onnx").exists()  # refused before anything is written
    with pytest.raises(quantize.QuantizeError, match="predicts 4 classes: the calibration"):
        export.to_onnx(model, tmp_path / "b.onnx", (3, 16, 16), int8=True,
                       calibration=(images, labels + 6))  # fmt: skip
    assert not (tmp_path / "b.int8.onnx").exists()


def test_an_operator_that_does_not_quantize_is_named_or_kept_in_float(tmp_path: Path, tiny_data):
    model = trained_tiny(tiny_data, act=nn.Softplus())
    calibration = quantize.calibration_sample(tiny_data, 64)
    with pytest.raises(quantize.QuantizeError, match="operator Softplus .* --keep-float Softplus"):
        export.to_onnx(model, tmp_path / "s.onnx", (3, 16, 16), int8=True, calibration=calibration)
    assert not (tmp_path / "s.int8.onnx").exists()
    export.to_onnx(model, tmp_path / "s.onnx", (3, 16, 16), int8=True, calibration=calibration,
                   keep_float=["Softplus"])  # fmt: skip
    graph = onnx.load(str(tmp_path / "s.int8.onnx"))
    softplus = next(n for n in graph.graph.node if n.op_type == "Softplus")
    producers = {out: n.op_type for n in graph.graph.node for out in n.output}
    assert producers[softplus.input[0]] == "DequantizeLinear"  # float in, int8 around it
    images, labels = (t.numpy() for t in split_arrays(tiny_data))
    drop = quantize.accuracy(tmp_path / "s.onnx", images, labels) - quantize.accuracy(
        tmp_path / "s.int8.onnx", images, labels
    )
    assert drop <= 1.0


def test_cli_int8_prints_both_graphs_and_refuses_another_class_count(runs: Path, tmp_path, capsys):
    ckpt = runs / "teacher" / "checkpoints" / "best.pt"
    onnx_file = tmp_path / "kd.onnx"
    argv = ["export", str(ckpt), "--onnx", str(onnx_file), "--int8", "--calibration-images", "100"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "calibrated on 100 synthetic training images" in out
    rows = {line[:24].strip(): line[24:].split() for line in out.splitlines()[1:]}
    float_acc, int8_acc = (float(v.rstrip("%")) for v in rows["test accuracy"])
    assert float_acc > 95.0 and abs(float_acc - int8_acc) <= 1.0
    float_mb, int8_mb = float(rows["file size"][0]), float(rows["file size"][2])
    assert int8_mb < 0.4 * float_mb
    assert len(rows["CPU latency, batch 64"]) == 4
    graph = onnx.load(str(tmp_path / "kd.int8.onnx"))  # the trained size, from the checkpoint
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 16, 16]

    other = tmp_path / "four.pt"  # 4 classes, but synthetic has 10
    save_deployable(models.create("resnet8", num_classes=4), other)
    line = error_line(capsys, ["export", str(other), "--onnx", str(tmp_path / "f.onnx"), "--int8"])
    assert "predicts 4 classes but the data set has 10" in line
    assert not (tmp_path / "f.onnx").exists()


def test_cli_int8_that_drops_too_much_is_written_but_fails(runs, tmp_path, capsys, monkeypatch):
    """Calibration images with one huge pixel stretch every range: int8 collapses."""
    real = quantize.calibration_sample

    def outlier(*args, **kwargs):
        images, labels = real(*args, **kwargs)
        images[0, :, 0, 0] = 1e5
        return images, labels

    monkeypatch.setattr(quantize, "calibration_sample", outlier)
    ckpt = runs / "teacher" / "checkpoints" / "best.pt"
    argv = ["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--int8", "--no-latency"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "points below float32 (more than --max-drop 1)" in err and len(err.splitlines()) == 1
    assert (tmp_path / "m.int8.onnx").is_file()


def test_export_refuses_to_overwrite_what_it_did_not_write(runs: Path, tmp_path, capsys):
    ckpt = str(runs / "kd" / "checkpoints" / "best.pt")
    config = tmp_path / "config.yaml"
    config.write_text("data: {name: synthetic}\n")
    line = error_line(capsys, ["export", ckpt, "--onnx", str(config), "--no-latency"])
    assert "refusing to overwrite" in line and "--overwrite" in line
    assert config.read_text() == "data: {name: synthetic}\n"
    onnx_file = tmp_path / "m.onnx"
    for _ in range(2):  # an ONNX file export wrote is replaced without asking
        assert main(["export", ckpt, "--onnx", str(onnx_file), "--no-latency"]) == 0
    assert main(["export", ckpt, "--onnx", str(config), "--no-latency", "--overwrite"]) == 0
    assert quantize.written_by_mhkd(config)


def test_simulated_int8_agrees_with_onnx_runtime(tmp_path, tiny_data, tiny_model):
    model = copy.deepcopy(tiny_model)
    calibration, _ = quantize.calibration_sample(tiny_data, 64)
    export.to_onnx(model, tmp_path / "t.onnx", (3, 16, 16), int8=True, calibration=calibration)
    images, _ = split_arrays(tiny_data)
    with torch.no_grad():
        float_logits = model(images)
        sim = QuantSim(model)
        sim.calibrate(model, calibration)
        simulated = model(images)
        sim.remove()
        assert torch.equal(model(images), float_logits)  # remove() gives the float net back
    onnx_int8 = torch.from_numpy(quantize.predict(tmp_path / "t.int8.onnx", images.numpy()))
    int8_error = (onnx_int8 - float_logits).abs().mean()
    assert int8_error > 1e-3  # quantization does change the logits ...
    # ... and the simulation changes them the same way, up to the roundings it leaves out
    # (the logits themselves, the tensor before pooling)
    assert (simulated - onnx_int8).abs().mean() < 0.8 * int8_error
    assert (simulated.argmax(1) == onnx_int8.argmax(1)).float().mean() >= 0.97


def test_qat_stage_resumes_exactly_and_keeps_the_teacher(runs: Path, tmp_path: Path):
    config = qat_config(runs / "kd", epochs=2, lr=0.01, quiet=True)
    assert config.method == "kd" and config.models.teacher.endswith("teacher/checkpoints/best.pt")
    few = dataclasses.replace(config.data, train_per_class=12)  # 120 images: a fast test
    config = dataclasses.replace(config, data=few)
    whole = build_qat(config, tmp_path / "whole", calibration_images=64)
    summary = whole.fit()
    assert summary["qat"] == {"calibration_images": 64, "weight_bits": 7}
    stopped = build_qat(config, tmp_path / "split", calibration_images=64)
    stop_after(stopped, 1)
    resumed = build_qat(config, tmp_path / "split", calibration_images=64, resume=True)
    assert resumed.fit()["test_acc"] == summary["test_acc"]
    a, b = (torch.load(tmp_path / d / "checkpoints" / "best.pt", weights_only=True)
            for d in ("whole", "split"))  # fmt: skip
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # best.pt is a bare student: it exports like any other
    assert main(["export", str(tmp_path / "whole" / "checkpoints" / "best.pt"),
                 "--onnx", str(tmp_path / "q.onnx"), "--int8", "--no-latency"]) == 0  # fmt: skip


def test_cli_qat_runs_the_stage_and_exports_both_graphs(runs: Path, tmp_path: Path, capsys):
    out, taken = tmp_path / "qat", tmp_path / "notes.txt"
    taken.write_text("mine")
    argv = ["qat", str(runs / "kd"), "--out", str(out), "--epochs", "1", "--quiet"]
    line = error_line(capsys, [*argv, "--onnx", str(taken)])
    assert "refusing to overwrite" in line and not out.exists()  # before any training
    argv += ["--calibration-images", "64", "--no-latency", "--max-drop", "100"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "simulated int8 test accuracy" in printed and "test accuracy" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "kd" and summary["teacher"] == "resnet8" and summary["epochs"] == 1
    assert (out / "student.onnx").is_file() and (out / "student.int8.onnx").is_file()
