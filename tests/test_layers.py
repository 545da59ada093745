"""``mhkd.methods.layers``: which layers every rule picks for each zoo family, the one set of
error messages, and the one shape probe against a real forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mhkd import models
from mhkd.methods import MethodContext, method_class
from mhkd.methods import layers as L
from mhkd.taps import Taps

from conftest import TinyNet, bare_convnet

#: One model per zoo family: (stage ends, the benchmark's maps feat[1:-1]).
FAMILIES = {
    "resnet8": (["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"]),
    "resnet50_cifar": (["layer1", "layer2", "layer3", "layer4"],) * 2,
    "wrn_16_1": (["block1", "block2", "relu"], ["block1", "block2", "block3"]),
    "vgg8": (["block0", "block1", "block2", "block4"], ["block1", "block2", "block3", "block4"]),
    "mobilenetv2": (
        ["blocks.1", "blocks.2", "blocks.4", "conv2"],
        ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    ),
    "mobilenetv1": (["model.3", "model.5", "model.11", "model.13"],) * 2,
    "shufflenetv1": (["layer1", "layer2", "layer3"],) * 2,
    "shufflenetv2": (["layer1", "layer2", "relu2"], ["layer1", "layer2", "layer3"]),
    "resnet18": (["layer1", "layer2", "layer3", "layer4"],) * 2,
    "mobilenet_v2": (["features.3", "features.6", "features.13", "features.18"],) * 2,
}


def ctx_of(teacher, student, teacher_layers=None, student_layers=None, input_shape=(3, 32, 32)):
    return MethodContext(
        student=student,
        teacher=teacher,
        num_classes=10,
        input_shape=input_shape,
        teacher_layers=teacher_layers,
        student_layers=student_layers,
    )


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    return {name: models.create(name, num_classes=10) for name in FAMILIES}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_rule_picks_the_familys_layers(zoo, name):
    stages, maps = FAMILIES[name]
    model = zoo[name]
    ctx = ctx_of(model, model)
    assert L.stage_ends(model, "x", "teacher") == stages
    assert L.feature_maps(model, "x", "teacher") == maps
    assert L.stage_pairs(ctx, "at", "all") == (maps, maps)
    assert L.stage_pairs(ctx, "sp", "last") == ([maps[-1]], [maps[-1]])
    assert L.stage_pairs(ctx, "fitnet", 1) == ([maps[1]], [maps[1]])
    with pytest.raises(
        ValueError, match=f"fitnet: map 7 does not exist; the teacher has {len(maps)} maps"
    ):
        L.stage_pairs(ctx, "fitnet", 7)
    assert L.deepest_pairs(ctx, "ofd") == (stages, stages)
    assert L.embedding_layers(ctx, "crd") == ("flatten", "flatten")
    assert L.head_stages(ctx, "mhkd", 3) == (stages[:3], stages[:3])
    assert L.flow_pairs(ctx) == ([*stages, "flatten"], [*stages, "flatten"])
    assert L.final_layer(model, "proxy") == "flatten"
    assert L.final_layer(model, "teacher", ["a", "b"]) == "b"


def test_pairs_across_depths(zoo):
    vgg, resnet = zoo["vgg8"], zoo["resnet8"]  # 4 stages against 3
    ctx = ctx_of(vgg, resnet)
    three = ["layer1", "layer2", "layer3"]
    # the benchmark's zip: from the first on, the deeper extra map left out
    assert L.stage_pairs(ctx, "at") == (["block1", "block2", "block3"], three)
    # mdistiller's alignment: from the deepest back
    assert L.deepest_pairs(ctx, "ofd") == (["block1", "block2", "block4"], three)
    # information flow: the same relative depth, then the embeddings
    assert L.flow_pairs(ctx) == (["block1", "block2", "block4", "flatten"], [*three, "flatten"])
    assert L.flow_pairs(ctx_of(resnet, vgg)) == (
        [*three, "flatten"],
        ["block1", "block2", "block4", "flatten"],
    )
    assert L.head_stages(ctx, "mhkd", 3) == (["block0", "block1", "block2"], three)
    with pytest.raises(ValueError, match="mhkd: the student has 3 stages but 4 heads were asked"):
        L.head_stages(ctx, "mhkd", 4)
    assert L.head_stages(ctx_of(resnet, vgg, teacher_layers=["a", "b", "c", "d"]), "mhkd", 4) == (
        ["a", "b", "c", "d"],
        ["block0", "block1", "block2", "block4"],
    )


def test_named_layers_are_used_as_given_and_must_pair():
    t, s = TinyNet(), TinyNet()
    ctx = ctx_of(t, s, ["stage2", "fc"], ["stage3", "flatten"])
    for rule in (
        lambda c: L.stage_pairs(c, "m"),
        lambda c: L.stage_pairs(c, "m", 5),
        lambda c: L.deepest_pairs(c, "m"),
        lambda c: L.head_stages(c, "m", 3),
        L.flow_pairs,
    ):
        assert rule(ctx)[0] == ["stage2", "fc"] and rule(ctx)[1] == ["stage3", "flatten"]
    assert L.embedding_layers(ctx, "m") == ("fc", "flatten")
    # one side named: the other side's default must have the same length
    one_side = ctx_of(t, s, ["stage2", "fc"], None)
    expected = {
        "m": "2 teacher layers \\(stage2, fc\\) and 3 student layers \\(stage1, stage2, stage3\\)",
        "infoflow": "2 teacher layers \\(stage2, fc\\) and 4 student layers \\(stage1, stage2, "
        "stage3, flatten\\)",
    }
    for rule, method in (
        (lambda c: L.stage_pairs(c, "m"), "m"),
        (lambda c: L.head_stages(c, "m", 3), "m"),
        (L.flow_pairs, "infoflow"),
    ):
        with pytest.raises(
            ValueError,
            match=f"^{method} pairs teacher and student layers in "
            f"order, but got {expected[method]}$",
        ):
            rule(one_side)


PLAIN = nn.Sequential(
    nn.Conv2d(3, 4, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(4, 6, 3, 2, 1),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(6, 10),
)


@pytest.mark.parametrize(
    "rule, attr",
    [
        (lambda c: L.stage_pairs(c, "m"), "stage_names"),
        (lambda c: L.stage_pairs(c, "m", "last"), "stage_names"),
        (lambda c: L.deepest_pairs(c, "m"), "stage_names"),
        (lambda c: L.head_stages(c, "m", 3), "stage_names"),
        (lambda c: L.flow_pairs(c, "m"), "stage_names"),
        (lambda c: L.embedding_layers(c, "m"), "embedding_name"),
    ],
)
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_one_message_for_a_model_without_names(rule, attr, role):
    ctx = ctx_of(PLAIN, TinyNet()) if role == "teacher" else ctx_of(TinyNet(), PLAIN)
    with pytest.raises(
        ValueError,
        match=(
            f"^m: the {role} \\(Sequential\\) declares no {attr}; name its layers with "
            f"--{role}-layers \\(or {role}_layers= in the Python API\\)$"
        ),
    ):
        rule(ctx)
    with pytest.raises(ValueError, match="^method 'm' needs a teacher$"):
        rule(MethodContext(student=TinyNet(), teacher=None, num_classes=4))


def test_final_layer_of_a_model_without_names():
    with pytest.raises(
        ValueError, match="the proxy \\(Sequential\\) declares no stage_names; use a zoo model"
    ):
        L.final_layer(PLAIN, "proxy")
    assert L.final_layer(PLAIN, "teacher", ["2", "4"]) == "4"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_probe_gives_a_real_forwards_shapes(zoo, name):
    model = zoo[name]
    names = [*FAMILIES[name][0], *FAMILIES[name][1], model.embedding_name]
    names = list(dict.fromkeys(names))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = L.probe(model, names, (3, 32, 32), last_map=True)
    assert model.training  # the dry run's eval mode is undone
    for key, value in model.state_dict().items():  # BatchNorm statistics untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    with torch.no_grad(), Taps(model, names) as taps:
        model.eval()
        model(torch.randn(3, 3, 32, 32))
        model.train()
        real = {n: taps.outputs[n].shape[1:] for n in names}
    assert list(found.shapes) == names
    assert found.shapes == real
    assert found.last_map == tuple(real[FAMILIES[name][0][-1]][1:])
    assert L.probe(model, names[:1]).last_map is None
    ctx = ctx_of(model, model)
    assert ctx.student_shapes(names) == ctx.teacher_shapes(names) == real


def test_the_probe_of_a_model_without_stage_names():
    bare = bare_convnet()
    found = L.probe(bare, ["1", "5"], (3, 16, 16), last_map=True)
    assert found.shapes == {"1": torch.Size([4, 16, 16]), "5": torch.Size([6])}
    assert found.last_map == (4, 4)  # the deepest map larger than 1x1, not the pooled 1x1

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.skipped = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(
        ValueError, match="layer\\(s\\) 'skipped' of Pair output no tensor in a dry run"
    ):
        L.probe(Pair(), ["conv", "skipped"], (3, 4, 4))


def test_one_message_for_layers_without_spatial_maps():
    t, s = TinyNet(), TinyNet()
    for name in ("at", "fitnet", "vid", "ft", "mhkd"):
        cls = method_class(name)
        ctx = ctx_of(
            t,
            s,
            ["stage2", "fc"] if name != "ft" else ["fc"],
            ["stage2", "stage3"] if name != "ft" else ["stage3"],
            (3, 16, 16),
        )
        role = "student" if name == "mhkd" else "teacher"  # MHKD sizes the student heads first
        bad = "stage3" if name == "mhkd" else "fc"
        if name == "mhkd":
            ctx.teacher_layers, ctx.student_layers = ["stage2", "stage3"], ["stage2", "flatten"]
            bad = "flatten"
        with pytest.raises(
            ValueError,
            match=(
                f"^{name} needs {role} layers with spatial maps \\(outputs N×C×H×W, such as a "
                f"convolution or a stage end\\), but {role} layer '{bad}' gives N×(4|32)$"
            ),
        ):
            cls(ctx, cls.Options())


def test_fsp_and_kdsvd_share_one_equal_channel_check():
    """The one check: spatial maps first (the shared message), then one channel count per pair,
    naming the pair and both shapes."""
    t, s = TinyNet(width=8), TinyNet(width=4)
    for name in ("fsp", "kdsvd"):
        cls = method_class(name)
        ctx = ctx_of(t, s, ["stage1", "stage2"], ["stage1", "stage2"], (3, 16, 16))
        with pytest.raises(ValueError, match=rf"^{name} needs feature maps of equal channel "
                           r"counts; teacher stage1 is \(8, 16, 16\), student stage1 is "
                           r"\(4, 16, 16\)$"):  # fmt: skip
            cls(ctx, cls.Options())
        flat = ctx_of(t, t, ["stage1", "fc"], ["stage1", "fc"], (3, 16, 16))
        with pytest.raises(ValueError, match=f"^{name} needs teacher layers with spatial maps"):
            cls(flat, cls.Options())
        same = ctx_of(t, TinyNet(width=8), ["stage1", "stage2"], ["stage1", "stage2"], (3, 16, 16))
        assert cls(same, cls.Options()).teacher_layers[-2:] == ["stage1", "stage2"]
