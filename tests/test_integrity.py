"""Nothing silently wrong: each test injects one input or fault that once ended "successfully"
with something other than what was asked (a resume that changed a run, a clobbered run,
mangled pixels, a flag that did nothing) and asserts the one-line refusal or the right result.
"""

from __future__ import annotations

import dataclasses
import errno
import fractions
import json
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_faults import TINY, error_lines, model_state, subprocess_env, train

from mhkd import api, cli, data
from mhkd.data import DataError, ImageSet
from mhkd.data.decode import open_rgb
from mhkd.distill import DistillStep

from conftest import FAST, TinyNet


def cli_error(capsys, argv: list[str]) -> str:
    """The one error line of a refused command (exit 2, nothing else on stderr)."""
    assert cli.main(argv) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("mhkd: error: "), line
    return line


# ---- 1. a resumed run is the same run ----------------------------------------------------------
def test_resume_with_other_settings_is_refused_naming_them_and_config_is_untouched(
    tmp_path, capsys
):
    out = tmp_path / "run"
    assert train(out, 2, "--lr", "0.1", "--seed", "7") == 0
    stored = (out / "config.yaml").read_bytes()
    metrics = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()

    line = cli_error(capsys, ["train", *TINY, "--epochs", "2", "--out", str(out), "--resume",
                              "--lr", "0.2", "--seed", "3"])  # fmt: skip
    assert "optim.lr 0.1 (now 0.2)" in line and "runtime.seed 7 (now 3)" in line
    line = cli_error(capsys, ["train", *TINY, "--epochs", "4", "--out", str(out), "--resume",
                              "--lr", "0.1", "--seed", "7"])  # fmt: skip
    assert "schedule.epochs 2 (now 4)" in line and "schedule" in line
    assert (out / "config.yaml").read_bytes() == stored
    assert (out / "metrics.jsonl").read_bytes() == metrics

    # settings that change nothing computed may differ
    assert train(out, 2, "--lr", "0.1", "--seed", "7", "--resume", "--workers", "2",
                 "--no-quiet", "--eval-batch-size", "64") == 0  # fmt: skip
    assert (out / "config.yaml").read_bytes() == stored


def test_an_interrupted_run_resumed_with_its_settings_ends_as_the_whole_run(
    tmp_path, monkeypatch, capsys
):
    assert train(tmp_path / "whole", 2, "--lr", "0.1") == 0
    real_call = DistillStep.__call__
    calls = {"n": 0}

    def preempted(self, batch):
        calls["n"] += 1
        if calls["n"] == 7:  # epoch 2, step 2
            os.kill(os.getpid(), signal.SIGTERM)
        return real_call(self, batch)

    monkeypatch.setattr(DistillStep, "__call__", preempted)
    cut = tmp_path / "cut"
    assert train(cut, 2, "--lr", "0.1") == 128 + signal.SIGTERM
    monkeypatch.setattr(DistillStep, "__call__", real_call)
    capsys.readouterr()
    line = cli_error(capsys, ["train", *TINY, "--epochs", "2", "--out", str(cut), "--resume",
                              "--lr", "0.2", "--seed", "3"])  # fmt: skip
    assert "optim.lr 0.1 (now 0.2)" in line
    assert train(cut, 2, "--lr", "0.1", "--resume") == 0
    whole = model_state(tmp_path / "whole/checkpoints/last.pt")
    resumed = model_state(cut / "checkpoints/last.pt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_run_of_the_previous_release_with_its_aux_section_still_resumes(tmp_path, capsys):
    """Earlier releases wrote the proxy teacher's ``aux`` section (at its defaults) into every
    run's config.yaml; the section is now the proxy pipeline's, absent from plain runs."""
    out = tmp_path / "run"
    assert train(out, 2, "--lr", "0.1") == 0
    tree = yaml.safe_load((out / "config.yaml").read_text())
    assert "aux" not in tree
    old = {"mode": "none", "width": 2.0, "epochs": None, "distill_epochs": None}
    (out / "config.yaml").write_text(yaml.safe_dump({**tree, "aux": old}, sort_keys=False))
    assert train(out, 2, "--lr", "0.1", "--resume") == 0
    (out / "config.yaml").write_text(yaml.safe_dump({**tree, "aux": {**old, "width": 3.0}}))
    line = cli_error(capsys, ["train", *TINY, "--epochs", "2", "--out", str(out), "--resume",
                              "--lr", "0.1"])  # fmt: skip
    assert "aux.width 3.0 (now (absent))" in line


@pytest.mark.parametrize("exists", [False, True])
def test_resume_into_a_missing_or_empty_folder_writes_nothing(tmp_path, capsys, exists):
    out = tmp_path / "run"
    if exists:
        out.mkdir()
    line = cli_error(capsys, ["train", *TINY, "--epochs", "1", "--out", str(out), "--resume"])
    assert "holds no run to continue" in line and str(out) in line
    assert (list(out.iterdir()) == []) if exists else not out.exists()
    assert train(out, 1) == 0  # and a plain run there is not blocked


# ---- 2. no clobbering --------------------------------------------------------------------------
def test_quickstart_refuses_to_replace_a_run_in_its_folder(tmp_path, capsys):
    assert train(tmp_path / "teacher", 1) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "teacher").rglob("*") if p.is_file()}
    capsys.readouterr()
    line = cli_error(capsys, ["quickstart", "--out", str(tmp_path), "--quiet"])
    assert str(tmp_path / "teacher") in line and "--overwrite" in line
    after = {p: p.read_bytes() for p in (tmp_path / "teacher").rglob("*") if p.is_file()}
    assert after == before


