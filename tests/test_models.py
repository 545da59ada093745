"""The zoo: CIFAR sizes match the benchmark (spec section 5), tap names work, registry behaves,
old specs and pruned specs rebuild. ImageNet networks: tests/test_imagenet_models.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mhkd import checkpoint
from mhkd.models import (
    ImageNetResNet,
    ResNet,
    available,
    channel_shapes,
    count_macs,
    count_params,
    create,
    from_spec,
    profile,
)

# spec/methods.md section 5: (name, params in M, MMACs) at num_classes=100, 32x32 input
SPEC = [
    ("resnet20", 0.278, 40.8),
    ("resnet32", 0.473, 69.1),
    ("resnet56", 0.862, 125.8),
    ("resnet110", 1.737, 253.2),
    ("resnet8x4", 1.234, 177.1),
    ("resnet32x4", 7.434, 1083.0),
    ("wrn_16_2", 0.703, 101.1),
    ("wrn_40_1", 0.570, 83.3),
    ("wrn_40_2", 2.255, 327.6),
    ("vgg8", 3.965, 96.2),
    ("vgg13", 9.462, 284.9),
    ("mobilenetv2", 0.813, 6.5),
    ("shufflenetv1", 0.949, 38.7),
    ("shufflenetv2", 1.356, 44.5),
    ("resnet50_cifar", 23.705, 1298.0),
]


@pytest.mark.parametrize(("name", "params_m", "mmacs"), SPEC, ids=[row[0] for row in SPEC])
def test_size_matches_benchmark(name: str, params_m: float, mmacs: float) -> None:
    stats = profile(create(name, num_classes=100))
    assert stats["params"] == pytest.approx(params_m * 1e6, rel=0.01)
    assert stats["macs"] == pytest.approx(mmacs * 1e6, rel=0.01)


def _run_with_taps(model: nn.Module, names: list[str], x: torch.Tensor):
    """Forward ``x`` recording each named module's output and a copy taken when it was made."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def recorder(name: str):
        def hook(_module, _inputs, output):
            seen[name] = (output, output.clone())

        return hook

    handles = [modules[name].register_forward_hook(recorder(name)) for name in names]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, seen


@pytest.mark.parametrize("name", available())
def test_forward_and_tap_names(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=10).eval()
    modules = dict(model.named_modules())
    stages = list(model.stage_names)
    assert len(stages) >= 3
    assert all(stage in modules for stage in stages)
    classifier = modules[model.classifier_name]
    assert isinstance(classifier, nn.Linear)
    assert classifier is [m for m in model.modules() if isinstance(m, nn.Linear)][-1]

    names = [*stages, model.embedding_name, model.classifier_name]
    with torch.no_grad():
        logits, seen = _run_with_taps(model, names, torch.randn(2, 3, 32, 32))

    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
    assert seen[model.classifier_name][0] is logits
    for tapped, snapshot in seen.values():  # nothing overwrites a tapped output in place
        assert torch.equal(tapped, snapshot)
    shapes = [seen[stage][0].shape for stage in stages]
    assert all(len(shape) == 4 and shape[0] == 2 for shape in shapes)
    sizes = [shape[-1] for shape in shapes]
    assert sizes == sorted(set(sizes), reverse=True), "one stage end per spatial size, in order"
    embedding = seen[model.embedding_name][0]
    assert embedding.shape == (2, classifier.in_features)
    assert embedding.shape[1] == shapes[-1][1], "the embedding pools the last stage's map"


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError) as info:
        create("resnet21")
    message = str(info.value)
    assert message.startswith("unknown model 'resnet21'; choose from ")
    assert "\n" not in message
    assert message.split("choose from ", 1)[1].split(", ") == available()


def test_names_are_case_insensitive() -> None:
    assert all(name == name.lower() for name in available())
    upper = create("ResNet8x4", num_classes=7)
    assert type(upper) is type(create("resnet8x4"))
    assert count_params(upper) == count_params(create("resnet8x4", num_classes=7))


def test_full_zoo_is_registered() -> None:
    expected = {
        *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
        "resnet8x4",
        "resnet32x4",
        "resnet50_cifar",
        *(f"wrn_{d}_{k}" for d in (16, 40) for k in (1, 2)),
        *(f"vgg{d}" for d in (8, 11, 13, 16, 19)),
        "mobilenetv2",
        "shufflenetv1",
        "shufflenetv2",
        # ImageNet, torchvision's names
        "resnet18",
        "resnet34",
        "resnet50",
        "mobilenet_v2",
        "mobilenetv1",
    }
    assert set(available()) == expected


