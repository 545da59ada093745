"""infoflow: kernels and divergences against explicit loops, the critical-period schedule, the
proxy teacher's width, gradient routing, layer matching and a short run with a proxy."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from mhkd import api, checkpoint, data, losses, models, pipelines
from mhkd import config as cfg
from mhkd.cli import build_parser
from mhkd.data.batch import Batch
from mhkd.methods import MethodContext, MethodSet, ModelOutput, TeacherUse
from mhkd.methods.infoflow import InfoFlowOptions, period_weights
from mhkd.methods.layers import flow_pairs, probe
from mhkd.pipelines.proxy import build_proxy, proxy_checkpoint
from mhkd.retrieval import retrieval_loaders, retrieval_map
from mhkd.rundir import RunDirectory, RunFiles
from mhkd.taps import Taps

from conftest import TinyNet


def _loop_kernels(x: Tensor) -> tuple[list[list[float]], list[list[float]]]:
    """Cosine and Student-t kernels entry by entry, with the reference code's constants."""
    rows = [[float(v) for v in r] for r in x.flatten(1)]
    cos, stu = [], []
    for a in rows:
        cos.append([])
        stu.append([])
        for b in rows:
            dot = sum(u * v for u, v in zip(a, b, strict=True))
            na, nb = math.sqrt(sum(u * u for u in a)), math.sqrt(sum(v * v for v in b))
            cos[-1].append((1 + dot / ((na + 1e-6) * (nb + 1e-6))) / 2)
            dist = math.sqrt(max(na * na + nb * nb - 2 * dot, 0.0) + 1e-6)
            stu[-1].append(1 / (1 + dist))
    return cos, stu


def _loop_jeffreys(kt: list[list[float]], ks: list[list[float]], diagonal: bool) -> float:
    n = len(kt)
    total, count = 0.0, 0
    for i in range(n):
        cols = [j for j in range(n) if diagonal or j != i]
        zt, zs = sum(kt[i][j] for j in cols), sum(ks[i][j] for j in cols)
        for j in cols:
            p, q = kt[i][j] / zt, ks[i][j] / zs
            total += (p - q) * (math.log(p) - math.log(q))
            count += 1
    return total / count


def test_kernels_match_explicit_loops():
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    cos, stu = _loop_kernels(x)
    expected = torch.tensor([cos, stu], dtype=torch.float64)
    got = torch.stack([losses.cosine_kernel(x), losses.student_t_kernel(x)]).double()
    assert torch.allclose(got, expected, atol=1e-6)
    # the reference code keeps the diagonal: K_t(x, x) = 1 / (1 + sqrt(1e-6))
    assert losses.student_t_kernel(x).diagonal() == pytest.approx([1 / 1.001] * 4, rel=1e-5)


@pytest.mark.parametrize("diagonal", [True, False])
def test_pair_loss_is_two_jeffreys_divergences(diagonal):
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 2, 2, 2)  # widths differ
    s_cos, s_t = _loop_kernels(student)
    t_cos, t_t = _loop_kernels(teacher)
    expected = _loop_jeffreys(t_cos, s_cos, diagonal) + _loop_jeffreys(t_t, s_t, diagonal)
    got = losses.information_flow_pair(student, teacher, diagonal=diagonal)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    p = losses.conditional_probabilities(losses.cosine_kernel(teacher), diagonal)
    assert p.shape == ((5, 5) if diagonal else (5, 4))
    assert p.dtype == torch.float64 and torch.allclose(p.sum(1), torch.ones(5, dtype=p.dtype))


def test_jeffreys_is_symmetric_zero_on_equal_and_weights_layers():
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    q = torch.tensor([[0.4, 0.6], [0.1, 0.9]])
    assert losses.jeffreys(p, q).item() == pytest.approx(losses.jeffreys(q, p).item())
    assert losses.jeffreys(p, p).item() == 0.0
    a, b = torch.randn(6, 4), torch.randn(6, 7)
    one = losses.information_flow_pair(a, b)
    two = losses.information_flow([a, a], [b, b], [3.0, 0.0])
    assert two.item() == pytest.approx(3 * one.item())
    with pytest.raises(ValueError, match="one weight each"):
        losses.information_flow([a], [b], [1.0, 1.0])


