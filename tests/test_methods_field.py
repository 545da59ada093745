"""NST, KDSVD, VID, OFD and ReviewKD as methods: their gradients reach the student and their
extras but never the teacher, a few steps lower their term, they run end to end, compose with
``+``, take their defaults from the reference configs, and pre-activation taps are right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_methods_baselines import context, make_batch, make_pair, outputs, sgd_on_one_batch

from mhkd import api, config, data, models
from mhkd.methods import MethodSet
from mhkd.methods._preact import preact_tap
from mhkd.taps import Taps

from conftest import TinyNet

METHODS = ("nst", "kdsvd", "vid", "ofd", "reviewkd")


@pytest.mark.parametrize("name", [*METHODS, "ab", "fsp"])
def test_method_trains_and_its_gradients_skip_the_teacher(name):
    teacher, student = make_pair("same")
    if name in ("kdsvd", "fsp"):  # they pair stages of equal channel counts
        teacher = type(student)(6).eval()
    methods = MethodSet(name, context(teacher, student))
    for method in methods.methods.values():
        method.start_epoch(19)  # past ReviewKD's warm-up
    batch = make_batch()
    s_out, t_out = outputs(methods, teacher, student, batch, teacher_graph=True)
    own = methods(s_out, t_out, batch)[name]
    extras = [p for p in methods.parameters() if p.requires_grad]
    grads = torch.autograd.grad(
        own, [*student.parameters(), *extras, *teacher.parameters()], allow_unused=True
    )
    n_s = len(list(student.parameters()))
    teacher_grads = grads[n_s + len(extras) :]
    assert all(g is None or not g.any() for g in teacher_grads), "gradient reached the teacher"
    assert any(g is not None and g.abs().sum() > 0 for g in grads[:n_s])
    assert bool(extras) == (name in ("vid", "ofd", "reviewkd", "ab"))

    history = [terms[name] for terms in sgd_on_one_batch(methods, teacher, student, batch, extras)]
    assert history[-1] < history[0], history


@pytest.mark.parametrize("name", [*METHODS, "reviewkd+mhkd", "nst+kd"])
def test_one_epoch_distill_end_to_end(name, tmp_path):
    splits = data.load("synthetic", num_train=64, num_test=32, num_classes=4, image_size=16)
    torch.manual_seed(0)
    summary = api.distill(
        TinyNet(width=8), TinyNet(width=8), splits, method=name, out=tmp_path / "run", epochs=1,
        batch_size=32, lr=0.05, quiet=True, precision="fp32", device="cpu",
    )  # fmt: skip
    assert summary["method"] == name and summary["epochs"] == 1
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    for part in name.split("+"):
        assert math.isfinite(record[f"loss_{part}"]) and record[f"loss_{part}"] > 0


DEFAULTS = {
    "nst": {"ce": 1.0, "nst": 50.0},
    "vid": {"ce": 1.0, "vid": 1.0},
    "kdsvd": {"ce": 1.0, "kdsvd": 1.0},
    "ofd": {"ce": 1.0, "ofd": 0.001},
    "reviewkd": {"ce": 1.0, "reviewkd": 5.0},
    "ab": {"ce": 1.0, "ab": 1.0},
    "fsp": {"ce": 1.0, "fsp": 50.0},
    "ft": {"ce": 1.0, "ft": 200.0, "ft_paraphrase": 1.0},
}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_default_weights_follow_the_reference_scripts(name):
    teacher, student = make_pair("same")
    if name in ("kdsvd", "fsp"):
        teacher = type(student)(6).eval()
    assert MethodSet(name, context(teacher, student)).weights == DEFAULTS[name]


def test_reviewkd_warms_up_over_twenty_epochs():
    teacher, student = make_pair("same")
    method = MethodSet("reviewkd", context(teacher, student)).methods["reviewkd"]
    assert method.warmup == pytest.approx(1 / 20)
    assert method.start_epoch(9) == {"reviewkd_warmup": pytest.approx(0.5)}
    assert method.start_epoch(30)["reviewkd_warmup"] == 1.0


@pytest.mark.parametrize("family", ["resnet8", "resnet50_cifar", "vgg8", "wrn_16_2"])
def test_preactivation_taps_are_the_maps_before_the_stage_relu(family):
    model = models.create(family, num_classes=4).eval()
    stage = model.stage_names[0]
    tap, bn = preact_tap(model, stage, "ofd")
    with Taps(model, [tap, stage]) as taps, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        pre, post = taps.outputs[tap], taps.outputs[stage]
    assert (pre < 0).any(), "a pre-activation map has negative entries"
    if family == "wrn_16_2":  # the BN the next block applies before its ReLU
        torch.testing.assert_close(pre, bn(post))
    else:
        torch.testing.assert_close(torch.relu(pre), post)


def test_a_model_without_preactivation_features_is_named():
    teacher = models.create("resnet8", num_classes=4)
    student = models.create("shufflenetv2", num_classes=4)
    with pytest.raises(ValueError, match=r"^ofd needs pre-activation .*ShuffleNetV2") as err:
        MethodSet("ofd", context(teacher, student))
    assert "\n" not in str(err.value)


IMAGENET = Path(__file__).resolve().parents[1] / "recipes" / "imagenet"


@pytest.mark.parametrize(
    "name, weight, lr, batch",
    [
        ("reviewkd_resnet34-resnet18", 1.0, 0.1, 256),
        ("reviewkd_resnet50-mobilenetv1", 8.0, 0.1, 256),
        ("ofd_resnet50-mobilenetv1", 0.0001, 0.05, 128),
        ("at_resnet50-mobilenetv1", None, 0.2, 512),
    ],
)
def test_imagenet_recipes_follow_the_mdistiller_configs(name, weight, lr, batch):
    tree, notes = config.read_recipe(IMAGENET / f"{name}.yaml")
    run = config.build(tree)
    method = name.split("_")[0]
    assert run.method == method and run.data.name == "imagenet" and run.schedule.epochs == 100
    assert (run.optim.lr, run.optim.batch_size, run.optim.weight_decay) == (lr, batch, 1e-4)
    assert run.schedule.milestones == [30, 60, 90]
    assert run.weights == ({method: weight} if weight is not None else {})
    if method == "reviewkd":
        options = run.options["reviewkd"]
        assert options.warmup_epochs == 1 and options.student_preact
    assert notes["paper"]["source"]
