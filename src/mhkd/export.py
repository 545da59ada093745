"""ONNX export of a deployable student, checked by onnxruntime and timed on the CPU.

``mhkd export CKPT --onnx FILE`` takes any checkpoint ``mhkd.checkpoint.load_model`` rebuilds
(zoo and pruned students, RepDistiller/mdistiller files); a user's own module goes through
:func:`to_onnx`. Checkpoints hold the bare student, so heads, regressors and other training-only
parts never reach the graph. Weights holding NaN or inf are refused, not exported.

The TorchScript exporter (``dynamo=False``) is used on purpose: it handles these plain
convolutional networks with a dynamic batch dimension, is fast, and needs no ``onnxscript``;
torch's newer ``torch.export`` path would add that dependency for no gain here.

``--int8`` (``to_onnx(..., int8=True, calibration=...)``) also writes ``F.int8.onnx``, the
graph quantized after training by :mod:`mhkd.quantize`, and compares the two graphs' test
accuracy, size and latency. Export never replaces a file it did not write (``--overwrite``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mhkd import __version__, quantize

#: Largest |ONNX - PyTorch| accepted on random inputs.
TOLERANCE = 1e-4
#: Batch sizes checked (several, to prove the batch dimension is dynamic) and timed.
CHECK_BATCHES = (1, 3, 64)
LATENCY_BATCHES = (1, 64)
OPSET = 17


class ExportError(ValueError):
    """The model cannot be exported, or its ONNX graph disagrees with PyTorch."""


@functools.cache
def _register_channel_shuffle() -> None:
    """Teach the TorchScript exporter ``channel_shuffle`` (ShuffleNet V1/V2), which it lacks.

    (N, C, H, W) -> NHWC -> (N, H, W, g, C/g) -> swap the last two -> NHWC -> NCHW: only the
    group count is a constant, so every dimension but C stays dynamic.
    """
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "i")
    def channel_shuffle(g: Any, x: Any, groups: int) -> Any:
        def shape(*dims: int) -> Any:
            return g.op("Constant", value_t=torch.tensor(dims, dtype=torch.int64))

        nhwc = g.op("Transpose", x, perm_i=[0, 2, 3, 1])
        split = g.op("Reshape", nhwc, shape(0, 0, 0, groups, -1))
        swapped = g.op("Transpose", split, perm_i=[0, 1, 2, 4, 3])
        merged = g.op("Reshape", swapped, shape(0, 0, 0, -1))
        return g.op("Transpose", merged, perm_i=[0, 3, 1, 2])

    torch.onnx.register_custom_op_symbolic("aten::channel_shuffle", channel_shuffle, 9)


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ExportError(
            "ONNX export needs onnx and onnxruntime: pip install 'mhkd[export]'"
        ) from None
    return onnx, onnxruntime


def to_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: Sequence[int] = (3, 32, 32),
    *,
    opset: int = OPSET,
    metadata: dict[str, Any] | None = None,
    seed: int = 0,
    int8: bool = False,
    calibration: Any = None,
    keep_float: Sequence[str] = (),
    reduce_range: bool = True,
    overwrite: bool = False,
) -> float:
    """Export ``model`` (inputs ``(batch, *input_shape)``, batch dynamic) and check it.

    The model itself is untouched (a CPU fp32 copy in eval mode is exported). Returns the
    largest absolute difference between onnxruntime and PyTorch logits over random batches of
    sizes :data:`CHECK_BATCHES`; above :data:`TOLERANCE` it raises :class:`ExportError`.
    ``metadata`` is stored in the ONNX file's ``metadata_props`` (values JSON-encoded).
    ``int8``: also write :func:`mhkd.quantize.int8_path` of ``path``, calibrated on
    ``calibration`` (normalised images, or (images, labels); see :func:`mhkd.quantize.quantize`,
    which ``keep_float`` and ``reduce_range`` are passed to). An existing file is replaced only
    if mhkd wrote it, or with ``overwrite``.
    """
    _onnx_modules()  # refuses, before anything is written, a machine without onnx/onnxruntime
    path = Path(path)
    targets = [path, quantize.int8_path(path)] if int8 else [path]
    for target in targets:
        quantize.check_writable(target, overwrite)
    if int8:
        calibration = quantize.calibration_arrays(calibration, input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    _write_graph(net.eval(), path, input_shape, opset, metadata, seed, type(model).__name__)
    diff = check(net, path, input_shape, seed=seed)
    if int8:
        quantize.quantize(
            path, targets[1], calibration, keep_float=keep_float, reduce_range=reduce_range
        )
    return diff


def _write_graph(net: nn.Module, path: Path, input_shape: Sequence[int], opset: int,
                 metadata: dict[str, Any] | None, seed: int, name: str) -> None:  # fmt: skip
    """The ONNX graph of ``net`` (batch dynamic), checked, with mhkd's metadata, at ``path``."""
    onnx, _ = _onnx_modules()
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(seed))
    _register_channel_shuffle()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
            )
    except Exception as exc:  # the exporter raises many types for unsupported operators
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"cannot export {name} to ONNX: {first}") from None
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    for key, value in {"exporter": f"mhkd {__version__}", **(metadata or {})}.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = f"mhkd.{key}", json.dumps(value)
    onnx.save(graph, str(path))


