"""The baseline methods: they train, their gradients go where they should, they compose, and
CRD's memory banks survive checkpoints and stay identical across data-parallel ranks."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import signal
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from mhkd import config, losses
from mhkd.data.batch import Batch
from mhkd.losses.crd import ContrastMemory
from mhkd.methods import MethodContext, MethodSet, ModelOutput, TeacherUse
from mhkd.methods.base import method_class
from mhkd.pipelines.builder import build_run
from mhkd.preemption import RunInterrupted
from mhkd.taps import Taps

BASELINES = ("fitnet", "at", "sp", "cc", "rkd", "pkt", "crd", "dkd")
NUM_SAMPLES = 64


class SmallCNN(nn.Module):
    """Three conv stages, global pooling and a linear classifier, with the zoo's tap names."""

    stage_names = ("stage1", "stage2", "stage3")
    embedding_name = "flatten"
    classifier_name = "fc"

    def __init__(self, width: int, strides=(1, 2, 2), num_classes: int = 4):
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        c_in = 3
        for i, (c_out, stride) in enumerate(zip(widths, strides, strict=True), start=1):
            block = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
            )
            setattr(self, f"stage{i}", block)
            c_in = c_out
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.flatten(self.pool(x)))


def make_pair(student_kind: str = "same"):
    torch.manual_seed(0)
    teacher = SmallCNN(12).eval()
    # "other": the student's stages end at other spatial sizes (8, 4, 4 vs 16, 8, 4)
    strides = (1, 2, 2) if student_kind == "same" else (2, 2, 1)
    student = SmallCNN(6, strides)
    return teacher, student


def make_batch(seed: int = 0, size: int = 32) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 16, 16, generator=g)
    labels = torch.randint(0, 4, (size,), generator=g)
    indices = torch.randperm(NUM_SAMPLES, generator=g)[:size]
    return Batch(images, labels, indices)


def context(teacher, student, **kwargs) -> MethodContext:
    return MethodContext(
        student=student,
        teacher=teacher,
        num_classes=4,
        num_samples=NUM_SAMPLES,
        input_shape=(3, 16, 16),
        **kwargs,
    )


def outputs(methods: MethodSet, teacher, student, batch: Batch, teacher_graph: bool = False):
    """One step's ModelOutputs; the teacher runs without a graph, as in the training loop,
    unless ``teacher_graph`` (then only the methods themselves can keep it out of a gradient)."""
    with (
        Taps(teacher, methods.teacher_layers) as t_taps,
        Taps(student, methods.student_layers) as s_taps,
    ):
        with torch.set_grad_enabled(teacher_graph):
            t_out = ModelOutput(teacher(batch.images), t_taps.pop())
        s_out = ModelOutput(student(batch.images), s_taps.pop())
    return s_out, t_out


