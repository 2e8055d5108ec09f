"""Train two of experiment.py's SAEs from one pass of the tiny Gemma-2 (one process or a rank of
torchrun's) and save rank 0's weights (tests/test_one_pass.py).

    python tests/run_tiny_one_pass.py OUT_DIR SHARES '{"config": "overrides"}'
"""

import json
import sys
from pathlib import Path

import conftest
import experiment as E
from safetensors.torch import save_file
from sae_harness.data.language_model import load_language_model
from sae_harness.hardware import distributed
from sae_harness.training.one_pass import train_in_one_pass, trainer_job
from tiny_gemma2 import build, tiny_environment

out_dir, shares, overrides = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
buffer_rows = overrides.pop("stream_buffer_rows")
world = distributed.start("cpu")
paths = build(conftest.FIXTURES)
env = tiny_environment(paths["text"], out_dir / "cache")
lm = load_language_model(env.preset, conftest.FIXTURES / "unused_cache")
points = {"baseline_seed0": ("baseline", 0), "default_seed1": (E.DEFAULT_VARIANT, 1)}
cfgs = {name: E.configure(variant, env.preset.name, None, dict(overrides, seed=seed))[0]
        for name, (variant, seed) in points.items()}
jobs = [trainer_job(name, cfg, E.make_trainer, "cpu") for name, cfg in cfgs.items()]
cfg = cfgs["baseline_seed0"]
train_in_one_pass(lm, env.preset, cfg.training_tokens, cfg.heldout_tokens, cfg.batch_size, jobs,
                  buffer_rows, shares)
if world.is_main:
    out_dir.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        save_file({k: v.contiguous() for k, v in job.result[0].state_dict().items()},
                  out_dir / f"{job.name}.safetensors")
distributed.stop()
