"""ONNX export of a deployable student, checked by onnxruntime and timed on the CPU.

``mhkd export CKPT --onnx FILE`` takes any checkpoint ``mhkd.checkpoint.load_model`` rebuilds
(zoo and pruned students, RepDistiller/mdistiller files); a user's own module goes through
:func:`to_onnx`. Checkpoints hold the bare student, so heads, regressors and other training-only
parts never reach the graph. Weights holding NaN or inf are refused, not exported.

The TorchScript exporter (``dynamo=False``) is used on purpose: it handles these plain
convolutional networks with a dynamic batch dimension, is fast, and needs no ``onnxscript``;
torch's newer ``torch.export`` path would add that dependency for no gain here.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
) -> float:
    """Export ``model`` (inputs ``(batch, *input_shape)``, batch dynamic) and check it.

    The model itself is untouched (a CPU fp32 copy in eval mode is exported). Returns the
    largest absolute difference between onnxruntime and PyTorch logits over random batches of
    sizes :data:`CHECK_BATCHES`; above :data:`TOLERANCE` it raises :class:`ExportError`.
    ``metadata`` is stored in the ONNX file's ``metadata_props`` (values JSON-encoded).
    """
    onnx, _ = _onnx_modules()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    net.eval()
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
        raise ExportError(f"cannot export {type(model).__name__} to ONNX: {first}") from None
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    for key, value in (metadata or {}).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = f"mhkd.{key}", json.dumps(value)
    onnx.save(graph, str(path))
    return check(net, path, input_shape, seed=seed)


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
) -> tuple[nn.Module, float]:
    """Rebuild the student a checkpoint holds and export it; returns (model, max abs diff).

    ``input_shape`` ``None`` is the architecture's own (3x224x224 for the ImageNet networks,
    else 3x32x32). ``arch`` names the architecture of a foreign file whose folder and keys
    do not.
    """
    from mhkd import checkpoint
    from mhkd.models.complexity import default_input_shape

    model, meta = checkpoint.load_model(ckpt, arch=arch)
    input_shape = input_shape or default_input_shape(model)
    metadata = {
        key: meta[key]
        for key in ("arch", "data", "num_classes", "test_acc")
        if meta.get(key) is not None
    }
    return model, to_onnx(model, onnx_path, input_shape, metadata=metadata)


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
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from mhkd.config import BOUNDS, check_range
    from mhkd.models.complexity import default_input_shape, profile

    check_range("--image-size", args.image_size, *BOUNDS["data.image_size"])
    check_range("--channels", args.channels, 1, 64)
    if args.image_size is None and args.channels != 3:
        raise ValueError("--channels other than 3 needs --image-size")
    size = args.image_size
    shape = (args.channels, size, size) if size else None
    model, diff = export_checkpoint(args.checkpoint, args.onnx, shape, args.arch)
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
