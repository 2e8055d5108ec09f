"""Does a larger word sample narrow the absorption score's interval? Rescore one saved SAE.

    EXPERIMENT_PRESET=embedded .venv/bin/python bench/absorption_sample_size.py RUN_DIR [--words 3000 6000]

RUN_DIR is a finished embedded run (its `sae/` and `config.json`). For each word count the
embedded absorption eval (ABSORPTION_SIZES['cpu'] with only llm_probe_words changed) scores the
same SAE; a new count trains its own LLM probe (cached afterwards, like a run's). Prints, per
count: letters scored, SAE-Bench's mean absorption fraction, its 95% bootstrap interval over
letters and the interval's width, words per letter in the probe's test split, and the seconds
(probe training included when it was not cached).
"""

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import experiment as E
from sae_harness.data.language_model import load_language_model
from sae_harness.data.presets import PRESETS, default_cache_dir
from sae_harness.evals.absorption import ABSORPTION_SIZES, run_absorption
from sae_harness.hardware.machine import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--words", type=int, nargs="+", default=[3000, 6000])
    args = parser.parse_args()
    config = json.loads((args.run_dir / "config.json").read_text())
    preset = replace(PRESETS["embedded"], model_dtype=config["precision"]["model_dtype"])
    cache = default_cache_dir()
    lm = load_language_model(preset, cache)
    sae = E.HierarchicalSAE.load(args.run_dir / "sae")
    print(f"CPU: {cpu_name()}; model {preset.model_dtype}; SAE {args.run_dir}")
    print("| words | letters | absorption | 95% CI over letters | CI width | test words | seconds |")
    print("|---|---|---|---|---|---|---|")
    for words in args.words:
        sizes = replace(ABSORPTION_SIZES["cpu"], llm_probe_words=words)
        with tempfile.TemporaryDirectory() as folder:
            started = time.time()
            means = run_absorption(sae, lm, preset, Path(folder) / "absorption.json",
                                   cache / "sae_bench" / "absorption", Path(folder) / "work", sizes=sizes)
            seconds = time.time() - started
            written = json.loads((Path(folder) / "absorption.json").read_text())
        low, high = means["mean_absorption_fraction_ci95_low"], means["mean_absorption_fraction_ci95_high"]
        test_words = written["eval_result_unstructured"]["llm_probe_split_words"].get("test")
        print(f"| {words} | {means['letters_evaluated']:.0f} | {means['mean_absorption_fraction_score']:.3f} | "
              f"{low:.3f}-{high:.3f} | {high - low:.3f} | {test_words} | {seconds:.0f} "
              f"({'probe cached' if means['llm_probe_cached'] else 'probe trained'}) |", flush=True)


if __name__ == "__main__":
    main()