def sgd_on_one_batch(methods, teacher, student, batch, extras, steps: int = 8) -> list[dict]:
    """A few SGD steps of student and extras on one batch (teacher without a graph, as in
    training); every step's terms."""
    optimizer = torch.optim.SGD([*student.parameters(), *extras], lr=0.02, momentum=0.9)
    history = []
    for _ in range(steps):
        s_out, t_out = outputs(methods, teacher, student, batch)
        terms = methods(s_out, t_out, batch)
        loss = total_loss(methods, s_out, terms, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert all(p.grad is None for p in teacher.parameters())
        history.append({k: v.item() for k, v in terms.items()})
    return history


def total_loss(methods: MethodSet, s_out: ModelOutput, terms: dict, batch: Batch):
    terms = {"ce": F.cross_entropy(s_out.logits, batch.labels), **terms}
    return sum(methods.weights[k] * v for k, v in terms.items())


@pytest.mark.parametrize("student_kind", ["same", "other"])
@pytest.mark.parametrize("name", BASELINES)
def test_method_trains_and_its_gradients_skip_the_teacher(name, student_kind):
    teacher, student = make_pair(student_kind)
    methods = MethodSet(name, context(teacher, student))
    batch = make_batch()

    # gradients of the method's own term: student and extras yes, teacher never
    s_out, t_out = outputs(methods, teacher, student, batch, teacher_graph=True)
    own = methods(s_out, t_out, batch)[name]
    assert own.dim() == 0 and torch.isfinite(own)
    extras = [p for p in methods.parameters() if p.requires_grad]
    teacher_params = list(teacher.parameters())
    grads = torch.autograd.grad(
        own, [*student.parameters(), *extras, *teacher_params], allow_unused=True
    )
    n_s = len(list(student.parameters()))
    student_grads, extra_grads = grads[:n_s], grads[n_s : n_s + len(extras)]
    teacher_grads = grads[n_s + len(extras) :]
    assert all(g is None or not g.any() for g in teacher_grads), "gradient reached the teacher"
    assert any(g is not None and g.abs().sum() > 0 for g in student_grads)
    assert all(g is not None and g.abs().sum() > 0 for g in extra_grads)
    if name in ("fitnet", "cc", "crd"):
        assert extras, f"{name} has trainable extras"

    # a few SGD steps on one batch (teacher without a graph, as in training)
    history = sgd_on_one_batch(methods, teacher, student, batch, extras)
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    if name != "crd":  # CRD draws new negatives and moves its banks every step: noisy
        assert history[-1][name] < history[0][name], [h[name] for h in history]


DEFAULT_WEIGHTS = {
    "fitnet": {"ce": 0.1, "kd": 0.9, "fitnet": 100.0},
    "at": {"ce": 1.0, "at": 1000.0},
    "sp": {"ce": 1.0, "sp": 3000.0},
    "cc": {"ce": 0.1, "kd": 0.9, "cc": 0.02},
    "rkd": {"ce": 0.1, "kd": 0.9, "rkd": 1.0},
    "pkt": {"ce": 1.0, "pkt": 30000.0},
    "crd": {"ce": 0.1, "kd": 0.9, "crd": 0.8},
    "dkd": {"ce": 1.0, "dkd": 1.0},
    "kd+at": {"ce": 0.1, "kd": 0.9, "at": 1000.0},
    "crd+kd": {"ce": 0.1, "kd": 0.9, "crd": 0.8},
    "fitnet+at": {"ce": 0.1, "kd": 0.9, "fitnet": 100.0, "at": 1000.0},
}


@pytest.mark.parametrize("spec", sorted(DEFAULT_WEIGHTS))
def test_default_weights_follow_the_benchmark(spec):
    teacher, student = make_pair()
    methods = MethodSet(spec, context(teacher, student))
    assert methods.weights == DEFAULT_WEIGHTS[spec]
    s_out, t_out = outputs(methods, teacher, student, make_batch())
    terms = methods(s_out, t_out, make_batch())
    assert set(terms) == set(DEFAULT_WEIGHTS[spec]) - {"ce"}


def test_kd_plus_at_sums_the_right_terms():
    teacher, student = make_pair("other")
    methods = MethodSet("kd+at", context(teacher, student))
    assert methods.names == ["kd", "at"]
    batch = make_batch()
    s_out, t_out = outputs(methods, teacher, student, batch)
    terms = methods(s_out, t_out, batch)
    kd = losses.kd(s_out.logits, t_out.logits, 4.0)
    at = sum(
        losses.at(s_out.features[s], t_out.features[t])
        for s, t in zip(student.stage_names, teacher.stage_names, strict=True)
    )
    torch.testing.assert_close(terms["kd"], kd)
    torch.testing.assert_close(terms["at"], at)
    ce = F.cross_entropy(s_out.logits, batch.labels)
    torch.testing.assert_close(
        total_loss(methods, s_out, terms, batch), 0.1 * ce + 0.9 * kd + 1000.0 * at
    )


def test_crd_plus_kd_sums_the_right_terms():
    teacher, student = make_pair()
    methods = MethodSet("crd+kd", context(teacher, student))
    assert methods.names == ["kd", "crd"]  # kd once, though crd also brings it
    alone = MethodSet("crd", context(teacher, student))
    alone.load_state_dict(methods.state_dict())  # same embeddings and banks
    batch = make_batch()
    s_out, t_out = outputs(methods, teacher, student, batch)
    torch.manual_seed(7)
    terms = methods(s_out, t_out, batch)
    assert set(terms) == {"kd", "crd"}
    torch.manual_seed(7)
    crd = alone(s_out, t_out, batch)["crd"]
    torch.testing.assert_close(terms["crd"], crd)
    ce = F.cross_entropy(s_out.logits, batch.labels)
    expected = 0.1 * ce + 0.9 * losses.kd(s_out.logits, t_out.logits) + 0.8 * crd
    torch.testing.assert_close(total_loss(methods, s_out, terms, batch), expected)


def test_dkd_warms_up_over_twenty_epochs():
    teacher, student = make_pair()
    methods = MethodSet("dkd", context(teacher, student))
    dkd = methods.methods["dkd"]
    assert methods.teacher_use == TeacherUse.OUTPUTS  # logits only: a teacher cache serves it
    batch = make_batch()
    s_out, t_out = outputs(methods, teacher, student, batch)
    full = losses.dkd(s_out.logits, t_out.logits, batch.labels, 1.0, 8.0, 4.0)
    for epoch, factor in [(0, 0.05), (9, 0.5), (19, 1.0), (100, 1.0)]:
        assert methods.start_epoch(epoch) == {"dkd_warmup": pytest.approx(factor)}
        torch.testing.assert_close(methods(s_out, t_out, batch)["dkd"], factor * full)
    assert dkd.warmup == 1.0


def test_user_named_layers_replace_the_zoo_defaults():
    teacher, student = make_pair()
    ctx = context(
        teacher, student, teacher_layers=["stage1", "stage3"], student_layers=["stage1", "stage3"]
    )
    at = MethodSet("at", ctx)
    assert at.teacher_layers == ["stage1", "stage3"]
    fitnet = MethodSet("fitnet", ctx)
    assert len(fitnet.methods["fitnet"].regressors) == 2
    crd = MethodSet("crd", ctx)  # embedding methods take the last named layer, pooled
    assert crd.teacher_layers == ["stage3"]
    s_out, t_out = outputs(crd, teacher, student, make_batch())
    assert torch.isfinite(crd(s_out, t_out, make_batch())["crd"])
    with pytest.raises(ValueError, match="pairs teacher and student layers"):
        MethodSet(
            "at",
            context(
                teacher, student, teacher_layers=["stage1"], student_layers=["stage1", "stage2"]
            ),
        )


#: (teacher, student) -> RepDistiller's feat lists as zoo layer names: feat[1:-1] for AT,
#: feat[-2] for SP, feat[2] for FitNet (``model(x, is_feat=True, preact=False)`` in models/).
BENCHMARK_TAPS = {
    ("wrn_40_2", "wrn_16_2"): (["block1", "block2", "block3"], ["block1", "block2", "block3"]),
    ("vgg13", "vgg8"): ([f"block{i}" for i in range(1, 5)], [f"block{i}" for i in range(1, 5)]),
    ("vgg13", "mobilenetv2"): (
        [f"block{i}" for i in range(1, 5)],
        ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    ),
    ("resnet32x4", "shufflenetv2"): (
        ["layer1", "layer2", "layer3"],
        ["layer1", "layer2", "layer3"],
    ),
    ("resnet110", "resnet20"): (["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"]),
}


@pytest.mark.parametrize("pair", sorted(BENCHMARK_TAPS))
def test_zoo_pairs_tap_the_benchmark_feature_lists(pair):
    from mhkd import models

    teacher, student = (models.create(name, num_classes=4) for name in pair)
    ctx = MethodContext(student=student, teacher=teacher, num_classes=4)
    t_maps, s_maps = BENCHMARK_TAPS[pair]
    methods = {n: method_class(n)(ctx, method_class(n).Options()) for n in ("at", "sp", "fitnet")}
    assert methods["at"].teacher_layers == t_maps and methods["at"].student_layers == s_maps
    assert (methods["sp"].teacher_layers, methods["sp"].student_layers) == (
        [t_maps[-1]],
        [s_maps[-1]],
    )
    assert (methods["fitnet"].teacher_layers, methods["fitnet"].student_layers) == (
        [t_maps[1]],
        [s_maps[1]],
    )
    for name in ("cc", "rkd", "pkt"):  # feat[-1]: the pooled penultimate vector
        method = method_class(name)(ctx, method_class(name).Options())
        assert method.teacher_layers == ["flatten"] and method.student_layers == ["flatten"]


def test_a_model_without_tap_names_asks_for_layers():
    teacher, _ = make_pair()
    plain = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)
    )
    with pytest.raises(ValueError, match="--student-layers"):
        MethodSet("at", context(teacher, plain))
    with pytest.raises(ValueError, match="--student-layers"):
        MethodSet("crd", context(teacher, plain))


