"""MHKD: the auxiliary head and its stride rule, the loss terms against hand computations,
gradient routing, heterogeneous pairs, the teacher-head modes, the summary, the CLI flags and
a short run on digits."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from torch import Tensor, nn

from mhkd import api, checkpoint, config, losses, models
from mhkd.data.batch import Batch
from mhkd.heads import AuxHead, head_strides
from mhkd.methods import MethodContext, MethodSet, ModelOutput, TeacherUse, method_class
from mhkd.methods.mhkd import MHKD, MHKDOptions
from mhkd.models.complexity import count_macs
from mhkd.pipelines.builder import fit_prefit
from mhkd.taps import Taps

from conftest import Batches, TinyNet, bare_convnet

SMALL = {"head_width": 16}  # heads of the paper's shape, narrower, so tests stay fast


class OtherNet(nn.Module):
    """A student of another shape: halves the resolution first, other channel counts."""

    stage_names = ("a", "b", "c", "d")

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 5, 3, 2, 1), nn.BatchNorm2d(5), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(5, 7, 3, 1, 1), nn.BatchNorm2d(7), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(7, 9, 3, 2, 1), nn.BatchNorm2d(9), nn.ReLU())
        self.d = nn.Sequential(nn.Conv2d(9, 11, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(11, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.d(self.c(self.b(self.a(x)))).mean(dim=(2, 3)))


def build(method: str = "mhkd", teacher=None, student=None, input_shape=(3, 16, 16), **options):
    torch.manual_seed(0)
    teacher = teacher or TinyNet(width=8)
    student = student or OtherNet()
    ctx = MethodContext(student=student, teacher=teacher, num_classes=4, input_shape=input_shape)
    methods = MethodSet(method, ctx, {method: method_class(method).Options(**SMALL, **options)})
    return methods, teacher, student


def outputs(
    methods: MethodSet,
    teacher: nn.Module,
    student: nn.Module,
    batch: Batch,
    teacher_grad: bool = False,
) -> tuple[ModelOutput, ModelOutput]:
    """Run both nets with taps; ``teacher_grad`` keeps the teacher's graph (a stricter check)."""
    with (
        Taps(teacher, methods.teacher_layers) as t_taps,
        Taps(student, methods.student_layers) as s_taps,
    ):
        with torch.set_grad_enabled(teacher_grad):
            t_out = ModelOutput(teacher(batch.images), t_taps.pop())
        s_out = ModelOutput(student(batch.images), s_taps.pop())
    return s_out, t_out


def make_batch(n: int = 6, size: int = 16, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    return Batch(images, torch.arange(n) % 4, torch.arange(n))


# ---- the head ------------------------------------------------------------------------------
def test_head_has_the_papers_architecture():
    head = AuxHead(in_channels=12, num_classes=100)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    relus = [m for m in head.modules() if isinstance(m, nn.ReLU)]
    fcs = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(12, 256), (256, 256)]
    assert all(
        c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) for c in convs
    )
    assert [n.num_features for n in norms] == [256, 256]
    assert len(relus) == 3  # after each conv, and between the two FC layers
    assert [(f.in_features, f.out_features) for f in fcs] == [(256, 256), (256, 100)]
    assert head(torch.randn(3, 12, 7, 5)).shape == (3, 100)


def test_head_options_change_depth_and_width():
    head = AuxHead(6, 10, convs=3, fcs=1, width=16)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [16, 16, 16]
    assert [(f.in_features, f.out_features) for f in fcs] == [(16, 10)]
    bare = AuxHead(6, 10, convs=0, fcs=1)
    assert [
        (f.in_features, f.out_features) for f in bare.modules() if isinstance(f, nn.Linear)
    ] == [(6, 10)]
    x = torch.randn(2, 6, 4, 4)  # no convs: the head is a linear map of the pooled features
    assert torch.allclose(bare(x), bare.fcs(x.mean(dim=(2, 3))))
    with pytest.raises(ValueError, match="fcs >= 1"):
        AuxHead(6, 10, fcs=0)


