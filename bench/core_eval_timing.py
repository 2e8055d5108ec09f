"""Time SAE-Bench's core eval (sae_harness/evals/core.py) on the embedded model, cold and warm.

    .venv/bin/python bench/core_eval_timing.py [--dtype float32|bfloat16]

A fresh tuned_cosine SAE (seed 0) is scored twice on the embedded preset's 'cpu' core sizes:
first with an empty reference cache (the SAE-independent passes computed), then warm (read
back), as a first and a second run would. Prints the seconds of each, the process's peak memory
and the metrics (equal in both). Converts the packaged model on first use (~1-2 min). The heap is
set up as a run's (EXPERIMENT_CPU_HEAP, sae_harness/hardware/cpu_heap.py).
"""

import argparse
import json
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch  # noqa: E402

import experiment as E  # noqa: E402
from sae_harness.hardware.cpu_heap import reuse_freed_memory  # noqa: E402
from sae_harness.evals.core import core_config, run_core, tokens_needed  # noqa: E402
from sae_harness.evals.evaluations import heldout_documents  # noqa: E402
from sae_harness.data.language_model import load_language_model  # noqa: E402
from sae_harness.data.presets import PRESETS, default_cache_dir, read_heap_choice  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    print(f"CPU heap: {reuse_freed_memory(read_heap_choice())}")
    preset = replace(PRESETS["embedded"], model_dtype=args.dtype)
    lm = load_language_model(preset, default_cache_dir())
    torch.manual_seed(0)
    sae = E.HierarchicalSAE(E.make_config("tuned_cosine", "embedded"), lm.model.cfg.d_model)
    sae.stamp_identity(preset.model_name, preset.hook_layer, preset.context_length)
    documents = heldout_documents(preset, tokens_needed(core_config(preset)))
    with tempfile.TemporaryDirectory() as folder:
        for label in ("cold (reference computed)", "warm (reference cached)"):
            started = time.time()
            means = run_core(sae, lm, preset, documents, Path(folder) / "core.json", Path(folder) / "reference")
            print(f"core eval, {args.dtype}, {label}: {time.time() - started:.1f} s")
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")
    print(json.dumps({name: means[name] for name in ("kl_div_score", "ce_loss_score") if name in means}))


if __name__ == "__main__":
    main()
