"""One experiment into one run directory: from the checks before any work to the last stderr line.

    with ExperimentRun.start(out_dir, env, config, title, changes) as run:  # checks, lock, precision
        rehearse_training(make_trainer, run.model_width(), ...)  # 2 steps on random rows (sae_checks.py)
        lm = run.load_language_model()
        data = run.activations(lm)
        if run.training_finished():                   # an earlier attempt trained already
            sae = run.trained_sae(load)
        else:
            sae, summary = train(...)
            run.record_training(sae, summary, data)   # saves the SAE, held-out statistics
        run.evaluate(sae, lm, data)                   # evals, degeneracy, notes, status

What `start` does, in order: refuses a run that cannot work (preflight: model, text, cache;
a token budget the text cannot supply) before creating anything; prepares and locks the folder
(a finished run is refused unless EXPERIMENT_OVERWRITE=1, an unfinished one with another
configuration always); on a CPU makes the heap reuse freed memory (cpu_heap.py); prints and
records the provenance (config.json, run_status.json 'running'), and prints and records every
value of the run that differs from what experiment.py's Config says, with why (`changes`: the
variant, the setting's shrink factors, EXPERIMENT_TOKENS); converts the model if need be and
chooses the precision (precision.py), which it prints and records in config.json.

`evaluate` runs every evaluation (a failing one is recorded, the rest still run), flags a
degenerate SAE (DESIGN 7) in final_info.json, on stdout and in notes.txt, marks the run finished
with the time of each phase, and ends with one stderr line naming any problem.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

from sae_harness.hardware import distributed
from sae_harness.data.activations import ActivationData, check_token_budget, prepare_activations
from sae_harness.training.checkpoint import Checkpoint
from sae_harness.evals.concept_page import PAGE as CONCEPT_PAGE, build_concept_page
from sae_harness.hardware.cpu_heap import reuse_freed_memory
from sae_harness.records.degeneracy import degeneracy_reasons
from sae_harness.errors import ConfigurationError
from sae_harness.evals.evaluations import evaluate_sae
from sae_harness.records.frontier import record_vs_baseline
from sae_harness.evals.heldout import heldout_statistics, training_warnings
from sae_harness.data.language_model import (LanguageModel, load_language_model, load_tokenizer,
                                             locate_model, model_dimensions, tokenizer_id)
from sae_harness.records.notes import update_notes
from sae_harness.hardware.precision import Precision, precision_for_run
from sae_harness.data.preflight import preflight
from sae_harness.data.presets import RunEnvironment
from sae_harness.run.provenance import provenance
from sae_harness.records.run_directory import CHECKPOINT, CONFIG, NOTEBOOK, RunDirectory, json_round_trip, read_json, read_config_json

REPO = Path(__file__).resolve().parents[2]  # the checkout: experiment.py, sae_harness/, scripts/


def peak_memory_gb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class ExperimentRun:
    """The run directory, the preset with its chosen precision, and the phases' times."""

    def __init__(self, directory: RunDirectory, env: RunEnvironment, cfg, variant_title: str,
                 changes: list[str] | None = None):
        self.directory, self.env, self.cfg = directory, env, cfg
        self.preset = env.preset
        self.variant_title = variant_title
        self.changes = list(changes or [])
        """Each value that differs from experiment.py's Config, and why ('field a -> b (why)')."""
        self.phases: dict[str, float] = {}
        self.started = time.time()

    # --- start --------------------------------------------------------------------------------
    @classmethod
    @contextmanager
    def start(cls, out_dir: Path, env: RunEnvironment, cfg, variant_title: str = "",
              changes: list[str] | None = None) -> Iterator[ExperimentRun]:
        """Checks, the locked run folder, provenance and precision (module docstring)."""
        preset = env.preset
        preflight(preset, env.cache_dir)
        check_token_budget(preset, cfg.training_tokens, cfg.heldout_tokens, env.cache_dir,
                           lambda: load_tokenizer(preset, env.cache_dir), tokenizer_id(preset))
        directory = RunDirectory(out_dir)
        if not distributed.current().is_main:  # rank 0 prepares, locks and writes the folder
            distributed.barrier()
            run = cls(directory, env, cfg, variant_title or cfg.variant, changes)
            run._begin_other_rank()
            yield run
            return
        directory.prepare(overwrite=env.overwrite)
        with directory.lock():
            run = cls(directory, env, cfg, variant_title or cfg.variant, changes)
            try:
                run._begin()
            finally:
                distributed.barrier()
            distributed.from_main(run.precision.record())
            yield run

    def _begin(self) -> None:
        directory, env, cfg = self.directory, self.env, self.cfg
        if env.overwrite:
            directory.reset_results()
        elif directory.previous_config() not in (None, json_round_trip(asdict(cfg))):
            raise ConfigurationError(
                f"{directory.path} holds an unfinished run with another configuration; use a new "
                "--out_dir or set EXPERIMENT_OVERWRITE=1 to start it over")
        resuming = directory.status().get("state") in ("running", "failed", "interrupted")
        earlier = (read_json(directory.file(CONFIG)).get("precision")
                   if resuming and directory.file(CONFIG).is_file() else None)
        self.origin = self._provenance()
        print(f"[run] {directory.path}: variant {cfg.variant}, preset {self.preset.name} "
              f"({env.preset_reason})" + (" - resuming an unfinished run" if resuming else ""))
        changed = self.origin["git"]["changed"] or []
        modified = (f" (modified: {', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})"
                    if changed else "")
        print(f"[run] code {self.origin['git']['commit']}{modified}; "
              + ", ".join(f"{k} {v}" for k, v in self.origin["packages"].items()))
        if "cpu_heap" in self.origin:
            print(f"[run] CPU heap: {self.origin['cpu_heap']}")
        print("[config] values that differ from experiment.py's Config: "
              + ("; ".join(self.changes) if self.changes else "none (Config's defaults as written)"))
        self._write_config(None)
        directory.set_status("running", started=self.origin["started"])

        self.location = locate_model(self.preset, env.cache_dir)
        self.phases["model_conversion"] = self.location.seconds
        self.precision = precision_for_run(self.preset, model_dimensions(self.location), env.precision,
                                           cfg.matmul_dtype, cfg.batch_size, cfg.n_base,
                                           earlier, env.cache_dir)
        self.preset = replace(self.preset, model_dtype=self.precision.model_dtype)
        self._write_config(self.precision)
        print(f"[run] model {self.preset.model_name} {self.preset.hook_name} on "
              f"{self.origin['device']}; text {self.preset.text_dataset}; {cfg.training_tokens} tokens")
        print(f"[run] precision: model {self.precision.model_dtype}, SAE matmuls "
              f"{self.precision.sae_matmul_dtype} ({self.precision.reason})")
        if self.precision.warning:
            print(f"[run] WARNING: {self.precision.warning}")

    def _begin_other_rank(self) -> None:
        """A rank other than 0 (torchrun): rank 0's precision, the model it located."""
        self.origin = self._provenance()
        self.precision = Precision.from_record(distributed.from_main(None))
        self.location = locate_model(self.preset, self.env.cache_dir)
        self.preset = replace(self.preset, model_dtype=self.precision.model_dtype)

    def _provenance(self) -> dict:
        """Where the run comes from; on a CPU this process's heap is set up first (cpu_heap.py)."""
        origin = provenance(REPO, self.preset.device)
        if self.preset.device == "cpu":
            origin["cpu_heap"] = reuse_freed_memory(self.env.cpu_heap)
        return origin

    def _write_config(self, precision) -> None:
        self.directory.write_json(CONFIG, {
            "variant": self.cfg.variant, "variant_title": self.variant_title,
            "config": asdict(self.cfg), "changed_from_experiment_py": self.changes,
            "preset": asdict(self.preset),
            "preset_reason": self.env.preset_reason, "cache_dir": str(self.env.cache_dir),
            "activation_cache": self.env.activation_cache,
            "stream_shares": self.env.stream_shares or distributed.current().world_size,
            "provenance": self.origin,
            **({"precision": precision.record()} if precision else {})})

    # --- the model and the activations ------------------------------------------------------------
    def model_width(self) -> int:
        """d_model of the language model, from its config (no weights loaded)."""
        return model_dimensions(self.location)[0]

    def load_language_model(self) -> LanguageModel:
        lm = load_language_model(self.preset, self.env.cache_dir, self.location)
        print(f"[model] loaded {self.preset.model_name} from {lm.source} in {lm.load_seconds:.0f} s")
        self.phases["model_load"] = lm.load_seconds
        return lm

    def activations(self, lm: LanguageModel, stream_extra_tokens: int = 0) -> ActivationData:
        """The held-out and training activations. Under torchrun rank 0 collects the cache (or
        decides to stream: EXPERIMENT_ACTIVATION_CACHE=off, or a budget too big for the disk)
        while the others wait; then every rank reads its share of the cache, or streams its
        own share of the text (streaming.py), `stream_extra_tokens` more than the budget if
        asked (a trainer that reads more batches than the budget holds)."""
        started, cfg, env = time.time(), self.cfg, self.env
        world = distributed.current()
        shares = env.stream_shares or world.world_size

        def prepare(use_cache: bool) -> ActivationData:
            return prepare_activations(lm, self.preset, cfg.training_tokens, cfg.heldout_tokens,
                                       env.cache_dir, cfg.batch_size, cfg.seed,
                                       stream_buffer_rows=env.stream_buffer_rows, use_cache=use_cache,
                                       stream_shares=shares, stream_extra_rows=stream_extra_tokens)

        if world.is_main:
            data = prepare(env.activation_cache != "off")
            distributed.barrier()
            distributed.from_main(data.cache_dir is None)
        else:
            distributed.barrier()  # rank 0 has the cache ready, or streams
            data = prepare(use_cache=not distributed.from_main(None))
        if data.cache_dir is None and world.is_main:
            print(f"[activations] streamed: {shares} share{'s' * (shares > 1)} of the text"
                  + (", one per process" if world.distributed else ""))
        self.phases["activations"] = time.time() - started
        return data

    # --- training -------------------------------------------------------------------------------
    def training_finished(self) -> bool:
        """Whether an earlier attempt in this folder trained and saved the SAE already."""
        return "training" in self.directory.final_info() and self.directory.sae_dir.is_dir()

    def trained_sae(self, load: Callable[[Path], object]):
        """The SAE an earlier attempt trained (its evaluations are what is left to do)."""
        print("[train] training had finished in an earlier attempt; reusing its SAE")
        self._training_started = time.time()
        sae = load(self.directory.sae_dir).to(self.preset.device)
        self._report_training(self.directory.final_info()["training"]["means"])
        return sae

    def record_training(self, sae, summary: dict, data: ActivationData, training_started: float) -> None:
        """Save the trained SAE, measure it on the held-out tokens, write the training group
        (rank 0 of a torchrun run; the others have nothing to write)."""
        self._training_started = training_started
        sae.stamp_identity(self.preset.model_name, self.preset.hook_layer, self.preset.context_length)
        if not distributed.current().is_main:
            return
        sae.save(self.directory.sae_dir, {"variant": self.cfg.variant,
                                          "dataset_path": self.preset.text_dataset,
                                          "training_tokens": self.cfg.training_tokens})
        stats = {**summary, **heldout_statistics(sae, data.heldout),
                 "activation_seconds": data.collect_seconds,
                 "activation_cache_hit": float(data.cache_hit)}
        self.directory.set_group("training", stats)
        Checkpoint(self.directory.file(CHECKPOINT)).remove()
        self._report_training(stats)

    def _report_training(self, stats: dict) -> None:
        self.phases["training"] = time.time() - self._training_started
        print(f"[train] EV {stats['explained_variance']:.3f}, L0 base {stats['l0_base']:.1f} / "
              f"concept {stats['l0_concept']:.1f}, dead {stats['dead_fraction_base']:.1%} / "
              f"{stats['dead_fraction_concept']:.1%}, {stats['seconds']:.0f} s")
        self.stats = stats

    def _compare_with_frontier(self) -> None:
        """final_info.json's `vs_baseline` group (frontier.py): this run against the baseline
        frontier at its L0; without a frontier for this setting, it says how to make one."""
        for line in record_vs_baseline(self.directory):
            print(line)

    # --- the concept browser -----------------------------------------------------------------------
    def _write_concept_page(self, sae, lm: LanguageModel, data: ActivationData) -> str | None:
        """concepts.html (concept_page.py) for a hierarchical run; a failure is recorded like a
        failed eval (run_status.json, stdout) and returned, and never stops the run."""
        if not getattr(sae, "n_concept", 0):
            return None
        started = time.time()
        try:
            size, coherence = build_concept_page(self.directory, sae, lm.tokenizer, self.preset,
                                                 data.heldout)
        except KeyboardInterrupt:
            raise
        except Exception as error:
            message = str(error).strip()
            reason = f"{type(error).__name__}: {message.splitlines()[0][:400] if message else ''}"
            self.directory.record_outcome("failures", CONCEPT_PAGE, reason)
            print(f"[concepts] {CONCEPT_PAGE} FAILED: {reason}", flush=True)
            return reason
        self.phases["concepts_page"] = time.time() - started
        self.directory.clear_outcome(CONCEPT_PAGE)
        figures = (f"; coherence {coherence['concept_coherence_mean']:.3f} (null "
                   f"{coherence['null_concept_coherence_mean']:.3f})" if coherence else "")
        print(f"[concepts] wrote {self.directory.file(CONCEPT_PAGE)} ({size / 1e6:.1f} MB) in "
              f"{self.phases['concepts_page']:.1f} s{figures}")
        return None

    # --- evaluations and the end ------------------------------------------------------------------
    def evaluate(self, sae, lm: LanguageModel, data: ActivationData) -> RunDirectory:
        """Every evaluation, the degeneracy checks, the notebook; under torchrun rank 0 does
        them while the other ranks wait."""
        if not distributed.current().is_main:
            distributed.barrier()
            return self.directory
        try:
            return self._evaluate(sae, lm, data)
        finally:
            distributed.barrier()

    def _evaluate(self, sae, lm: LanguageModel, data: ActivationData) -> RunDirectory:
        directory = self.directory
        warnings = training_warnings(self.stats, sae)
        for warning in warnings:
            print(f"[train] WARNING: {warning}")
        outcome = evaluate_sae(directory, sae, lm, self.preset, data.heldout, self.env.cache_dir,
                               self.env.evaluations)
        self.phases.update(outcome.done)

        # DESIGN 7: flag a degenerate SAE in final_info.json, on stdout and in notes.txt
        reasons = degeneracy_reasons(directory.final_info(), read_config_json(directory.file(CONFIG)))
        training = directory.final_info()["training"]
        directory.set_group("training", {**training["means"], "degenerate": float(bool(reasons))},
                            degenerate_reasons=reasons)
        if reasons:
            print(f"[run] WARNING: degenerate SAE: {'; '.join(reasons)}")
        self._compare_with_frontier()
        page_problem = self._write_concept_page(sae, lm, data)
        self.phases["total"] = time.time() - self.started
        directory.set_status("finished", seconds=self.phases["total"], peak_rss_gb=peak_memory_gb(),
                             degenerate_reasons=reasons, warnings=warnings,
                             phase_seconds=self.phases)
        update_notes(directory.path.resolve().parent / NOTEBOOK, directory.path)
        print(f"[run] finished {directory.path} in {self.phases['total']:.0f} s")
        if outcome.failed or reasons or page_problem:  # the loop reads the tail of stderr: one line
            problems = [f"eval {name} failed: {why}" for name, why in outcome.failed.items()]
            problems += [f"concepts page failed: {page_problem}"] if page_problem else []
            problems += [f"degenerate SAE: {'; '.join(reasons)}"] if reasons else []
            print(f"warning: {directory.path} finished with problems: {' | '.join(problems)}",
                  file=sys.stderr)
        return directory