def test_an_interrupted_quickstart_advises_what_quickstart_can_do(tmp_path, monkeypatch, capsys):
    real_call = DistillStep.__call__

    def preempted(self, batch):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_call(self, batch)

    monkeypatch.setattr(DistillStep, "__call__", preempted)
    assert cli.main(["quickstart", "--out", str(tmp_path), "--quiet"]) == 128 + signal.SIGTERM
    (line,) = error_lines(capsys)
    assert "--resume" not in line and "--overwrite" in line, line
    assert not (tmp_path / "teacher" / ".lock").exists()


# ---- 4. and 5. nonsense refused, values validated ----------------------------------------------
@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert train(out, 1) == 0
    return str(out / "checkpoints" / "best.pt")


DISTILL = ["distill", "--student", "resnet8", *TINY[2:], "--epochs", "1"]


@pytest.mark.parametrize(
    "flags, culprit",
    [
        (["--method", "kd+kd"], "--method kd+kd names kd more than once"),
        (["--method", "ce"], "--teacher does nothing"),
        (["--method", "kd", "--teacher-cache-topk", "5"], "--teacher-cache-topk does nothing"),
        (["--method", "kd", "--aux-width", "3"], "--aux-width does nothing"),
        (["--method", "kd", "--aux-epochs", "2"], "--aux-epochs does nothing"),
        (["--method", "kd", "--schedule", "cosine", "--milestones", "2"], "--milestones does"),
        (["--method", "kd", "--schedule", "cosine", "--gamma", "0.5"], "--gamma does nothing"),
        (["--method", "kd", "--milestones", "1,2"], "--milestones 1,2 lie beyond --epochs 1"),
        (["--method", "kd", "--mhkd.beta", "3"], "options for mhkd"),
        (["--method", "kd", "--kd.temperature", "inf"], "--kd.temperature must be a finite"),
        (["--method", "kd", "--kd.temperature", "nan"], "--kd.temperature must be a finite"),
        (["--method", "mhkd", "--mhkd.beta", "nan"], "--mhkd.beta must be a finite"),
        (["--method", "mhkd", "--mhkd.beta", "inf"], "--mhkd.beta must be a finite"),
        (["--method", "kd", "--weight", "kd=inf"], "--weight kd must be a finite"),
        (["--method", "kd", "--weight", "kd=nan"], "--weight kd must be a finite"),
        (["--method", "infoflow", "--aux", "auto", "--aux-epochs", "-1"], "--aux-epochs must be"),
    ],
)
def test_distill_settings_that_would_do_nothing_or_wrong_are_refused(
    flags, culprit, teacher_ckpt, tmp_path, capsys
):
    out = tmp_path / "run"
    line = cli_error(capsys, [*DISTILL, "--teacher", teacher_ckpt, "--out", str(out), *flags])
    assert culprit in line, line
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--weight-decay", "inf"], "--weight-decay must be a finite number"),
        (["--momentum", "inf"], "--momentum must be a finite number"),
        (["--momentum", "1e30"], "--momentum must be in [0, 1), got 1e+30"),
        (["--momentum", "1.5"], "--momentum must be in [0, 1), got 1.5"),
        (["--momentum", "0", "--nesterov"], "--nesterov needs momentum"),
        (["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
        (["--seed", "12345678901234567890"], "--seed must be in 0..4294967295"),
        (["--train-per-class", "10000000000"], "--train-per-class must be in 1..10000000"),
        (["--image-size", "100000"], "--image-size must be in 8..4096, got 100000"),
        (["--workers", "1000"], "--workers must be in 0..64, got 1000"),
        (["--epochs", "-1"], "--epochs must be in 1..100000, got -1"),
    ],
)
def test_train_values_out_of_range_name_the_flag_and_range(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in cli_error(capsys, ["train", *TINY, "--out", str(out), *flags])
    assert not out.exists()


def test_a_zoo_name_is_refused_where_a_trained_teacher_is_required(tmp_path, capsys):
    line = cli_error(capsys, [*DISTILL, "--teacher", "resnet20", "--out", str(tmp_path / "r")])
    assert "--teacher resnet20" in line and "trained" in line


@pytest.mark.parametrize(
    "text, message",
    [
        ("data:\n  name: digits\ndata:\n  name: synthetic\n", "duplicate key 'data' (line 3)"),
        ("optim:\n  lr: 0.1\n  lr: 0.2\n", "duplicate key 'lr' (line 3)"),
        ("", "is an empty recipe"),
        ("# only a comment\n", "is an empty recipe"),
    ],
)
def test_recipes_with_repeated_keys_or_no_keys_are_refused(text, message, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    line = cli_error(capsys, ["recipe", str(recipe), "--out", str(tmp_path / "run")])
    assert message in line and str(recipe) in line, line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["models", "--num-classes", "0"], "--num-classes must be in 1..100000, got 0"),
        (["models", "--num-classes", "-5"], "--num-classes must be in 1..100000, got -5"),
        (["models", "--num-classes", "10000000"], "--num-classes must be in 1..100000"),
        (["prune", "--model", "resnet8", "--assistants", "1000"], "--assistants must be in 0..16"),
        (["prune", "--model", "resnet8", "--keep", "nan"], "--keep must be a finite number"),
        (["eval", "x.pt", "--workers", "1000"], "--workers must be in 0..64, got 1000"),
        (
            ["export", "x.pt", "--onnx", "x.onnx", "--image-size", "100000"],
            "--image-size must be in 8..4096, got 100000",
        ),
    ],
)
def test_counts_of_other_commands_are_bounded(argv, message, capsys):
    assert message in cli_error(capsys, argv)


