"""How many CPU threads a long phase should use: measured at its start, not assumed.

torch's OpenMP threads wait for each other at every parallel region. On an idle machine all
cores help; when other processes keep a core busy, the waiting dominates, and two threads can
be several times slower than one (the absorption eval's prompt rates in docs/BENCHMARKS.md,
"Figures behind the code's choices").
`threads_for_phase` looks at what the other processes used over a short window and picks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

BUSY_CORES = 0.5
"""Other processes using at least this many cores' worth of CPU make a phase run on 1 thread."""


def other_processes_cores(window_s: float = 0.5) -> float | None:
    """Cores' worth of CPU that processes other than this one used over `window_s` seconds
    (None where psutil cannot tell)."""
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process()
    try:
        before = sum(me.cpu_times()[:2])
        busy = psutil.cpu_percent(interval=window_s) / 100 * (psutil.cpu_count() or 1)
        mine = (sum(me.cpu_times()[:2]) - before) / window_s
    except (psutil.Error, OSError):
        return None
    return max(0.0, busy - mine)


def threads_for_phase(requested: int | str | None) -> tuple[int | None, str]:
    """The thread count for a phase and why: an int is used as given, None leaves torch's,
    'auto' is 1 when other processes keep BUSY_CORES busy, else torch's current count."""
    if requested is None:
        return None, "torch's default"
    if requested != "auto":
        return int(requested), "set by the eval sizes"
    current = torch.get_num_threads()
    if current == 1:
        return None, "torch already runs on 1 thread"
    others = other_processes_cores()
    if others is None:
        return 1, "other processes' CPU use unknown: 1 thread"
    if others >= BUSY_CORES:
        return 1, f"other processes used {others:.1f} of {os.cpu_count()} cores: 1 thread"
    return None, f"other processes used {others:.1f} of {os.cpu_count()} cores: all {current} threads"


@contextmanager
def thread_count(n: int | None):
    """torch's and the BLAS libraries' thread counts set to `n` within the block (None: unchanged)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)
