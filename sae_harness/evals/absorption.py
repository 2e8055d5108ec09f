"""SAE-Bench feature absorption (first-letter spelling) on an already loaded model.

    means = run_absorption(sae, lm, preset, run_dir / "absorption.json", probes_root, work_dir)

Pinned to sae-bench 0.6.0 (the metric changed across versions; another version is refused).
SAE-Bench's own functions do the work, as its `run_eval` (sae_bench/evals/absorption/main.py)
calls them, minus loading the model by hub name and writing into the current directory:

1. The LLM probe (absorption_probe.py): a 26-way logistic probe for a word's first letter on
   the residual stream at the word, in ICL prompts "\\ncat has the first letter: C\\n ...".
   It does not depend on the SAE and is trained once and kept.
2. `k_sparse_probing.run_k_sparse_probing_experiment`: per letter, k-sparse probes (k = 1..10)
   on the SAE latents; the LLM probe's F1 on the test words decides which letters count.
3. `feature_absorption.run_feature_absortion_experiment`: for each test word the LLM probe gets
   right, how much of the probe direction other latents carry when the letter's main latents
   do not fire.
4. `main._aggregate_results_df`, then `run_eval`'s loop and `AbsorptionEvalOutput`.

Folders: every function in the chain that takes one gets ours (`experiment_dir`,
`sparse_probing_experiment_dir`, `probes_dir`); SAE-Bench's defaults (`common.RESULTS_DIR`,
`PROBES_DIR`) point inside site-packages. Per-SAE parquet files go to `work_dir`; SAE-Bench
caches them by SAE name, so every call passes force=True and never reads another SAE's.

Where this differs from `run_eval`, and why:
- The model is read through absorption_prompts.AbsorptionModelView: `run_with_cache` stops
  after the hook layer (no value changes), the vocabulary leaves out the words that break the
  prompts' layout, `prompt_token_pos` is read from the tokenizer, and the feature-absorption
  prompts' activations are kept with the LLM probe (they do not depend on the SAE).
- Words are split 80/20 within each first letter, and the generators are seeded with
  `random_seed` (SAE-Bench records it but never seeds): absorption_probe.py.
- The SAE is evaluated as a copy cast to the model's dtype (as `run_eval` casts it; step 3 fails
  otherwise); the caller's SAE is untouched. `sae_bench_commit_hash` records the package version
  (SAE-Bench's helper records the git commit of the current directory, i.e. ours).
- A skip is an error: SAE-Bench prints a line and writes no JSON when fewer than
  `min_feats_for_eval` letters have an LLM-probe F1 above `min_GT_probe_f1`. Here that raises
  `AbsorptionNotEvaluable` (the F1 of every letter in its message), unless the eval sizes name
  lower thresholds (the 'cpu' sizes do); those are used only when the defaults would skip, and
  are then recorded in the JSON's eval_config and eval_result_unstructured and in the returned
  means. At least 2 letters are needed whatever the thresholds (a standard deviation over
  letters is taken). Nothing is written to `out_path` unless the eval completes.

Sizes (`preset.eval_sizes`, ABSORPTION_SIZES): 'sae_bench' is SAE-Bench's defaults (the whole
alphabetic vocabulary; llm_batch_size from `LLM_NAME_TO_BATCH_SIZE`, llm_dtype the model's);
'cpu' is the embedded setting's (a ~3,000-word sample, at least 30 words per letter, batch 64,
SAE activations precomputed for the k-sparse probes, threads from the machine's load, and
lowered thresholds; the measurements behind each value are in the README's Benchmarks);
'tiny' is for the tests (two words per letter).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import torch
from sklearn.exceptions import UndefinedMetricWarning

from sae_harness.hardware.cpu_threads import threads_for_phase, thread_count
from sae_harness.errors import ConfigurationError
from sae_harness.evals.eval_logs import say
from sae_harness.evals.absorption_probe import (AbsorptionNotEvaluable, ensure_llm_probe,
                                                LETTERS, probe_folder, probe_key, seeded,
                                                split_letter_counts)
from sae_harness.evals.absorption_prompts import AbsorptionModelView, locate_word_token
from sae_harness.evals.sae_bench_results import SAE_BENCH_RELEASE, identity_fields, write_eval_output
from sae_harness.data.language_model import LanguageModel
from sae_harness.data.presets import Preset

SAE_BENCH_VERSION = "0.6.0"
"""The only sae-bench this eval runs with: the absorption metric changed across versions."""

@dataclass(frozen=True)
class Thresholds:
    """Which letters count: those whose LLM-probe F1 exceeds min_GT_probe_f1; at least
    min_feats_for_eval of them are needed."""

    min_GT_probe_f1: float
    min_feats_for_eval: int


@dataclass(frozen=True)
class AbsorptionSizes:
    """How big the eval is in one setting. None keeps SAE-Bench's default."""

    llm_probe_words: int | None = None
    """Words the LLM probe is trained and tested on (80/20): None = the whole alphabetic
    vocabulary (SAE-Bench), else a sample of about this many, stratified by first letter."""
    min_words_per_letter: int = 0
    """With a sample: at least this many words of each letter (all if it has fewer), so that
    rare letters (x, q, y, z) have words in both splits."""
    llm_batch_size: int | None = None
    """Prompts per model forward pass; None: SAE-Bench's LLM_NAME_TO_BATCH_SIZE for the model,
    else the preset's llm_batch_size."""
    k_sparse_probe_num_epochs: int | None = None
    precalc_k_sparse_probe_sae_acts: bool | None = None
    lowered_thresholds: Thresholds | None = None
    """Used only when SAE-Bench's thresholds would skip the eval; None: never lowered."""
    cpu_threads: int | str | None = None
    """torch and BLAS threads during the eval (restored after): a number; 'auto', 1 when other
    processes keep the CPU busy, else torch's (cpu_threads.py); None: leave them as they are."""


