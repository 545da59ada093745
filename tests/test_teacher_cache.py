"""Cached teacher targets: exact per view, reused, refused when they do not match."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TinyNet

from mhkd import api
from mhkd.data import NUM_VIEWS, apply_views, normalize
from mhkd.teacher_cache import CacheError, build_cache, open_cache


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
    torch.testing.assert_close(cache.lookup(indices, views), expected, rtol=2e-3, atol=2e-3)
    other_views = torch.tensor([1, 41, 101, 160])
    assert not torch.allclose(cache.lookup(indices, other_views), expected, atol=1e-3)
    mmap = open_cache(tmp_path, teacher, tiny_data, torch.device("cpu"), mmap=True)
    assert torch.equal(mmap.lookup(indices, views), cache.lookup(indices, views))


def test_topk_cache_keeps_the_top_logits_exactly(tmp_path, teacher, tiny_data):
    build_cache(tmp_path, teacher, tiny_data, torch.device("cpu"), topk=2, quiet=True)
    cache = open_cache(tmp_path, teacher, tiny_data, torch.device("cpu"))
    indices, views = torch.arange(8), torch.full((8,), 7)
    full = online_logits(teacher, tiny_data, indices, views)
    served = cache.lookup(indices, views)
    top_values, top_classes = full.topk(2, dim=1)
    torch.testing.assert_close(served.gather(1, top_classes), top_values, rtol=2e-3, atol=2e-3)
    rest = torch.ones_like(full, dtype=torch.bool).scatter_(1, top_classes, False)
    assert torch.allclose(served[rest].view(8, 2), served.gather(1, top_classes).min(1).values[:,
                          None].expand(8, 2))  # fmt: skip


def test_cache_of_another_teacher_or_data_is_refused(tmp_path, teacher, tiny_data):
    build_cache(tmp_path, teacher, tiny_data, torch.device("cpu"), augment=False, quiet=True)
    with pytest.raises(CacheError, match="another teacher"):
        open_cache(tmp_path, TinyNet(width=12), tiny_data, torch.device("cpu"))
    from mhkd import data

    other = data.load("synthetic", num_train=256, num_test=128, num_classes=4, image_size=16,
                      seed=1)  # fmt: skip
    with pytest.raises(CacheError, match="other data"):
        open_cache(tmp_path, teacher, other, torch.device("cpu"))
    cache = open_cache(tmp_path, teacher, tiny_data, torch.device("cpu"))
    with pytest.raises(CacheError, match="rebuild"):  # built without augmentation views
        cache.lookup(torch.tensor([0]), torch.tensor([3]))


def test_cached_distillation_matches_online_and_reuses_the_cache(tmp_path, teacher, tiny_data,
                                                                 fast, monkeypatch):  # fmt: skip
    def run(name, **extra):
        torch.manual_seed(1)
        return api.trainer(TinyNet(), tiny_data, teacher=teacher, method="kd",
                           out=tmp_path / name, epochs=2, **fast, **extra)  # fmt: skip

    online = run("online")
    online.fit()
    cached = run("cached", teacher_cache=str(tmp_path / "cache"))
    assert cached.step_module.teacher is None  # no teacher forward at all
    summary = cached.fit()
    assert summary["teacher_cache_bytes"] > 0 and summary["teacher_cache_build_seconds"] > 0
    for a, b in zip(online.student.parameters(), cached.student.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)  # fp16 targets, same views
    lines = [(tmp_path / n / "metrics.jsonl").read_text().splitlines()[0] for n in ("online",
             "cached")]  # fmt: skip
    kd_online, kd_cached = (json.loads(line)["loss_kd"] for line in lines)
    assert kd_cached == pytest.approx(kd_online, rel=1e-3)

    monkeypatch.setattr("mhkd.train.build_cache", lambda *a, **k: pytest.fail("rebuilt"))
    run("again", teacher_cache=str(tmp_path / "cache")).fit()


def test_cache_refuses_methods_that_read_teacher_features(tmp_path, teacher, tiny_data, fast):
    from mhkd.methods import Method, register

    if "test_features" not in __import__("mhkd.methods", fromlist=["x"]).available():

        @register
        class _Features(Method):
            name = "test_features"
            weights = {"feat": 0.0}

            def forward(self, student, teacher, batch):
                return {"feat": student.logits.sum() * 0}

    with pytest.raises(ValueError, match="only the teacher's logits"):
        api.trainer(TinyNet(), tiny_data, teacher=teacher, method="test_features",
                    teacher_cache=str(tmp_path), **fast)  # fmt: skip
