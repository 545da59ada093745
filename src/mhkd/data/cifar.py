"""CIFAR-10 and CIFAR-100 from the official python or binary archives, or their folders.

Both variants share one reader; they differ only in file names and label layout. Archives are
read member by member (never extracted), and the python pickles go through an unpickler that
can build numpy arrays and nothing else.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mhkd.data.base import DataError, DataSplits, ImageSet, make_splits
from mhkd.data.download import Remote, ensure

_BASE_URL = "https://www.cs.toronto.edu/~kriz/"
_PIXELS = 3 * 32 * 32
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy array reconstruction needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to load {module}.{name} from a CIFAR pickle; the file is not official"
            ) from None


def restricted_loads(raw: bytes) -> object:
    """Unpickle CIFAR's Python 2 pickles without letting the file run code."""
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # any malformed pickle is a data problem for the user
        raise DataError(f"cannot read CIFAR pickle: {exc}") from exc


@dataclass(frozen=True)
class CifarLayout:
    """File names and label layout of one CIFAR variant in both official formats."""

    name: str
    num_classes: int
    python: Remote
    python_dir: str
    python_train: tuple[str, ...]
    python_test: str
    label_key: bytes
    binary: Remote
    binary_dir: str
    binary_train: tuple[str, ...]
    binary_test: str
    label_bytes: int  # the class label is the last of these bytes (CIFAR-100: coarse, fine)


CIFAR10 = CifarLayout(
    name="cifar10",
    num_classes=10,
    python=Remote(
        "cifar-10-python.tar.gz",
        _BASE_URL + "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    ),
    python_dir="cifar-10-batches-py",
    python_train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    python_test="test_batch",
    label_key=b"labels",
    binary=Remote(
        "cifar-10-binary.tar.gz",
        _BASE_URL + "cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
    ),
    binary_dir="cifar-10-batches-bin",
    binary_train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    binary_test="test_batch.bin",
    label_bytes=1,
)

CIFAR100 = CifarLayout(
    name="cifar100",
    num_classes=100,
    python=Remote(
        "cifar-100-python.tar.gz",
        _BASE_URL + "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    ),
    python_dir="cifar-100-python",
    python_train=("train",),
    python_test="test",
    label_key=b"fine_labels",
    binary=Remote(
        "cifar-100-binary.tar.gz",
        _BASE_URL + "cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
    ),
    binary_dir="cifar-100-binary",
    binary_train=("train.bin",),
    binary_test="test.bin",
    label_bytes=2,
)


def _read_members(
    root: Path, archive: str, folder: str, members: list[str]
) -> list[tuple[str, bytes]] | None:
    """(where, bytes) of each member, from the extracted folder or the tar.gz archive; None if
    neither is there. ``where`` names the file for messages (``ARCHIVE:folder/member``)."""
    directory = root / folder
    if all((directory / m).is_file() for m in members):
        return [(str(directory / m), (directory / m).read_bytes()) for m in members]
    path = root / archive
    if not path.is_file():
        return None
    try:
        with tarfile.open(path, "r:gz") as tar:
            out = []
            for member in members:
                f = tar.extractfile(f"{folder}/{member}")
                if f is None:
                    raise KeyError(member)
                out.append((f"{path}:{folder}/{member}", f.read()))
            return out
    except KeyError as exc:
        raise DataError(
            f"{path} lacks {folder}/{exc.args[0]}; is it the official archive?"
        ) from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _parse_pickle(raw: bytes, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_loads(raw)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"CIFAR pickle lacks b'data' or {label_key!r}")
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, _PIXELS)
        return data, np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"CIFAR pickle holds malformed data: {exc}") from exc


def _parse_binary(raw: bytes, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + _PIXELS
    if len(raw) % record:
        raise DataError(
            f"CIFAR binary batch of {len(raw)} bytes is not whole {record}-byte records"
        )
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    return rows[:, label_bytes:], rows[:, label_bytes - 1].astype(np.int64)


def _image_set(parts: list[tuple[np.ndarray, np.ndarray]]) -> ImageSet:
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    if len(labels) != len(data):
        raise DataError(f"CIFAR batch holds {len(data)} images but {len(labels)} labels")
    return ImageSet(torch.from_numpy(data), torch.from_numpy(labels))


def _read_any(layout: CifarLayout, root: Path) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Parsed (train batches..., test batch) from the first official source present."""
    formats = (
        (
            layout.python,
            layout.python_dir,
            [*layout.python_train, layout.python_test],
            lambda raw: _parse_pickle(raw, layout.label_key),
        ),
        (
            layout.binary,
            layout.binary_dir,
            [*layout.binary_train, layout.binary_test],
            lambda raw: _parse_binary(raw, layout.label_bytes),
        ),
    )
    for remote, folder, members, parse in formats:
        raws = _read_members(root, remote.filename, folder, members)
        if raws is not None:
            return [_parse_named(parse, where, raw) for where, raw in raws]
    return None


def _parse_named(parse, where: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``parse(raw)``, its errors naming the file they come from."""
    try:
        return parse(raw)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None


def load_cifar(layout: CifarLayout, root: Path, download: bool) -> DataSplits:
    """Read whichever official source is present, downloading the python archive if none is."""
    parsed = _read_any(layout, root)
    if parsed is None:
        alternatives = (
            f" or {layout.binary.filename} ({layout.binary.url}),"
            f" or an extracted {layout.python_dir}/ or {layout.binary_dir}/ folder,"
        )
        ensure(layout.name, root, [layout.python], download, alternatives)
        parsed = _read_any(layout, root)
        if parsed is None:
            raise DataError(f"{layout.name}: {root / layout.python.filename} is unreadable")
    return make_splits(
        layout.name, _image_set(parsed[:-1]), _image_set(parsed[-1:]), layout.num_classes
    )