ABSORPTION_SIZES: dict[str, AbsorptionSizes] = {
    "sae_bench": AbsorptionSizes(),
    # the embedded setting (Gemma-3-270M on a 2-core CPU); why each value: README, Benchmarks
    "cpu": AbsorptionSizes(llm_probe_words=3000, min_words_per_letter=30, llm_batch_size=64,
                           precalc_k_sparse_probe_sae_acts=True, cpu_threads="auto",
                           # the probe's F1 bar stays; 10 letters are accepted instead of 20
                           # (with ~3,000 words the count sits at the edge: 14-21)
                           lowered_thresholds=Thresholds(min_GT_probe_f1=0.6, min_feats_for_eval=10)),
    "tiny": AbsorptionSizes(llm_probe_words=1, min_words_per_letter=2, llm_batch_size=32,
                           precalc_k_sparse_probe_sae_acts=True, cpu_threads=1),
}

def absorption_sizes(preset: Preset) -> AbsorptionSizes:
    """The sizes the preset's eval_sizes name."""
    if preset.eval_sizes not in ABSORPTION_SIZES:
        raise ConfigurationError(
            f"eval_sizes={preset.eval_sizes!r} is not one of {sorted(ABSORPTION_SIZES)} (see absorption.py)"
        )
    return ABSORPTION_SIZES[preset.eval_sizes]


def require_sae_bench_version() -> str:
    """The installed sae-bench version; ConfigurationError unless it is SAE_BENCH_VERSION."""
    try:
        found = importlib.metadata.version("sae-bench")
    except importlib.metadata.PackageNotFoundError:
        found = "not installed"
    if found != SAE_BENCH_VERSION:
        raise ConfigurationError(
            f"the absorption eval is pinned to sae-bench=={SAE_BENCH_VERSION} (its metric changed "
            f"across versions) but sae-bench {found} is installed; pip install sae-bench=={SAE_BENCH_VERSION}"
        )
    return found


# --------------------------------------------------------------------------------------------
# The model as SAE-Bench's absorption code sees it
# --------------------------------------------------------------------------------------------

