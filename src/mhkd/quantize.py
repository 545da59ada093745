"""Post-training int8 quantization of an exported ONNX graph with ONNX Runtime's own tools.

QDQ format (QuantizeLinear/DequantizeLinear pairs, which ONNX Runtime fuses into int8 kernels
and which every other ONNX backend can read), weights int8 symmetric per output channel,
activations int8 per tensor (asymmetric) with MinMax ranges calibrated on images the caller
gives (the CLI gives a seeded sample of the checkpoint's own training images, preprocessed as
in training without augmentation).

Weights use 7 bits ([-64, 64], ONNX Runtime's ``reduce_range``) unless ``reduce_range=False``:
on x86 CPUs without VNNI (AVX2, AVX-512F) ONNX Runtime's int8 convolutions multiply uint8 by
int8 with ``vpmaddubsw``, whose pairwise 16-bit sums saturate with full-range weights, so the
fused kernels' logits drift from the graph's own QDQ arithmetic; with 7 bits they match it
(``benchmarks/study_int8.py`` measures both on its CPU). Activations are int8, not uint8, for
the same reason. Full range is for CPUs with VNNI/AMX and for NPUs.

ONNX Runtime silently leaves an operator it cannot quantize in float, so an int8 file could be
mostly float without anyone knowing: :func:`unquantizable` names such operators and
:func:`quantize` refuses them unless the caller keeps them in float on purpose (``keep_float``).
It sits beside ``data/`` (it reads a calibration sample from it); ``mhkd.export``, the QAT
pipeline and the CLI sit above it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The file name of the int8 graph beside the float one: ``student.onnx`` -> ``student.int8.onnx``.
INT8_SUFFIX = ".int8.onnx"
#: Operators without arithmetic to quantize: they move, select or reshape values (ONNX Runtime
#: passes them through in the int8 domain or on shapes).
PASS_THROUGH = frozenset(
    {"Cast", "Concat", "Constant", "ConstantOfShape", "Expand", "Flatten", "Gather", "Identity",
     "MaxPool", "Pad", "Reshape", "Shape", "Slice", "Split", "Squeeze", "Transpose",
     "Unsqueeze"}
)  # fmt: skip
#: ONNX's magic: a ModelProto starts with field 1 (ir_version, varint), i.e. the byte 0x08.
_ONNX_FIRST_BYTE = 0x08


class QuantizeError(ValueError):
    """The graph or the calibration data cannot be quantized as asked; one line."""


def int8_path(path: str | Path) -> Path:
    """Where the int8 graph of the float graph ``path`` goes."""
    path = Path(path)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(stem + INT8_SUFFIX)


def written_by_mhkd(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX file mhkd wrote (its metadata holds an ``mhkd.`` key)."""
    import onnx

    path = Path(path)
    try:
        with path.open("rb") as f:
            if f.read(1) != bytes([_ONNX_FIRST_BYTE]):
                return False
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, unreadable: not ours
        return False
    return any(p.key.startswith("mhkd.") for p in graph.metadata_props)


def check_writable(path: str | Path, overwrite: bool) -> None:
    """Refuse to replace an existing file that is not an ONNX graph mhkd wrote."""
    path = Path(path)
    if path.is_dir():
        raise QuantizeError(f"{path} is a folder; give an .onnx file name")
    if path.exists() and not overwrite and not written_by_mhkd(path):
        raise QuantizeError(
            f"{path} exists and is not an ONNX file mhkd exported; refusing to overwrite it "
            "(pass --overwrite, or overwrite=True, to replace it)"
        )