def test_stride_rule_halves_each_conv_while_the_map_exceeds_the_last_stage():
    assert head_strides((32, 32), (8, 8)) == (2, 2)  # 32 -> 16 -> 8
    assert head_strides((16, 16), (8, 8)) == (2, 1)  # 16 -> 8, then already at 8
    assert head_strides((8, 8), (8, 8)) == (1, 1)
    assert head_strides((32, 32), (4, 4), convs=3) == (2, 2, 2)
    assert head_strides((9, 9), (4, 4)) == (2, 2)  # 9 -> 5 (padding 1) -> 3
    assert head_strides((8, 32), (8, 8)) == (2, 2)  # either side larger is enough
    assert head_strides((32, 32), (8, 8), stride=1) == (1, 1)  # the paper-literal head
    head = AuxHead(32, 100, strides=head_strides((32, 32), (8, 8)))
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2)]
    assert head.convs(torch.zeros(1, 32, 32, 32)).shape == (1, 256, 8, 8)
    with pytest.raises(ValueError, match="one stride >= 1 per conv"):
        AuxHead(32, 100, strides=(2,))


def hand_head_macs(channels: int, size: int, strides: tuple[int, int], classes: int) -> int:
    """3x3 convs of 256 kernels at the strided sizes, then FC 256->256->classes."""
    macs = 0
    for stride in strides:
        size = (size - 1) // stride + 1
        macs += size * size * 256 * channels * 9
        channels = 256
    return macs + 256 * 256 + 256 * classes


def test_a_cifar_stage1_head_costs_57_mmacs_instead_of_680():
    strided = AuxHead(32, 100, strides=(2, 2))  # WRN-16-2 stage 1: 32 channels, 32x32
    literal = AuxHead(32, 100)
    assert count_macs(strided, (32, 32, 32)) == hand_head_macs(32, 32, (2, 2), 100) == 56_714_240
    assert count_macs(literal, (32, 32, 32)) == hand_head_macs(32, 32, (1, 1), 100) == 679_568_384


#: The paper's Table 1 pairs on 32x32, 100 classes: each network's head strides (by the
#: last-stage rule) and the side of the map each head's convolutions end at.
TABLE1 = {
    "wrn_40_2": ([(2, 2), (2, 1), (1, 1)], [8, 8, 8]),  # stages 32, 16, 8; last 8
    "wrn_16_2": ([(2, 2), (2, 1), (1, 1)], [8, 8, 8]),
    "resnet110": ([(2, 2), (2, 1), (1, 1)], [8, 8, 8]),
    "resnet20": ([(2, 2), (2, 1), (1, 1)], [8, 8, 8]),
    "vgg13": ([(2, 2), (2, 2), (2, 1)], [8, 4, 4]),  # stages 32, 16, 8; last (block4) 4
    "vgg8": ([(2, 2), (2, 2), (2, 1)], [8, 4, 4]),
    "resnet32x4": ([(2, 2), (2, 1), (1, 1)], [8, 8, 8]),
    "shufflenetv2": ([(2, 2), (2, 1), (1, 1)], [4, 4, 4]),  # stages 16, 8, 4; last 4
    "mobilenetv2": ([(2, 2), (2, 2), (2, 1)], [4, 2, 2]),  # stages 16, 8, 4; last (conv2) 2
}


@pytest.mark.parametrize("pair", [("wrn_40_2", "wrn_16_2"), ("resnet110", "resnet20"),
                                  ("vgg13", "vgg8"), ("resnet32x4", "shufflenetv2"),
                                  ("vgg13", "mobilenetv2")])  # fmt: skip
