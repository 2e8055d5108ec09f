"""Facts about the machine a run is on: the CPU's model name and its native-bf16 flags."""

from __future__ import annotations

import platform
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")
"""/proc/cpuinfo flags of x86 CPUs that compute bf16 matmuls natively."""


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...] | None:
    """The native-bf16 flags of this CPU (Linux); None when the flags cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            flags = set(line.split(":", 1)[1].split())
            return tuple(f for f in NATIVE_BF16_FLAGS if f in flags)
    return None