def unquantizable(graph: Any, keep_float: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(operator, node name) of every node ONNX Runtime would leave in float."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    known = set(QDQRegistry) | set(QLinearOpsRegistry) | PASS_THROUGH | set(keep_float)
    return [(node.op_type, node.name) for node in graph.graph.node if node.op_type not in known]


def calibration_arrays(
    calibration: Any, input_shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """``calibration`` (images, or (images, labels)) as float32 NCHW and int64 arrays, checked
    against the model's input shape."""
    labels = None
    if isinstance(calibration, (tuple, list)) and len(calibration) == 2:
        calibration, labels = calibration
    images = np.asarray(_numpy(calibration), dtype=np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape) or len(images) == 0:
        raise QuantizeError(
            f"calibration images of shape {tuple(images.shape)} do not fit the model's input "
            f"(N, {', '.join(map(str, input_shape))})"
        )
    if not np.isfinite(images).all():
        raise QuantizeError("calibration images hold NaN or infinite values")
    if labels is not None:
        labels = np.asarray(_numpy(labels), dtype=np.int64)
        if labels.shape != images.shape[:1]:
            raise QuantizeError(
                f"{len(labels)} calibration labels for {len(images)} calibration images"
            )
    return images, labels


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def _batches(images: np.ndarray, batch_size: int) -> list[dict[str, np.ndarray]]:
    return [{"images": images[i : i + batch_size]} for i in range(0, len(images), batch_size)]


def _reader(images: np.ndarray, batch_size: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(_batches(images, batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    return Reader()


def calibration_sample(splits: Any, count: int, seed: int = 0) -> tuple[Any, Any]:
    """``count`` training images of resident ``splits`` drawn with ``seed``, normalised as in
    training but without augmentation, and their labels: what int8 ranges are calibrated on."""
    import torch

    from mhkd.data import normalize

    if count < 1:
        raise QuantizeError(f"--calibration-images must be at least 1, got {count}")
    generator = torch.Generator().manual_seed(seed)
    chosen = splits.train.select(torch.randperm(len(splits.train), generator=generator)[:count])
    return normalize(chosen.images, splits.mean, splits.std), chosen.labels


def predict(path: str | Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of the ONNX graph ``path`` for ``images`` (CPU execution provider)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(["logits"], feed)[0] for feed in _batches(images, batch_size)]
    )


def check_classes(path: str | Path, images: np.ndarray, labels: np.ndarray | None) -> int:
    """The graph's class count, refused when calibration labels name classes beyond it."""
    classes = predict(path, images[:1]).shape[1]
    if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise QuantizeError(
            f"calibration labels run from {labels.min()} to {labels.max()} but the model "
            f"predicts {classes} classes: the calibration data belong to another data set"
        )
    return classes


def quantize(
    float_path: str | Path,
    out: str | Path,
    calibration: Any,
    *,
    keep_float: Sequence[str] = (),
    reduce_range: bool = True,
    batch_size: int = 64,
) -> Path:
    """Write the int8 QDQ graph of ``float_path`` to ``out``, calibrated on ``calibration``.

    ``calibration``: normalised images N×C×H×W (numpy or torch), or (images, labels) whose
    labels are checked against the graph's class count. Operators named in ``keep_float``
    stay float; any other operator that would stay float is refused, by name.
    ``reduce_range``: 7-bit weights (see the module docstring).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(float_path))
    dims = graph.graph.input[0].type.tensor_type.shape.dim[1:]
    images, labels = calibration_arrays(calibration, [d.dim_value for d in dims])
    check_classes(float_path, images, labels)
    refused = unquantizable(graph, keep_float)
    if refused:
        op, name = refused[0]
        ops = sorted({o for o, _ in refused})
        raise QuantizeError(
            f"operator {op} (node {name or '?'}) does not quantize to int8 in ONNX Runtime; "
            f"keep it in float with --keep-float {','.join(ops)} (keep_float={ops!r})"
        )
    out = Path(out)
    temp = out.with_name(f".{out.name}.tmp")
    logging.disable(logging.WARNING)  # its advice to pre-process, printed on every call
    try:
        quantize_static(
            str(float_path), str(temp), _reader(images, batch_size),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=[n.name for n in graph.graph.node if n.op_type in set(keep_float)],
        )  # fmt: skip
        quantized = onnx.load(str(temp))
        props = {p.key: p.value for p in graph.metadata_props}  # mhkd.exporter ...
        props["mhkd.int8"] = json.dumps({
            "format": "QDQ", "calibration_images": len(images),
            "weights": f"int8 per channel, {'7' if reduce_range else '8'} bits",
            "activations": "int8 per tensor, MinMax", "keep_float": sorted(keep_float),
        })  # fmt: skip
        del quantized.metadata_props[:]
        for key, value in props.items():
            entry = quantized.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(quantized, str(temp))
        os.replace(temp, out)
    finally:
        logging.disable(logging.NOTSET)
        temp.unlink(missing_ok=True)
    return out


def accuracy(path: str | Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (%) of the ONNX graph ``path`` on normalised ``images``."""
    predicted = predict(path, images).argmax(axis=1)
    return 100.0 * float((predicted == labels).mean())