def test_table1_heads_stride_down_to_the_last_stage(pair):
    teacher, student = (models.create(name, num_classes=100) for name in pair)
    ctx = MethodContext(student=student, teacher=teacher, num_classes=100)
    method = MethodSet("mhkd", ctx, {"mhkd": MHKDOptions(head_width=8)}).methods["mhkd"]
    summary = method.summary()
    for role, name, heads in (("teacher", pair[0], method.teacher_heads),
                              ("student", pair[1], method.student_heads)):  # fmt: skip
        strides, sides = TABLE1[name]
        assert [h.strides for h in heads] == strides
        assert summary[f"{role}_head_conv_strides"] == [list(s) for s in strides]
        for head, shape, side in zip(heads, method.head_inputs[role], sides, strict=True):
            x = torch.zeros(2, *shape)
            assert head.convs(x).shape == (2, 8, side, side)
            assert head(x).shape == (2, 100)


def test_stride_one_heads_stay_selectable():
    teacher, student = (models.create(n, num_classes=100) for n in ("wrn_40_2", "wrn_16_2"))
    ctx = MethodContext(student=student, teacher=teacher, num_classes=100)
    methods = MethodSet("mhkd", ctx, {"mhkd": MHKDOptions(head_stride=1)})
    method = methods.methods["mhkd"]
    assert all(h.strides == (1, 1) for h in (*method.teacher_heads, *method.student_heads))
    summary = method.summary()
    assert summary["head_stride"] == 1
    assert summary["student_head_macs"] == sum(
        hand_head_macs(c, s, (1, 1), 100) for c, s in ((32, 32), (64, 16), (128, 8))
    )
    default = MethodSet("mhkd", ctx).methods["mhkd"].summary()
    assert default["head_stride"] is None  # the last-stage rule
    assert default["student_head_macs"] == sum(
        hand_head_macs(c, s, st, 100) for c, s, st in ((32, 32, (2, 2)), (64, 16, (2, 1)),
                                                       (128, 8, (1, 1))))  # fmt: skip
    assert default["student_head_macs"] < summary["student_head_macs"] / 5
    with pytest.raises(ValueError, match="head_stride must be at least 1"):
        MHKDOptions(head_stride=0)


def test_user_models_heads_follow_their_own_last_map():
    # TinyNet (conftest) names its stages: 16, 8, 4 on 16x16 inputs; the last is 4x4.
    methods, _, _ = build(student=TinyNet(width=4))
    method = methods.methods["mhkd"]
    assert [h.strides for h in method.teacher_heads] == [(2, 2), (2, 1), (1, 1)]
    # A model without stage_names: its last map is the deepest one larger than 1x1 that any
    # module outputs (here the 4x4 of the second conv), whichever layers the heads tap.
    bare = bare_convnet()
    ctx = MethodContext(student=bare, teacher=TinyNet(width=4), num_classes=4,
                        input_shape=(3, 16, 16), teacher_layers=["stage1"],
                        student_layers=["1"])  # fmt: skip
    method = MHKD(ctx, MHKDOptions(**SMALL))
    assert [h.strides for h in method.student_heads] == [(2, 2)]  # 16 -> 8 -> 4
    assert [h.strides for h in method.teacher_heads] == [(2, 2)]  # TinyNet's stage3 is 4x4
    logits = method.student_heads[0](torch.zeros(2, 4, 16, 16))
    assert logits.shape == (2, 4)


# ---- the losses, against hand computations ---------------------------------------------------
S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
T = [[2.0, 0.0, 1.0], [0.5, 0.5, -2.0]]
S2 = [[0.3, -0.2, 0.1], [2.0, 1.0, 0.0]]
T2 = [[-1.0, 1.0, 0.0], [0.0, 3.0, 1.0]]
Y = [1, 2]


def hand_softmax(row: list[float], tau: float = 1.0) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def hand_ohkd(s, t, y, tau, alpha) -> float:
    kl = ce = 0.0
    for s_row, t_row, label in zip(s, t, y, strict=True):
        p, q = hand_softmax(t_row, tau), hand_softmax(s_row, tau)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
        ce += -math.log(hand_softmax(s_row)[label])
    n = len(y)
    return alpha * kl / n * tau**2 + (1 - alpha) * ce / n


