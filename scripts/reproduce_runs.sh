#!/usr/bin/env bash
# Reproduce the committed comparison (same token budget and seed), then the figures and table:
#   run_0 = baseline, run_1 = cosine_sparsity, run_2 = tuned_cosine (the idea plus the aids that
#   keep its concept level alive), run_3 = cosine_sparsity_as_written,
#   run_4 = tuned_cosine_as_written (both exactly as the idea writes them).
#
#   scripts/reproduce_runs.sh                            # embedded default (CPU, offline)
#   EXPERIMENT_PRESET=real scripts/reproduce_runs.sh     # Gemma-2-2B on a CUDA GPU
#
# Existing run_0..run_4 are replaced (EXPERIMENT_OVERWRITE=1); their notes.txt sections too.
# Other EXPERIMENT_* variables (EXPERIMENT_TOKENS, EXPERIMENT_CACHE) pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
i=0
for variant in baseline cosine_sparsity tuned_cosine cosine_sparsity_as_written tuned_cosine_as_written; do
  echo "=== run_$i: $variant"
  EXPERIMENT_VARIANT=$variant EXPERIMENT_OVERWRITE=1 "$python" experiment.py --out_dir="run_$i"
  i=$((i + 1))
done
"$python" plot.py
