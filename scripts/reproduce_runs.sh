#!/usr/bin/env bash
# Reproduce the committed comparison: run_0 = baseline, run_1 = cosine_sparsity,
# run_2 = tuned_cosine (same token budget and seed), then the figures and the table.
#
#   scripts/reproduce_runs.sh                            # embedded default (CPU, offline)
#   EXPERIMENT_PRESET=real scripts/reproduce_runs.sh     # Gemma-2-2B on a CUDA GPU
#
# Existing run_0..run_2 are replaced (EXPERIMENT_OVERWRITE=1); their notes.txt sections too.
# Other EXPERIMENT_* variables (EXPERIMENT_TOKENS, EXPERIMENT_CACHE) pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
i=0
for variant in baseline cosine_sparsity tuned_cosine; do
  echo "=== run_$i: $variant"
  EXPERIMENT_VARIANT=$variant EXPERIMENT_OVERWRITE=1 "$python" experiment.py --out_dir="run_$i"
  i=$((i + 1))
done
"$python" plot.py