def test_one_head_loss_matches_a_hand_computation():
    got = losses.ohkd(torch.tensor(S), torch.tensor(T), torch.tensor(Y), temperature=2.0, alpha=0.3)
    assert got.item() == pytest.approx(hand_ohkd(S, T, Y, 2.0, 0.3), rel=1e-5)


def test_multi_head_loss_is_beta_times_the_sum_of_one_head_losses():
    got = losses.multi_head_kd(
        [torch.tensor(S), torch.tensor(S2)],
        [torch.tensor(T), torch.tensor(T2)],
        torch.tensor(Y),
        temperature=4.0,
        alpha=0.9,
        beta=5.0,
    )
    want = 5.0 * (hand_ohkd(S, T, Y, 4.0, 0.9) + hand_ohkd(S2, T2, Y, 4.0, 0.9))
    assert got.item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="same positive number"):
        losses.multi_head_kd([torch.tensor(S)], [], torch.tensor(Y))


def test_teacher_head_loss_is_the_sum_of_cross_entropies():
    got = losses.heads_ce([torch.tensor(T), torch.tensor(T2)], torch.tensor(Y))
    want = sum(
        -math.log(hand_softmax(row)[label]) / 2
        for rows in (T, T2)
        for row, label in zip(rows, Y, strict=True)
    )
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_one_head_loss_sends_no_gradient_into_the_teacher_head():
    s, t = torch.tensor(S, requires_grad=True), torch.tensor(T, requires_grad=True)
    losses.ohkd(s, t, torch.tensor(Y)).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


# ---- the method -----------------------------------------------------------------------------
def test_defaults_pair_the_first_three_stages_and_total_matches_the_paper():
    methods, teacher, student = build()
    method = methods.methods["mhkd"]
    assert methods.names == ["kd", "mhkd"]
    assert method.teacher_layers == ["stage1", "stage2", "stage3"]
    assert method.student_layers == ["a", "b", "c"]  # a fourth stage gets no head
    assert (method.temperature, method.alpha, method.beta) == (4.0, 0.9, 0.5)
    assert methods.weights == {"ce": 0.1, "kd": 0.9, "mhkd": 1.0, "mhkd_teacher_ce": 1.0}

    batch = make_batch()
    s_out, t_out = outputs(methods, teacher, student, batch)
    terms = methods(s_out, t_out, batch)
    # The paper: β·Σ_j OHKD_j + α·KL·τ² + (1 − α)·CE on the final logits, α = 0.9.
    s_heads = [
        method.student_heads[j](s_out.features[n]) for j, n in enumerate(method.student_layers)
    ]
    t_heads = [
        method.teacher_heads[j](t_out.features[n]) for j, n in enumerate(method.teacher_layers)
    ]
    labels = batch.labels.tolist()
    paper = 0.5 * sum(
        hand_ohkd(s.tolist(), t.tolist(), labels, 4.0, 0.9)
        for s, t in zip(s_heads, t_heads, strict=True)
    )
    paper += hand_ohkd(s_out.logits.tolist(), t_out.logits.tolist(), labels, 4.0, 0.9)
    terms["ce"] = torch.nn.functional.cross_entropy(s_out.logits, batch.labels)
    student_total = sum(methods.weights[k] * v for k, v in terms.items() if k != "mhkd_teacher_ce")
    assert student_total.item() == pytest.approx(paper, rel=1e-4)


def test_gradients_reach_the_student_and_its_heads_never_the_teacher():
    methods, teacher, student = build()
    method = methods.methods["mhkd"]
    batch = make_batch()
    s_out, t_out = outputs(methods, teacher, student, batch, teacher_grad=True)
    # The teacher's features keep their graph; its logits are kd's business, not MHKD's.
    t_out = ModelOutput(t_out.logits.detach(), t_out.features)
    assert all(f.requires_grad for f in t_out.features.values())
    terms = methods(s_out, t_out, batch)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for heads in (method.student_heads, method.teacher_heads):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())


