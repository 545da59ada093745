"""The auto rules for precision and memory format, per kind of CPU."""

from __future__ import annotations

import pytest
import torch

from mhkd import hardware

CPU = torch.device("cpu")
XEON_AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
EPYC_AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(
    ("flags", "precision", "channels_last"),
    [
        (XEON_AMX, "bf16", True),  # bf16 units: bf16, channels_last
        (frozenset({"avx2", "avx512f"}), "fp32", False),  # AVX-512, no bf16: fp32 NCHW
        (EPYC_AVX2, "fp32", True),  # AVX2 only: fp32, where channels_last measured faster
        (frozenset(), "fp32", True),
    ],
)
def test_auto_picks_per_cpu_kind(monkeypatch, flags, precision, channels_last):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    chosen = hardware.resolve_precision("auto", CPU)
    assert chosen == precision
    assert hardware.resolve_channels_last("auto", CPU, chosen) is channels_last
    assert hardware.resolve_channels_last("auto", CPU, "bf16") is True
    for setting, value in (("on", True), ("off", False)):
        assert hardware.resolve_channels_last(setting, CPU, chosen) is value


def test_cpu_flags_are_read_from_cpuinfo():
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)
    with open("/proc/cpuinfo") as f:
        line = next((line for line in f if line.startswith("flags")), "flags :")
    assert flags == frozenset(line.split(":", 1)[1].split())
