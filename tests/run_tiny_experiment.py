"""Run experiment.main on the tiny Gemma-2 in a separate process (for kill and signal tests).

    python tests/run_tiny_experiment.py OUT_DIR CACHE_DIR '{"config": "overrides"}' [STEP_SECONDS]

The overrides may also hold the environment's `variant`, `activation_cache`, `stream_shares`,
`stream_buffer_rows` and `evaluations` (a list), and `text_dir` (another text than the fixture's).

STEP_SECONDS slows every training step down by sleeping, so that a test can interrupt training
at a chosen point; it changes nothing that is computed.
"""

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import conftest  # noqa: F401  (offline settings and the fixture's HF_HOME, before any HF import)
import experiment as E
from tiny_gemma2 import build, tiny_environment

out_dir, cache_dir, overrides = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
step_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
if step_seconds:
    update = E.HierarchicalTrainer.update

    def slow_update(self, step, x):
        time.sleep(step_seconds)
        return update(self, step, x)

    E.HierarchicalTrainer.update = slow_update
paths = build(conftest.FIXTURES)
env = tiny_environment(Path(overrides.pop("text_dir", paths["text"])), cache_dir,
                       variant=overrides.pop("variant", None))
env = replace(env, activation_cache=overrides.pop("activation_cache", "auto"),
              stream_shares=overrides.pop("stream_shares", None),
              stream_buffer_rows=overrides.pop("stream_buffer_rows", env.stream_buffer_rows),
              evaluations=tuple(overrides.pop("evaluations", env.evaluations)))
sys.exit(E.main([f"--out_dir={out_dir}"], environment=env, overrides=overrides))
