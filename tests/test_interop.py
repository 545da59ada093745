"""Published files of other projects: the torchvision ResNet-50, files older than BatchNorm's
counter, and the input size an exported ImageNet network defaults to."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from mhkd import checkpoint, export, models
from mhkd.cli import main
from mhkd.models import foreign


def randomised(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so a wrong or missing buffer changes the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def logits(model: nn.Module, size: int) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(
            torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        )


def test_resnet50_names_the_imagenet_network_and_resnet50_vanilla_the_cifar_one():
    assert foreign.resolve("resnet50") == ("resnet50", foreign.TORCHVISION)
    assert foreign.resolve("ResNet50") == ("resnet50_cifar", foreign.RESNET_V2)
    assert foreign.resolve("resnet50_cifar") == ("resnet50_cifar", foreign.RESNET_V2)
    folder = "save/models/ResNet50_vanilla/ckpt_epoch_240.pth"
    assert foreign.resolve(foreign.arch_from_folder(folder))[0] == "resnet50_cifar"


@pytest.mark.parametrize("arch", [None, "resnet50"])
def test_torchvision_resnet50_state_dict_loads(tmp_path: Path, arch: str | None):
    original = randomised(models.create("resnet50", num_classes=10))
    path = tmp_path / "resnet50-weights.pth"
    torch.save(original.state_dict(), path)  # torchvision's layout: a bare state_dict
    model, meta = checkpoint.load_model(path, arch=arch)
    assert meta["arch"]["name"] == "resnet50" and meta["num_classes"] == 10
    assert torch.equal(logits(model, 64), logits(original, 64))


def test_a_cifar_file_given_the_imagenet_name_says_what_its_keys_spell(tmp_path: Path):
    cifar = models.create("resnet50_cifar", num_classes=100).state_dict()
    weights = {k.replace("classifier.", "linear."): v for k, v in cifar.items()}
    torch.save({"model": weights}, tmp_path / "ckpt.pth")
    with pytest.raises(checkpoint.CheckpointError, match=r"its keys spell ResNet50\)"):
        checkpoint.load_model(tmp_path / "ckpt.pth", arch="resnet50")


@pytest.mark.parametrize("name", ["wrn_16_1", "mobilenet_v2"])
def test_files_without_batchnorm_counters_load_as_pytorch_loads_them(tmp_path: Path, name: str):
    """Files saved before PyTorch 0.4.1 have no ``num_batches_tracked``; load_state_dict
    accepts them (the counter starts at 0), and so must mhkd."""
    original = randomised(models.create(name, num_classes=10))
    old = {k: v for k, v in original.state_dict().items() if "num_batches_tracked" not in k}
    assert len(old) < len(original.state_dict())
    fresh = models.create(name, num_classes=10)
    fresh.load_state_dict(dict(old))  # what PyTorch does with such a file
    path = tmp_path / f"{name}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": old, "epoch": 240}, path)
    model, _ = checkpoint.load_model(path)
    assert torch.equal(logits(model, 32), logits(fresh, 32))
    assert torch.equal(logits(model, 32), logits(original, 32))


def test_export_of_an_imagenet_file_defaults_to_224(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(export, "CHECK_BATCHES", (1, 2))  # the size is the point, not batch 64
    torch.save(randomised(models.create("mobilenet_v2", num_classes=10)).state_dict(),
               tmp_path / "mobilenet_v2.pth")  # fmt: skip
    small = models.create("resnet8", num_classes=10)
    checkpoint.save({"arch": checkpoint.model_spec(small), "model": small.state_dict()},
                    tmp_path / "best.pt")  # fmt: skip
    for file, side in (("mobilenet_v2.pth", 224), ("best.pt", 32)):
        onnx_file = tmp_path / f"{file}.onnx"
        assert main(["export", str(tmp_path / file), "--onnx", str(onnx_file), "--no-latency"]) == 0
        assert f"input (batch, 3, {side}, {side})" in capsys.readouterr().out
        dims = onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims[1:]] == [3, side, side]
