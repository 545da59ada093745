"""Streamed image trees: ImageNet's layout written small as real JPEGs, decoded by the loader."""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mhkd.data as data
from mhkd.data import DataError, StreamingSplits, StreamLoader
from mhkd.data.decode import crop_box, sample_rng
from mhkd.data.files import scan_split

CLASSES = ("n03", "n01", "n02")  # neither sorted nor reversed
SIZES = [(50, 40), (80, 120), (40, 50), (120, 80)]  # width × height, as Pillow counts
STATS = {"mean": data.IMAGENET_MEAN, "std": data.IMAGENET_STD}


def pixels(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth colour gradient plus noise: compresses like a photo, differs per image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 200 / width, y * 200 / height, (x + y) * 100 / (width + height)], -1)
    return (base + rng.integers(0, 50, (height, width, 3))).clip(0, 255).astype(np.uint8)


def write_tree(
    root: Path, splits: tuple[str, ...] = ("train", "val"), sizes: list[tuple[int, int]] = SIZES
) -> None:
    """3 classes × 4 JPEGs per split, of the 4 ``sizes``."""
    for s, split in enumerate(splits):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                image = Image.fromarray(pixels(w, h, 100 * s + 10 * c + i))
                image.save(folder / f"{name}_{i}.JPEG", quality=90)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write_tree(tmp_path)
    return tmp_path


def load(root: Path, **options: object) -> StreamingSplits:
    splits = data.load("imagenet", root, **options)
    assert isinstance(splits, StreamingSplits)
    return splits


def passes(loader: StreamLoader, epoch: int) -> list[data.Batch]:
    loader.set_epoch(epoch)
    return list(loader)


