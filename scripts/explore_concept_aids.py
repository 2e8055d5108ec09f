#!/usr/bin/env python
"""Quick exploration of the concept-level aids: training plus the fast analyses, no SAE-Bench.

    python scripts/explore_concept_aids.py OUT.jsonl '{"name": {"config field": value}}' ...

Each arm is `tuned_cosine_as_written` or a named variant changed by the given fields, trained on
the embedded default's cached activations (same tokens, same seed), then measured on the
held-out tokens: concept latents alive, L0 per level, explained variance, hierarchy NMI against
its null, leakage, and the distinct concept latents that fire. One JSON line per arm.
(The committed ablation, with every SAE-Bench eval, is scripts/concept_ablation.py.)
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
import experiment as E  # noqa: E402
from sae_harness.evals.hierarchy import hierarchy_consistency  # noqa: E402
from sae_harness.evals.heldout import heldout_statistics  # noqa: E402
from sae_harness.run.experiment_run import ExperimentRun  # noqa: E402
from sae_harness.data.presets import read_run_environment  # noqa: E402
from sae_harness.records.run_directory import RunDirectory  # noqa: E402


def main(out_path: str, *arms_json: str) -> None:
    env = read_run_environment({**os.environ, "EXPERIMENT_PRESET": "embedded"})
    arms = {}
    for text in arms_json:
        arms.update(json.loads(text))
    with tempfile.TemporaryDirectory() as tmp:
        base_cfg = E.make_config("tuned_cosine", "embedded")
        with ExperimentRun.start(Path(tmp) / "setup", env, base_cfg) as run:
            lm = run.load_language_model()
            data = run.activations(lm)
            device, dtype = run.preset.device, run.precision.sae_torch_dtype
        for name, changes in arms.items():
            variant = changes.pop("variant", "tuned_cosine_as_written")
            cfg = E.make_config(variant, "embedded", overrides=changes)
            started = time.time()
            folder = Path(out_path).with_suffix("") / name
            folder.mkdir(parents=True, exist_ok=True)
            sae, summary = E.train_sae(cfg, device, data, RunDirectory(folder), dtype)
            stats = heldout_statistics(sae, data.heldout)
            row = {"arm": name, "variant": variant, "changes": changes, "seconds": time.time() - started,
                   **{k: stats[k] for k in ("explained_variance", "l0_base", "l0_concept",
                                            "dead_fraction_base", "dead_fraction_concept")}}
            try:
                means, details = hierarchy_consistency(sae, data.heldout)
                row.update({k: means[k] for k in ("alive_concept_fraction", "nmi_mean", "null_nmi_mean",
                                                  "p_b_given_c_mean", "null_p_b_given_c_mean",
                                                  "leakage_mean")})
                fired = sorted(c["firings"] for c in details["concepts"])
                row["top20_share_of_firings"] = sum(fired[-20:]) / max(sum(fired), 1)
            except ValueError as error:
                row["hierarchy"] = str(error)
            print(json.dumps(row), flush=True)
            with open(out_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1].startswith("-"):
        raise SystemExit(__doc__ + "\nerror: give OUT.jsonl and at least one arm (JSON)")
    main(*sys.argv[1:])
