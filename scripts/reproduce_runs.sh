#!/usr/bin/env bash
# Reproduce the committed comparison (same token budget and seed), then the figures and table:
#   run_0 = baseline (top level, beside experiment.py, as the AI-Scientist template keeps it), and
#   the study in study/: study/run_1 = cosine_sparsity, study/run_2 = tuned_cosine (the idea plus
#   the aids that keep its concept level alive), study/run_3 = cosine_sparsity_as_written,
#   study/run_4 = tuned_cosine_as_written (both exactly as the idea writes them).
# The study lives in study/ so that the AI-Scientist loop, which writes run_1, run_2, ... beside
# run_0, finds those names free. Figures: study/plots/; notebook: study/notes.txt (run_0's block
# in the top-level notes.txt).
#
#   scripts/reproduce_runs.sh                            # embedded default (CPU, offline)
#   EXPERIMENT_PRESET=real scripts/reproduce_runs.sh     # Gemma-2-2B on a CUDA GPU
#
# Existing run_0 and study/run_1..run_4 are replaced (EXPERIMENT_OVERWRITE=1); their notes blocks too.
# Other EXPERIMENT_* variables (EXPERIMENT_TOKENS, EXPERIMENT_CACHE) pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
i=0
for variant in baseline cosine_sparsity tuned_cosine cosine_sparsity_as_written tuned_cosine_as_written; do
  out_dir=$([ "$i" -eq 0 ] && echo run_0 || echo "study/run_$i")
  echo "=== $out_dir: $variant"
  EXPERIMENT_VARIANT=$variant EXPERIMENT_OVERWRITE=1 "$python" experiment.py --out_dir="$out_dir"
  i=$((i + 1))
done
"$python" plot.py --runs_dir=study --out_dir=study/plots
