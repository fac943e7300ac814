"""The machine a benchmark ran on, for the record each script prints.

Figures are only comparable on the same CPU, so every benchmark writes the CPU's model
name and the instruction-set flags that change which kernels run (AVX2, AVX-512, VNNI,
native bf16, AMX) beside its numbers.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: /proc/cpuinfo flags that decide which kernels torch, oneDNN and numpy use
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of :data:`FLAGS` the CPU has."""
    present = set(_cpuinfo().get("flags", "").split())
    return [f for f in FLAGS if f in present]


def machine() -> dict[str, object]:
    """``{"cpu", "cpu_flags", "cores"}`` for a benchmark's record."""
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count()}
