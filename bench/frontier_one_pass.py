#!/usr/bin/env python
"""The frontier's SAEs from one pass of the language model against one pass each (cache off).

    python bench/frontier_one_pass.py                    # embedded default, 100k tokens each
    python bench/frontier_one_pass.py --tokens 500000    # the study's budget (~1 h on 2 cores)

Trains the SAEs build_frontier.py trains, on the embedded setting with the activations streamed:
ReLU at each RELU_L1, SAE-Lens TopK at each TOPK_K and Matryoshka at each MATRYOSHKA_K, and the
seed runs 1 and 2 of `baseline` and of the default variant (seed 0 is a frontier point or a
study run already): 13 SAEs. First all of them through one pass (one_pass.py), then each through
its own pass (the same code with one job: the model runs again for every SAE). Times training
only (the model loaded once; the evaluations are the same either way) and prints, as JSON:
seconds of each arm and their ratio, and the peak resident memory (ru_maxrss) after one SAE's
pass and after the one pass of all: their difference over the 12 extra SAEs is the memory an
extra SAE costs (its weights, optimiser, and the shuffling buffer of any new (seed, steps)
stream). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import experiment as E
from sae_harness.data.language_model import load_language_model, locate_model, model_dimensions
from sae_harness.hardware.precision import precision_for_run
from sae_harness.data.presets import read_run_environment
from sae_harness.hardware.machine import cpu_bf16_flags, cpu_name
from sae_harness.training.one_pass import sae_lens_job, train_in_one_pass, trainer_job

RELU_L1 = (0.04, 0.08, 0.16, 0.32)
TOPK_K = (20, 40, 80)
MATRYOSHKA_K = (40, 80)
MATRYOSHKA_WIDTHS = (128, 512)
"""build_frontier.py's points (scripts/ is not importable from here; tests/test_one_pass.py checks
they agree)."""


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000, help="training tokens of each SAE")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    env = read_run_environment({"EXPERIMENT_PRESET": "embedded", **os.environ})
    base = E.make_config("baseline", env.preset.name, args.tokens)
    location = locate_model(env.preset, env.cache_dir)
    precision = precision_for_run(env.preset, model_dimensions(location), env.precision, base.matmul_dtype,
                                  base.batch_size, base.n_base, None, env.cache_dir)  # as a run chooses
    preset = replace(env.preset, model_dtype=precision.model_dtype)
    lm = load_language_model(preset, env.cache_dir, location)
    d_in = lm.model.cfg.d_model
    work = Path(tempfile.mkdtemp(prefix="frontier_one_pass_"))

    def jobs():
        def ours(name, variant, overrides):
            cfg = E.make_config(variant, preset.name, args.tokens, overrides)
            return trainer_job(name, cfg, E.make_trainer, preset.device, precision.sae_torch_dtype)

        made = [ours(f"relu_l1_{l1:g}", "baseline", {"l1_base": l1}) for l1 in RELU_L1]
        made += [sae_lens_job(f"{family}_k{k}", family, k, d_in, base, work / f"{family}_k{k}",
                              [*MATRYOSHKA_WIDTHS, base.n_base] if family == "matryoshka" else None)
                 for family, ks in (("topk", TOPK_K), ("matryoshka", MATRYOSHKA_K)) for k in ks]
        made += [ours(f"{variant}_seed{seed}", variant, {"seed": seed})
                 for variant in ("baseline", E.DEFAULT_VARIANT) for seed in (1, 2)]
        return made

    def one_pass(selected):
        started = time.time()
        train_in_one_pass(lm, preset, base.training_tokens, base.heldout_tokens, base.batch_size,
                          selected)
        return time.time() - started

    figures = {"cpu": cpu_name(), "cpu_bf16_flags": cpu_bf16_flags(), "precision": precision.record(), "tokens_per_sae": args.tokens, "saes": len(jobs())}
    each = {}
    first, *rest = jobs()
    each[first.name] = one_pass([first])  # one SAE alone first: the peak memory of one
    figures["peak_rss_gb_one_sae"] = peak_rss_gb()
    figures["one_pass_seconds"] = one_pass(jobs())
    figures["peak_rss_gb_one_pass"] = peak_rss_gb()
    figures["extra_gb_per_extra_sae"] = ((figures["peak_rss_gb_one_pass"] - figures["peak_rss_gb_one_sae"])
                                         / (figures["saes"] - 1))
    for job in rest:
        each[job.name] = one_pass([job])
        print(f"[bench] {job.name} alone: {each[job.name]:.1f} s", flush=True)
    figures["separate_passes_seconds"] = sum(each.values())
    figures["separate_seconds_by_sae"] = each
    figures["separate_over_one_pass"] = figures["separate_passes_seconds"] / figures["one_pass_seconds"]
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