def test_method_flags_reach_the_options_of_their_own_method():
    parser = argparse.ArgumentParser()
    config.add_method_flags(parser)  # raises on any clash: every flag is --METHOD.FIELD
    flags = {o for a in parser._actions for o in a.option_strings}
    for name in (*BASELINES, "kd"):
        fields = dataclasses.fields(method_class(name).Options)
        assert {f"--{name}.{f.name.replace('_', '-')}" for f in fields} <= flags, name
    assert "--temperature" not in flags and "--dkd-beta" not in flags  # the old flat names
    args = parser.parse_args(["--method", "crd+dkd", "--dkd.beta", "6", "--dkd.temperature",
                              "2", "--kd.temperature", "3", "--crd.negatives", "100"])  # fmt: skip
    tree = config.overrides(args)
    assert tree["method"] == "crd+dkd"
    options = config.resolve_options(tree["method"], tree["options"])
    assert set(options) == {"kd", "crd", "dkd"}  # crd brings its companion kd
    assert (options["dkd"].beta, options["dkd"].temperature) == (6.0, 2.0)
    assert options["kd"].temperature == 3.0 and options["crd"].negatives == 100
    assert options["dkd"].alpha == 1.0 and options["crd"].nce_temperature == 0.07  # defaults
    teacher, student = make_pair()
    ctx = MethodContext(student, teacher, num_classes=4, num_samples=256, input_shape=(3, 16, 16))
    methods = MethodSet("crd+dkd", ctx, options)
    dkd = methods.methods["dkd"]
    assert (dkd.beta, dkd.temperature) == (6.0, 2.0)
    memory = methods.methods["crd"].memory
    assert (memory.negatives, memory.temperature) == (100, 0.07)
    batch = make_batch()
    s_out, t_out = outputs(methods, teacher, student, batch)
    methods.start_epoch(100)  # past the warm-up
    expected = losses.dkd(s_out.logits, t_out.logits, batch.labels, 1.0, 6.0, 2.0)
    torch.testing.assert_close(methods(s_out, t_out, batch)["dkd"], expected)
    torch.testing.assert_close(
        methods(s_out, t_out, batch)["kd"], losses.kd(s_out.logits, t_out.logits, 3.0)
    )
    with pytest.raises(SystemExit):  # a bad value is refused by the parser, naming the flag
        parser.parse_args(["--crd.negatives", "many"])


