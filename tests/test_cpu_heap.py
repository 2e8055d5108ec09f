"""The CPU heap reuses freed memory for large tensors (sae_harness/hardware/cpu_heap.py)."""

import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO
from sae_harness.errors import ConfigurationError
from sae_harness.data.presets import read_heap_choice

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

pytestmark = pytest.mark.e2e  # whole runs or subprocesses (conftest.TIERS)

FAULTS_SCRIPT = """
import resource, sys
import torch
from sae_harness.hardware.cpu_heap import reuse_freed_memory
print(reuse_freed_memory(sys.argv[1]), file=sys.stderr)
for _ in range(20):  # a training step's (B, n_base) latents, 32 MiB. The heap settles within a few
    torch.empty(4096, 2048).fill_(1.0)  # allocations idle, up to ~10 with the cores busy (measured)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(4096, 2048).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_experiment_cpu_heap_is_validated():
    assert read_heap_choice({}) == "reuse"
    assert read_heap_choice({"EXPERIMENT_CPU_HEAP": " System "}) == "system"
    with pytest.raises(ConfigurationError, match="EXPERIMENT_CPU_HEAP='jemalloc' is not one of reuse, system"):
        read_heap_choice({"EXPERIMENT_CPU_HEAP": "jemalloc"})


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's; other C libraries keep their own")
def test_a_reused_heap_serves_large_tensors_without_fresh_pages():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    faults = {}
    for choice in ("system", "reuse"):
        result = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, choice], env=env, cwd=REPO,
                                capture_output=True, text=True, check=True)
        faults[choice] = int(result.stdout.split()[-1])
    pages = 10 * 32 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    # glibc's defaults map (and fault in) each 32 MiB tensor anew; the reused heap does not
    assert faults["system"] > 0.9 * pages, faults
    assert faults["reuse"] < 0.05 * pages, faults
    assert "freed memory reused" in result.stderr
