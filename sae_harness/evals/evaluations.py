"""Every evaluation of a trained SAE, into its run directory; one failing eval never stops the rest.

    outcome = evaluate_sae(run, sae, lm, preset, heldout_activations, cache_dir)

Order: our own analyses of the weights and the hierarchy (seconds), then SAE-Bench's core
metrics, sparse probing and absorption, all on the model object already loaded. Each eval adds
its group to final_info.json (with its wall time, `seconds`) and writes its full result to
`run/<eval>.json` (SAE-Bench's own schema for SAE-Bench's evals) and everything it prints
(SAE-Bench's and scikit-learn's lines, progress bars and warnings) to `run/logs/<eval>.log`
(eval_logs.py); the console gets our own lines. An eval that fails leaves its group out and its
reason in run_status.json and on stdout, with the path of its log, which ends in the traceback;
one that does not apply (the hierarchy of an SAE without a concept level) is recorded as skipped.

SAE-Bench's caches of language-model activations and probes live under
`cache_dir/sae_bench/`, keyed by what determines them, and are reused by later runs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sae_harness.evals.eval_logs import LOGS_DIR, eval_log
from sae_harness.data.language_model import LanguageModel
from sae_harness.data.presets import Preset
from sae_harness.records.run_directory import EVALUATIONS, RunDirectory
from sae_harness.data.text_sources import documents

ABSORPTION_WORDS = "absorption_words.jsonl"
"""The absorption eval's per-word table, every view of the SAE (evals/absorption.py)."""


@dataclass
class EvaluationOutcome:
    done: dict[str, float] = field(default_factory=dict)
    """Eval name -> seconds it took."""
    failed: dict[str, str] = field(default_factory=dict)
    """Eval name -> why it failed."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Eval name -> why it does not apply."""


def heldout_documents(preset: Preset, tokens: int, chars_per_token: float = 8.0) -> list[str]:
    """The first documents of the preset's text, about `tokens` tokens' worth (generously).

    The held-out activations come from the first documents too; training starts after them.
    """
    picked, chars = [], 0
    for doc in documents(preset):
        picked.append(doc)
        chars += len(doc)
        if chars >= tokens * chars_per_token:
            break
    return picked


def _our_analysis(run: RunDirectory, name: str, analysis: Callable[[], tuple[dict, dict]]) -> dict:
    means, details = analysis()
    run.write_json(f"{name}.json", details)
    return means


def evaluate_sae(run: RunDirectory, sae, lm: LanguageModel, preset: Preset, heldout: torch.Tensor,
                 cache_dir: Path, names: tuple[str, ...] = EVALUATIONS) -> EvaluationOutcome:
    """Run the named evals of `sae` (reading raw activations) and record each one's outcome."""
    from sae_harness.evals.absorption import run_absorption
    from sae_harness.evals.core import core_config, run_core, tokens_needed
    from sae_harness.evals.hierarchy import hierarchy_consistency
    from sae_harness.evals.sparse_probing import run_sparse_probing
    from sae_harness.evals.weights import weight_analysis

    sae_bench_cache = Path(cache_dir) / "sae_bench"
    work = tempfile.TemporaryDirectory(dir=cache_dir, prefix=".absorption-work-")
    jobs = {
        "weights": lambda: _our_analysis(run, "weights", lambda: weight_analysis(sae)),
        "hierarchy": lambda: _our_analysis(run, "hierarchy", lambda: hierarchy_consistency(sae, heldout)),
        "core": lambda: run_core(sae, lm, preset,
                                 heldout_documents(preset, tokens_needed(core_config(preset))),
                                 run.file("core.json"), sae_bench_cache / "core"),
        "sparse_probing": lambda: run_sparse_probing(sae, lm, preset, run.file("sparse_probing.json"),
                                                     sae_bench_cache / "sparse_probing"),
        "absorption": lambda: run_absorption(sae, lm, preset, run.file("absorption.json"),
                                             sae_bench_cache / "absorption", Path(work.name),
                                             words_path=run.file(ABSORPTION_WORDS)),
    }
    outcome = EvaluationOutcome()
    for name in EVALUATIONS:
        if name not in names:  # not asked for (EXPERIMENT_EVALS): no stale result from earlier
            outcome.skipped[name] = "not asked for (EXPERIMENT_EVALS)"
            run.remove_group(name)
            run.file(f"{name}.json").unlink(missing_ok=True)
            run.record_outcome("skipped", name, outcome.skipped[name])
    with work:
        for name in names:
            if name == "hierarchy" and not getattr(sae, "n_concept", 0):
                outcome.skipped[name] = "the SAE has no concept level"
                run.remove_group(name)
                run.file(f"{name}.json").unlink(missing_ok=True)
                run.record_outcome("skipped", name, outcome.skipped[name])
                print(f"[eval] {name}: skipped ({outcome.skipped[name]})")
                continue
            log = run.file(LOGS_DIR) / f"{name}.log"
            print(f"[eval] {name} ... (its output: {log})", flush=True)
            started = time.time()
            try:
                with eval_log(log):
                    means = jobs[name]()
            except KeyboardInterrupt:
                raise
            except Exception as error:  # recorded, and the next eval still runs
                message = str(error).strip()
                reason = f"{type(error).__name__}: {message.splitlines()[0][:400] if message else ''}"
                outcome.failed[name] = reason
                run.remove_group(name)
                run.file(f"{name}.json").unlink(missing_ok=True)  # no stale result from earlier
                if name == "absorption":
                    run.file(ABSORPTION_WORDS).unlink(missing_ok=True)
                run.record_outcome("failures", name, reason)
                print(f"[eval] {name} FAILED: {reason} (full output and traceback: {log})", flush=True)
                continue
            outcome.done[name] = time.time() - started
            run.set_group(name, {**means, "seconds": outcome.done[name]})
            run.clear_outcome(name)
            print(f"[eval] {name} done in {outcome.done[name]:.0f} s", flush=True)
    return outcome