# ---- CRD's memory banks: checkpoints -----------------------------------------------------------
def _crd_steps(methods, teacher, student, steps, seed=0):
    for step in range(steps):
        batch = make_batch(seed + step, size=16)
        s_out, t_out = outputs(methods, teacher, student, batch)
        loss = methods(s_out, t_out, batch)["crd"]
        loss.backward()
    return loss


def test_crd_banks_round_trip_through_a_checkpoint():
    teacher, student = make_pair()
    methods = MethodSet("crd", context(teacher, student))
    memory = methods.methods["crd"].memory
    initial = memory.student_bank.clone()
    _crd_steps(methods, teacher, student, 3)

    buffer = io.BytesIO()
    torch.save(methods.state_dict(), buffer)  # the last step's update is flushed into it
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    for key in ("student_bank", "teacher_bank", "labels", "z"):
        assert f"methods.crd.memory.{key}" in state
    assert state["methods.crd.memory.student_bank"].shape == (NUM_SAMPLES, 128)
    last_rows = make_batch(2, size=16).indices
    assert not torch.equal(state["methods.crd.memory.student_bank"][last_rows], initial[last_rows])
    assert (state["methods.crd.memory.z"] > 0).all()

    torch.manual_seed(123)  # another initialisation: different banks and embeddings
    restored = MethodSet("crd", context(teacher, student))
    assert not torch.equal(restored.methods["crd"].memory.student_bank, memory.student_bank)
    restored.load_state_dict(state)
    for key, value in methods.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key

    # and both continue identically
    torch.manual_seed(5)
    a = _crd_steps(methods, teacher, student, 2, seed=10)
    torch.manual_seed(5)
    b = _crd_steps(restored, teacher, student, 2, seed=10)
    assert torch.equal(a, b)
    for key, value in methods.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def _stop_after_first_epoch(record: dict) -> None:
    """A logger that signals the run as a scheduler would: it stops at the epoch's end."""
    if record["epoch"] == 1:
        signal.raise_signal(signal.SIGUSR1)