def test_teacher_heads_learn_only_from_their_own_cross_entropy():
    methods, teacher, student = build()
    method = methods.methods["mhkd"]
    batch = make_batch()
    s_out, t_out = outputs(methods, teacher, student, batch)
    terms = methods(s_out, t_out, batch)
    t_params = list(method.teacher_heads.parameters())
    only_ce = torch.autograd.grad(terms["mhkd_teacher_ce"], t_params, retain_graph=True)
    everything = torch.autograd.grad(
        terms["mhkd_teacher_ce"] + 100 * terms["mhkd"] + terms["kd"], t_params, retain_graph=True
    )
    assert all(torch.equal(a, b) for a, b in zip(only_ce, everything, strict=True))
    # ... and the teacher heads' CE touches nothing of the student.
    s_params = [*student.parameters(), *method.student_heads.parameters()]
    assert all(
        g is None
        for g in torch.autograd.grad(terms["mhkd_teacher_ce"], s_params, allow_unused=True)
    )


@pytest.mark.parametrize("pair", [("vgg13", "mobilenetv2"), ("resnet32x4", "shufflenetv2")])
def test_heterogeneous_zoo_pairs_train(pair):
    torch.manual_seed(0)
    teacher, student = (models.create(name, num_classes=4) for name in pair)
    methods, _, _ = build(teacher=teacher.eval(), student=student, input_shape=(3, 32, 32))
    method = methods.methods["mhkd"]
    t_ch = [h.convs[0].in_channels for h in method.teacher_heads]
    s_ch = [h.convs[0].in_channels for h in method.student_heads]
    assert t_ch != s_ch  # the heads sized themselves from each network's own stages
    batch = make_batch(n=2, size=32)
    s_out, t_out = outputs(methods, teacher, student, batch)
    sizes = {tuple(f.shape[2:]) for f in (*s_out.features.values(), *t_out.features.values())}
    assert len(sizes) > 3  # spatial sizes differ between the paired stages
    terms = methods(s_out, t_out, batch)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(p.grad is not None for p in method.student_heads.parameters())


def test_user_layers_heads_selection_and_bad_input():
    teacher = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, 2, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    with pytest.raises(ValueError, match="no stage_names"):
        build(teacher=teacher)
    ctx = MethodContext(
        student=OtherNet(),
        teacher=teacher,
        num_classes=4,
        input_shape=(3, 8, 8),
        teacher_layers=["1", "2"],
        student_layers=["b", "c"],
    )
    method = MHKD(ctx, MHKDOptions(heads=[2], **SMALL))
    assert (method.teacher_layers, method.student_layers) == (["2"], ["c"])
    ctx.student_layers = ["a", "b", "c"]
    with pytest.raises(ValueError, match="2 teacher layers .* 3 student layers"):
        MHKD(ctx, MHKDOptions())
    ctx.teacher_layers, ctx.student_layers = ["5"], ["d"]
    with pytest.raises(ValueError, match="mhkd needs teacher layers with spatial maps"):
        MHKD(ctx, MHKDOptions())
    zoo_ctx = MethodContext(student=OtherNet(), teacher=TinyNet(), num_classes=4)
    with pytest.raises(ValueError, match="distinct numbers from 1 to 3"):
        MHKD(zoo_ctx, MHKDOptions(heads=[1, 4]))
    with pytest.raises(ValueError, match="comma-separated"):
        MHKD(zoo_ctx, MHKDOptions(heads="1;2"))
    with pytest.raises(ValueError, match="exactly one head"):
        build("ohkd", heads=[2, 3])
    with pytest.raises(ValueError, match="head mode"):
        build(head_mode="sometimes")


