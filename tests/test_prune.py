"""Cascaded channel pruning: coupled groups, STE scores, the cascade, export, errors, a run."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_foreign_checkpoints import cifar_resnet_keys, repdistiller_file, trained_like
from torch import nn

from mhkd import checkpoint, cli, data, models
from mhkd import config as cfg
from mhkd.data import make_loaders
from mhkd.loop import evaluate
from mhkd.models.complexity import count_params
from mhkd.pipelines.prune import PruneRunConfig, TeacherLadder, prune
from mhkd.prune import (
    Cascade,
    MaskedNet,
    PruneError,
    cascade_keeps,
    cascade_loss,
    cascade_score_grads,
    export,
    find_layout,
    global_masks,
    hint_loss,
    magnitude_scores,
)
from mhkd.prune.masks import check_keep
from mhkd.rundir import RunDirectoryError

from conftest import TinyNet


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so a zero channel would not stay zero."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _random_scores(layout, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(group.size, generator=g) for group in layout.groups]


def _group_of(layout, module: str):
    (group,) = [g for g in layout.groups if any(p.module == module for p in g.mask_points)]
    return group


# ---- groups -----------------------------------------------------------------------------------
def test_residual_channels_share_one_group_and_mask():
    model = _randomise_norms(models.create("resnet20", num_classes=10)).requires_grad_(False)
    layout = find_layout(model)  # a frozen teacher traces like a trainable one
    assert not any(p.requires_grad for p in model.parameters())
    stage2 = _group_of(layout, "layer2.0.bn2")
    members = {p.module for p in stage2.mask_points}
    # every block's last BN and the projection shortcut's BN feed the same residual sum
    assert {"layer2.0.bn2", "layer2.1.bn2", "layer2.2.bn2", "layer2.0.shortcut.1"} <= members
    assert stage2.size == 32
    # a block's inner channels are their own group; stage 1 shares the first conv's channels
    assert _group_of(layout, "layer2.1.bn1").size == 32
    assert not any("layer1.0.bn2" in {p.module for p in g.mask_points} for g in layout.groups)
    assert layout.first_conv == "conv1" and layout.classifier == "classifier"

    masked = MaskedNet(model, layout.groups, 0.5, _random_scores(layout)).eval()
    dropped = masked.hard_masks()[layout.groups.index(stage2)] == 0
    assert 0 < int(dropped.sum()) < 32
    outputs = {}
    names = ["layer2.0", "layer2.1", "layer2.2", "layer2.0.bn2", "layer2.2.bn2"]
    names.append("layer2.0.shortcut")
    for name in names:  # hooked after the masks
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, n=name: outputs.__setitem__(n, out)
        )
    masked(torch.randn(4, 3, 32, 32))
    for name, out in outputs.items():  # the same channels are zero in every member and sum
        assert out[:, dropped].abs().max() == 0, name
        if "bn2" in name or "shortcut" in name:  # before the ReLU every kept channel is alive
            assert out[:, ~dropped].abs().amax(dim=(0, 2, 3)).min() > 0, name


def test_depthwise_conv_shares_the_expansion_mask():
    model = models.create("mobilenetv2", num_classes=10, width_mult=0.25)
    layout = find_layout(model)
    expand_bn, depthwise_bn = "blocks.1.0.conv.1", "blocks.1.0.conv.4"
    assert _group_of(layout, expand_bn) is _group_of(layout, depthwise_bn)


def test_global_masks_by_hand():
    scores = [torch.tensor([0.1, 0.9, 0.5]), torch.tensor([0.3, 0.2])]
    # keep 2 of 5: 0.9 and 0.5; the second group still keeps its best channel (0.3)
    masks = global_masks(scores, 0.4)
    assert [m.tolist() for m in masks] == [[0.0, 1.0, 1.0], [1.0, 0.0]]
    assert [m.tolist() for m in global_masks(scores, 1.0)] == [[1.0] * 3, [1.0] * 2]


def test_magnitude_scores_by_hand():
    model = TinyNet(num_classes=4, width=2)
    layout = find_layout(model, (3, 16, 16))
    conv = model.stage2[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0].fill_(1.0)  # norm sqrt(2*9) = 4.243
        conv.weight[1, 0, 0, 0] = 3.0  # norm 3
    group = _group_of(layout, "stage2.1")
    scores = magnitude_scores(model, layout.groups)[layout.groups.index(group)]
    big, small = 18**0.5, 3.0
    expected = torch.tensor([big, small, 0.0, 0.0]) / ((big + small) / 4)
    assert torch.allclose(scores, expected)


# ---- straight-through estimator -------------------------------------------------------------
def test_ste_score_gradient_equals_sum_of_output_gradient_times_output():
    torch.manual_seed(0)
    model = TinyNet(num_classes=4, width=4)
    layout = find_layout(model, (3, 16, 16))
    bn = model.stage2[1]
    seen = {}
    bn.register_forward_hook(lambda _m, _i, out: seen.__setitem__("z", out))  # before the mask
    masked = MaskedNet(model, layout.groups, 0.5, _random_scores(layout, 1)).train()

    def keep_y(_m, _i, out):
        out.retain_grad()
        seen["y"] = out

    bn.register_forward_hook(keep_y)  # after the mask
    logits = masked(torch.randn(6, 3, 16, 16))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    i = layout.groups.index(_group_of(layout, "stage2.1"))
    hard = masked.hard_masks()[i]
    z, y = seen["z"], seen["y"]
    assert torch.equal(y, z * hard.view(1, -1, 1, 1))
    formula = (y.grad * z).sum(dim=(0, 2, 3))
    assert torch.allclose(masked.scores[i].grad, formula, atol=1e-6)
    # behind a ReLU a dropped channel gets no gradient of its own: the cascade supplies it
    assert masked.scores[i].grad[hard == 0].abs().sum() == 0


# ---- the cascade ----------------------------------------------------------------------------
def test_cascade_keeps_are_evenly_spaced_up_to_one():
    assert cascade_keeps(0.4, 3) == pytest.approx([0.4, 0.6, 0.8, 1.0])
    assert cascade_keeps(0.4, 0) == [0.4]
    for keep in (0.05, 0.1, 0.2, 0.3, 0.7):  # 0.2 + 0.8 * 3 / 3 overshoots 1.0 by an ulp
        for assistants in range(1, 6):
            keeps = cascade_keeps(keep, assistants)
            assert keeps[0] == keep and keeps[-1] == 1.0
            assert all(check_keep(k) == k for k in keeps)


def test_cascade_shares_convs_but_not_norms_first_conv_classifier_or_scores():
    model = TinyNet(num_classes=4, width=4)
    layout = find_layout(model, (3, 16, 16))
    cascade = Cascade(model, layout, [0.5, 1.0], magnitude_scores(model, layout.groups))
    small, big = (m.net for m in cascade.models)
    assert small.stage2[0].weight is big.stage2[0].weight
    assert small.stage1[0].weight is not big.stage1[0].weight  # first conv
    assert small.stage2[1].weight is not big.stage2[1].weight  # BatchNorm
    assert small.fc.weight is not big.fc.weight
    assert cascade.models[0].scores[0] is not cascade.models[1].scores[0]
    assert cascade.models[0].kept_fraction() == pytest.approx(0.5, abs=0.05)
    assert cascade.models[1].kept_fraction() == 1.0


def test_each_model_takes_the_next_larger_models_score_gradient():
    a, b, c = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0])
    assert cascade_score_grads([a, b, c]) == [b, c, c]

    torch.manual_seed(0)
    model = TinyNet(num_classes=4, width=4)
    layout = find_layout(model, (3, 16, 16))
    cascade = Cascade(model, layout, [0.4, 0.7, 1.0], _random_scores(layout))
    logits = cascade(torch.randn(4, 3, 16, 16))
    (logits[1].square().sum() + 2 * logits[2].sum()).backward()  # model 0 gets no gradient
    assert all(s.grad is None for s in cascade.models[0].scores)
    own = [None, *([s.grad.clone() for s in m.scores] for m in cascade.models[1:])]
    cascade.cascade_score_grads()
    after = [[s.grad for s in m.scores] for m in cascade.models]
    for group in range(len(layout.groups)):
        assert torch.equal(after[0][group], own[1][group])
        assert torch.equal(after[1][group], own[2][group])
        assert torch.equal(after[2][group], own[2][group])
        assert own[1][group].abs().sum() > 0
    # channels the student dropped but the next model keeps now get a gradient: they can return
    dropped = torch.cat(
        [
            (a == 0) & (b == 1)
            for a, b in zip(
                cascade.models[0].hard_masks(), cascade.models[1].hard_masks(), strict=True
            )
        ]
    )
    assert dropped.any() and torch.cat(after[0])[dropped].abs().min() > 0


def test_cascade_loss_by_hand_and_targets_are_detached():
    torch.manual_seed(0)
    small = torch.randn(3, 5, requires_grad=True)
    big = torch.randn(3, 5, requires_grad=True)
    teacher = torch.randn(3, 5)
    labels = torch.tensor([0, 4, 2])
    tau = 15.0
    terms = cascade_loss([small, big], teacher, labels, tau)

    def kl(target, student):
        p = torch.softmax(target / tau, 1)
        return (p * (p.log() - torch.log_softmax(student / tau, 1))).sum(1).mean() * tau**2

    def ce(z):
        return -torch.log_softmax(z, 1)[torch.arange(3), labels].mean()

    assert torch.allclose(terms["ce"], ce(small) + ce(big))
    assert torch.allclose(terms["kd"], kl(big, small) + kl(teacher, big), atol=1e-5)
    terms["kd"].backward()
    expected_big = torch.autograd.grad(kl(teacher, big), big)[0]
    assert torch.allclose(big.grad, expected_big, atol=1e-6)  # nothing flows back from small


def test_hints_compare_each_model_with_the_next_larger_one():
    torch.manual_seed(0)
    model = TinyNet(num_classes=4, width=4)
    layout = find_layout(model, (3, 16, 16))
    layers = ["stage2", "stage3"]
    cascade = Cascade(model, layout, [0.5, 1.0], _random_scores(layout), hint_layers=layers)
    cascade(torch.randn(2, 3, 16, 16))
    small, big = cascade.hint_features()
    teacher = {name: torch.zeros_like(big[name]) for name in layers}
    expected = sum(((small[n] - big[n]) ** 2).mean() + (big[n] ** 2).mean() for n in layers)
    assert torch.allclose(hint_loss([small, big], teacher), expected)


def test_teacher_ladder_moves_up_when_the_student_beats_its_teacher():
    ladder = TeacherLadder([nn.Identity(), nn.Identity(), nn.Identity()], [80.0, 85.0, 90.0])
    for acc, expected in [(79.0, 0), (80.0, 0), (81.0, 1), (86.0, 2), (95.0, 2)]:
        ladder.observe({"test_acc": acc})
        assert ladder.index == expected


# ---- export ---------------------------------------------------------------------------------
def test_exported_tiny_net_is_smaller_by_the_hand_counted_parameters():
    model = _randomise_norms(TinyNet(num_classes=4, width=8))
    layout = find_layout(model, (3, 16, 16))
    masked = MaskedNet(model, layout.groups, 0.5, _random_scores(layout, 2)).eval()
    a = int(masked.hard_masks()[layout.groups.index(_group_of(layout, "stage2.1"))].sum())
    b = int(masked.hard_masks()[layout.groups.index(_group_of(layout, "stage3.1"))].sum())
    assert a < 16 and b < 32
    small = export(masked, (3, 16, 16)).eval()
    # stem conv 3->8 unpruned, conv 8->a, conv a->b (3x3, no bias), BN weight+bias, fc b->4
    expected = 3 * 8 * 9 + 2 * 8 + 8 * a * 9 + 2 * a + a * b * 9 + 2 * b + b * 4 + 4
    assert count_params(small) == expected
    x = torch.randn(5, 3, 16, 16)
    assert torch.allclose(small(x), masked(x), atol=1e-4)


@pytest.mark.parametrize("name", ["resnet20", "vgg8", "mobilenetv2"])
def test_export_equals_the_masked_model_and_rebuilds_from_its_spec(name, tmp_path):
    width = {} if name == "resnet20" else {"width_mult": 0.25}
    model = _randomise_norms(models.create(name, num_classes=10, **width))
    layout = find_layout(model)
    masked = MaskedNet(model, layout.groups, 0.4, _random_scores(layout, 3)).eval()
    small = export(masked).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = masked(x)
        assert torch.allclose(small(x), expected, atol=1e-4)
    assert count_params(small) < 0.6 * count_params(model)
    path = tmp_path / "pruned.pt"
    checkpoint.save({"arch": small.zoo_spec, "model": small.state_dict()}, path)
    rebuilt = checkpoint.build_model(checkpoint.load(path), path).eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), expected, atol=1e-4)


def test_exported_model_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _randomise_norms(models.create("resnet8", num_classes=10))
    layout = find_layout(model)
    masked = MaskedNet(model, layout.groups, 0.5, _random_scores(layout)).eval()
    small = export(masked).eval()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "pruned.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(small, x, str(path), input_names=["x"], dynamo=False)
    (got,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), masked(x), atol=1e-4)


# ---- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5])
def test_keep_outside_zero_one_is_refused(keep, tiny_data):
    # the settings are checked as the configuration tree is built: prune.keep is named
    with pytest.raises(cfg.ConfigError, match=r"^prune: keep fraction must be in \(0, 1\]"):
        prune(TinyNet(), tiny_data, keep=keep)


def test_model_without_prunable_layer_is_refused():
    only_stem = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    with pytest.raises(PruneError, match="no prunable layer"):
        find_layout(only_stem, (3, 8, 8))


def test_unsupported_layer_type_is_named():
    model = TinyNet()
    model.stage2[1] = nn.GroupNorm(2, 16)
    with pytest.raises(PruneError, match="unsupported layer type GroupNorm at 'stage2.1'"):
        find_layout(model, (3, 16, 16))
    with pytest.raises(PruneError, match="grouped conv"):
        find_layout(models.create("shufflenetv1", num_classes=10, width_mult=0.25))


def test_cli_bad_keep_is_one_line_exit_2(capsys):
    assert cli.main(["prune", "--model", "resnet8", "--keep", "0", "--data", "synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mhkd: error: prune: keep fraction must be in (0, 1], got 0.0"]


# ---- runs ----------------------------------------------------------------------------------
def test_cascade_run_exports_a_smaller_student_and_resumes(tiny_data, fast, tmp_path):
    out = tmp_path / "run"
    options = {**fast, "epochs": 2, "finetune_epochs": 1, "latency_repeats": 2}
    torch.manual_seed(0)
    teacher = models.create("resnet8", num_classes=4, width_mult=0.25)
    result = prune(teacher, tiny_data, keep=0.5, assistants=2, out=out, **options)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["keeps"] == pytest.approx([0.5, 0.75, 1.0])
    assert summary["params_after"] == count_params(result.model) < summary["params_before"]
    assert summary["macs_after"] < summary["macs_before"]
    assert set(summary["latency_ms"]["after"]) == {"batch1", "batch64"}
    assert summary["stage1"]["export_max_abs_diff"] < 1e-4
    assert summary["stage1"]["kept_fractions"][0] == pytest.approx(0.5, abs=0.02)
    stage1 = [json.loads(x) for x in (out / "stage1/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in stage1] == [1, 2] and len(stage1[0]["test_acc_models"]) == 3
    for path in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / path).is_file()
    best_path = out / "checkpoints/best.pt"
    best = checkpoint.build_model(checkpoint.load(best_path), best_path)
    assert count_params(best) == summary["params_after"]

    longer = {**options, "finetune_epochs": 2}  # a longer run is a new run, not a resume
    with pytest.raises(RunDirectoryError, match=r"prune.finetune_epochs 1 \(now 2\)"):
        prune(teacher, tiny_data, keep=0.5, assistants=2, out=out, resume=True, **longer)
    stage1_log = (out / "stage1/metrics.jsonl").read_bytes()
    resumed = prune(teacher, tiny_data, keep=0.5, assistants=2, out=out, resume=True, **options)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]
    assert (out / "stage1/metrics.jsonl").read_bytes() == stage1_log  # stage 1 not repeated
    assert resumed.summary["params_after"] == summary["params_after"]


@pytest.mark.parametrize("baseline", ["magnitude", "taylor"])
def test_baseline_prunes_once_and_fine_tunes(baseline, tiny_data, fast):
    result = prune(
        TinyNet(num_classes=4), tiny_data, keep=0.5, baseline=baseline, epochs=1,
        finetune_epochs=0, latency_repeats=1, **fast,
    )  # fmt: skip
    summary = result.summary
    assert summary["method"] == "ce" and summary["epochs"] == 1
    assert summary["keeps"] == [0.5] and summary["final_teacher"] is None
    assert summary["params_after"] < summary["params_before"]


def test_cli_prunes_a_checkpoint_with_a_recipe_and_overriding_flags(tmp_path, capsys):
    teacher = models.create("resnet8", num_classes=10, width_mult=0.25)
    path = tmp_path / "teacher.pt"
    checkpoint.save({"arch": teacher.zoo_spec, "model": teacher.state_dict()}, path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "data: {name: digits, train_per_class: 20}\nschedule: {epochs: 1}\n"
        "prune: {keep: 0.9, assistants: 1, finetune_epochs: 1}\n"
    )
    out = tmp_path / "run"
    argv = ["prune", "--model", str(path), "--recipe", str(recipe), "--keep", "0.5",
            "--precision", "fp32", "--quiet", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert "params" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == "digits" and summary["keeps"] == [0.5, 1.0]


def test_shipped_prune_recipes_are_valid_and_unknown_keys_are_refused(tmp_path):
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "recipes" / "prune").glob("*.yaml"))
    assert recipes
    for path in recipes:
        tree, notes = cfg.read_recipe(path, PruneRunConfig)
        config = cfg.build(tree, str(path), PruneRunConfig)
        assert config.prune.keep == tree["prune"]["keep"] and "# " not in str(notes)
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune:\n  keep: 0.5\n  keeep: 0.4\n")
    with pytest.raises(cfg.ConfigError, match=r"unknown key\(s\) prune\.keeep"):
        cfg.read_recipe(bad, PruneRunConfig)


def test_cli_prunes_a_repdistiller_checkpoint_of_the_arch_given(tmp_path, capsys):
    """A RepDistiller file in a folder that names another network: ``--arch`` says what it
    is, and stage 1 starts from the file's weights (its top rung is the original's accuracy)."""
    original = trained_like(models.create("resnet8", num_classes=10))
    path = tmp_path / "resnet14_vanilla" / "ckpt_epoch_240.pth"
    repdistiller_file(original, cifar_resnet_keys, path)
    out = tmp_path / "run"
    argv = ["prune", "--model", str(path), "--data", "synthetic", "--train-per-class", "8",
            "--epochs", "1", "--finetune-epochs", "0", "--keep", "0.5", "--assistants", "1",
            "--latency-repeats", "1", "--batch-size", "32", "--precision", "fp32",
            "--device", "cpu", "--quiet", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 2  # the folder's name is wrong and nothing overrides it
    assert "do not fit resnet14" in capsys.readouterr().err
    assert cli.main([*argv, "--arch", "resnet8"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prune"]["arch"] == "resnet8" and summary["model"] == "resnet8"
    assert summary["params_before"] == count_params(original)
    # no fine-tuning: the run's result is the exported student as stage 1 left it
    assert summary["test_acc"] == summary["stage1"]["test_acc_models"][0]
    assert summary["params"] == summary["params_after"] < summary["params_before"]
    test_loader = make_loaders(data.load("synthetic"), 64)[1]
    expected = evaluate(original, test_loader, torch.device("cpu"))
    assert summary["stage1"]["ladder_test_acc"][-1] == pytest.approx(expected)


def test_stage1_is_a_run_of_the_builder_with_its_resolved_layout(tiny_data, fast, tmp_path):
    """Stage 1 gets the run's resolved channels_last (it was always NCHW) and records its
    hardware; with no fine-tuning epochs the pipeline's summary is written by a claimed run
    of OUT, which it releases."""
    out = tmp_path / "run"
    torch.manual_seed(0)
    teacher = models.create("resnet8", num_classes=4, width_mult=0.25)
    settings = {**fast, "channels_last": "on", "epochs": 1, "finetune_epochs": 0,
                "latency_repeats": 1}  # fmt: skip
    result = prune(teacher, tiny_data, keep=0.5, assistants=1, out=out, **settings)
    stage1 = json.loads((out / "stage1/summary.json").read_text())
    assert stage1["channels_last"] is True and stage1["method"] == "cascade"
    resolved = yaml.safe_load((out / "stage1/config.yaml").read_text())["resolved"]
    assert resolved["channels_last"] is True and resolved["precision"] == "fp32"
    assert resolved["keeps"] == [0.5, 1.0] and resolved["world_size"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {**result.summary, "schema": summary["schema"]}
    assert summary["best_epoch"] is None and summary["params_after"] < summary["params_before"]
    assert not (out / ".lock").exists() and not (out / "stage1/.lock").exists()