def absorption_config(lm: LanguageModel, preset: Preset, sizes: AbsorptionSizes):
    """SAE-Bench's AbsorptionEvalConfig with the settings its main fills in, and our sizes."""
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.sae_bench_utils.activation_collection import LLM_NAME_TO_BATCH_SIZE

    model_name = lm.model.cfg.model_name
    config = AbsorptionEvalConfig(model_name=model_name)
    config.llm_batch_size = (sizes.llm_batch_size or LLM_NAME_TO_BATCH_SIZE.get(model_name)
                             or preset.llm_batch_size)
    config.llm_dtype = str(lm.model.cfg.dtype).replace("torch.", "")
    if sizes.k_sparse_probe_num_epochs is not None:
        config.k_sparse_probe_num_epochs = sizes.k_sparse_probe_num_epochs
    if sizes.precalc_k_sparse_probe_sae_acts is not None:
        config.precalc_k_sparse_probe_sae_acts = sizes.precalc_k_sparse_probe_sae_acts
    return config


def passing_letters(k_sparse_results, min_f1: float) -> list[str]:
    """Letters whose LLM probe F1 exceeds min_f1 (SAE-Bench's test: strictly greater)."""
    return sorted(k_sparse_results.loc[k_sparse_results["f1_probe"] > min_f1, "letter"])


def choose_thresholds(k_sparse_results, config, lowered: Thresholds | None) -> tuple[list[str], bool]:
    """Letters that count and whether the thresholds were lowered (config updated in place).

    SAE-Bench's thresholds first; the lowered ones only if those would skip. Raises
    AbsorptionNotEvaluable if the eval would still skip.
    """
    default_f1, default_n = config.min_GT_probe_f1, config.min_feats_for_eval
    letters = passing_letters(k_sparse_results, default_f1)
    if len(letters) >= max(default_n, 2):
        return letters, False
    why = (f"only {len(letters)} letters have an LLM-probe F1 above {default_f1} "
           f"(SAE-Bench needs {default_n})")
    if lowered is not None:
        config.min_GT_probe_f1 = lowered.min_GT_probe_f1
        config.min_feats_for_eval = lowered.min_feats_for_eval
        letters = passing_letters(k_sparse_results, lowered.min_GT_probe_f1)
        if len(letters) >= max(lowered.min_feats_for_eval, 2):
            say(f"[absorption] {why}; thresholds lowered to F1 > {lowered.min_GT_probe_f1}, "
                f"at least {lowered.min_feats_for_eval} letters: {len(letters)} letters count")
            return letters, True
        why += (f"; with the lowered thresholds only {len(letters)} letters have F1 above "
                f"{lowered.min_GT_probe_f1} (needs {max(lowered.min_feats_for_eval, 2)})")
    f1 = ", ".join(f"{row.letter} {row.f1_probe:.2f}" for row in k_sparse_results.itertuples())
    raise AbsorptionNotEvaluable(
        f"absorption not evaluated: {why}; the model shows too few first-letter features at this "
        f"layer (LLM-probe F1 per letter: {f1})"
    )


LEVEL_METRICS = ("mean_absorption_fraction_score", "mean_full_absorption_score",
                 "mean_num_split_features")