def test_a_non_finite_loss_in_the_first_epoch_does_not_claim_a_kept_checkpoint(
    tmp_path, monkeypatch, capsys
):
    real_call = DistillStep.__call__

    def poisoned(self, batch):
        logits, terms = real_call(self, batch)
        return logits, {**terms, "ce": terms["ce"] * float("nan")}

    monkeypatch.setattr(DistillStep, "__call__", poisoned)
    line = cli_error(capsys, ["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "r")])
    assert "'ce' became nan in epoch 1" in line and "no checkpoint" in line, line
    assert "last good checkpoint is kept" not in line


def test_a_non_finite_loss_later_names_the_checkpoint_kept(tmp_path, monkeypatch, capsys):
    real_call = DistillStep.__call__
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        logits, terms = real_call(self, batch)
        scale = float("nan") if calls["n"] > 5 else 1.0  # epoch 2 on
        return logits, {**terms, "ce": terms["ce"] * scale}

    monkeypatch.setattr(DistillStep, "__call__", poisoned)
    out = tmp_path / "r"
    line = cli_error(capsys, ["train", *TINY, "--epochs", "2", "--out", str(out)])
    assert "epoch 2" in line and "last.pt (epoch 1) is kept" in line, line
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]


# ---- 3. decoding keeps what pixel values mean --------------------------------------------------
SIDE = 32  # the resident default: no resize, so decoded values are compared exactly


def _png_tree(root) -> dict[str, np.ndarray]:
    """An image folder of 16-bit, RGBA, LA and palette PNGs; returns each file's expected RGB."""
    rng = np.random.default_rng(0)
    wide = (np.arange(SIDE * SIDE).reshape(SIDE, SIDE) * 64).astype(np.uint16)  # 0..65472
    rgba = rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    la = rng.integers(0, 256, (SIDE, SIDE, 2), dtype=np.uint8)
    scaled = np.round(wide.astype(np.float64) * 255 / 65535)
    over_black = rgba[..., :3] * (rgba[..., 3:] / 255.0)
    grey = la[..., :1] * (la[..., 1:] / 255.0)
    palette = Image.new("P", (SIDE, SIDE), 0)
    palette.putpalette([200, 50, 50, 10, 20, 30])
    files = {
        "train/a/wide.png": (Image.fromarray(wide), np.repeat(scaled[..., None], 3, 2)),
        "train/b/rgba.png": (Image.fromarray(rgba, "RGBA"), over_black),
        "train/b/la.png": (Image.fromarray(la, "LA"), np.repeat(grey, 3, 2)),
        # constant images in the test split: what a resize and crop cannot change
        "test/a/wide.png": (Image.fromarray(np.full((SIDE, SIDE), 128 * 257, np.uint16)), 128),
        "test/b/clear.png": (palette, 0),  # colour 0 is (200, 50, 50) but fully transparent
    }
    expected = {}
    for name, (image, rgb) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        extra = {"transparency": 0} if image.mode == "P" else {}
        image.save(root / name, **extra)
        expected[name] = np.broadcast_to(np.asarray(rgb, np.float64), (SIDE, SIDE, 3))
    assert Image.open(root / "train/a/wide.png").mode in ("I;16", "I")  # really 16-bit
    return expected


def test_16_bit_alpha_and_palette_pngs_keep_their_meaning_in_both_data_paths(tmp_path):
    expected = _png_tree(tmp_path)
    for name, rgb in expected.items():  # the decoder both paths call
        assert np.abs(np.asarray(open_rgb(tmp_path / name), np.float64) - rgb).max() <= 1, name

    resident = data.load("imagefolder", root=tmp_path, streaming=False)
    order = ["train/a/wide.png", "train/b/la.png", "train/b/rgba.png"]  # sorted per class
    for image, name in zip(resident.train.images, order, strict=True):
        got = image.permute(1, 2, 0).double().numpy()
        assert np.abs(got - expected[name]).max() <= 1, name
    assert (resident.train.images[0] == 255).float().mean() < 0.01  # not clipped to white

    streamed = data.load("imagefolder", root=tmp_path, streaming=True, image_size=SIDE)
    _, test = data.make_loaders(streamed, 2, workers=1)
    (batch,) = list(test)
    mean, std = torch.tensor(streamed.mean), torch.tensor(streamed.std)
    pixels = (batch.images * std[:, None, None] + mean[:, None, None]) * 255
    assert torch.allclose(pixels[0], torch.full_like(pixels[0], 128.0), atol=1)
    assert torch.allclose(pixels[1], torch.zeros_like(pixels[1]), atol=1)


def test_a_constant_channel_is_an_error_naming_channel_and_data_set(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
            image[..., 2] = 7  # blue never varies
            (tmp_path / split / label).mkdir(parents=True)
            Image.fromarray(image).save(tmp_path / split / label / "0.png")
    argv = ["train", "--model", "resnet8", "--data", "imagefolder", "--data-dir", str(tmp_path),
            "--batch-size", "2", "--epochs", "1", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "run")]  # fmt: skip
    line = cli_error(capsys, argv)
    assert "imagefolder: channel 2 (blue)" in line and "std 0.0" in line, line


def test_api_splits_whose_train_and_test_sizes_differ_are_refused(tiny_data, tmp_path):
    small = ImageSet(tiny_data.test.images[:, :, :8, :8].contiguous(), tiny_data.test.labels)
    splits = dataclasses.replace(tiny_data, test=small)
    with pytest.raises(DataError, match=r"synthetic: training images are 3×16×16 but test images "
                       r"3×8×8"):  # fmt: skip
        api.train("resnet8", splits, epochs=1, out=tmp_path / "run", **FAST)
    assert not (tmp_path / "run").exists()


# ---- 7. the teacher cache: atomic, locked, cleaned up on any exit ------------------------------
def _cache_argv(teacher_ckpt: str, tmp_path) -> list[str]:
    cache = ["--teacher-cache", str(tmp_path / "cache"), "--no-augment"]  # one view: fast
    return [*DISTILL, "--teacher", teacher_ckpt, "--method", "kd", "--out", str(tmp_path / "run"),
            *cache]  # fmt: skip


def _leftovers(tmp_path) -> list[str]:
    names = [".lock", "*.part", "meta.json"]
    found = [p for n in names for p in (tmp_path / "cache").glob(n)]
    return sorted(str(p) for p in [*found, *(tmp_path / "run").glob(".lock")])


def test_a_full_disk_while_building_the_teacher_cache_is_one_line_and_leaves_no_lock(
    teacher_ckpt, tmp_path, monkeypatch, capsys
):
    def disk_full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", disk_full)
    line = cli_error(capsys, _cache_argv(teacher_ckpt, tmp_path))
    assert line == (
        f"mhkd: error: cannot build teacher cache in {tmp_path / 'cache'}: No space left on device"
    )
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert cli.main([*_cache_argv(teacher_ckpt, tmp_path), "--overwrite"]) == 0  # and then builds
    assert (tmp_path / "cache" / "meta.json").is_file() and _leftovers(tmp_path)[-1].endswith(
        "meta.json"
    )


def test_sigterm_while_building_the_teacher_cache_removes_its_lock_and_parts(
    teacher_ckpt, tmp_path
):
    terminated_in_build = (  # the first teacher batch of the cache build sends SIGTERM
        "import os, signal, sys\n"
        "import mhkd.teacher_cache as tc\n"
        "views = tc.apply_views\n"
        "tc.apply_views = lambda *a: (os.kill(os.getpid(), signal.SIGTERM), views(*a))[1]\n"
        "from mhkd.cli import main; sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run([sys.executable, "-c", terminated_in_build,
                           *_cache_argv(teacher_ckpt, tmp_path)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    assert "SIGTERM while building the teacher cache" in line, line
    assert _leftovers(tmp_path) == []
    assert list((tmp_path / "cache").iterdir()) == []


# ---- 6. messages that say the right thing ------------------------------------------------------
def test_a_file_that_is_no_checkpoint_never_advises_weights_only_false(tmp_path, capsys):
    pickled = tmp_path / "objects.pt"
    torch.save({"model": fractions.Fraction(1, 3)}, pickled)  # a pickled Python object
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    for path, why in ((pickled, "fractions.Fraction"), (text, "not a PyTorch checkpoint")):
        line = cli_error(capsys, ["eval", str(path), "--data", "synthetic"])
        assert str(path) in line and why in line, line
        assert "weights_only" not in line and "Traceback" not in line


def test_a_corrupt_cifar_pickle_names_its_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
        (folder / name).write_bytes(pickle.dumps(batch, protocol=3))  # as test_data does
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match=f"^{folder / 'data_batch_3'}: cannot read CIFAR pickle"):
        data.load("cifar10", root=tmp_path, download=False)


def test_mhkd_head_stages_zero_gives_the_allowed_range(teacher_ckpt, tmp_path, capsys):
    argv = [*DISTILL, "--teacher", teacher_ckpt, "--method", "mhkd", "--mhkd.head-stages", "0",
            "--out", str(tmp_path / "run")]  # fmt: skip
    line = cli_error(capsys, argv)
    assert "head_stages must be in 1..16" in line and "got 0" in line, line
    assert "from 1 to 0" not in line


# ---- 8. the Python API with the user's own modules ---------------------------------------------
class _TupleNet(TinyNet):
    """Returns (logits, input): what some user models do."""

    def forward(self, x):
        return super().forward(x), x


def test_at_on_layers_without_spatial_maps_says_what_the_layer_must_be(tiny_data):
    with pytest.raises(ValueError, match=r"at needs teacher layers with spatial maps \(outputs "
                       r"N×C×H×W.*teacher layer 'fc' gives N×4"):  # fmt: skip
        api.distill(TinyNet(), TinyNet(), tiny_data, method="at", teacher_layers=["fc"],
                    student_layers=["fc"], epochs=1, **FAST)  # fmt: skip


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_module_returning_a_tuple_says_what_the_output_must_be(role, tiny_data):
    models = {"student": TinyNet(), "teacher": TinyNet(), role: _TupleNet()}
    with pytest.raises(ValueError, match=f"the {role} \\(_TupleNet\\) must return one logits "
                       "tensor of shape batch × 4 classes, but returned a tuple"):  # fmt: skip
        api.distill(models["teacher"], models["student"], tiny_data, method="kd", epochs=1,
                    **FAST)  # fmt: skip


def test_an_explicit_aux_none_run_resumes_as_one_without_it(tmp_path):
    """``--aux none`` writes the section at its defaults; such a run and one without it compare
    alike on resume (the one rule, config.without_default_sections, on both sides)."""
    out = tmp_path / "run"
    teacher = tmp_path / "t"
    assert train(teacher, 1, "--lr", "0.1") == 0
    base = [*DISTILL, "--teacher", str(teacher / "checkpoints/best.pt"), "--out", str(out)]
    assert cli.main([*base, "--aux", "none"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["aux"]["mode"] == "none"
    assert cli.main([*base, "--resume"]) == 0