def test_crd_resume_restores_the_banks(tmp_path, tiny_data):
    teacher, _ = make_pair()
    settings = config.build(
        config.from_keywords(method="crd", epochs=2, batch_size=64, lr=0.05, quiet=True,
                             precision="fp32", device="cpu")
    )  # fmt: skip

    def run(name, student, **options):
        return build_run(settings, tmp_path / name, student=student, teacher=teacher,
                           splits=tiny_data, **options)  # fmt: skip

    def student():
        torch.manual_seed(1)
        return SmallCNN(6)

    straight = run("a", student())
    straight.fit()
    interrupted = run("b", student(), loggers=[_stop_after_first_epoch])
    with pytest.raises(RunInterrupted, match="after epoch 1"):
        interrupted.fit()
    resumed = run("b", SmallCNN(6), resume=True)
    resumed.fit()
    a, b = straight.step.methods.state_dict(), resumed.step.methods.state_dict()
    assert a["methods.crd.memory.student_bank"].shape[0] == len(tiny_data.train.labels)
    assert not torch.equal(  # the banks moved in epoch 2: the comparison below can fail
        a["methods.crd.memory.student_bank"],
        interrupted.step.methods.state_dict()["methods.crd.memory.student_bank"],
    )
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = straight.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- CRD's memory banks: two data-parallel ranks -------------------------------------------------
#: Bank rows each rank updates at each step; the ranks' batches differ in size on purpose.
RANK_ROWS = {0: [[0, 1, 2], [3]], 1: [[8, 9], [10, 11, 12]]}
GLOO_N, GLOO_DIM = 16, 4