"""SAE-Bench's means that are also given for each level alone (<view>_*: base_only_* and
concept_only_* for a two-level SAE, first_<w>_only_* for a Matryoshka SAE's first w latents)."""
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_interval(values: list[float], seed: int, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values` (the letters' absorption
    fractions: the score's noise from which letters pass, ~10-20 of them here)."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.tensor(values, dtype=torch.float64)
    picks = torch.randint(len(values), (BOOTSTRAP_RESAMPLES, len(values)), generator=generator)
    means = data[picks].mean(1)
    tail = (1 - level) / 2
    return float(means.quantile(tail)), float(means.quantile(1 - tail))


def write_word_table(path: Path, raw_by_view: dict, n_base: int | None) -> None:
    """Per test word of every view: the letter, the word, the letter's main latents, the
    latent projecting most on the probe and the absorbing latents with their level ('base' or
    'concept'), the absorption fraction and whether absorption is full (JSON lines)."""
    from sae_harness.records.run_directory import atomic_write_text

    def level(index) -> str:
        return "base" if n_base is None or int(index) < n_base else "concept"

    lines = []
    for view, raw in raw_by_view.items():
        for row in raw.itertuples():
            lines.append(json.dumps({
                "view": view, "letter": row.letter, "word": row.token,
                "main_latents": [[int(i), level(i)] for i in row.split_feats],
                "top_projection_latent": [int(row.top_projection_feat), level(row.top_projection_feat)],
                "top_probe_projection": float(row.top_probe_projection),
                "absorbing_latents": [[int(i), level(i)] for i in row.projection_feats],
                "absorption_fraction": float(row.absorption_fraction),
                "is_full_absorption": bool(row.is_full_absorption)}))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _score_view(sae, view, layer: int, config, sizes: AbsorptionSizes, device: str,
                dtype: torch.dtype, probes_dir: Path, work_dir: Path) -> dict:
    """SAE-Bench's k-sparse probing and feature absorption on one view of the SAE, and the
    aggregate: {raw, letters, lowered, details, metrics, sae_id, formatted_sae (the
    copy SAE-Bench scored), k_sparse_seconds, f1_by_letter (the LLM probe's F1 per letter)}."""
    import sae_bench.sae_bench_utils.general_utils as general_utils
    from sae_bench.evals.absorption.eval_output import AbsorptionMeanMetrics, AbsorptionResultDetail
    from sae_bench.evals.absorption.feature_absorption import run_feature_absortion_experiment
    from sae_bench.evals.absorption.k_sparse_probing import run_k_sparse_probing_experiment
    from sae_bench.evals.absorption.main import _aggregate_results_df

    started = time.time()
    # as run_eval: decoder-norm check and cfg standardised, then cast to the model's dtype (on a
    # copy: the caller's SAE stays as it is)
    sae_id, sae, _ = general_utils.load_and_format_sae(SAE_BENCH_RELEASE, sae, device)
    sae = sae.to(device=device, dtype=dtype)
    sae_name = f"{SAE_BENCH_RELEASE}_{sae_id}"
    sparse_dir, absorption_dir = work_dir / "k_sparse_probing", work_dir / "feature_absorption"
    with seeded(config.random_seed):
        k_sparse_results = run_k_sparse_probing_experiment(
            model=view, sae=sae, layer=layer, sae_name=sae_name, force=True,
            max_k_value=config.max_k_value, f1_jump_threshold=config.f1_jump_threshold,
            prompt_template=config.prompt_template, prompt_token_pos=config.prompt_token_pos,
            device=device, experiment_dir=sparse_dir, probes_dir=probes_dir,
            k_sparse_probe_l1_decay=config.k_sparse_probe_l1_decay,
            k_sparse_probe_batch_size=config.k_sparse_probe_batch_size,
            k_sparse_probe_num_epochs=config.k_sparse_probe_num_epochs,
            eval_batch_size=config.eval_k_sparse_probe_batch_size,
            precalc_k_sparse_probe_sae_acts=config.precalc_k_sparse_probe_sae_acts,
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    k_sparse_results.to_json(work_dir / "k_sparse_probing.json", orient="records", indent=4)
    letters, lowered = choose_thresholds(k_sparse_results, config, sizes.lowered_thresholds)
    k_sparse_seconds = time.time() - started
    with seeded(config.random_seed), view.remembering(probes_dir / "prompt_activations"):
        raw_df = run_feature_absortion_experiment(
            model=view, sae=sae, layer=layer, sae_name=sae_name, force=True,
            max_k_value=config.max_k_value,
            feature_split_f1_jump_threshold=config.f1_jump_threshold,
            prompt_template=config.prompt_template, prompt_token_pos=config.prompt_token_pos,
            batch_size=config.llm_batch_size, device=device, experiment_dir=absorption_dir,
            sparse_probing_experiment_dir=sparse_dir, probes_dir=probes_dir,
        )
    agg_df = _aggregate_results_df(raw_df)
    # as run_eval: letters whose LLM-probe F1 passes the threshold
    f1_by_letter = dict(zip(k_sparse_results["letter"], k_sparse_results["f1_probe"]))
    details = [
        AbsorptionResultDetail(
            first_letter=row["letter"],
            mean_absorption_fraction=float(row["mean_absorption_fraction"]),
            full_absorption_rate=float(row["full_absorption_rate"]),
            num_full_absorption=int(row["num_full_absorption"]),
            num_probe_true_positives=int(row["num_probe_true_positives"]),
            num_split_features=int(row["num_split_feats"]),
        )
        for _, row in agg_df.iterrows()
        if f1_by_letter[row["letter"]] > config.min_GT_probe_f1
    ]
    if len(details) < 2:
        raise AbsorptionNotEvaluable(
            f"absorption not evaluated: only {len(details)} letters have absorption results "
            "(at least 2 are needed for the spread over letters)"
        )
    fractions = [d.mean_absorption_fraction for d in details]
    full_rates = [d.full_absorption_rate for d in details]
    splits = [d.num_split_features for d in details]
    metrics = AbsorptionMeanMetrics(
        mean_absorption_fraction_score=statistics.mean(fractions),
        mean_full_absorption_score=statistics.mean(full_rates),
        mean_num_split_features=statistics.mean(splits),
        std_dev_absorption_fraction_score=statistics.stdev(fractions),
        std_dev_full_absorption_score=statistics.stdev(full_rates),
        std_dev_num_split_features=statistics.stdev(splits),
    )
    if not all(math.isfinite(v) for v in asdict(metrics).values()):
        raise AbsorptionNotEvaluable(f"absorption not evaluated: non-finite metrics {asdict(metrics)}")
    return {"raw": raw_df, "letters": letters, "lowered": lowered,
            "details": details, "metrics": metrics, "sae_id": sae_id, "formatted_sae": sae,
            "k_sparse_seconds": k_sparse_seconds, "f1_by_letter": f1_by_letter}


# --------------------------------------------------------------------------------------------
# The eval
# --------------------------------------------------------------------------------------------
@dataclass
class _AbsorptionSetup:
    """What every view of the SAE is scored with: SAE-Bench's config, the prompt tokenisation,
    the model view that serves prompt activations, and the LLM probe's key and folder."""
    config: object
    sizes: AbsorptionSizes
    tokenisation: object
    view: AbsorptionModelView
    key: dict
    probes_dir: Path
    layer: int
    device: str


@dataclass
class _ProbePhase:
    """How the LLM probe was had (trained or cached), its words per split, the thread count."""
    cached: bool
    seconds: float
    split_counts: dict
    threads: int
    why_threads: str


def _absorption_setup(sae, lm: LanguageModel, preset: Preset, probes_root: Path,
                      sizes: AbsorptionSizes) -> _AbsorptionSetup:
    layer = sae.cfg.hook_layer
    if layer != preset.hook_layer or sae.cfg.d_in != lm.model.cfg.d_model:
        raise ConfigurationError(
            f"the SAE reads layer {layer} (d_in {sae.cfg.d_in}) but the preset's model is hooked at "
            f"layer {preset.hook_layer} (d_model {lm.model.cfg.d_model}); evaluate it with its own model"
        )
    config = absorption_config(lm, preset, sizes)
    tokenisation = locate_word_token(lm.tokenizer, config.prompt_template)
    config.prompt_token_pos = tokenisation.word_token_pos
    view = AbsorptionModelView(lm.model, layer, set(tokenisation.excluded_tokens))
    key = probe_key(lm, preset, layer, config, sizes, tokenisation)
    return _AbsorptionSetup(config, sizes, tokenisation, view, key, probe_folder(probes_root, key),
                            layer, str(lm.model.cfg.device))


def _require_every_letter(split_counts: dict) -> None:
    missing = {split: [c for c in LETTERS if not split_counts[split][c]] for split in split_counts}
    if any(missing.values()):
        raise AbsorptionNotEvaluable(
            "absorption not evaluated: letters without words in the LLM probe's "
            + "; ".join(f"{split} split: {', '.join(ls)}" for split, ls in missing.items() if ls)
            + " (the vocabulary or its sample is too small)"
        )


def _probe_and_score_views(setup: _AbsorptionSetup, views: list, work_dir: Path, dtype,
                           started: float) -> tuple[dict, _ProbePhase]:
    """Train (or reuse) the LLM probe, then run SAE-Bench's chain on each view of the SAE."""
    # the probes train with autograd (run_eval enables it globally); scikit-learn's warning about
    # letters no probe predicts (precision 0/0) repeats hundreds of times and is not ours to act on
    threads, why = threads_for_phase(setup.sizes.cpu_threads)
    say(f"[absorption] threads: {threads or torch.get_num_threads()} ({why})")
    scored = {}
    with torch.enable_grad(), thread_count(threads), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
        cached = ensure_llm_probe(setup.view, setup.probes_dir, setup.key, setup.layer, setup.config,
                                  setup.sizes, setup.device)
        counts = split_letter_counts(setup.probes_dir, setup.view.cfg.model_name, setup.layer)
        _require_every_letter(counts)
        probe = _ProbePhase(cached, time.time() - started, counts, threads or torch.get_num_threads(), why)
        for name, level_view in views:
            view_started = time.time()
            scored[name] = _score_view(level_view, setup.view, setup.layer, setup.config, setup.sizes,
                                       setup.device, dtype, setup.probes_dir, work_dir / name)
            scored[name]["seconds"] = time.time() - view_started
    return scored, probe


def _sae_bench_output(setup: _AbsorptionSetup, scored: dict, probe: _ProbePhase, seconds: float):
    """SAE-Bench's AbsorptionEvalOutput of every latent's view, with our extras unstructured."""
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput, AbsorptionMetricCategories
    from sae_bench.sae_bench_utils import get_eval_uuid

    both, config, sizes = scored["both"], setup.config, setup.sizes
    defaults = type(config)()
    return AbsorptionEvalOutput(
        eval_config=config,
        eval_id=get_eval_uuid(),
        datetime_epoch_millis=int(datetime.now().timestamp() * 1000),
        eval_result_metrics=AbsorptionMetricCategories(mean=both["metrics"]),
        eval_result_details=both["details"],
        eval_result_unstructured={
            "harness": "sae_harness.evals.absorption (SAE-Bench's functions on a loaded model)",
            "thresholds_lowered": both["lowered"],
            "sae_bench_default_thresholds": {"min_GT_probe_f1": defaults.min_GT_probe_f1,
                                             "min_feats_for_eval": defaults.min_feats_for_eval},
            "llm_probe_f1_by_letter": {k: float(v) for k, v in both["f1_by_letter"].items()},
            "letters_passing_f1": both["letters"],
            "llm_probe_folder": setup.probes_dir.name,
            "llm_probe_words": sizes.llm_probe_words,
            "llm_probe_split_words": {split: sum(c.values()) for split, c in probe.split_counts.items()},
            "prompt_token_pos_sae_bench_default": defaults.prompt_token_pos,
            "excluded_vocabulary_words": sorted(setup.tokenisation.excluded_tokens.values()),
            "vocabulary_words": setup.tokenisation.words,
            "seconds": {"tokenizer_check_and_llm_probe": probe.seconds,
                        "k_sparse_probing": both["k_sparse_seconds"],
                        "total": seconds, "llm_probe_cached": probe.cached},
            "prompt_activation_batches": {"read_from_cache": setup.view.remembered,
                                          "computed": setup.view.computed},
            "cpu_threads": {"threads": probe.threads, "why": probe.why_threads},
            "levels_alone": {name: {**asdict(result["metrics"]), "seconds": result["seconds"]}
                             for name, result in scored.items() if name != "both"},
        },
        **identity_fields(both["formatted_sae"], both["sae_id"]),
    )


def _absorption_means(config, scored: dict, probe: _ProbePhase, seconds: float) -> dict[str, float]:
    """final_info's absorption means: SAE-Bench's, the 95% interval over letters, each view's."""
    both = scored["both"]
    means = {name: float(value) for name, value in asdict(both["metrics"]).items()}
    low, high = bootstrap_interval([d.mean_absorption_fraction for d in both["details"]],
                                   config.random_seed)
    means.update(mean_absorption_fraction_ci95_low=low, mean_absorption_fraction_ci95_high=high)
    for name in scored:
        if name != "both":
            level = asdict(scored[name]["metrics"])
            means.update({f"{name}_{metric}": float(level[metric]) for metric in LEVEL_METRICS})
            means[f"{name}_seconds"] = scored[name]["seconds"]
    means.update(
        letters_evaluated=float(len(both["details"])),
        thresholds_lowered=float(both["lowered"]),
        min_GT_probe_f1=float(config.min_GT_probe_f1),
        min_feats_for_eval=float(config.min_feats_for_eval),
        llm_probe_cached=float(probe.cached),
        seconds=seconds,
    )
    return means


def run_absorption(sae, lm: LanguageModel, preset: Preset, out_path: Path, probes_root: Path,
                   work_dir: Path, *, sizes: AbsorptionSizes | None = None,
                   words_path: Path | None = None) -> dict[str, float]:
    """Run SAE-Bench's absorption eval, write its JSON to `out_path`, return the means.

    Where the SAE has `level_views()` the chain also runs on each view (a copy whose `encode`
    silences the other latents): a two-level SAE's levels give `base_only_*` and
    `concept_only_*`, a Matryoshka SAE's first groups `first_<w>_only_*` (LEVEL_METRICS).
    `words_path` receives the per-word table of every view (write_word_table). `probes_root`
    keeps the LLM probe across runs; `work_dir` (one per run) receives the per-SAE files. `sizes`
    overrides the preset's (tests use it). Raises AbsorptionNotEvaluable when the eval cannot
    give a result (nothing is written then).
    """
    require_sae_bench_version()
    started = time.time()
    setup = _absorption_setup(sae, lm, preset, probes_root, sizes or absorption_sizes(preset))
    # each view of the SAE: every latent (SAE-Bench's score), then each level alone (ours: a
    # two-level SAE's base_only / concept_only, a Matryoshka SAE's first groups)
    views = [("both", copy.deepcopy(sae)), *(sae.level_views() if hasattr(sae, "level_views") else [])]
    scored, probe = _probe_and_score_views(setup, views, Path(work_dir), lm.model.cfg.dtype, started)
    if words_path is not None:
        write_word_table(words_path, {name: result["raw"] for name, result in scored.items()},
                         getattr(sae, "n_base", None))
    seconds = time.time() - started
    write_eval_output(_sae_bench_output(setup, scored, probe, seconds), Path(out_path))
    means = _absorption_means(setup.config, scored, probe, seconds)
    levels = "".join(f", {name.replace('_', ' ')} {means[f'{name}_mean_absorption_fraction_score']:.3f}"
                     for name in scored if name != "both")
    say(f"[absorption] {len(scored['both']['details'])} letters: absorption fraction "
        f"{means['mean_absorption_fraction_score']:.3f} (95% CI over letters "
        f"{means['mean_absorption_fraction_ci95_low']:.3f}-{means['mean_absorption_fraction_ci95_high']:.3f}"
        f"{levels}), full absorption "
        f"{means['mean_full_absorption_score']:.3f}, split features "
        f"{means['mean_num_split_features']:.2f}; {seconds:.0f} s "
        f"(LLM probe {'cached' if probe.cached else f'trained in {probe.seconds:.0f} s'})")
    return means
