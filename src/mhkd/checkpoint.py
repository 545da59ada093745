"""Checkpoints: written atomically, read without unpickling arbitrary objects.

mhkd's own checkpoints carry their architecture (``arch``). :func:`load_model` also reads the
field's published files: RepDistiller/mdistiller teachers (``{'epoch', 'model', 'accuracy',
'optimizer'}``), a bare state_dict (torchvision's layout) or one under ``'state_dict'``; their
architecture comes from the caller, the folder name or the keys (:mod:`mhkd.models.foreign`).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or does not fit what it is used for."""


#: The name of :func:`save`'s temporary file next to ``path``: ``.<name>.<16 hex>.tmp``.
_TEMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{16}\.tmp$")


def save(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename.

    A run killed or out of disk mid-write leaves the previous checkpoint intact and, but for a
    kill, no temporary file. The file is created like any other, so the umask decides its mode
    (``0o666 & ~umask``: a shared run folder stays readable to colleagues). A failed write is a
    one-line :class:`CheckpointError` naming the path and the system's reason.
    """
    path = Path(path)
    tmp = temp_path(path)
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if created:
            tmp.unlink(missing_ok=True)
        reason = _os_reason(exc)
        if reason is None:
            raise
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}") from None


def _os_reason(exc: BaseException) -> str | None:
    """The OS error behind ``exc``: torch reports a failed write as a RuntimeError raised
    while handling the OSError of the file object."""
    seen: BaseException | None = exc
    while isinstance(seen, Exception):  # never turn Ctrl-C into an error message
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` for an atomic write (``.<name>.<16 hex>.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def temp_target(name: str) -> str | None:
    """The file a temporary file of :func:`temp_path` was to become, or ``None``."""
    match = _TEMP.match(name)
    return match["name"] if match else None


def orphaned_temp_files(folder: str | Path) -> list[Path]:
    """Temporary files of atomic writes left in ``folder`` by a process killed mid-write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TEMP.match(p.name) and p.is_file())


def _read(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load`` with ``weights_only=True``; any failure is a one-line CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {_unreadable(exc)}") from None


def _unreadable(exc: Exception) -> str:
    """Why ``torch.load`` failed, in mhkd's words. PyTorch's own text for a file holding other
    objects advises ``weights_only=False``, which would let the file run code: never shown."""
    text = str(exc).strip()
    if "weights_only" in text or "Weights only" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it holds Python objects{what} beyond tensors, numbers and containers, which mhkd "
            "never unpickles (they could run code); it is not a checkpoint mhkd or PyTorch "
            "wrote from a state dict"
        )
    first = text.splitlines()[0] if text else ""
    if len(first) < 8:  # "101", "" ...: a file that is not a checkpoint at all
        return f"not a PyTorch checkpoint file ({type(exc).__name__}: {first or 'no detail'})"
    return first


def read_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read any mhkd state file (a dict of tensors and plain values), safely."""
    path = Path(path)
    state = _read(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an mhkd checkpoint (not a dictionary)")
    return state


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read an mhkd checkpoint (a dict with a ``model`` entry) without rebuilding its model."""
    path = Path(path)
    state = read_state(path, map_location)
    if "model" not in state:
        raise CheckpointError(f"{path} is not an mhkd checkpoint (no 'model' entry)")
    return state


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """How to rebuild ``model`` from the zoo, or ``None`` for a user's own module."""
    spec = getattr(model, "zoo_spec", None)
    return dict(spec) if spec else None