def test_ohkd_uses_one_head_and_its_own_terms():
    methods, teacher, student = build("ohkd", heads=[3])
    method = methods.methods["ohkd"]
    assert (method.teacher_layers, method.student_layers) == (["stage3"], ["c"])
    assert len(method.student_heads) == len(method.teacher_heads) == 1
    batch = make_batch()
    terms = methods(*outputs(methods, teacher, student, batch), batch)
    assert set(terms) == {"kd", "ohkd", "ohkd_teacher_ce"}
    assert build("ohkd")[0].methods["ohkd"].heads == (1,)


def test_the_student_carries_no_head_parameters():
    student = OtherNet()
    keys = set(student.state_dict())
    methods, teacher, _ = build(student=student)
    batch = make_batch()
    methods(*outputs(methods, teacher, student, batch), batch)
    assert set(student.state_dict()) == keys
    assert all(
        k.startswith(("student_heads.", "teacher_heads."))
        for k in methods.methods["mhkd"].state_dict()
    )


def test_prefit_fits_the_teacher_heads_then_fixes_them():
    methods, teacher, student = build(head_mode="prefit", prefit_epochs=3, prefit_lr=0.1)
    method = methods.methods["mhkd"]
    assert not any(p.requires_grad for p in method.teacher_heads.parameters())
    before = {k: v.clone() for k, v in method.teacher_heads.state_dict().items()}
    loader = Batches(make_batch(seed=s) for s in range(4))
    (prefit,) = methods.prefits()
    assert prefit.module is method.teacher_heads and prefit.epochs == 3 and prefit.lr == 0.1
    fit_prefit(prefit, teacher.eval(), loader, loader)
    after = method.teacher_heads.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert len(method.summary()["teacher_head_prefit_train_acc"]) == 3
    assert not any(p.requires_grad for p in method.teacher_heads.parameters())

    methods.train()
    assert not method.teacher_heads.training and method.student_heads.training
    fixed = {k: v.clone() for k, v in after.items()}
    batch = make_batch(seed=9)
    terms = methods(*outputs(methods, teacher, student, batch), batch)
    assert set(terms) == {"kd", "mhkd"}  # no teacher-head CE once they are fixed
    sum(terms.values()).backward()
    assert all(p.grad is None for p in method.teacher_heads.parameters())
    assert all(torch.equal(fixed[k], v) for k, v in method.teacher_heads.state_dict().items())
    # Fixed heads read per-sample outputs of the frozen teacher only, and keep no graph.
    assert method.teacher_use == TeacherUse.OUTPUTS and methods.teacher_use == TeacherUse.OUTPUTS
    assert build()[0].teacher_use == TeacherUse.FEATURES  # joint: live features
    _, t_out = outputs(methods, teacher, student, batch)
    with torch.enable_grad():
        assert not any(z.requires_grad for z in method.teacher_head_logits(t_out.features))


def test_prefit_forward_uses_served_teacher_head_logits_else_computes_them():
    methods, teacher, student = build(head_mode="prefit", prefit_epochs=0)
    method = methods.methods["mhkd"]
    batch = make_batch()
    s_out, t_out = outputs(methods, teacher, student, batch)
    served = methods.cached_teacher_outputs(t_out)
    assert list(served) == ["mhkd.head1", "mhkd.head2", "mhkd.head3"]
    fresh = method.teacher_head_logits(t_out.features)
    assert all(torch.equal(served[k], z) for k, z in zip(served, fresh, strict=True))
    computed = methods(s_out, t_out, batch)
    # Served alone (what a teacher cache returns: no layer features) gives the same terms ...
    cached = methods(s_out, ModelOutput(t_out.logits, served), batch)
    assert torch.equal(computed["mhkd"], cached["mhkd"])
    # ... and served outputs win over features: the method does not recompute them.
    shifted = {k: 3.0 * z for k, z in served.items()}
    moved = methods(s_out, ModelOutput(t_out.logits, {**t_out.features, **shifted}), batch)
    assert not torch.allclose(moved["mhkd"], computed["mhkd"])
    with pytest.raises(ValueError, match="neither the teacher heads' logits"):
        methods(s_out, ModelOutput(t_out.logits, {}), batch)
    assert build()[0].cached_teacher_outputs(t_out) == {}  # joint heads train: nothing to cache