def _gloo_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(100 + rank)  # each rank draws other initial banks
        memory = ContrastMemory(GLOO_N, GLOO_DIM, negatives=5)
        initial = {k: v.clone() for k, v in memory.state_dict().items()}
        sent = []
        for step_rows in RANK_ROWS[rank]:
            indices = torch.tensor(step_rows)
            labels = indices % 3
            v_s = F.normalize(torch.randn(len(step_rows), GLOO_DIM), dim=1)
            v_t = F.normalize(torch.randn(len(step_rows), GLOO_DIM), dim=1)
            p_s, p_t = memory(v_s, v_t, indices, labels)
            (losses.nce_loss(p_s, GLOO_N) + losses.nce_loss(p_t, GLOO_N)).item()
            sent.append((indices, v_s, v_t))
        torch.save(
            {"initial": initial, "final": memory.state_dict(), "sent": sent},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_crd_banks_agree_across_two_gloo_ranks(tmp_path):
    mp.spawn(_gloo_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    final0, final1 = ranks[0]["final"], ranks[1]["final"]
    for key in final0:
        assert torch.equal(final0[key], final1[key]), f"{key} differs between the ranks"

    # both ranks' updates are in it: rank 0's initial banks, then every step's rows of both
    expected = {k: v.clone() for k, v in ranks[0]["initial"].items()}
    for step in range(2):
        for rank in range(2):
            indices, v_s, v_t = ranks[rank]["sent"][step]
            for bank, v in (("student_bank", v_s), ("teacher_bank", v_t)):
                rows = 0.5 * expected[bank][indices] + 0.5 * v
                expected[bank][indices] = rows / rows.norm(dim=1, keepdim=True)
            expected["labels"][indices] = indices % 3
    for key in ("student_bank", "teacher_bank", "labels"):
        torch.testing.assert_close(final0[key], expected[key])
    touched = sorted(i for rows in RANK_ROWS.values() for step in rows for i in step)
    untouched = [i for i in range(GLOO_N) if i not in touched]
    assert torch.equal(
        final0["student_bank"][untouched], ranks[0]["initial"]["student_bank"][untouched]
    )
    assert not torch.equal(ranks[0]["initial"]["student_bank"], ranks[1]["initial"]["student_bank"])
    assert (final0["z"] > 0).all()


# ---- recipes -----------------------------------------------------------------------------------
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "baselines"
TABLE1_PAIRS = [
    ("wrn_40_2", "wrn_16_2"),
    ("resnet110", "resnet20"),
    ("vgg13", "vgg8"),
    ("vgg13", "mobilenetv2"),
    ("resnet32x4", "shufflenetv2"),
]
RECIPE_SECTIONS = {"data", "models", "method", "optim", "schedule"}  # plus options, weights
SVHN_PAIRS = [
    ("wrn_40_2", "wrn_16_2"),
    ("resnet56", "resnet20"),
    ("vgg13", "vgg8"),
    ("mobilenetv2", "vgg13"),
    ("shufflenetv2", "resnet32x4"),
]
#: DKD's per-pair beta of the reference configs (mdistiller); the other options are defaults.
DKD_BETA = {"resnet20": 2.0, "shufflenetv2": 8.0, "mobilenetv2": 6.0, "vgg8": 6.0, "wrn_16_2": 6.0}
#: The benchmark's beta (-b) of each feature method (RepDistiller scripts/run_cifar_distill.sh).
BETA = {"fitnet": 100.0, "at": 1000.0, "sp": 3000.0, "cc": 0.02, "rkd": 1.0, "pkt": 30000.0}
BETA["crd"] = 0.8


def expected_weights(method: str, alone: bool) -> dict[str, float] | None:
    """RepDistiller's -r/-a/-b: KD 0.1/0.9; "+KD" rows 1/1/beta; a method alone 1/0/beta."""
    if method == "kd":
        return {"ce": 0.1, "kd": 0.9}
    if method in ("at", "sp", "pkt"):
        return {"ce": 1.0, method: BETA[method]}
    if method in ("fitnet", "cc", "rkd", "crd"):
        return {"ce": 1.0, "kd": 0.0 if alone else 1.0, method: BETA[method]}
    return None  # ce, dkd, crd+mhkd: the method's defaults


def _check_schedule(run, path) -> None:
    svhn = run.data.name == "svhn"
    o, sched = run.optim, run.schedule
    small = run.models.student in ("mobilenetv2", "shufflenetv2")
    lr = 0.001 if svhn else (0.01 if small else 0.05)  # train_student.py's 0.01 rule
    assert (o.batch_size, o.lr) == ((200 if svhn else 64), lr), path.name
    assert (o.momentum, o.weight_decay) == (0.9, 5e-4), path.name
    milestones = [80, 110, 135] if svhn else [150, 180, 210]
    assert (sched.kind, sched.milestones, sched.gamma) == ("multistep", milestones, 0.1)
    assert sched.epochs == (150 if svhn else 240), path.name


def test_every_baseline_recipe_carries_the_reference_setting():
    from mhkd import models

    found = {}
    for path in sorted(RECIPES.glob("*.yaml")):
        tree, notes = config.read_recipe(path)
        assert RECIPE_SECTIONS <= set(tree) <= RECIPE_SECTIONS | {"options", "weights"}, path.name
        run = config.build(tree)  # the tree the run gets; every option reaches a dataclass
        m = run.models
        _check_schedule(run, path)
        alone = path.stem.endswith("_alone")
        weights = expected_weights(run.method, alone)
        assert run.weights == (weights if weights is not None else {}), path.name
        assert m.student in models.available()
        if run.method == "ce":
            assert m.teacher is None
        elif run.data.name == "cifar100":
            assert m.teacher.endswith(f"/{m.teacher_arch}_vanilla/ckpt_epoch_240.pth"), path.name
        for name, options in run.options.items():
            given = tree.get("options", {}).get(name, {})
            assert all(getattr(options, k) == v for k, v in given.items()), (path.name, name)
            if name == "dkd":
                assert options.beta == DKD_BETA[m.student], path.name
            elif name == "ft":  # RepDistiller's init() trains the paraphraser at 0.01 there
                init_lr = 0.01 if m.student in ("resnet20", "wrn_16_2") else None
                assert options.init_lr == init_lr, path.name
            else:  # the benchmark's defaults (CC: the delta form)
                assert options == method_class(name).Options(), (path.name, name)
        paper = notes["paper"]
        assert set(paper) == {"top1", "source", "reference"}, path.name
        assert paper["source"] and paper["reference"], path.name
        top1 = paper["top1"]
        assert top1 is None or 55 < top1 < 97, path.name
        key = (run.data.name, run.method + ("-alone" if alone else ""), m.teacher_arch, m.student)
        found[key] = top1
    table1 = (*BASELINES, "kd", "crd+mhkd", *(f"{m}-alone" for m in ("fitnet", "cc", "rkd", "crd")))
    cifar = {("cifar100", mth, t, s) for mth in table1 for t, s in TABLE1_PAIRS}
    svhn = {("svhn", mth, t, s) for mth in ("kd", "fitnet", "cc", "rkd") for t, s in SVHN_PAIRS}
    ce = {("cifar100", "ce", None, m) for pair in TABLE1_PAIRS for m in pair}
    ce |= {("svhn", "ce", None, m) for pair in SVHN_PAIRS for m in pair}
    # issue 23's methods: no AB for ShuffleNetV2 (no pre-activation tap), FSP only for
    # equal channel counts
    field = {("cifar100", mth, t, s) for mth in ("vid", "nst", "ft", "ab", "fsp")
             for t, s in TABLE1_PAIRS}  # fmt: skip
    field -= {("cifar100", "ab", "resnet32x4", "shufflenetv2"),
              ("cifar100", "fsp", "resnet32x4", "shufflenetv2"),
              ("cifar100", "fsp", "vgg13", "mobilenetv2")}  # fmt: skip
    assert set(found) == cifar | svhn | ce | field
    assert found[("cifar100", "fitnet", "wrn_40_2", "wrn_16_2")] == 75.12
    assert found[("cifar100", "fitnet-alone", "wrn_40_2", "wrn_16_2")] == 73.58
    assert found[("cifar100", "crd", "resnet32x4", "shufflenetv2")] == 76.05
    assert found[("cifar100", "crd+mhkd", "vgg13", "mobilenetv2")] == 70.21
    assert found[("cifar100", "at", "vgg13", "mobilenetv2")] == 59.40
    assert found[("cifar100", "kd", "resnet32x4", "shufflenetv2")] == 74.45
    assert found[("svhn", "rkd", "mobilenetv2", "vgg13")] == 95.83
    assert found[("cifar100", "ce", None, "resnet32x4")] == 79.42