def build_model(state: dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the network an mhkd checkpoint describes and load its weights."""
    from mhkd import models

    spec = state.get("arch")
    if not spec:
        raise CheckpointError(
            f"{path} holds a user model's weights without an architecture; "
            "load it into your own module with the Python API"
        )
    try:
        model = models.from_spec(spec)
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: cannot rebuild its model: {str(exc).splitlines()[0]}"
        ) from None
    return model


# ---- finite weights ----------------------------------------------------------------------
def nonfinite_parameters(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors (parameters and buffers) holding NaN or inf."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def check_finite_weights(state_dict: Mapping[str, Any], path: str | Path) -> None:
    """Refuse weights holding NaN or inf: a network computing NaN is no teacher or student."""
    bad = nonfinite_parameters(state_dict)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(f"{path}: NaN or infinite values in {len(bad)} tensors ({shown})")


# ---- any checkpoint -> a model -----------------------------------------------------------
#: The format of a run's resume file (``checkpoints/last.pt``), written by the epoch loop.
RESUME_FORMAT = "mhkd/2"
#: The format of a model file (``best.pt``, a proxy teacher, FT's paraphraser): weights only.
MODEL_FORMAT = "mhkd/1"


def _resumed_model(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """A run's ``last.pt`` seen as a model checkpoint: its step's network at the last epoch.

    Users pass ``last.pt`` as a teacher or a model to prune as often as ``best.pt``; the
    network is there (the step's ``model`` and ``arch``), only the wrapping differs.
    """
    step, loop = state.get("step"), state.get("loop")
    if not (isinstance(step, dict) and step.get("arch") and _is_tensor_dict(step.get("model"))):
        raise CheckpointError(
            f"{path} is a resume checkpoint whose network cannot be rebuilt on its own (a "
            "pruning stage or a user's module); use the run's checkpoints/best.pt or export"
        )
    identity = state.get("identity") if isinstance(state.get("identity"), dict) else {}
    last = loop.get("last", {}) if isinstance(loop, dict) else {}
    return {
        "format": f"{RESUME_FORMAT} (last.pt)",
        "arch": step["arch"],
        "model": step["model"],
        "data": identity.get("data"),
        "test_acc": last.get("test_acc") if isinstance(last, dict) else None,
        "epoch": loop.get("epoch") if isinstance(loop, dict) else None,
    }


#: How a foreign file wraps its state_dict: the entry name -> the format reported.
_WRAPPERS = {"model": "repdistiller", "state_dict": "state_dict"}


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, Tensor) for v in value.values())


def _foreign_weights(state: Any, path: Path) -> tuple[dict[str, Tensor], str]:
    """The state_dict inside a file not written by mhkd, and the name of its format."""
    if isinstance(state, dict):
        for entry, fmt in _WRAPPERS.items():
            if _is_tensor_dict(state.get(entry)) and state[entry]:
                return state[entry], fmt
        if state and _is_tensor_dict(state):
            return state, "state_dict"
    found = (
        f"a dict of {', '.join(map(repr, list(state)[:5]))}"
        if isinstance(state, dict)
        else f"a {type(state).__name__}"
    )
    raise CheckpointError(f"{path} holds no state_dict of a model ({found})")


def _number(value: Any) -> float | None:
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def _fit_problem(model: nn.Module, weights: Mapping[str, Tensor]) -> str | None:
    """Why ``weights`` do not fit ``model`` exactly (missing, unexpected, reshaped keys)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    reshaped = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    parts = [
        f"{len(items)} {what} (e.g. {items[0]})"
        for items, what in (
            (missing, "missing"),
            (unexpected, "unexpected"),
            (reshaped, "reshaped"),
        )
        if items
    ]
    return "; ".join(parts) or None


def _with_batchnorm_counters(model: nn.Module, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """``weights`` with every BatchNorm's ``num_batches_tracked`` the file lacks taken from the
    fresh model (0), as ``load_state_dict`` does: files saved before PyTorch 0.4.1 have none,
    and the counter changes nothing unless BatchNorm's momentum is None."""
    counters = {
        key: value
        for key, value in model.state_dict().items()
        if key.endswith("num_batches_tracked") and key not in weights
    }
    return {**weights, **counters}


def _keys_hint(weights: Mapping[str, Tensor], arch: str) -> str:
    """`` (its keys spell X)`` when the keys name another architecture than ``arch``."""
    from mhkd.models import foreign

    try:
        spelled = foreign.arch_from_keys(weights)
    except foreign.LayoutError:
        return ""
    return f" (its keys spell {spelled})" if spelled != arch else ""


def _load_foreign(
    state: Any, path: Path, arch: str | None
) -> tuple[nn.Module, dict[str, Any], dict[str, Tensor]]:
    from mhkd import models
    from mhkd.models import foreign

    weights, fmt = _foreign_weights(state, path)
    folder_arch = foreign.arch_from_folder(path)
    try:
        if arch:
            how = "as given"
        elif folder_arch:
            arch, how = folder_arch, "from the folder name"
        else:
            arch, how = foreign.arch_from_keys(weights), "from the keys"
        zoo_name, num_classes, renamed = foreign.to_mhkd(weights, arch)
        model = models.create(zoo_name, num_classes=num_classes)
    except ValueError as exc:  # LayoutError, or a zoo without that model
        raise CheckpointError(f"{path}: {exc}") from None
    renamed = _with_batchnorm_counters(model, renamed)
    problem = _fit_problem(model, renamed)
    if problem:
        raise CheckpointError(
            f"{path}: its weights do not fit {zoo_name} (architecture {arch!r} {how}): "
            f"{problem}; pass the right architecture{_keys_hint(weights, arch)}"
        )
    model.load_state_dict(renamed)
    family = foreign.resolve(arch)[1]
    layout = (
        "torchvision"
        if family is foreign.TORCHVISION
        else ("RepDistiller/mdistiller" if foreign.detect_foreign(weights) else "mhkd")
    )
    # RepDistiller trains these models on CIFAR-100 only, and so does mdistiller: in their
    # format, 100 classes mean CIFAR-100.
    cifar100 = fmt == "repdistiller" and family is not foreign.TORCHVISION and num_classes == 100
    meta = {
        "format": fmt,
        "arch": model_spec(model),
        "data": "cifar100" if cifar100 else None,
        "num_classes": num_classes,
        "test_acc": _number(state.get("accuracy", state.get("best_acc"))),
        "epoch": state.get("epoch") if isinstance(state.get("epoch"), int) else None,
        "source": f"{layout} layout, architecture {arch} {how}",
    }
    return model, meta, weights


def load_model(
    path: str | Path,
    arch: str | None = None,
    map_location: str | torch.device = "cpu",
    *,
    check_finite: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Any checkpoint a user brings, as a model with its weights and normalised metadata.

    Reads mhkd checkpoints (zoo and pruned models, and a run's ``last.pt`` as its last epoch's
    network; ``arch`` is then ignored, the file names its own) and foreign files (see the
    module docstring). A foreign file's architecture is ``arch`` (a RepDistiller/mdistiller
    name such as ``ResNet50`` or a zoo name), else its folder's name (``wrn_40_2_vanilla``),
    else what its keys and shapes spell. With ``check_finite``, NaN or infinite weights are
    refused. ``map_location`` is where the file's tensors are read to (GPU-saved files load on
    a CPU); the model is built on the CPU.

    The metadata: ``format`` (:data:`MODEL_FORMAT`, ``repdistiller``, ``state_dict``),
    ``arch`` (the zoo spec), ``data`` (``None`` when the file does not say), ``num_classes``,
    ``test_acc``, ``epoch`` and ``source`` (a phrase saying where the architecture came from).
    Every failure is a one-line :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    state = _read(path, map_location)
    if isinstance(state, dict) and state.get("format") == RESUME_FORMAT:
        state = _resumed_model(state, path)
    if isinstance(state, dict) and "arch" in state and "model" in state:
        model, weights = build_model(state, path), state["model"]
        meta = {
            "format": state.get("format", "mhkd"),
            "arch": state["arch"],
            "data": state.get("data"),
            "num_classes": state.get("num_classes"),
            "test_acc": _number(state.get("test_acc")),
            "epoch": state.get("epoch"),
            "source": "mhkd checkpoint",
        }
    else:
        model, meta, weights = _load_foreign(state, path, arch)
    if check_finite:
        check_finite_weights(weights, path)
    return model, meta