def test_summary_reports_head_params_and_macs_and_times_nothing(monkeypatch):
    methods, teacher, student = build()
    method = methods.methods["mhkd"]
    batch = make_batch()
    methods(*outputs(methods, teacher, student, batch), batch)
    stats = {k: v.clone() for k, v in student.state_dict().items()}

    def no_clock() -> float:
        raise AssertionError("summary() reads a clock")

    monkeypatch.setattr("time.perf_counter", no_clock)
    monkeypatch.setattr("time.time", no_clock)
    summary = method.summary()
    assert not any(word in key for key in summary for word in ("time", "second", "overhead"))
    assert summary["head_params"] == sum(p.numel() for p in method.parameters())
    assert summary["head_params"] == summary["student_head_params"] + summary["teacher_head_params"]

    # Student heads on OtherNet's a, b, c (5ch 8x8, 7ch 8x8, 9ch 4x4; last map 2x2), width 16.
    def hand(c: int, side: int, strides: tuple[int, ...]) -> int:
        macs = 0
        for stride in strides:
            side = (side - 1) // stride + 1
            macs, c = macs + side * side * 16 * c * 9, 16
        return macs + 16 * 16 + 16 * 4

    assert summary["student_head_conv_strides"] == [[2, 2], [2, 2], [2, 1]]
    assert summary["student_head_macs"] == hand(5, 8, (2, 2)) + hand(7, 8, (2, 2)) + hand(
        9, 4, (2, 1)
    )
    assert summary["head_macs"] == summary["student_head_macs"] + summary["teacher_head_macs"]
    assert all(torch.equal(stats[k], v) for k, v in student.state_dict().items())
    assert all(p.grad is None for p in student.parameters())


def test_option_flags_reach_the_method():
    parser = argparse.ArgumentParser()
    config.add_method_flags(parser)
    args = parser.parse_args(["--mhkd.heads", "2,3", "--mhkd.head-mode", "prefit",
                              "--mhkd.beta", "5", "--mhkd.head-stride", "1"])  # fmt: skip
    options = config.resolve_options("mhkd", config.overrides(args)["options"])["mhkd"]
    assert (options.heads, options.head_mode, options.beta) == ([2, 3], "prefit", 5.0)
    assert (options.head_stride, options.alpha) == (1, 0.9)  # absent flags keep the defaults
    method = MHKD(MethodContext(student=OtherNet(), teacher=TinyNet(), num_classes=4,
                                input_shape=(3, 16, 16)), options)  # fmt: skip
    assert method.heads == (2, 3) and all(h.strides == (1, 1) for h in method.student_heads)
    with pytest.raises(SystemExit):
        parser.parse_args(["--mhkd.heads", "two"])