def test_critical_period_weights():
    assert period_weights(4, 0) == [100.0, 100.0, 100.0, 1.0]
    assert period_weights(2, 2) == pytest.approx([49.0, 1.0])
    assert period_weights(2, 3, start=10.0, decay=0.5) == pytest.approx([1.25, 1.0])
    methods, *_ = _build(period_start=10.0, period_decay=0.5)
    logged = methods.start_epoch(0)
    assert logged == {"infoflow_alpha_final": 1.0, "infoflow_alpha_intermediate": 10.0}
    assert methods.start_epoch(1)["infoflow_alpha_intermediate"] == 5.0
    assert methods.methods["infoflow"].layer_weights == [5.0, 5.0, 5.0, 1.0]


@pytest.mark.parametrize("name", ["resnet8", "mobilenetv2", "shufflenetv2"])
def test_proxy_is_the_student_family_at_twice_the_width(name):
    student = models.create(name, num_classes=10)
    proxy = build_proxy(student)
    assert type(proxy) is type(student)
    layers = [*student.stage_names, student.embedding_name]
    s_shapes = probe(student, layers, (3, 16, 16)).shapes
    p_shapes = probe(proxy, layers, (3, 16, 16)).shapes
    for layer in layers:
        ratio = p_shapes[layer][0] / s_shapes[layer][0]
        assert 1.8 <= ratio <= 2.2, (layer, ratio)
    with pytest.raises(ValueError, match="not a zoo model"):
        build_proxy(TinyNet())


def match_layers(teacher, student, teacher_layers=None, student_layers=None):
    ctx = MethodContext(student=student, teacher=teacher, num_classes=4,
                        teacher_layers=teacher_layers, student_layers=student_layers)  # fmt: skip
    return flow_pairs(ctx, "infoflow")


def test_layer_matching():
    t, s = match_layers(models.create("resnet32x4"), models.create("shufflenetv2"))
    assert (t, s) == (
        ["layer1", "layer2", "layer3", "flatten"],
        ["layer1", "layer2", "relu2", "flatten"],
    )
    # four VGG stages against three ResNet stages: the same relative depth, last with last
    t, s = match_layers(models.create("vgg13"), models.create("resnet20"))
    assert t == ["block1", "block2", "block4", "flatten"]
    assert s == ["layer1", "layer2", "layer3", "flatten"]
    t, s = match_layers(TinyNet(), TinyNet(), ["stage2", "fc"], ["stage3", "flatten"])
    assert (t, s) == (["stage2", "fc"], ["stage3", "flatten"])
    with pytest.raises(ValueError, match="2 teacher layers .* 4 student layers"):
        match_layers(TinyNet(), TinyNet(), ["stage2", "fc"], None)
    with pytest.raises(ValueError, match="declares no stage_names"):
        match_layers(torch.nn.Linear(2, 2), TinyNet())


