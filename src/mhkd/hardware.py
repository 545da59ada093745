"""What the hardware at hand does fast, decided by checks rather than assumed."""

from __future__ import annotations

import contextlib
from functools import cache

import torch


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16_units() -> bool:
    """True when the CPU has bf16 matrix units (AMX) or AVX-512 bf16 instructions.

    Without them bf16 autocast on the CPU is emulated and slower than float32.
    """
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` becomes ``"bf16"`` where the device runs bf16 fast, else ``"fp32"``."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; choose from auto, bf16, fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16_units() else "fp32"


def resolve_channels_last(setting: str, device: torch.device, precision: str) -> bool:
    """``"auto"``: channels_last on GPUs, with bf16 on the CPU, and with fp32 on a CPU without
    AVX-512, where oneDNN's channels_last kernels were faster; only fp32 on an AVX-512 CPU
    stays NCHW (measured: benchmarks/RESULTS.md, "channels_last on and off": fp32 train steps
    1.10–1.28× faster channels_last on an AVX2-only AMD EPYC, 0.92× on an AMX Xeon)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"unknown channels_last setting {setting!r}; choose from auto, on, off")
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" or precision == "bf16" or "avx512f" not in cpu_flags()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