def _session(path: str | Path) -> Any:
    _, ort = _onnx_modules()
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check(
    model: nn.Module, path: str | Path, input_shape: Sequence[int], *, seed: int = 0
) -> float:
    """Max |onnxruntime - PyTorch| of ``model`` and its ONNX file on random batches."""
    session = _session(path)
    generator = torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    model.eval()
    for batch in CHECK_BATCHES:
        x = torch.randn(batch, *input_shape, generator=generator)
        with torch.inference_mode():
            expected = model(x).numpy()
        if not np.isfinite(expected).all():  # NaN - NaN would compare as "no difference"
            raise ExportError(f"{path}: the model's logits are NaN or infinite; nothing to check")
        (got,) = session.run(["logits"], {"images": x.numpy()})
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
        worst = max(worst, float(abs(got - expected).max()))
    if worst > TOLERANCE:
        raise ExportError(
            f"{path}: onnxruntime differs from PyTorch by {worst:.3g} (> {TOLERANCE:g})"
        )
    return worst


def latency(
    path: str | Path,
    input_shape: Sequence[int],
    batches: Sequence[int] = LATENCY_BATCHES,
    budget_s: float = 0.5,
) -> dict[int, float]:
    """Median onnxruntime CPU latency (ms) per batch size, over about ``budget_s`` each."""
    session = _session(path)
    result = {}
    for batch in batches:
        x = torch.randn(batch, *input_shape).numpy()
        session.run(["logits"], {"images": x})  # warm-up: memory planning, thread pool
        times: list[float] = []
        deadline = time.perf_counter() + budget_s
        while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
            started = time.perf_counter()
            session.run(["logits"], {"images": x})
            times.append(time.perf_counter() - started)
        result[batch] = 1000.0 * statistics.median(times)
    return result


def export_checkpoint(
    ckpt: str | Path,
    onnx_path: str | Path,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
    **options: Any,
) -> tuple[nn.Module, float]:
    """Rebuild the student a checkpoint holds and export it; returns (model, max abs diff).

    ``input_shape`` ``None`` is the architecture's own (3x224x224 for the ImageNet networks,
    else 3x32x32). ``arch`` names the architecture of a foreign file whose folder and keys
    do not; ``options`` go to :func:`to_onnx` (``int8``, ``calibration``, ``overwrite`` ...).
    """
    from mhkd import checkpoint
    from mhkd.models.complexity import default_input_shape

    model, meta = checkpoint.load_model(ckpt, arch=arch)
    input_shape = input_shape or default_input_shape(model)
    metadata = _metadata(meta)
    return model, to_onnx(model, onnx_path, input_shape, metadata=metadata, **options)


def _metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """What of a checkpoint's metadata the ONNX file keeps."""
    keys = ("arch", "data", "num_classes", "test_acc")
    return {key: meta[key] for key in keys if meta.get(key) is not None}