def test_a_short_mhkd_run_on_digits_learns_and_deploys_a_bare_student(tmp_path):
    fast = {
        "batch_size": 32,
        "lr": 0.05,
        "schedule": "cosine",
        "quiet": True,
        "precision": "fp32",
        "device": "cpu",
        "image_size": 16,  # digits at 16 px: a stage-1 head at 32 px costs more than the student
        "channels_last": "off",  # 3 epochs are chaotic: the layout's rounding moves them by ±10
    }
    torch.manual_seed(0)
    teacher = TinyNet(num_classes=10, width=16)
    api.train(teacher, "digits", epochs=3, **fast)  # trains the module in place
    summary = api.distill(
        teacher,
        TinyNet(num_classes=10),
        "digits",
        method="mhkd",  # the default heads: one on each of the three stages
        options={"mhkd": SMALL},
        out=tmp_path / "s",
        epochs=3,
        **fast,
    )
    assert summary["best_test_acc"] > 25  # chance is 10 %; 34.7 measured
    metrics = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").open()]
    first, last_epoch = metrics[0], metrics[-1]
    for term in ("ce", "kd", "mhkd_teacher_ce"):  # student and teacher heads (joint mode) learn
        assert last_epoch[f"loss_{term}"] < 0.9 * first[f"loss_{term}"], term
    # The step's timing left the method with the renovation (a benchmark measures it now).
    assert summary["head_params"] > 0 and "head_step_overhead" not in summary
    assert summary["params"] == sum(p.numel() for p in TinyNet(num_classes=10).parameters())
    best = checkpoint.load(tmp_path / "s" / "checkpoints" / "best.pt")
    TinyNet(num_classes=10).load_state_dict(best["model"])  # strict: the bare student
    last = torch.load(tmp_path / "s" / "checkpoints" / "last.pt", weights_only=True)
    method_state = last["step"]["method"]
    for j in range(3):  # all three heads trained beside the student, and none is deployed
        assert any(k.startswith(f"methods.mhkd.student_heads.{j}.") for k in method_state)
    assert not any("head" in k for k in best["model"])


def test_every_mhkd_recipe_reads_and_its_options_reach_the_method():
    from pathlib import Path

    files = sorted((Path(__file__).parents[1] / "recipes" / "mhkd").glob("*.yaml"))
    assert len(files) == 16  # Table 1 (5), Table 3 (5), head ablation (2 pairs × 3 heads)
    for path in files:
        tree, notes = config.read_recipe(path)
        run = config.build(tree)
        name = run.method
        assert name in ("mhkd", "ohkd") and set(run.options) == {"kd", name}, path.name
        options = run.options[name]
        assert isinstance(options, method_class(name).Options)
        svhn = run.data.name == "svhn"
        assert options.beta == (5.0 if svhn else 0.5), path.name
        assert (options.temperature, options.alpha) == (4.0, 0.9)
        assert run.options["kd"].temperature == 4.0
        if name == "ohkd":  # the head ablation: one head pair, by stage position
            assert len(options.heads) == 1 and path.name.endswith(f"head{options.heads[0]}.yaml")
        else:
            assert options.heads is None  # all heads
        if svhn:
            assert (run.optim.batch_size, run.optim.lr, run.schedule.epochs) == (200, 0.001, 150)
            assert run.schedule.milestones == [80, 110, 135]
        else:
            lr = 0.01 if run.models.student in ("mobilenetv2", "shufflenetv2") else 0.05
            assert (run.optim.batch_size, run.optim.lr, run.schedule.epochs) == (64, lr, 240)
            assert run.schedule.milestones == [150, 180, 210]
        assert notes["paper"]["source"], path.name


def test_a_prefit_run_fits_the_heads_as_a_loop_of_its_own_before_epoch_one(
    tmp_path, tiny_data, fast, capsys
):
    """The builder runs the pre-fit through the epoch loop (its epochs logged, its loss finite,
    heads' test accuracy evaluated), then the run trains with the heads fixed."""
    teacher = TinyNet(width=8).eval()
    options = {"mhkd": {"head_mode": "prefit", "head_width": 8, "prefit_epochs": 2,
                        "head_stages": 2}}  # fmt: skip
    summary = api.distill(teacher, TinyNet(), tiny_data, method="mhkd", options=options,
                          epochs=1, out=tmp_path / "run", **{**fast, "quiet": False})  # fmt: skip
    log = capsys.readouterr().err
    assert "mhkd teacher heads: pre-fit epoch 1/2" in log and "pre-fit epoch 2/2" in log
    assert log.index("pre-fit epoch 2/2") < log.index("epoch 1/1 ")
    accuracies = summary["teacher_head_prefit_train_acc"]
    assert len(accuracies) == 2 and all(0 <= a <= 100 for a in accuracies)
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    saved = state["step"]["method"]
    assert any(k.startswith("methods.mhkd.teacher_heads.") for k in saved)  # kept on resume
