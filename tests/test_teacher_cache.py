"""Cached teacher targets: exact per view (logits and MHKD's pre-fitted teacher heads), reused,
refused when they do not match."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
import torch

from mhkd import config, data, teacher_cache
from mhkd.data import NUM_VIEWS, apply_views, normalize
from mhkd.data.batch import Batch
from mhkd.lock import LockHolder
from mhkd.methods import MethodContext, MethodSet, ModelOutput
from mhkd.methods.mhkd import MHKDOptions
from mhkd.pipelines.builder import fit, fit_prefit
from mhkd.taps import Taps
from mhkd.teacher_cache import CacheError, build_cache, cached_outputs, open_cache

from conftest import Batches, TinyNet
from test_lock import dead_pid, write_lock


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return TinyNet(width=12).eval()


def online_logits(teacher, splits, indices, views):
    images = apply_views(splits.train.images[indices], views)
    with torch.no_grad():
        return teacher(normalize(images, splits.mean, splits.std))


def test_cache_serves_the_teachers_logits_for_the_exact_view(tmp_path, teacher, tiny_data):
    meta = build_cache(tmp_path, teacher, tiny_data, torch.device("cpu"), quiet=True)
    assert meta["views"] == list(range(NUM_VIEWS)) and meta["num_samples"] == 256
    assert meta["size_bytes"] >= 256 * NUM_VIEWS * 4 * 2  # fp16 logits, 4 classes
    cache = open_cache(tmp_path, teacher, tiny_data, torch.device("cpu"))
    indices = torch.tensor([0, 5, 17, 255])
    views = torch.tensor([0, 40, 100, 161])
    expected = online_logits(teacher, tiny_data, indices, views)
    served = cache.lookup(indices, views)
    assert served.features == {}  # built without extra outputs
    torch.testing.assert_close(served.logits, expected, rtol=2e-3, atol=2e-3)
    other_views = torch.tensor([1, 41, 101, 160])
    assert not torch.allclose(cache.lookup(indices, other_views).logits, expected, atol=1e-3)
    mmap = open_cache(tmp_path, teacher, tiny_data, torch.device("cpu"), mmap=True)
    assert torch.equal(mmap.lookup(indices, views).logits, served.logits)


def test_topk_cache_keeps_the_top_logits_exactly(tmp_path, teacher, tiny_data):
    build_cache(tmp_path, teacher, tiny_data, torch.device("cpu"), topk=2, quiet=True)
    cache = open_cache(tmp_path, teacher, tiny_data, torch.device("cpu"))
    indices, views = torch.arange(8), torch.full((8,), 7)
    full = online_logits(teacher, tiny_data, indices, views)
    served = cache.lookup(indices, views).logits
    top_values, top_classes = full.topk(2, dim=1)
    torch.testing.assert_close(served.gather(1, top_classes), top_values, rtol=2e-3, atol=2e-3)
    rest = torch.ones_like(full, dtype=torch.bool).scatter_(1, top_classes, False)
    assert torch.allclose(served[rest].view(8, 2), served.gather(1, top_classes).min(1).values[:,
                          None].expand(8, 2))  # fmt: skip


def test_cache_of_another_teacher_or_data_is_refused(tmp_path, teacher, tiny_data):
    build_cache(tmp_path, teacher, tiny_data, torch.device("cpu"), augment=False, quiet=True)
    with pytest.raises(CacheError, match="another teacher"):
        open_cache(tmp_path, TinyNet(width=12), tiny_data, torch.device("cpu"))
    other = data.load("synthetic", num_train=256, num_test=128, num_classes=4, image_size=16,
                      seed=1)  # fmt: skip
    with pytest.raises(CacheError, match="other data"):
        open_cache(tmp_path, teacher, other, torch.device("cpu"))
    cache = open_cache(tmp_path, teacher, tiny_data, torch.device("cpu"))
    with pytest.raises(CacheError, match="rebuild"):  # built without augmentation views
        cache.lookup(torch.tensor([0]), torch.tensor([3]))


def prefit_mhkd(teacher, splits, **options):
    """MHKD with teacher heads pre-fitted for one epoch on ``splits`` (identity views)."""
    torch.manual_seed(0)
    ctx = MethodContext(student=TinyNet(width=4), teacher=teacher, num_classes=4,
                        input_shape=(3, 16, 16))  # fmt: skip
    options = MHKDOptions(head_mode="prefit", head_width=16, prefit_epochs=1, **options)
    methods = MethodSet("mhkd", ctx, {"mhkd": options})
    images = normalize(splits.train.images, splits.mean, splits.std)
    loader = Batches(Batch(images[i : i + 64], splits.train.labels[i : i + 64],
                           torch.arange(i, i + 64)) for i in range(0, len(images), 64))  # fmt: skip
    (prefit,) = methods.prefits()
    fit_prefit(prefit, teacher, loader, loader)
    return methods


def test_cache_serves_prefit_teacher_head_outputs_for_the_exact_view(tmp_path, teacher):
    splits = data.load("synthetic", num_train=64, num_test=16, num_classes=4, image_size=16)
    methods = prefit_mhkd(teacher, splits)
    method = methods.methods["mhkd"]
    outputs = cached_outputs(methods)
    assert outputs.layers == ("stage1", "stage2", "stage3")
    meta = build_cache(tmp_path, teacher, splits, torch.device("cpu"), outputs=outputs,
                       quiet=True)  # fmt: skip
    assert meta["extras"] == {f"mhkd.head{j}": [4] for j in (1, 2, 3)}
    cache = open_cache(tmp_path, teacher, splits, torch.device("cpu"), outputs=outputs)

    indices, views = torch.tensor([0, 9, 33, 63]), torch.tensor([0, 40, 100, 161])
    images = normalize(apply_views(splits.train.images[indices], views), splits.mean, splits.std)
    with Taps(teacher, method.teacher_layers) as taps, torch.no_grad():
        fresh = ModelOutput(teacher(images), taps.pop())
    fresh_heads = method.teacher_head_logits(fresh.features)
    served = cache.lookup(indices, views)
    torch.testing.assert_close(served.logits, fresh.logits, rtol=2e-3, atol=2e-3)
    for j, expected in enumerate(fresh_heads, 1):
        torch.testing.assert_close(served.features[f"mhkd.head{j}"], expected, rtol=2e-3,
                                   atol=2e-3)  # fmt: skip
    wrong = cache.lookup(indices, torch.tensor([1, 41, 101, 160])).features["mhkd.head1"]
    assert not torch.allclose(wrong, fresh_heads[0], atol=1e-3)
    mmap = open_cache(tmp_path, teacher, splits, torch.device("cpu"), mmap=True, outputs=outputs)
    assert torch.equal(mmap.lookup(indices, views).features["mhkd.head2"],
                       served.features["mhkd.head2"])  # fmt: skip

    # A step served by the cache gives the online step's loss terms (to fp16 rounding).
    batch = Batch(images, splits.train.labels[indices], indices, views)
    g = torch.Generator().manual_seed(3)
    s_out = ModelOutput(torch.randn(4, 4, generator=g), {
        name: torch.randn(4, *shape, generator=g)
        for name, shape in zip(method.student_layers, method.head_inputs["student"], strict=True)
    })  # fmt: skip
    online, cached = methods(s_out, fresh, batch), methods(s_out, served, batch)
    assert set(cached) == {"kd", "mhkd"}
    for term in cached:
        torch.testing.assert_close(cached[term], online[term], rtol=2e-3, atol=2e-3)


def test_cache_of_other_teacher_heads_or_a_live_method_is_refused(tmp_path, teacher):
    splits = data.load("synthetic", num_train=64, num_test=16, num_classes=4, image_size=16)
    methods = prefit_mhkd(teacher, splits)
    device = torch.device("cpu")
    build_cache(tmp_path, teacher, splits, device, outputs=cached_outputs(methods),
                augment=False, quiet=True)  # fmt: skip
    with pytest.raises(CacheError, match="logits only"):  # a kd run reads no head outputs
        open_cache(tmp_path, teacher, splits, device)
    with torch.no_grad():  # training moves the student heads: the cache still serves
        methods.methods["mhkd"].student_heads[0].fcs[-1].bias.add_(0.1)
    open_cache(tmp_path, teacher, splits, device, outputs=cached_outputs(methods))
    with torch.no_grad():  # the teacher heads move: the stored outputs are stale
        methods.methods["mhkd"].teacher_heads[0].fcs[-1].bias.add_(0.1)
    with pytest.raises(CacheError, match="other pre-fitted MHKD teacher heads"):
        open_cache(tmp_path, teacher, splits, device, outputs=cached_outputs(methods))
    ctx = MethodContext(student=TinyNet(width=4), teacher=teacher, num_classes=4,
                        input_shape=(3, 16, 16))  # fmt: skip
    joint = MethodSet("mhkd", ctx, {"mhkd": MHKDOptions(head_width=8)})
    with pytest.raises(ValueError, match="mhkd of 'mhkd' read live teacher features"):
        cached_outputs(joint)
    assert cached_outputs(MethodSet("kd", ctx)) is None  # logits only


PREFIT = {"mhkd": {"head_mode": "prefit", "head_width": 8, "prefit_epochs": 1}}


class TeacherCalls:
    """Counts the teacher's forward passes: in a step or a pre-fit (``live``), or building a
    cache (``inference``, which only :func:`build_cache` runs the teacher under)."""

    def __init__(self, teacher):
        self.live = self.inference = 0
        self.handle = teacher.register_forward_hook(self._count)

    def _count(self, *_):
        if torch.is_inference_mode_enabled():
            self.inference += 1
        else:
            self.live += 1


@pytest.mark.parametrize("method", ["kd", "mhkd"])
def test_cached_distillation_matches_online_and_reuses_the_cache(
    tmp_path, teacher, tiny_data, fast, monkeypatch, method
):
    """KD, and MHKD with its pre-fitted teacher heads served from the cache."""
    options = PREFIT if method == "mhkd" else {}
    steps = 2 * len(tiny_data.train.labels) // fast["batch_size"]  # 2 epochs of 8 batches

    def run(name, **runtime):
        tree = config.from_keywords(method=method, options=options, epochs=2, **fast, **runtime)
        torch.manual_seed(1)
        calls = TeacherCalls(teacher)
        try:
            summary = fit(config.build(tree), tmp_path / name, student=TinyNet(),
                                   teacher=teacher, splits=tiny_data)  # fmt: skip
        finally:
            calls.handle.remove()
        state = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return summary, calls, state["step"]["model"], json.loads(lines[0])

    cache = tmp_path / "cache"
    _, online_calls, online, online_epoch = run("online")
    summary, calls, cached, cached_epoch = run("cached", teacher_cache=str(cache))
    assert online_calls.inference == 0 and calls.inference > 0  # the cache was built ...
    assert calls.live == online_calls.live - steps  # ... and no step ran the teacher
    assert summary["teacher_cache_bytes"] > 0 and summary["teacher_cache_build_seconds"] > 0
    meta = json.loads((cache / "meta.json").read_text())
    assert list(meta["extras"]) == ([f"mhkd.head{j}" for j in (1, 2, 3)] if options else [])
    for key, value in online.items():
        torch.testing.assert_close(cached[key], value, rtol=1e-2, atol=1e-3)  # fp16 targets
    for term in ("kd", *(["mhkd"] if options else [])):
        assert cached_epoch[f"loss_{term}"] == pytest.approx(online_epoch[f"loss_{term}"], rel=1e-3)

    # Again: the cache is opened, not rebuilt (for MHKD the re-fitted heads fingerprint alike).
    rebuilt = lambda *a, **k: pytest.fail("rebuilt")  # noqa: E731
    monkeypatch.setattr("mhkd.pipelines.builder.build_cache", rebuilt)
    _, again_calls, again, _ = run("again", teacher_cache=str(cache))
    assert again_calls.inference == 0 and again_calls.live == calls.live
    assert all(torch.equal(again[key], value) for key, value in cached.items())
    assert json.loads((cache / "meta.json").read_text()) == meta


@pytest.mark.parametrize(
    ("method", "live"), [("crd", "crd"), ("mhkd", "mhkd"), ("crd+mhkd", "crd, mhkd")]
)
def test_cache_refuses_methods_that_read_teacher_features(
    tmp_path, teacher, tiny_data, fast, method, live
):
    """CRD's embedding and MHKD's jointly trained teacher heads read live teacher features."""
    options = {"mhkd": {"head_width": 8}} if "mhkd" in method else {}  # joint: the default
    tree = config.from_keywords(method=method, options=options, epochs=1,
                                teacher_cache=str(tmp_path / "cache"), **fast)  # fmt: skip
    with pytest.raises(ValueError) as caught:
        fit(config.build(tree), tmp_path / "run", student=TinyNet(), teacher=teacher,
                     splits=tiny_data)  # fmt: skip
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--teacher-cache")
    assert f"{live} of {method!r} read live teacher features" in message
    assert not (tmp_path / "cache" / "meta.json").exists()  # refused before building anything
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()  # and before training


# ---- one build at a time (mhkd.lock) ---------------------------------------------------------
def test_a_build_in_progress_elsewhere_is_refused_in_the_cache_s_words(
    tmp_path, teacher, tiny_data
):
    def build():
        build_cache(tmp_path, teacher, tiny_data, torch.device("cpu"), augment=False, quiet=True)

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        write_lock(tmp_path, sleeper.pid)
        with pytest.raises(CacheError) as refused:
            build()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert str(refused.value) == (
        f"teacher cache {tmp_path} is being built by pid {sleeper.pid}@{socket.gethostname()} "
        f"since 2026-01-02 03:04:05 (if it no longer runs, delete {tmp_path / '.lock'})"
    )
    (tmp_path / ".lock").write_text("")  # a builder that died between create and write
    with pytest.raises(CacheError, match=r"by another process \(if it no .*/\.lock\)$"):
        build()
    write_lock(tmp_path, dead_pid())
    (tmp_path / ".lock.takeover").touch()  # a rival taking the stale lock over
    with pytest.raises(CacheError) as refused:
        build()
    assert str(refused.value) == (
        f"teacher cache {tmp_path} is being built by another process (if none is, delete "
        f"{tmp_path / '.lock.takeover'})"
    )
    assert not (tmp_path / "meta.json").exists()


def test_a_dead_builder_s_lock_is_taken_over_and_the_build_s_own_removed(
    tmp_path, teacher, tiny_data
):
    write_lock(tmp_path, dead_pid())
    build_cache(tmp_path, teacher, tiny_data, torch.device("cpu"), augment=False, quiet=True)
    assert (tmp_path / "meta.json").is_file() and not (tmp_path / ".lock").exists()
    with teacher_cache._build_lock(tmp_path):
        assert LockHolder.read(tmp_path / ".lock").pid == os.getpid()
        held = pytest.raises(CacheError, match="is being built by pid")  # held here: not stale
        with held, teacher_cache._build_lock(tmp_path):
            pass
    assert not (tmp_path / ".lock").exists()