# ---- command line ------------------------------------------------------------------------
def add_export_command(subparsers: Any) -> None:
    """Register ``mhkd export``."""
    parser = subparsers.add_parser(
        "export",
        help="export a student checkpoint to ONNX, checked and timed with onnxruntime",
        description="Export the student in a checkpoint to ONNX with a dynamic batch "
        "dimension, check it against PyTorch with onnxruntime and print its CPU latency. "
        "Inputs are normalised images, as in training. A user's own module: use "
        "mhkd.export.to_onnx from Python.",
    )
    parser.add_argument(
        "checkpoint",
        help="a .pt file written by mhkd (best.pt is deployable), or a RepDistiller/mdistiller "
        "checkpoint",
    )
    parser.add_argument(
        "--arch",
        help="architecture of a foreign checkpoint (e.g. wrn_40_2, ResNet50) when neither its "
        "folder name (<arch>_vanilla) nor its keys say it",
    )
    parser.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--image-size", type=int, help="input height and width (default: the "
                        "architecture's, 224 for the ImageNet networks, else 32)")  # fmt: skip
    parser.add_argument("--channels", type=int, default=3, help="input channels")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency timing")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing file that mhkd did not export (default: refuse)",
    )  # fmt: skip
    _add_int8_flags(parser)
    parser.set_defaults(run=_run_export)


def _add_int8_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "int8", "post-training static quantization (QDQ, per-channel int8 weights, int8 "
        "activations calibrated on the checkpoint's own training images)",
    )  # fmt: skip
    group.add_argument("--int8", action="store_true",
                       help="also write FILE with .int8.onnx and compare both graphs' test "
                       "accuracy, size and latency (input size: the data set's)")  # fmt: skip
    group.add_argument("--data", help="data set (default: the one the checkpoint was trained on)")
    group.add_argument("--data-dir", help="where the data set's files are")
    group.add_argument(
        "--calibration-images",
        type=int,
        default=300,
        metavar="N",
        help="training images the activation ranges are calibrated on",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    group.add_argument("--keep-float", default="", metavar="OP[,OP]",
                       help="ONNX operators left in float (e.g. Gemm, or one that does not "
                       "quantize)")  # fmt: skip
    group.add_argument("--full-range", action="store_true",
                       help="8-bit weights (default 7: ONNX Runtime's int8 kernels saturate "
                       "with 8 on x86 CPUs without VNNI); for VNNI/AMX CPUs and NPUs")  # fmt: skip
    group.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                       help="exit non-zero when int8 test accuracy is more than this below "
                       "float32's (the int8 file is still written)")  # fmt: skip


def _run_export(args: argparse.Namespace) -> int:
    from mhkd.config import BOUNDS, check_range
    from mhkd.models.complexity import default_input_shape, profile

    check_range("--image-size", args.image_size, *BOUNDS["data.image_size"])
    check_range("--channels", args.channels, 1, 64)
    if args.image_size is None and args.channels != 3:
        raise ValueError("--channels other than 3 needs --image-size")
    if args.int8:
        return _run_export_int8(args)
    size = args.image_size
    shape = (args.channels, size, size) if size else None
    model, diff = export_checkpoint(
        args.checkpoint, args.onnx, shape, args.arch, overwrite=args.overwrite
    )
    shape = shape or default_input_shape(model)
    sizes = profile(model, shape)
    print(
        f"{args.onnx}: {sizes['params'] / 1e6:.3f}M params, {sizes['macs'] / 1e6:.1f} MMACs, "
        f"input (batch, {', '.join(map(str, shape))}); onnxruntime matches PyTorch "
        f"(max abs diff {diff:.2g} at batch {', '.join(map(str, CHECK_BATCHES))})"
    )
    if not args.no_latency:
        for batch, ms in latency(args.onnx, shape).items():
            print(f"CPU latency, batch {batch}: {ms:.2f} ms ({1000.0 * batch / ms:.0f} images/s)")
    return 0


def compare_graphs(
    paths: Sequence[str | Path], images: Any, labels: Any, timed: bool = True
) -> list[dict[str, Any]]:
    """Test accuracy (%), file size (bytes) and latency (ms by batch) of each ONNX graph."""
    images, labels = quantize.calibration_arrays((images, labels), tuple(images.shape[1:]))
    rows = []
    for path in paths:
        rows.append({
            "path": str(path), "accuracy": quantize.accuracy(path, images, labels),
            "bytes": Path(path).stat().st_size,
            "latency_ms": latency(path, images.shape[1:]) if timed else {},
        })  # fmt: skip
    return rows


