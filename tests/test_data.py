"""Data sets in their official formats (written tiny here), augmentation views and loaders."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import mhkd.data as data
from mhkd.data import DataError, DeviceLoader, apply_views, normalize, random_views
from mhkd.data import svhn as svhn_module
from mhkd.data.augment import IDENTITY_VIEW, NUM_VIEWS, OFFSETS, PAD
from mhkd.data.base import ImageSet, make_splits
from mhkd.data.download import Remote, md5sum


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network fails the test loudly (not as a caught OSError)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# ---------------------------------------------------------------- official-format writers

CIFAR = {
    # python dir, python train members, python test, label key, binary dir, bin train, bin test
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        b"labels",
        "cifar-10-batches-bin",
        [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test_batch.bin",
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        "test",
        b"fine_labels",
        "cifar-100-binary",
        ["train.bin"],
        "test.bin",
    ),
}
ARCHIVES = {
    ("cifar10", "python"): "cifar-10-python.tar.gz",
    ("cifar10", "binary"): "cifar-10-binary.tar.gz",
    ("cifar100", "python"): "cifar-100-python.tar.gz",
    ("cifar100", "binary"): "cifar-100-binary.tar.gz",
}


def cifar_batches(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random (data N×3072 uint8, fine labels) per official batch file, test batch last."""
    num_classes = 10 if name == "cifar10" else 100
    count = len(CIFAR[name][1]) + 1
    sizes = [3 + i for i in range(count)]
    return [
        (
            rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            rng.integers(0, num_classes, n).astype(np.int64),
        )
        for n in sizes
    ]


