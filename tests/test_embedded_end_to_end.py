"""The README's first command's run, end to end on the embedded default (Gemma-3-270M from its
PyPI package, packaged text and probing data), as the launcher starts it: a subprocess of
`python experiment.py --out_dir=...` with EXPERIMENT_PRESET=embedded. Minutes with warm caches
(the converted model and the activations in the user's cache), more on first use: `slow`, run
with `pytest -m slow` before a change to the real path lands."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

GROUPS = ("training", "weights", "hierarchy", "core", "sparse_probing", "absorption")


def test_the_embedded_default_runs_end_to_end_and_its_figures_are_sane(tmp_path):
    out = tmp_path / "run_local"
    env = {**os.environ, "EXPERIMENT_PRESET": "embedded"}
    result = subprocess.run([sys.executable, "experiment.py", f"--out_dir={out}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-1500:]
    info = json.loads((out / "final_info.json").read_text())
    means = {group: info[group]["means"] for group in GROUPS}  # every evaluation ran
    training = means["training"]
    assert training["steps"] > 900 and training["degenerate"] == 0.0
    assert 0.5 < training["explained_variance"] < 1.0
    assert training["dead_fraction_concept"] < 0.5  # the concept level lives
    assert means["hierarchy"]["nmi_mean"] > 3 * means["hierarchy"]["null_nmi_mean"]
    absorption = means["absorption"]
    assert 0.0 <= absorption["base_only_mean_absorption_fraction_score"] <= 1.0
    assert absorption["mean_absorption_fraction_ci95_low"] <= absorption["mean_absorption_fraction_score"] \
        <= absorption["mean_absorption_fraction_ci95_high"]
    assert means["sparse_probing"]["sae_top_1_test_accuracy"] > 0.5
    assert (out / "concepts.html").is_file() and (out / "logs" / "absorption.log").is_file()
    console = result.stdout + result.stderr
    assert "Num non-zero elements" not in console  # SAE-Bench's prints go to run_i/logs/