def _int8_data(ckpt: str | Path, name: str | None, root: str | None) -> Any:
    """The checkpoint's data set (``name`` overrides), at the size it was trained at."""
    from mhkd import checkpoint, data

    if not name:
        raise ValueError("the checkpoint does not say its data set; pass --data")
    splits = data.load(name, root=root)
    if not getattr(splits, "resident", True):
        raise ValueError(f"--int8 calibrates and tests on a data set held in memory; {name} is not")
    state = checkpoint.read_state(ckpt)
    trained = state.get("input_shape")
    if trained and tuple(trained) != splits.input_shape:
        splits = data.load(name, root=root, image_size=trained[-1])
    return splits


def export_int8(
    ckpt: str | Path,
    onnx_path: str | Path,
    *,
    arch: str | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    calibration_images: int = 300,
    seed: int = 0,
    keep_float: Sequence[str] = (),
    reduce_range: bool = True,
    overwrite: bool = False,
    timed: bool = True,
) -> dict[str, Any]:
    """Export a checkpoint's student as float32 and int8 ONNX graphs and compare them on its
    data set's test split: ``{"diff", "data", "calibration_images", "graphs": [float, int8]}``
    with each graph's ``path``, ``accuracy``, ``bytes``, ``latency_ms``."""
    from mhkd import checkpoint
    from mhkd.data import normalize
    from mhkd.pipelines.loading import check_classes

    model, meta = checkpoint.load_model(ckpt, arch=arch)
    splits = _int8_data(ckpt, data or meta.get("data"), data_dir)
    check_classes(model, splits.num_classes, "checkpoint's model")
    calibration = quantize.calibration_sample(splits, calibration_images, seed)
    diff = to_onnx(
        model, onnx_path, splits.input_shape, metadata=_metadata(meta), int8=True,
        calibration=calibration, keep_float=keep_float, reduce_range=reduce_range,
        overwrite=overwrite,
    )  # fmt: skip
    test = normalize(splits.test.images, splits.mean, splits.std)
    paths = [onnx_path, quantize.int8_path(onnx_path)]
    return {"diff": diff, "data": splits.name, "calibration_images": len(calibration[0]),
            "graphs": compare_graphs(paths, test, splits.test.labels, timed)}  # fmt: skip


def print_int8(report: dict[str, Any], max_drop: float) -> int:
    """Print float32 and int8 side by side; 1 (and why, on stderr) when int8 drops more than
    ``max_drop`` points of test accuracy, else 0."""
    rows = report["graphs"]
    print(
        f"{rows[0]['path']}: onnxruntime matches PyTorch (max abs diff {report['diff']:.2g}); "
        f"{rows[1]['path']}: int8 QDQ, activations calibrated on {report['calibration_images']} "
        f"{report['data']} training images"
    )
    print(f"{'':<24}{'float32':>12}{'int8':>12}")
    print(f"{'test accuracy':<24}" + "".join(f"{r['accuracy']:>11.2f}%" for r in rows))
    print(f"{'file size':<24}" + "".join(f"{r['bytes'] / 1e6:>9.3f} MB" for r in rows))
    for batch in rows[0]["latency_ms"]:
        cells = "".join(f"{r['latency_ms'][batch]:>9.3f} ms" for r in rows)
        print(f"{f'CPU latency, batch {batch}':<24}{cells}")
    drop = rows[0]["accuracy"] - rows[1]["accuracy"]
    if drop > max_drop:
        print(
            f"mhkd: int8 test accuracy is {drop:.2f} points below float32 (more than --max-drop "
            f"{max_drop:g}); {rows[1]['path']} is written, but check it before deploying",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_export_int8(args: argparse.Namespace) -> int:
    report = export_int8(
        args.checkpoint, args.onnx, arch=args.arch, data=args.data, data_dir=args.data_dir,
        calibration_images=args.calibration_images, seed=args.seed,
        keep_float=[op.strip() for op in args.keep_float.split(",") if op.strip()],
        reduce_range=not args.full_range, overwrite=args.overwrite, timed=not args.no_latency,
    )  # fmt: skip
    return print_int8(report, args.max_drop)