def python_pickle(name: str, images: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch pickled like the official Python 2 files: bytes keys, numpy.core globals."""
    batch = {b"batch_label": b"batch", b"data": images, b"filenames": [b"x.png"] * len(labels)}
    if name == "cifar10":
        batch[b"labels"] = labels.tolist()
    else:
        batch[b"fine_labels"] = labels.tolist()
        batch[b"coarse_labels"] = (labels // 5).tolist()
    raw = pickle.dumps(batch, protocol=3)  # protocol 3 writes globals as text, like protocol 2
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def binary_batch(name: str, images: np.ndarray, labels: np.ndarray) -> bytes:
    label_cols = [labels] if name == "cifar10" else [labels // 5, labels]  # coarse, fine
    return np.column_stack([*(c.astype(np.uint8) for c in label_cols), images]).tobytes()


def write_files(root: Path, folder: str, files: dict[str, bytes], archive: str | None) -> None:
    """Write ``files`` into ``root/folder`` or, if ``archive`` is given, a tar.gz of it."""
    if archive is None:
        (root / folder).mkdir(parents=True)
        for member, raw in files.items():
            (root / folder / member).write_bytes(raw)
        return
    with tarfile.open(root / archive, "w:gz") as tar:
        for member, raw in files.items():
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def write_cifar(root: Path, name: str, fmt: str, packed: bool, batches: list) -> None:
    py_dir, py_train, py_test, _, bin_dir, bin_train, bin_test = CIFAR[name]
    if fmt == "python":
        folder, members = py_dir, [*py_train, py_test]
        files = {m: python_pickle(name, *b) for m, b in zip(members, batches, strict=True)}
    else:
        folder, members = bin_dir, [*bin_train, bin_test]
        files = {m: binary_batch(name, *b) for m, b in zip(members, batches, strict=True)}
    write_files(root, folder, files, ARCHIVES[(name, fmt)] if packed else None)


# ---------------------------------------------------------------- data sets


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("fmt", ["python", "binary"])
@pytest.mark.parametrize("packed", [True, False], ids=["archive", "folder"])
def test_cifar_round_trip(tmp_path: Path, name: str, fmt: str, packed: bool) -> None:
    batches = cifar_batches(name, np.random.default_rng(len(name) + len(fmt) + packed))
    write_cifar(tmp_path, name, fmt, packed, batches)
    splits = data.load(name, tmp_path, download=False)

    train_x = np.concatenate([b[0] for b in batches[:-1]]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate([b[1] for b in batches[:-1]])
    assert splits.name == name and splits.num_classes == (10 if name == "cifar10" else 100)
    for split, (x, y) in ((splits.train, (train_x, train_y)), (splits.test, batches[-1])):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape == (len(y), 3, 32, 32)
        assert np.array_equal(split.images.numpy(), x.reshape(-1, 3, 32, 32))
        assert np.array_equal(split.labels.numpy(), y)
    expected_mean = train_x.transpose(1, 0, 2, 3).reshape(3, -1).mean(1) / 255
    expected_std = train_x.transpose(1, 0, 2, 3).reshape(3, -1).std(1) / 255
    assert np.allclose(splits.mean, expected_mean) and np.allclose(splits.std, expected_std)


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {marker}",)

    batches = cifar_batches("cifar10", np.random.default_rng(0))
    write_cifar(tmp_path, "cifar10", "python", False, batches)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DataError, match="refusing to load"):
        data.load("cifar10", tmp_path, download=False)
    assert not marker.exists()


def test_cifar_missing_files_name_them(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        data.load("cifar100", tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    for needed in ("cifar-100-python.tar.gz", "cifar-100-binary.tar.gz", "https://"):
        assert needed in message


def test_cifar_archive_without_official_members(tmp_path: Path) -> None:
    write_files(tmp_path, "wrong-folder", {"test_batch": b"x"}, "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="cifar-10-batches-py/data_batch_1"):
        data.load("cifar10", tmp_path, download=False)


def write_svhn(path: Path, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = np.arange(n, dtype=np.uint8).reshape(n, 1) % 10 + 1  # 1..10, 10 meaning the digit 0
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y


def test_svhn_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train, y_train = write_svhn(tmp_path / "train_32x32.mat", rng, 12)
    write_svhn(tmp_path / "test_32x32.mat", rng, 5)
    splits = data.load("svhn", tmp_path, download=False)
    assert splits.train.images.shape == (12, 3, 32, 32) and len(splits.test) == 5
    assert splits.train.images.dtype == torch.uint8
    assert np.array_equal(splits.train.images.numpy(), x_train.transpose(3, 2, 0, 1))
    assert np.array_equal(splits.train.labels.numpy(), y_train.ravel() % 10)
    assert splits.train.labels.min() == 0 and splits.train.labels.max() == 9


def test_svhn_in_matlab_v73_format_is_one_line_naming_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_svhn(tmp_path / "test_32x32.mat", rng, 5)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ."  # as MATLAB writes
    train = tmp_path / "train_32x32.mat"
    train.write_bytes(header.ljust(116) + bytes(8) + b"\x00\x02IM" + bytes(512))
    with pytest.raises(data.DataError, match=rf"^{train} is a MATLAB v7.3 \(HDF5\) file"):
        data.load("svhn", tmp_path, download=False)


def test_svhn_download_failure_names_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    write_svhn(tmp_path / "train_32x32.mat", np.random.default_rng(0), 2)
    with pytest.raises(DataError) as err:
        data.load("svhn", tmp_path, download=True)
    message = str(err.value)
    assert "test_32x32.mat" in message and "train_32x32.mat" not in message
    assert "download failed" in message and str(tmp_path) in message and "\n" not in message


def test_download_verifies_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"not svhn"))
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load("svhn", tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_download_then_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(1)
    for remote in (svhn_module.TRAIN, svhn_module.TEST):
        write_svhn(served / remote.filename, rng, 4)
        checked = Remote(remote.filename, remote.url, md5sum(served / remote.filename))
        monkeypatch.setattr(svhn_module, "TRAIN" if "train" in remote.filename else "TEST", checked)
    urls = []

    def serve(url: str, timeout: float) -> io.BytesIO:
        urls.append(url)
        return io.BytesIO((served / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    root = tmp_path / "root"
    splits = data.load("svhn", root, download=True)
    assert urls == [
        "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
        "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
    ]
    assert len(splits.train) == 4 and sorted(p.name for p in root.iterdir()) == [
        "test_32x32.mat",
        "train_32x32.mat",
    ]


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_imagefolder_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    expected = {}
    for split in ("train", "test"):
        for cls in ("mango", "apple", "zebra"):  # neither sorted nor reversed
            for i in range(2):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                write_png(tmp_path / split / cls / f"{i}.png", pixels)
                expected[(split, cls, i)] = pixels
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    write_png(tmp_path / "test" / "zebra" / "2.PNG", gray)
    (tmp_path / "test" / "zebra" / "notes.txt").write_text("not an image")

    splits = data.load("imagefolder", tmp_path, image_size=8)
    assert splits.num_classes == 3
    assert splits.train.labels.tolist() == [0, 0, 1, 1, 2, 2]  # apple, mango, zebra
    assert splits.test.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert np.array_equal(
        splits.train.images[4].permute(1, 2, 0).numpy(), expected[("train", "zebra", 0)]
    )
    assert np.array_equal(
        splits.test.images[1].permute(1, 2, 0).numpy(), expected[("test", "apple", 1)]
    )
    assert all(np.array_equal(c.numpy(), gray) for c in splits.test.images[6])
    resized = data.load("imagefolder", tmp_path, image_size=16)
    assert resized.train.images.shape == (6, 3, 16, 16)
    assert resized.train.images.dtype == torch.uint8


def test_imagefolder_classes_are_sorted_by_name(tmp_path: Path) -> None:
    names = ["kiwi", "Fig", "mango", "apple", "zebra", "date", "lime", "cherry"]
    for name in names:  # an order that no directory listing should happen to sort
        value = sorted(names).index(name) * 20
        for split in ("train", "test"):
            write_png(tmp_path / split / name / "0.jpg", np.full((4, 4, 3), value, np.uint8))
    splits = data.load("imagefolder", tmp_path, image_size=4)
    assert splits.train.labels.tolist() == list(range(8))
    brightness = splits.test.images.flatten(1).float().mean(1)
    assert ((brightness - splits.test.labels * 20).abs() <= 2).all()  # jpeg may round


def test_imagefolder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train"):
        data.load("imagefolder", tmp_path)
    write_png(tmp_path / "train" / "cat" / "0.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "test" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as err:
        data.load("imagefolder", tmp_path)
    assert str(tmp_path / "test" / "cat") in str(err.value) and "no" in str(err.value)
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(DataError, match="differ"):
        data.load("imagefolder", tmp_path)


def test_imagefolder_bad_image_fails_or_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for split in ("train", "test"):
        for name in ("a", "b"):
            for i in range(2):
                write_png(tmp_path / split / name / f"{i}.png", np.full((4, 4, 3), i, np.uint8))
    bad = tmp_path / "train" / "b" / "1.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=f"imagefolder: cannot read {bad}: UnidentifiedImageError"):
        data.load("imagefolder", tmp_path, image_size=4)
    with caplog.at_level("WARNING", logger="mhkd.data.imagefolder"):
        splits = data.load("imagefolder", tmp_path, image_size=4, skip_bad=True)
    assert splits.train.labels.tolist() == [0, 0, 1] and len(splits.test) == 4
    assert "skipped 1 unreadable images" in caplog.text and str(bad) in caplog.text


def test_digits_split_is_fixed_and_stratified() -> None:
    first, second = data.load("digits"), data.load("digits")
    assert torch.equal(first.test.images, second.test.images)
    assert torch.equal(first.train.labels, second.train.labels)
    assert first.train.images.shape == (1347, 3, 32, 32) and len(first.test) == 450
    assert first.train.images.dtype == torch.uint8 and first.num_classes == 10
    assert torch.equal(first.train.images[:, 0], first.train.images[:, 2])
    train_counts = torch.bincount(first.train.labels, minlength=10)
    test_counts = torch.bincount(first.test.labels, minlength=10)
    assert (test_counts > 0).all() and (train_counts > 0).all()
    fraction = test_counts.double() / (train_counts + test_counts).double()
    assert (fraction - 0.25).abs().max() < 0.02
    assert int(first.train.images.max()) == 255  # 16 in the 8×8 source maps to 255


def test_synthetic_is_seeded_and_separable() -> None:
    a = data.load("synthetic", num_train=200, num_test=100, num_classes=4, image_size=16)
    b = data.load("synthetic", num_train=200, num_test=100, num_classes=4, image_size=16)
    c = data.load("synthetic", num_train=200, num_test=100, num_classes=4, image_size=16, seed=1)
    assert a.train.images.shape == (200, 3, 16, 16) and a.num_classes == 4
    assert torch.equal(a.train.images, b.train.images) and not torch.equal(
        a.train.images, c.train.images
    )
    assert torch.bincount(a.train.labels).tolist() == [50] * 4
    # learnable: the nearest class mean of the training set classifies the test set
    x_train, x_test = a.train.images.flatten(1).float(), a.test.images.flatten(1).float()
    means = torch.stack([x_train[a.train.labels == k].mean(0) for k in range(4)])
    predicted = torch.cdist(x_test, means).argmin(1)
    assert (predicted == a.test.labels).float().mean() > 0.9


def test_digits_at_other_sizes_and_bad_sizes() -> None:
    small = data.load("digits", image_size=8)
    assert small.input_shape == (3, 8, 8) and small.num_train == 1347 and small.resident
    assert torch.equal(small.test.labels, data.load("digits").test.labels)
    with pytest.raises(DataError, match="digits: image_size must be a positive integer, got 0"):
        data.load("digits", image_size=0)
    with pytest.raises(DataError, match="cifar10 takes no option"):
        data.load("cifar10", image_size=16)


def numbered(num_train: int, labels: list[int]) -> data.DataSplits:
    """Splits whose training image ``i`` carries ``i`` in its first two pixels."""
    index = torch.arange(num_train)
    images = torch.zeros(num_train, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = index % 256, index // 256
    train = ImageSet(images, torch.tensor(labels))
    test = ImageSet(images[:5], torch.tensor(labels[:5]))
    return make_splits("numbered", train, test, max(labels) + 1)


def kept(splits: data.DataSplits) -> list[int]:
    first = splits.train.images[:, 0, 0].long()
    return (first[:, 0] + 256 * first[:, 1]).tolist()


def test_subset_is_balanced_seeded_nested_and_recorded() -> None:
    labels = [i % 3 for i in range(300)]
    labels[:7] = [2] * 7  # classes of unequal size: 98, 98, 104
    full = numbered(300, labels)
    ten = data.subset_per_class(full, 10, seed=4)
    assert ten.num_train == 30 and ten.train_per_class == 10 and ten.subset_seed == 4
    assert torch.bincount(ten.train.labels).tolist() == [10, 10, 10]
    chosen = kept(ten)
    assert chosen == sorted(chosen) and len(set(chosen)) == 30
    assert ten.train.labels.tolist() == [labels[i] for i in chosen]
    assert (ten.mean, ten.std, ten.test) == (full.mean, full.std, full.test)
    assert kept(data.subset_per_class(full, 10, seed=4)) == chosen  # seed and data alone
    other = kept(data.subset_per_class(full, 10, seed=5))
    assert other != chosen
    assert set(chosen) < set(kept(data.subset_per_class(full, 30, seed=4)))
    # one class's draw does not depend on the others: move samples between classes 0 and 2
    relabelled = numbered(
        300, [y if y == 1 else (0 if i < 40 else 2) for i, y in enumerate(labels)]
    )
    ones = [i for i in kept(data.subset_per_class(relabelled, 10, seed=4)) if labels[i] == 1]
    assert ones == [i for i in chosen if labels[i] == 1]
    with pytest.raises(DataError, match="already a subset of 10 per class"):
        data.subset_per_class(ten, 5)
    with pytest.raises(DataError, match="positive integer, got 0"):
        data.subset_per_class(full, 0)


def test_subset_larger_than_a_class_names_it(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match="numbered: train_per_class=97 exceeds the 96 training images of class 2$"
    ):
        data.subset_per_class(numbered(290, [i % 3 for i in range(290)]), 97)
    for split in ("train", "test"):
        for name, count in (("ant", 3), ("bee", 2), ("cat", 3)):
            for i in range(count):
                write_png(tmp_path / split / name / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"exceeds the 2 training images of class 1 \(bee\)"):
        data.load("imagefolder", tmp_path, train_per_class=3)
    two = data.load("imagefolder", tmp_path, train_per_class=2, subset_seed=1)
    assert two.num_train == 6 and len(two.test) == 8 and two.classes == ("ant", "bee", "cat")


def test_digits_low_label_through_load() -> None:
    splits = data.load("digits", image_size=8, train_per_class=30, subset_seed=2)
    assert splits.num_train == 300 and splits.train_per_class == 30 and splits.subset_seed == 2
    assert torch.bincount(splits.train.labels).tolist() == [30] * 10
    assert len(splits.test) == 450
    again = data.load("digits", image_size=8, train_per_class=30, subset_seed=2)
    assert torch.equal(again.train.images, splits.train.images)


def test_registry_errors_and_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data.available() == [
        "cifar10",
        "cifar100",
        "digits",
        "imagefolder",
        "imagenet",
        "svhn",
        "synthetic",
    ]
    with pytest.raises(DataError, match="unknown data set 'x'; choose from cifar10, cifar100"):
        data.load("x")
    with pytest.raises(DataError, match="bogus"):
        data.load("synthetic", bogus=1)
    monkeypatch.setenv("MHKD_DATA", str(tmp_path))
    assert data.default_root() == tmp_path
    with pytest.raises(DataError, match=str(tmp_path)):
        data.load("cifar10", download=False)
    monkeypatch.delenv("MHKD_DATA")
    assert data.default_root() == Path.home() / ".cache" / "mhkd" / "data"


# ---------------------------------------------------------------- augmentation


def reference_view(image: np.ndarray, view: int) -> np.ndarray:
    """Crop and flip one C×H×W image the slow, obvious way."""
    flip, rest = divmod(view, OFFSETS * OFFSETS)
    dy, dx = divmod(rest, OFFSETS)
    _, h, w = image.shape
    padded = np.pad(image, ((0, 0), (PAD, PAD), (PAD, PAD)))
    crop = padded[:, dy : dy + h, dx : dx + w]
    return crop[:, :, ::-1] if flip else crop


def test_apply_views_matches_reference_for_every_view() -> None:
    assert NUM_VIEWS == 162
    images = torch.randint(1, 256, (NUM_VIEWS, 2, 6, 5), dtype=torch.uint8)  # no zeros, non-square
    views = torch.arange(NUM_VIEWS)
    out = apply_views(images, views)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for v in range(NUM_VIEWS):
        assert np.array_equal(out[v].numpy(), reference_view(images[v].numpy(), v)), v
    assert torch.equal(apply_views(images, views), out)
    same = torch.full((NUM_VIEWS,), IDENTITY_VIEW)
    assert torch.equal(apply_views(images, same), images)
    # a hand-made case: view 81 is flipped and shifted 4 down and right, leaving zeros top-left
    one = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    assert (apply_views(one, torch.tensor([0]))[0, 0] == 0).all()
    assert apply_views(one, torch.tensor([81 + 8 * 9 + 8]))[0, 0].tolist() == [[0] * 4] * 4
    assert apply_views(one, torch.tensor([IDENTITY_VIEW + 81]))[0, 0, 0].tolist() == [4, 3, 2, 1]


def test_random_views_cover_all_and_are_seeded() -> None:
    views = random_views(20000, torch.Generator().manual_seed(0))
    assert views.dtype == torch.int64 and set(views.tolist()) == set(range(NUM_VIEWS))
    again = random_views(20000, torch.Generator().manual_seed(0))
    assert torch.equal(views, again)


def test_normalize() -> None:
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = normalize(images, mean, std)
    shape = (1, 3, 1, 1)
    expected = (images.double() / 255 - torch.tensor(mean).view(shape)) / torch.tensor(std).view(
        shape
    )
    assert out.dtype == torch.float32 and torch.allclose(out.double(), expected, atol=1e-5)
    nhwc = normalize(images, mean, std, channels_last=True)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, out)


# ---------------------------------------------------------------- loader


def small_set(n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 7


STATS = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


def epoch(loader: DeviceLoader, number: int) -> list:
    loader.set_epoch(number)
    return list(loader)


def same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.images, y.images)
        and torch.equal(x.indices, y.indices)
        and torch.equal(x.views, y.views)
        for x, y in zip(a, b, strict=True)
    )


def test_loader_is_determined_by_seed_and_epoch() -> None:
    images, labels = small_set()
    first = DeviceLoader(images, labels, 16, train=True, seed=3, **STATS)
    resumed = DeviceLoader(images, labels, 16, train=True, seed=3, **STATS)
    other_seed = DeviceLoader(images, labels, 16, train=True, seed=4, **STATS)
    run = [epoch(first, e) for e in range(3)]
    assert same_batches(run[2], epoch(resumed, 2))
    assert not same_batches(run[0], run[1])
    assert not torch.equal(run[0][0].indices, run[1][0].indices)
    assert not same_batches(run[0], epoch(other_seed, 0))
    assert len(first) == 6 and all(len(b.labels) == 16 for b in run[0])


def test_indices_identify_the_samples() -> None:
    images, labels = small_set()
    plain = DeviceLoader(images, labels, 16, train=True, augment=False, **STATS)
    for batch in epoch(plain, 1):
        assert batch.views is None
        assert torch.equal(batch.images, normalize(images[batch.indices], **STATS))
        assert torch.equal(batch.labels, labels[batch.indices])
    augmented = DeviceLoader(images, labels, 16, train=True, channels_last=True, **STATS)
    for batch in epoch(augmented, 1):
        expected = normalize(apply_views(images[batch.indices], batch.views), **STATS)
        assert torch.equal(batch.images, expected)
        assert batch.images.is_contiguous(memory_format=torch.channels_last)


def test_eval_loader_reads_everything_in_order() -> None:
    images, labels = small_set()
    loader = DeviceLoader(images, labels, 16, train=False, **STATS)
    batches = epoch(loader, 5)
    assert len(loader) == len(batches) == 7 and all(b.views is None for b in batches)
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(100))


@pytest.mark.parametrize("train", [True, False])
def test_two_ranks_cover_every_sample_once(train: bool) -> None:
    n = 96 if train else 101
    images, labels = small_set(n)
    ranks = [
        DeviceLoader(images, labels, 8, train=train, rank=r, world_size=2, seed=1, **STATS)
        for r in range(2)
    ]
    for e in range(2):
        seen = torch.cat([b.indices for loader in ranks for b in epoch(loader, e)])
        assert sorted(seen.tolist()) == list(range(n)), e
    assert sum(len(loader) for loader in ranks) == (
        12 if train else 14
    )  # eval: 51 + 50 samples, 7 + 7 batches


def test_ranks_split_the_single_rank_global_batch() -> None:
    images, labels = small_set()
    single = epoch(DeviceLoader(images, labels, 16, train=True, seed=2, **STATS), 1)
    ranks = [
        epoch(DeviceLoader(images, labels, 8, train=True, rank=r, world_size=2, seed=2, **STATS), 1)
        for r in range(2)
    ]
    for step, whole in enumerate(single):
        assert torch.equal(torch.cat([r[step].indices for r in ranks]), whole.indices)
        assert torch.equal(torch.cat([r[step].views for r in ranks]), whole.views)


def test_kept_last_batch_is_even_across_ranks() -> None:
    images, labels = small_set(100)
    ranks = [
        DeviceLoader(images, labels, 16, train=True, drop_last=False, rank=r, world_size=2, **STATS)
        for r in range(2)
    ]
    batches = [epoch(loader, 0) for loader in ranks]
    assert [len(b) for b in batches] == [4, 4]  # 3 full global steps of 32, then 4 left
    assert [len(b[-1].labels) for b in batches] == [2, 2]
    seen = torch.cat([b.indices for rank in batches for b in rank])
    assert sorted(set(seen.tolist())) == list(range(100)) and len(seen) == 100


def test_make_loaders() -> None:
    splits = data.load("synthetic", num_train=64, num_test=40, image_size=8)
    train, test = data.make_loaders(splits, 16, eval_batch_size=32)
    assert train.train and train.augment and not test.train and not test.augment
    assert (len(train), len(test)) == (4, 2)
    batch = next(iter(train))
    assert batch.images.dtype == torch.float32 and batch.images.shape == (16, 3, 8, 8)