def _build(**options) -> tuple[MethodSet, torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher, student = TinyNet(width=8), models.create("resnet8", num_classes=4, width_mult=0.5)
    ctx = MethodContext(student=student, teacher=teacher, num_classes=4, input_shape=(3, 16, 16))
    return MethodSet("infoflow", ctx, {"infoflow": InfoFlowOptions(**options)}), teacher, student


def _step(methods: MethodSet, teacher, student, teacher_grad: bool) -> dict[str, Tensor]:
    batch = Batch(torch.randn(8, 3, 16, 16), torch.arange(8) % 4, torch.arange(8))
    with (
        Taps(teacher, methods.teacher_layers) as t_taps,
        Taps(student, methods.student_layers) as s_taps,
    ):
        with torch.set_grad_enabled(teacher_grad):
            t_out = ModelOutput(teacher(batch.images), t_taps.pop())
        s_out = ModelOutput(student(batch.images), s_taps.pop())
    return methods(s_out, t_out, batch)


def test_gradients_reach_only_the_student():
    # a proxy teacher is no longer inside the method: it is the teacher (pipelines.proxy)
    methods, teacher, student = _build()
    assert methods.teacher_use == TeacherUse.FEATURES  # live teacher features every step
    assert not [p for p in methods.parameters() if p.requires_grad]  # nothing else to train
    # the teacher keeps its graph here, so a missing detach would show up as a gradient
    _step(methods, teacher, student, teacher_grad=True)["infoflow"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in methods.parameters())
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_cli_flags_reach_the_method_and_the_proxy_stage():
    args = build_parser().parse_args(
        ["distill", "--teacher", "t.pt", "--student", "resnet8", "--method", "infoflow",
         "--aux", "auto", "--aux-epochs", "3", "--infoflow.period-decay", "0.5",
         "--infoflow.kernel-diagonal", "exclude"]
    )  # fmt: skip
    config = pipelines.build_config(cfg.overrides(args))
    assert config.options == {
        "infoflow": InfoFlowOptions(period_decay=0.5, kernel_diagonal="exclude")
    }
    assert (config.aux.mode, config.aux.epochs, config.aux.distill_epochs) == ("auto", 3, None)
    with pytest.raises(ValueError, match="keep or exclude"):
        _build(kernel_diagonal="paper")


def _proxy_data() -> data.DataSplits:
    return data.load("synthetic", num_train=64, num_test=32, num_classes=4, image_size=16)


def _metrics(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_auto_proxy_run_then_reuse_its_checkpoint(tmp_path, fast):
    """Proxy stages (CE, final-layer distillation) and the student run, each 1 epoch; the
    saved proxy then teaches another student with no teacher at all."""
    tiny_data = _proxy_data()
    teacher = TinyNet(num_classes=4, width=8)
    student = models.create("resnet8", num_classes=4, width_mult=0.5)
    out = tmp_path / "run"
    summary = api.distill(teacher, student, tiny_data, method="infoflow", out=out, epochs=1,
                          aux="auto", aux_epochs=1, aux_distill_epochs=1, **fast)  # fmt: skip
    proxy_ckpt = out / "aux" / "proxy.pt"
    assert proxy_checkpoint(out) == proxy_ckpt
    assert summary["infoflow_aux"] == "auto"
    assert summary["infoflow_aux_checkpoint"] == str(proxy_ckpt) and proxy_ckpt.is_file()
    for stage in ("ce", "distill"):  # each stage is a run directory of its own
        for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
            assert (out / "aux" / stage / name).is_file(), (stage, name)
    ce_summary = json.loads((out / "aux" / "ce" / "summary.json").read_text())
    assert ce_summary["method"] == "ce" and ce_summary["teacher"] is None
    distilled = json.loads((out / "aux" / "distill" / "summary.json").read_text())
    assert distilled["method"] == "infoflow" and distilled["teacher"] == "TinyNet"
    assert summary["infoflow_aux_model"] == "resnet8" and len(summary["infoflow_pairs"]) == 4
    assert summary["teacher"] == "resnet8"  # the student's teacher is the proxy
    # judged as its paper judges it: retrieval mAP of the trained student, test against train
    database, queries = retrieval_loaders(tiny_data, 32)
    assert summary["retrieval_map"] == pytest.approx(retrieval_map(student, database, queries))
    assert "retrieval_map" not in ce_summary  # a method not judged by retrieval
    (proxy_log,) = _metrics(out / "aux" / "distill" / "metrics.jsonl")
    assert "loss_infoflow" in proxy_log and "infoflow_alpha_intermediate" not in proxy_log
    (log,) = _metrics(out / "metrics.jsonl")
    assert log["infoflow_alpha_intermediate"] == 100.0 and log["loss_infoflow"] > 0
    # proxy.pt holds the distilled proxy: the distill stage's final weights
    proxy, _ = checkpoint.load_model(proxy_ckpt)
    last = RunFiles(out / "aux" / "distill").load_last()["step"]["model"]
    assert proxy.state_dict().keys() == last.keys()
    assert all(torch.equal(proxy.state_dict()[k], last[k]) for k in last)

    other = api.distill(None, "resnet8", tiny_data, method="infoflow", out=tmp_path / "reuse",
                        epochs=1, aux=str(proxy_ckpt), **fast)  # fmt: skip
    assert other["infoflow_aux"] == "checkpoint" and not (tmp_path / "reuse" / "aux").exists()
    assert other["infoflow_aux_checkpoint"] == str(proxy_ckpt)


class _Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def test_each_proxy_stage_resumes_on_its_own(tmp_path, fast, monkeypatch):
    """Killed after the distill stage's first of 2 epochs: the resume keeps the finished CE
    stage as it is, continues the distill stage from its last.pt, and the proxy and the
    student end as in an uninterrupted run."""
    tiny_data = _proxy_data()
    teacher = TinyNet(num_classes=4, width=8)
    options = dict(method="infoflow", epochs=1, aux="auto", aux_epochs=1, aux_distill_epochs=2,
                   **fast)  # fmt: skip
    reference = api.distill(teacher, "resnet8", tiny_data, out=tmp_path / "reference", **options)

    out = tmp_path / "run"
    save_last = RunDirectory.save_last

    def killed_in_distill(self, state):
        save_last(self, state)
        if self.root == out / "aux" / "distill":
            raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(RunDirectory, "save_last", killed_in_distill)
        with pytest.raises(_Killed):
            api.distill(teacher, "resnet8", tiny_data, out=out, **options)
    ce, distill = out / "aux" / "ce", out / "aux" / "distill"
    assert (ce / "summary.json").is_file() and not (distill / "summary.json").exists()
    assert [r["epoch"] for r in _metrics(distill / "metrics.jsonl")] == [1]
    assert not proxy_checkpoint(out).exists() and not (out / "metrics.jsonl").exists()
    ce_files = {p: p.read_bytes() for p in ce.rglob("*") if p.is_file()}

    summary = api.distill(teacher, "resnet8", tiny_data, out=out, resume=True, **options)
    assert {p: p.read_bytes() for p in ce.rglob("*") if p.is_file()} == ce_files  # not redone
    assert [r["epoch"] for r in _metrics(distill / "metrics.jsonl")] == [1, 2]
    proxy, _ = checkpoint.load_model(proxy_checkpoint(out))
    expected, _ = checkpoint.load_model(proxy_checkpoint(tmp_path / "reference"))
    for key, value in expected.state_dict().items():
        assert torch.equal(proxy.state_dict()[key], value), key
    assert summary["test_acc"] == reference["test_acc"]
    (log,) = _metrics(out / "metrics.jsonl")
    (expected_log,) = _metrics(tmp_path / "reference" / "metrics.jsonl")
    assert log["loss_infoflow"] == expected_log["loss_infoflow"] > 0

    # a finished run resumed again redoes nothing at all
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "summary" not in p.name}
    api.distill(teacher, "resnet8", tiny_data, out=out, resume=True, **options)
    for path, content in files.items():
        assert path.read_bytes() == content, path


def test_kernels_stay_precise_under_bf16_autocast():
    """Distances from ‖a‖² + ‖b‖² − 2aᵀb cancel catastrophically if the product runs in bf16;
    the backward's product must not drop to bf16 either, nor bf16 features lose the gradient."""
    torch.manual_seed(0)
    student, teacher = torch.randn(16, 64) + 3.0, torch.randn(16, 32) + 3.0
    exact_grad, exact = _grad(losses.information_flow_pair, student, teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grad, under_autocast = _grad(losses.information_flow_pair, student, teacher)
        loss = losses.information_flow_pair(student.bfloat16().requires_grad_(), teacher)
    torch.testing.assert_close(under_autocast, exact, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, exact_grad, rtol=1e-4, atol=1e-9)
    assert loss.dtype == torch.float32


def _class_features(batch: int, width: int, noise: float, relu: bool, seed: int) -> Tensor:
    """Ten class centroids plus per-sample noise (relative to the centroids' scale)."""
    g = torch.Generator().manual_seed(seed)
    centroids = torch.randn(10, width, generator=g)
    x = centroids[torch.arange(batch) % 10] + noise * torch.randn(batch, width, generator=g)
    return x.relu() if relu else x


def _reference(student: Tensor, teacher: Tensor, diagonal: bool = True) -> Tensor:
    """The authors' formulation written plainly; exact when run in float64."""

    def kernels(x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        gram = x @ x.t()
        sq = gram.diagonal()
        norms = sq.sqrt() + 1e-6
        cos = (1 + gram / (norms[:, None] * norms[None])) / 2
        dist = ((sq[:, None] + sq[None] - 2 * gram).clamp(min=0) + 1e-6).sqrt()
        return cos, 1 / (1 + dist)

    keep = torch.ones(len(student), len(student), dtype=torch.bool)
    if not diagonal:
        keep.fill_diagonal_(False)
    loss = student.new_zeros(())
    for k_s, k_t in zip(kernels(student), kernels(teacher), strict=True):
        k_s, k_t = k_s[keep].view(len(k_s), -1), k_t[keep].view(len(k_t), -1)
        p, q = k_t / k_t.sum(1, keepdim=True), k_s / k_s.sum(1, keepdim=True)
        loss = loss + ((p - q) * (p.log() - q.log())).mean()
    return loss


def _grad(fn, student: Tensor, teacher: Tensor, dtype=None, **kw) -> tuple[Tensor, Tensor]:
    """Gradient and value of ``fn`` with respect to a fresh copy of ``student``."""
    s = student.detach().to(dtype or student.dtype).requires_grad_()
    loss = fn(s, teacher.to(dtype or teacher.dtype), **kw)
    loss.backward()
    return s.grad.double(), loss.detach().double()


def _deviation(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    ("batch", "width", "noise", "relu", "diagonal"),
    [
        (64, 640, 1.0, False, True),  # plain float32 was off by 24 % (the diagonal)
        (128, 4096, 0.3, True, True),  # 22 %
        (128, 64, 0.3, True, True),  # 0.12 %
        (64, 1024, 0.01, True, True),  # tight clusters: 0.31 %, 0.18 % with the diagonal mended
        (128, 1024, 0.01, False, False),  # the paper's j ≠ i: 0.27 %, all from cancellation
    ],
)
def test_gradient_matches_float64(batch, width, noise, relu, diagonal):
    """Class-structured float32 features: the gradient is within 1e-3 (relative norm) of the
    exact float64 one; the value is the float64 value. Plain float32 (the authors' code) was
    off by the percentages noted: the Student-t diagonal's constant zero distance, computed as
    ‖a‖² + ‖a‖² − 2aᵀa, back-propagated rounding errors times 1/(2√eps) = 500, and same-class
    distances lost their digits to cancellation in float32 inner products."""
    student = _class_features(batch, width, noise, relu, seed=1)
    teacher = _class_features(batch, 2 * width, noise, relu, seed=2)
    exact_grad, exact = _grad(_reference, student, teacher, torch.float64, diagonal=diagonal)
    grad, value = _grad(losses.information_flow_pair, student, teacher, diagonal=diagonal)
    assert _deviation(grad, exact_grad) < 1e-3
    assert value.item() == pytest.approx(exact.item(), rel=1e-6)


def test_plain_float32_gradient_is_off():
    """The case is a real test: the authors' formulation in float32 misses by over 10 %."""
    student = _class_features(64, 640, 1.0, False, seed=1)
    teacher = _class_features(64, 1280, 1.0, False, seed=2)
    exact_grad, exact = _grad(_reference, student, teacher, torch.float64)
    grad, value = _grad(_reference, student, teacher)
    assert _deviation(grad, exact_grad) > 0.1
    assert value.item() == pytest.approx(exact.item(), rel=1e-5)  # while the value is fine


def test_zero_row_has_a_finite_exact_gradient():
    """A dead-ReLU sample (an all-zero row): ‖a‖'s infinite slope at 0 made every gradient NaN;
    the loss is smooth there, so its gradient equals that of a row of 1e-20s."""
    student = _class_features(32, 128, 0.3, True, seed=1)
    teacher = _class_features(32, 64, 0.3, True, seed=2)
    student[5] = 0.0
    nearly = student.double()
    nearly[5] = 1e-20
    exact_grad, _ = _grad(_reference, nearly, teacher, torch.float64)
    grad, _ = _grad(losses.information_flow_pair, student, teacher)
    assert torch.isfinite(grad).all()
    assert _deviation(grad, exact_grad) < 1e-3
