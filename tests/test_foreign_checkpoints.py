"""RepDistiller/mdistiller checkpoints load into mhkd's zoo and compute the same logits.

Each foreign file is made as those projects make theirs: an mhkd zoo model's keys renamed into
their layout by a table written here from their model definitions (independently of
``mhkd.models.foreign``), nested under ``model`` beside ``epoch``/``accuracy``/``optimizer``,
saved from "CUDA" tensors, in a folder named ``<arch>_vanilla``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from mhkd import checkpoint, models
from mhkd.models import foreign

RESNET50 = "resnet50_cifar" if "resnet50_cifar" in models.available() else "resnet50"


# ---- their layouts, written from RepDistiller's models/*.py ------------------------------
def cifar_resnet_keys(key: str) -> str:
    """models/resnet.py: projection shortcuts are `downsample`, the classifier `fc`."""
    return key.replace(".shortcut.", ".downsample.").replace("classifier.", "fc.")


def resnet_v2_keys(key: str) -> str:
    """models/resnetv2.py (ResNet50): the classifier is `linear`."""
    return key.replace("classifier.", "linear.")


def wrn_keys(key: str) -> str:
    """models/wrn.py: units live in NetworkBlock.layer; `convShortcut`; final `bn1`; `fc`."""
    parts = key.split(".")
    if parts[0].startswith("block"):
        parts.insert(1, "layer")
    parts = ["convShortcut" if p == "shortcut" else p for p in parts]
    if parts[0] == "bn":
        parts[0] = "bn1"
    if parts[0] == "classifier":
        parts[0] = "fc"
    return ".".join(parts)


def vgg_keys(key: str) -> str:
    """models/vgg.py (vgg*_bn): conv, BN, ReLU triples at the same Sequential indices."""
    return key


def mobilenet_keys(key: str) -> str:
    """models/mobilenetv2.py: the classifier is `nn.Sequential(nn.Linear)`."""
    return key.replace("classifier.", "classifier.0.")


def shuffle_v1_keys(key: str) -> str:
    """models/ShuffleNetv1.py: the classifier is `linear`."""
    return key.replace("classifier.", "linear.")


def shuffle_v2_renamer(model: nn.Module) -> Callable[[str], str]:
    """models/ShuffleNetv2.py: each unit's k-th conv is `conv<k>`, its k-th BN `bn<k>`, in
    module order (the down-sampling unit: left branch, then right), the classifier `linear`."""
    table = {}
    for unit_name, unit in model.named_modules():
        if not re.fullmatch(r"layer\d\.\d+", unit_name):
            continue
        convs = bns = 0
        for sub, module in unit.named_modules():
            if isinstance(module, nn.Conv2d):
                convs += 1
                table[f"{unit_name}.{sub}."] = f"{unit_name}.conv{convs}."
            elif isinstance(module, nn.BatchNorm2d):
                bns += 1
                table[f"{unit_name}.{sub}."] = f"{unit_name}.bn{bns}."

    def rename(key: str) -> str:
        for prefix, theirs in table.items():
            if key.startswith(prefix):
                return theirs + key[len(prefix) :]
        return key.replace("classifier.", "linear.")

    return rename


# (their name, mhkd zoo name, renamer of an mhkd key or a factory of one)
FAMILIES = [
    ("resnet56", "resnet56", cifar_resnet_keys),
    ("resnet8x4", "resnet8x4", cifar_resnet_keys),  # a projection already in layer1
    ("ResNet50", RESNET50, resnet_v2_keys),
    ("wrn_40_2", "wrn_40_2", wrn_keys),
    ("vgg13", "vgg13", vgg_keys),
    ("MobileNetV2", "mobilenetv2", mobilenet_keys),
    ("ShuffleV1", "shufflenetv1", shuffle_v1_keys),
    ("ShuffleV2", "shufflenetv2", shuffle_v2_renamer),
]


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so a misplaced tensor changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                low, high = (0.5, 1.5) if name.endswith("running_var") else (-1, 1)
                tensor.copy_(torch.empty_like(tensor).uniform_(low, high, generator=generator))
                if "weight" in name and tensor.dim() > 1:
                    tensor.mul_(tensor[0].numel() ** -0.5)  # keep activations of order one
    return model.eval()


def repdistiller_file(
    model: nn.Module, rename: Callable[[str], str], path: Path, **extra
) -> dict[str, torch.Tensor]:
    """Save ``model`` as RepDistiller's train_teacher.py does, tensors tagged as on a GPU."""
    weights = {rename(k): v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    state = {
        "epoch": 240,
        "model": weights,
        "accuracy": torch.tensor(73.26),
        "optimizer": optimizer.state_dict(),
        **extra,
    }
    save_as_if_on_cuda(state, path)
    return weights


def save_as_if_on_cuda(state: object, path: Path) -> None:
    """``torch.save`` recording every storage as ``cuda:0``: a CPU-only torch.load without
    ``map_location`` refuses such a file, as it refuses the published teachers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    serialization = torch.serialization
    original = serialization.location_tag
    serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(state, path)
    finally:
        serialization.location_tag = original


def logits(model: nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model.eval()(x)


@pytest.mark.parametrize(("theirs", "zoo", "renamer"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_published_teacher_loads_with_the_same_logits(tmp_path: Path, theirs, zoo, renamer):
    original = trained_like(models.create(zoo, num_classes=100))
    rename = renamer(original) if renamer is shuffle_v2_renamer else renamer
    published = tmp_path / f"{theirs}_vanilla" / "ckpt_epoch_240.pth"
    weights = repdistiller_file(original, rename, published)
    if rename is not vgg_keys:  # the file really is in their layout, not mhkd's
        assert set(weights) != set(original.state_dict())
        assert foreign.detect_foreign(weights)
    if not torch.cuda.is_available():  # the "GPU-saved" tagging took effect
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(published, weights_only=True)
    expected = logits(original)

    model, meta = checkpoint.load_model(published)
    assert torch.allclose(logits(model), expected, rtol=0, atol=1e-6)
    assert meta["source"].endswith(f"architecture {theirs} from the folder name")
    assert meta["arch"]["name"] == zoo and meta["num_classes"] == 100
    assert meta["format"] == "repdistiller" and meta["data"] == "cifar100"
    assert meta["test_acc"] == pytest.approx(73.26) and meta["epoch"] == 240

    anonymous = tmp_path / "teachers" / "teacher.pth"  # a folder that names nothing
    anonymous.parent.mkdir()
    published.rename(anonymous)
    model, meta = checkpoint.load_model(anonymous)
    assert torch.allclose(logits(model), expected, rtol=0, atol=1e-6)
    assert meta["source"].endswith(f"architecture {theirs} from the keys")
    assert foreign.arch_from_keys(weights) == theirs
    assert foreign.arch_from_keys(original.state_dict()) == theirs  # mhkd's layout as well


def test_arch_given_by_either_projects_name_and_folder_names():
    assert foreign.arch_from_folder("save/models/ResNet50_vanilla/ckpt_epoch_240.pth") == "ResNet50"
    assert foreign.arch_from_folder("wrn_40_2_vanilla/ckpt_epoch_240.pth") == "wrn_40_2"
    assert foreign.arch_from_folder("shufflev2_vanilla/ckpt_epoch_240.pth") == "ShuffleV2"
    assert foreign.arch_from_folder("resnet33_vanilla/ckpt_epoch_240.pth") is None
    assert foreign.arch_from_folder("runs/teacher/best.pt") is None
    assert foreign.resolve("ResNet50")[0] == RESNET50
    assert foreign.resolve("MobileNetV2")[0] == foreign.resolve("mobilenetv2")[0] == "mobilenetv2"
    assert foreign.resolve("shufflev1")[0] == "shufflenetv1"
    with pytest.raises(foreign.LayoutError, match="unknown architecture 'resnet33'"):
        foreign.resolve("resnet33")


def test_explicit_arch_wins_over_a_misleading_folder(tmp_path: Path):
    original = trained_like(models.create("resnet56", num_classes=10))
    wrong = tmp_path / "resnet20_vanilla" / "ckpt_epoch_240.pth"
    repdistiller_file(original, cifar_resnet_keys, wrong)
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.load_model(wrong)
    message = str(caught.value)
    assert "\n" not in message and str(wrong) in message
    assert "do not fit resnet20 (architecture 'resnet20' from the folder name)" in message
    model, meta = checkpoint.load_model(wrong, arch="resnet56")
    assert torch.allclose(logits(model), logits(original), rtol=0, atol=1e-6)
    assert meta["num_classes"] == 10 and meta["data"] is None  # only 100 classes mean CIFAR-100
    assert meta["source"].endswith("architecture resnet56 as given")


@pytest.mark.parametrize("wrapping", ["bare", "state_dict", "DataParallel"])
def test_other_wrappings_of_a_state_dict(tmp_path: Path, wrapping: str):
    original = trained_like(models.create("wrn_16_1", num_classes=100))
    weights = {wrn_keys(k): v for k, v in original.state_dict().items()}
    state = {
        "bare": weights,
        "state_dict": {"state_dict": weights, "epoch": 3},
        "DataParallel": {"model": {f"module.{k}": v for k, v in weights.items()}},
    }[wrapping]
    torch.save(state, tmp_path / "w.pth")
    model, meta = checkpoint.load_model(tmp_path / "w.pth")
    assert torch.allclose(logits(model), logits(original), rtol=0, atol=1e-6)
    assert meta["arch"]["name"] == "wrn_16_1"
    assert meta["test_acc"] is None


def one_line_error(path: Path, **kwargs) -> str:
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.load_model(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_mixed_layout_is_refused(tmp_path: Path):
    original = models.create("wrn_40_1", num_classes=100)
    weights = {wrn_keys(k): v for k, v in original.state_dict().items()}
    weights["classifier.weight"] = weights.pop("fc.weight")  # half renamed by hand
    torch.save({"model": weights}, tmp_path / "mixed.pth")
    message = one_line_error(tmp_path / "mixed.pth")
    assert "mixes RepDistiller/mdistiller and mhkd Wide ResNet keys" in message
    assert "'classifier.weight'" in message


def test_unknown_layouts_say_what_was_found(tmp_path: Path):
    torch.save({"model": {"encoder.proj.weight": torch.ones(3, 3)}}, tmp_path / "odd.pth")
    assert "no known architecture in these keys (1 tensors, first keys encoder.proj.weight)" in (
        one_line_error(tmp_path / "odd.pth")
    )
    resnet26 = models.resnet.cifar_resnet(26, (16, 16, 32, 64))
    torch.save({"model": resnet26.state_dict()}, tmp_path / "r26.pth")
    assert "a CIFAR ResNet of 4 blocks per stage (resnet26)" in one_line_error(tmp_path / "r26.pth")
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "no_model.pth")
    assert "holds no state_dict of a model" in one_line_error(tmp_path / "no_model.pth")
    torch.save({"model": models.create("resnet8").state_dict()}, tmp_path / "r8.pth")
    assert "unknown architecture 'resnet9'" in one_line_error(tmp_path / "r8.pth", arch="resnet9")


def torchvision_like(convs: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {key: torch.zeros(shape) for key, shape in convs.items()}


def test_torchvision_imagenet_layouts_are_recognised():
    def resnet(blocks: tuple[int, ...], bottleneck: bool) -> dict[str, tuple[int, ...]]:
        keys = {"conv1.weight": (64, 3, 7, 7), "fc.weight": (1000, 2048)}
        for stage, count in enumerate(blocks, 1):
            for i in range(count):
                for conv in ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2"):
                    keys[f"layer{stage}.{i}.{conv}.weight"] = (1, 1, 1, 1)
        return keys

    assert foreign.arch_from_keys(torchvision_like(resnet((2, 2, 2, 2), False))) == "resnet18"
    assert foreign.arch_from_keys(torchvision_like(resnet((3, 4, 6, 3), False))) == "resnet34"
    assert foreign.arch_from_keys(torchvision_like(resnet((3, 4, 6, 3), True))) == "resnet50"
    with pytest.raises(
        foreign.LayoutError, match=r"ImageNet ResNet of bottleneck blocks \(3, 4, 23"
    ):
        foreign.arch_from_keys(torchvision_like(resnet((3, 4, 23, 3), True)))
    mobilenet = {"features.0.0.weight": (32, 3, 3, 3), "classifier.1.weight": (1000, 1280)}
    assert foreign.arch_from_keys(torchvision_like(mobilenet)) == "mobilenet_v2"
    assert not foreign.detect_foreign(torchvision_like(resnet((2, 2, 2, 2), False)))


def test_mhkd_checkpoints_load_with_their_metadata(tmp_path: Path):
    original = trained_like(models.create("resnet8", num_classes=10))
    state = {"format": "mhkd/1", "arch": checkpoint.model_spec(original),
             "model": original.state_dict(), "data": "cifar10", "num_classes": 10,
             "test_acc": 91.5, "epoch": 7}  # fmt: skip
    checkpoint.save(state, tmp_path / "best.pt")
    model, meta = checkpoint.load_model(tmp_path / "best.pt", arch="vgg13")  # the file knows
    assert torch.equal(logits(model), logits(original))
    assert meta == {"format": "mhkd/1", "arch": state["arch"], "data": "cifar10",
                    "num_classes": 10, "test_acc": 91.5, "epoch": 7,
                    "source": "mhkd checkpoint"}  # fmt: skip
