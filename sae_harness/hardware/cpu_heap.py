"""Large CPU tensors reuse freed memory instead of taking fresh pages from the kernel.

glibc's malloc serves a request above its mmap threshold (at most 32 MiB) with a new mapping
and unmaps it again at free. Every (4096, 2048) fp32 tensor of a training step is 32 MiB plus
torch's alignment, just above the largest threshold, and core's logits are 0.5 GB a batch, so
they were new pages in every step and every forward, each zero-filled by the kernel on first
touch. Reusing freed memory removes those page faults: the training step gets faster and a warm
embedded run shorter, for some peak memory, every figure equal (docs/BENCHMARKS.md, "Figures
behind the code's choices").

`reuse_freed_memory()` asks glibc (mallopt) to serve every size from its heap (M_MMAP_MAX 0)
and to give memory back to the kernel only when 2 GiB at the heap's top lie unused
(M_TRIM_THRESHOLD): what torch's own CPU launcher gets from jemalloc or tcmalloc
(`torch.backends.xeon.run_cpu`), without preloading a library. A block freed in the middle of
the heap is reused by the next request that fits; what the heap keeps costs the run some peak
memory. Where the heap cannot grow, glibc still maps memory, so no request
fails for it.

EXPERIMENT_CPU_HEAP=system keeps glibc's defaults; GLIBC_TUNABLES that set malloc's own
parameters are left alone; on other C libraries (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

HEAP_CHOICES = ("reuse", "system")
"""Values of EXPERIMENT_CPU_HEAP (read by presets.read_heap_choice)."""

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
"""mallopt's parameter numbers (glibc's malloc.h)."""
TRIM_THRESHOLD_BYTES = 2**31 - 1
"""Unused memory at the heap's top beyond this goes back to the kernel (mallopt takes an int)."""

GLIBC_TUNABLES_FOR_REUSE = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={TRIM_THRESHOLD_BYTES}"
"""The same setting for a process from its start: bench/run_benchmarks.py gives it to the process
that times every trainer, ours and the reference ones alike."""

_applied: str | None = None


def reuse_freed_memory(choice: str = "reuse", environ: dict[str, str] | None = None) -> str:
    """Make glibc reuse freed memory for large allocations in this process (module docstring);
    returns what this process's heap does, for the start lines and config.json."""
    global _applied
    env = os.environ if environ is None else environ
    if _applied:
        return _applied
    if choice == "system":
        return "glibc defaults (EXPERIMENT_CPU_HEAP=system)"
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return f"as GLIBC_TUNABLES sets it ({env['GLIBC_TUNABLES']})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"the C library's defaults ({platform.system()} {platform.libc_ver()[0] or 'non-glibc'})"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        return "glibc defaults (mallopt refused the change)"
    _applied = "freed memory reused (glibc mallopt: M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB)"
    return _applied