def test_resnet20_twice_as_wide() -> None:
    # stem 3*32*9 + BN 64; layer1 3*(2*32*32*9 + 2*64); layer2 (32->64): 32*64*9 + 64*64*9
    # + projection 32*64 + 3 BNs of 128, then 2*(2*64*64*9 + 2*128); layer3 likewise at 64->128;
    # classifier 128*100 + 100.  Convs grow 4x but BN and the classifier only 2x: 3.94x.
    expected = (
        (864 + 64)
        + 3 * (2 * 9216 + 128)
        + (18432 + 36864 + 2048 + 3 * 128 + 2 * (2 * 36864 + 256))
        + (73728 + 147456 + 8192 + 3 * 256 + 2 * (2 * 147456 + 512))
        + (12800 + 100)
    )
    assert count_params(create("resnet20", width_mult=2)) == expected == 1_096_196
    assert count_params(create("resnet20")) == 278_324


# one model per family; ratios of parameters follow width_mult**2, less the linear-in-width
# BN, bias and classifier parameters
@pytest.mark.parametrize(
    ("name", "width_mult"),
    [
        ("resnet8", 2.0),
        ("resnet50_cifar", 0.5),
        ("wrn_16_1", 2.0),
        ("vgg8", 2.0),
        ("mobilenetv2", 2.0),
        ("shufflenetv1", 2.0),
        ("shufflenetv2", 2.0),
    ],
)
def test_width_mult_scales_every_family(name: str, width_mult: float) -> None:
    base, wide = create(name), create(name, width_mult=width_mult)
    ratio = count_params(wide) / count_params(base)
    low, high = sorted([width_mult**2, width_mult**2 * (0.85 if width_mult > 1 else 1 / 0.85)])
    assert low <= ratio <= high
    assert wide(torch.randn(1, 3, 32, 32)).shape == (1, 100)


@pytest.mark.parametrize(
    ("name", "width_mult"), [("shufflenetv1", 1.3), ("shufflenetv2", 0.75), ("wrn_16_2", 0.6)]
)
def test_odd_widths_keep_groups_valid(name: str, width_mult: float) -> None:
    model = create(name, num_classes=5, width_mult=width_mult)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_macs_count_grouped_convs_and_restore_modes() -> None:
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1, groups=4),  # 16 * 5*5 outputs * (8/4 * 3*3) = 7200
        nn.Conv2d(16, 16, 3, stride=2, groups=16),  # depthwise: 16 * 2*2 * 9 = 576
        nn.BatchNorm2d(16),
        nn.Flatten(),
        nn.Linear(64, 10),  # 640
    )
    model.train()
    model[2].eval()
    assert count_macs(model, (8, 5, 5)) == 7200 + 576 + 640
    assert model.training and model[0].training and not model[2].training
    assert all(not m._forward_hooks for m in model.modules())
    assert count_params(model) == (8 // 4 * 9 * 16 + 16) + (9 * 16 + 16) + 32 + 650


def test_specs_without_zoo_generation_use_the_old_names(tmp_path) -> None:
    """Checkpoints written before the ImageNet zoo call the CIFAR ResNet-50 ``resnet50``."""
    torch.manual_seed(0)
    cifar = create("resnet50_cifar", num_classes=10, width_mult=0.25).eval()
    old_spec = {"name": "resnet50", "num_classes": 10, "kwargs": {"width_mult": 0.25}}
    path = tmp_path / "old.pt"
    checkpoint.save({"arch": old_spec, "model": cifar.state_dict()}, path)
    rebuilt = checkpoint.build_model(checkpoint.load(path), path).eval()
    assert type(rebuilt) is ResNet
    assert rebuilt.zoo_spec == {**old_spec, "name": "resnet50_cifar", "zoo": 2}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), cifar(x))
    assert type(from_spec({**old_spec, "zoo": 2})) is ImageNetResNet
    assert type(from_spec({**old_spec, "name": "resnet20"})) is ResNet  # others keep their name


def test_from_spec_resizes_to_pruned_channels() -> None:
    # resnet8's first block with 5 of its 16 inner channels: conv1 out, bn1, conv2 in
    pruned = {"layer1.0.conv1": [16, 5, 1], "layer1.0.bn1": [5], "layer1.0.conv2": [5, 16, 1]}
    spec = {**create("resnet8", num_classes=10).zoo_spec, "pruned_channels": pruned}
    model = from_spec(spec)
    assert model.zoo_spec == spec and model.pruned_channels == pruned
    shapes = channel_shapes(model)
    assert {name: shapes[name] for name in pruned} == pruned
    block = model.layer1[0]
    assert block.conv1.weight.shape == (5, 16, 3, 3) and block.conv2.weight.shape == (16, 5, 3, 3)
    assert count_params(model) == count_params(create("resnet8", num_classes=10)) - 11 * (
        16 * 9 + 2 + 16 * 9
    )
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_profile_measures_at_the_models_own_input_size() -> None:
    assert create("resnet20").default_input_size == 32
    model = create("resnet18", num_classes=10, width_mult=0.25)
    assert count_macs(model) == count_macs(model, (3, 224, 224)) > count_macs(model, (3, 32, 32))
    user_module = nn.Sequential(nn.Conv2d(3, 4, 1))  # no default_input_size: 32x32
    assert count_macs(user_module) == 4 * 3 * 32 * 32
