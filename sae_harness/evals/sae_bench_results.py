"""SAE-Bench result objects: written atomically in SAE-Bench's own schema, read back, flattened.

SAE-Bench's output classes (`BaseEvalOutput` subclasses, pydantic dataclasses) serialise
themselves with `to_json_file`; here that file is written beside its destination and renamed
into place, so a crash never leaves half a JSON. `read_eval_output` re-validates a file with the
class that wrote it, and `flat_means` turns `eval_result_metrics` into one final_info.json group.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sae_harness.records.run_directory import atomic_path

SAE_BENCH_RELEASE = "hierarchical_sae"
"""`sae_lens_release_id` recorded for our SAE (SAE-Bench lets a custom SAE's release be named
freely and gives the SAE itself the id 'custom_sae')."""


def sae_bench_version() -> str:
    """What `sae_bench_commit_hash` records.

    SAE-Bench's own `get_sae_bench_version()` runs `git rev-parse HEAD` in the current directory,
    which for a pip-installed sae-bench is the commit of whatever repository the run started in
    (ours), not SAE-Bench's. The installed package version is recorded instead.
    """
    return f"sae-bench=={version('sae-bench')} (pip; no git commit)"


def identity_fields(sae, sae_id: str) -> dict[str, Any]:
    """The fields of an SAE-Bench output that say which SAE and which versions produced it."""
    from sae_bench.sae_bench_utils import get_sae_lens_version

    return dict(sae_bench_commit_hash=sae_bench_version(), sae_lens_id=sae_id,
                sae_lens_release_id=SAE_BENCH_RELEASE, sae_lens_version=get_sae_lens_version(),
                sae_cfg_dict=sae.cfg.to_dict())


def write_eval_output(output, path: Path) -> Path:
    """`output.to_json_file`, atomically."""
    with atomic_path(path) as tmp:
        output.to_json_file(str(tmp))
    return Path(path)


def read_eval_output(path: Path, output_class):
    """Load a SAE-Bench result JSON and validate it with its output class (pydantic)."""
    from pydantic import TypeAdapter

    with open(path) as handle:
        return TypeAdapter(output_class).validate_python(json.load(handle))


def flat_means(metric_categories) -> dict[str, float]:
    """Every number in `eval_result_metrics` as {metric: float}, without the category prefix.

    Takes the metric-categories object or its dict form ({category: {metric: value}}). A name
    that occurs in two categories is kept as `category/name` for both. Missing (None) and
    non-finite values are left out: final_info.json holds finite floats only.
    """
    categories: dict[str, dict[str, Any]] = (
        metric_categories if isinstance(metric_categories, dict) else asdict(metric_categories)
    )
    counts: dict[str, int] = {}
    for metrics in categories.values():
        for name in metrics:
            counts[name] = counts.get(name, 0) + 1
    means = {}
    for category, metrics in categories.items():
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            means[name if counts[name] == 1 else f"{category}/{name}"] = float(value)
    return means