def normalized(rgb: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 to C×H×W ImageNet-normalised, in float64, by the formula."""
    mean = np.array(data.IMAGENET_MEAN).reshape(3, 1, 1)
    std = np.array(data.IMAGENET_STD).reshape(3, 1, 1)
    return torch.from_numpy((rgb.transpose(2, 0, 1) / 255.0 - mean) / std)


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


# ---------------------------------------------------------------- the splits


def test_imagenet_layout_is_listed_not_loaded(tree: Path) -> None:
    splits = load(tree, image_size=20)
    assert not splits.resident and splits.name == "imagenet"
    assert splits.classes == ("n01", "n02", "n03") and splits.num_classes == 3
    assert splits.num_train == 12 and len(splits.test) == 12
    assert splits.input_shape == (3, 20, 20) and splits.resize_size == 23  # 20 × 256 / 224
    assert splits.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert splits.train.path(5) == tree / "train" / "n02" / "n02_1.JPEG"
    assert splits.test.path(11) == tree / "val" / "n03" / "n03_3.JPEG"
    assert (splits.mean, splits.std) == (data.IMAGENET_MEAN, data.IMAGENET_STD)
    assert load(tree).input_shape == (3, 224, 224) and load(tree).resize_size == 256


def test_imagenet_layout_errors(tmp_path: Path) -> None:
    write_tree(tmp_path, ("train",))
    layout = r"is no folder of class folders; expected ROOT/train/<wnid>/\*.JPEG and ROOT/val"
    with pytest.raises(DataError, match=f"val {layout}"):
        data.load("imagenet", tmp_path)
    (tmp_path / "val").mkdir()
    Image.fromarray(pixels(8, 8, 0)).save(tmp_path / "val" / "unsorted.JPEG")
    with pytest.raises(DataError, match=f"val {layout}"):
        data.load("imagenet", tmp_path)
    (tmp_path / "val" / "n01").mkdir()
    with pytest.raises(DataError, match=r"class folders differ .*\['n02', 'n03'\]"):
        data.load("imagenet", tmp_path)
    with pytest.raises(DataError, match=r"need 0 < image_size <= resize_size, got image_size=64"):
        data.load("imagenet", tmp_path, image_size=64, resize_size=32)


def test_imagefolder_streams_photos_and_reads_small_trees_whole(tmp_path: Path) -> None:
    write_tree(tmp_path / "photos", ("train", "test"), [(80, 120), (40, 30), (90, 90), (70, 65)])
    for split in ("train", "test"):
        for name in ("a", "b"):
            folder = tmp_path / "tiny" / split / name
            folder.mkdir(parents=True)
            Image.fromarray(pixels(8, 8, 0)).save(folder / "0.png")
            Image.fromarray(pixels(80, 80, 1)).save(folder / "1.png")  # only the first is peeked
    assert data.load("imagefolder", tmp_path / "tiny").resident
    photos = data.load("imagefolder", tmp_path / "photos", image_size=32)
    assert not photos.resident and photos.input_shape == (3, 32, 32)
    assert photos.test.path(0) == tmp_path / "photos" / "test" / "n01" / "n01_0.JPEG"
    assert data.load("imagefolder", tmp_path / "photos").input_shape == (3, 224, 224)
    forced = data.load("imagefolder", tmp_path / "photos", streaming=False, image_size=16)
    assert forced.resident and forced.input_shape == (3, 16, 16) and forced.num_train == 12
    assert not data.load("imagefolder", tmp_path / "tiny", streaming=True).resident


def test_low_label_subset_of_a_stream(tree: Path) -> None:
    splits = load(tree, image_size=16, train_per_class=2, subset_seed=5)
    assert splits.num_train == 6 and len(splits.test) == 12 and splits.train_per_class == 2
    assert torch.bincount(splits.train.labels).tolist() == [2, 2, 2]
    paths = [splits.train.path(i) for i in range(6)]
    assert paths == sorted(paths)
    assert [p.parent.name for p in paths] == ["n01", "n01", "n02", "n02", "n03", "n03"]
    again = load(tree, image_size=16, train_per_class=2, subset_seed=5)
    assert np.array_equal(again.train.files, splits.train.files)
    train, _ = data.make_loaders(splits, 3, workers=0)
    seen = torch.cat([b.indices for b in passes(train, 0)])
    assert sorted(seen.tolist()) == list(range(6))
    with pytest.raises(DataError, match=r"train_per_class=5 exceeds the 4 training images of cl"):
        load(tree, train_per_class=5)


# ---------------------------------------------------------------- decoding


def test_eval_batches_are_the_centre_crop_normalised(tree: Path) -> None:
    splits = load(tree, image_size=20, resize_size=40)
    train, test = data.make_loaders(splits, 4, workers=0, eval_batch_size=5)
    assert isinstance(train, StreamLoader) and isinstance(test, StreamLoader)
    batches = passes(test, 0)
    assert [len(b.labels) for b in batches] == [5, 5, 2] and len(test) == 3
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(12))
    assert torch.cat([b.labels for b in batches]).tolist() == splits.test.labels.tolist()
    images = torch.cat([b.images for b in batches])
    assert images.dtype == torch.float32 and images.shape == (12, 3, 20, 20)
    assert all(b.views is None for b in batches)
    # 40×50 (index 2): the shorter side is already 40, so the crop is rows 15..34, cols 10..29
    hand = normalized(decoded(splits.test.path(2))[15:35, 10:30])
    assert torch.allclose(images[2].double(), hand, atol=1e-5)
    # 120×80 (index 3): resized to 60×40 first, then cols 20..39
    with Image.open(splits.test.path(3)) as image:
        resized = np.asarray(image.convert("RGB").resize((60, 40), Image.Resampling.BILINEAR))
    assert torch.allclose(images[3].double(), normalized(resized[10:30, 20:40]), atol=1e-5)


def test_train_crop_of_the_whole_image_is_it_or_its_mirror(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(pixels(24, 24, i)).save(tmp_path / "train" / name / f"{i}.png")
    fileset = scan_split("test", tmp_path / "train", ["a", "b"])
    loader = StreamLoader(
        fileset,
        16,
        mean=(0, 0, 0),
        std=(1 / 255,) * 3,  # images come back as 0..255 floats
        train=True,
        image_size=24,
        resize_size=24,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        workers=0,
    )
    (batch,) = passes(loader, 0)
    flips = 0
    for image, index in zip(batch.images, batch.indices.tolist(), strict=True):
        original = torch.from_numpy(decoded(fileset.path(index))).permute(2, 0, 1).float()
        mirrored = original.flip(2)
        assert torch.allclose(image, original, atol=1e-3) or torch.allclose(
            image, mirrored, atol=1e-3
        )
        flips += torch.allclose(image, mirrored, atol=1e-3)
    assert 0 < flips < 16


def test_crop_box_follows_scale_and_ratio() -> None:
    for index in range(300):
        left, top, w, h = crop_box(500, 375, sample_rng(0, 0, index))
        assert 0 <= left <= 500 - w and 0 <= top <= 375 - h
        assert 0.08 * 0.9 <= w * h / (500 * 375) <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    # a strip no crop of ratio 3/4..4/3 fits 10 times: the centred whole height at ratio 4/3
    assert crop_box(1000, 10, sample_rng(0, 0, 0)) == ((1000 - 13) // 2, 0, 13, 10)
    assert crop_box(10, 1000, sample_rng(0, 0, 0)) == (0, (1000 - 13) // 2, 10, 13)


def test_training_is_determined_by_seed_and_epoch(tree: Path) -> None:
    splits = load(tree, image_size=16)

    def run(seed: int, epoch: int, **kw: object) -> list[data.Batch]:
        train, _ = data.make_loaders(splits, 4, seed=seed, workers=0, **kw)
        return passes(train, epoch)

    def same(a: list[data.Batch], b: list[data.Batch]) -> bool:
        return all(
            torch.equal(x.images, y.images) and torch.equal(x.indices, y.indices)
            for x, y in zip(a, b, strict=True)
        )

    first = run(1, 2)
    assert len(first) == 3 and all(b.images.shape == (4, 3, 16, 16) for b in first)
    assert all(torch.equal(b.labels, splits.train.labels[b.indices]) for b in first)
    assert same(first, run(1, 2)) and not same(first, run(1, 3)) and not same(first, run(2, 2))
    nhwc = run(1, 2, channels_last=True)
    assert nhwc[0].images.is_contiguous(memory_format=torch.channels_last)
    assert first[0].images.is_contiguous() and same(first, nhwc)
    plain = run(1, 2, augment=False)  # shuffled like ``first``, but resized and centre-cropped
    assert all(torch.equal(a.indices, b.indices) for a, b in zip(first, plain, strict=True))
    sizes = {"image_size": splits.image_size, "resize_size": splits.resize_size}
    in_order = StreamLoader(splits.train, 4, train=False, workers=0, **STATS, **sizes)
    centred = torch.cat([b.images for b in passes(in_order, 0)])
    assert all(torch.equal(b.images, centred[b.indices]) for b in plain)


def test_batches_do_not_depend_on_the_number_of_workers(tree: Path) -> None:
    splits = load(tree, image_size=16)
    inline, _ = data.make_loaders(splits, 4, seed=3, workers=0)
    pooled, _ = data.make_loaders(splits, 4, seed=3, workers=2)
    assert pooled.workers == 2
    for epoch in range(2):  # the second epoch reuses the persistent workers
        for a, b in zip(passes(inline, epoch), passes(pooled, epoch), strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)


def test_two_ranks_read_every_image_once_per_epoch(tree: Path) -> None:
    splits = load(tree, image_size=8)
    single, _ = data.make_loaders(splits, 4, seed=7, workers=0)
    ranks = [data.make_loaders(splits, 2, seed=7, rank=r, world_size=2, workers=0) for r in (0, 1)]
    for epoch in range(2):
        per_rank = [passes(train, epoch) for train, _ in ranks]
        seen = torch.cat([b.indices for batches in per_rank for b in batches])
        assert sorted(seen.tolist()) == list(range(12)), epoch
        for step, whole in enumerate(passes(single, epoch)):  # each rank half a global batch
            parts = [batches[step] for batches in per_rank]
            assert torch.equal(torch.cat([p.indices for p in parts]), whole.indices)
            assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
        tests = [torch.cat([b.indices for b in passes(test, epoch)]) for _, test in ranks]
        assert torch.cat(tests).tolist() == list(range(12))


# ---------------------------------------------------------------- bad files


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def test_corrupt_jpeg_is_an_error_naming_the_file(tree: Path) -> None:
    bad = tree / "train" / "n02" / "n02_1.JPEG"
    truncate(bad)
    (tree / "val" / "n01" / "n01_0.JPEG").write_bytes(b"not a jpeg at all")
    splits = load(tree, image_size=8)
    train, test = data.make_loaders(splits, 4, workers=0)
    with pytest.raises(DataError, match=f"cannot read image {bad}: OSError: image file is trunc"):
        passes(train, 0)
    with pytest.raises(DataError, match=r"n01_0.JPEG: UnidentifiedImageError"):
        passes(test, 0)


def test_corrupt_jpeg_in_a_worker_is_raised_by_the_main_process(tree: Path) -> None:
    bad = tree / "train" / "n03" / "n03_2.JPEG"
    truncate(bad)
    train, _ = data.make_loaders(load(tree, image_size=8), 4, workers=2)
    with pytest.raises(DataError, match=str(bad)):
        passes(train, 0)


def test_skip_bad_drops_and_counts(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tree / "train" / "n02" / "n02_1.JPEG"
    truncate(bad)
    splits = load(tree, image_size=8, skip_bad=True)
    train, _ = data.make_loaders(splits, 4, workers=0)
    with caplog.at_level(logging.WARNING, logger="mhkd.data.stream"):
        for epoch in range(2):
            seen = torch.cat([b.indices for b in passes(train, epoch)])
            assert sorted(seen.tolist()) == [i for i in range(12) if i != 5]
            assert train.skipped == 1 and train.bad_files == {str(bad)}
    assert [str(bad) in r.getMessage() for r in caplog.records] == [True]  # warned once


def test_decompression_bomb_is_refused(tree: Path) -> None:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    # a valid PNG header claiming 30000×30000 pixels: 5× Pillow's refusal limit, 60 bytes
    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    bomb = tree / "val" / "n02" / "n02_9.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    _, test = data.make_loaders(load(tree, image_size=8), 16, workers=0)
    with pytest.raises(DataError, match=f"refusing to decode {bomb}, a decompression bomb"):
        passes(test, 0)


# ---------------------------------------------------------------- whole runs on a streamed tree
def test_train_then_distill_one_epoch_on_an_imagenet_tree(tree: Path, tmp_path: Path) -> None:
    """The ImageNet path end to end at 32×32: a resnet18 teacher, then MHKD into MobileNetV1
    (heads under the stride rule), evaluated and resumed like any run."""
    from mhkd import checkpoint
    from mhkd.cli import main

    common = ["--data", "imagenet", "--data-dir", str(tree), "--image-size", "32",
              "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--quiet"]  # fmt: skip
    teacher = tmp_path / "teacher"
    assert main(["train", "--model", "resnet18", "--epochs", "1", "--out", str(teacher),
                 *common]) == 0  # fmt: skip
    summary = json.loads((teacher / "summary.json").read_text())
    assert summary["data"] == "imagenet" and summary["num_classes"] == 3
    student = tmp_path / "student"
    argv = ["distill", "--teacher", str(teacher / "checkpoints" / "best.pt"), "--student",
            "mobilenetv1", "--method", "mhkd", "--mhkd.head-width", "8", "--out", str(student),
            *common]  # fmt: skip
    assert main([*argv, "--epochs", "2"]) == 0
    assert main([*argv, "--epochs", "2", "--resume"]) == 0  # a finished run: nothing to redo
    records = [json.loads(x) for x in (student / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[0]["loss_mhkd"] > 0
    best = checkpoint.read_state(student / "checkpoints" / "best.pt")
    assert best["data"] == "imagenet" and best["input_shape"] == [3, 32, 32]
    assert not [k for k in best["model"] if "head" in k]  # the bare student
    assert main(["eval", str(student / "checkpoints" / "best.pt"), "--data-dir", str(tree),
                 "--image-size", "32", "--workers", "0"]) == 0  # fmt: skip
