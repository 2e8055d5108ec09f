"""SAE-Bench sparse probing on an already loaded model, on SAE-Bench's hub data or the embedded suite.

    means = run_sparse_probing(sae, lm, preset, run_dir / "sparse_probing.json", artifacts_root)

SAE-Bench's own code does the work: `sae_bench.evals.sparse_probing.main.run_eval_single_sae`
tokenises, collects the model's activations (BOS/EOS/PAD zeroed, mean over positions), trains
the LLM probes (full residual stream and its top-k channels) and the SAE probes (all latents and
the top-k latents, k in K_VALUES), one binary task per class (class vs. the other classes of its
dataset). The result JSON is the `SparseProbingEvalOutput` that SAE-Bench's `run_eval` builds;
the returned means are its `llm` and `sae` metrics (accuracies averaged over datasets).

Data (`preset.probing_datasets`):
  'sae_bench'   SAE-Bench's 8 hub datasets, through its own loaders (35 binary tasks).
  'sae_probes'  EMBEDDED_PROBING_SUITE: 4 datasets, 13 binary tasks, from files inside the
                sae-probes wheel. `embedded_probing_datasets()` registers them with SAE-Bench;
                only the source of the texts differs, everything after is SAE-Bench's.
                Each class's distinct texts are split into train/test with the config's seed,
                train_set_size // 2 and test_set_size // 2 texts per class, as SAE-Bench's
                binary datasets do.

Sizes (`preset.eval_sizes`), per binary task (half positives, half negatives):
  'sae_bench'   SAE-Bench's defaults: 4000 train / 1000 test texts, LLM batch 32.
  'cpu'         300 train / 150 test texts (150 / 75 per class), LLM batch from the preset.
  'tiny'        8 train / 4 test, for tests on the tiny Gemma-2 fixture.
The context is `preset.context_length` (128 in both settings); SAE-Bench pads every text to it.
On a shared CPU torch's 2 OpenMP threads wait on each other; the caller chooses torch's
threads. scikit-learn's probes are held to one BLAS thread here (with two on a shared CPU they
took ~50x longer, same accuracies). Measured times: README, "Benchmarks".

Artifacts: SAE-Bench keeps, per dataset, the model's activations and the LLM probes' results
(`<dataset>_activations.pt`) and reuses them for every later SAE; our standardised LLM
probes' results sit beside them (STANDARDISED_LLM_FILE). They live in
`artifacts_root / <digest>`, the digest covering everything that determines them (model,
weights, hook, datasets and their source, sizes, context, seed, dtype, k values, device,
sae-bench version; `key.json` in the folder lists them), so another setting never reads them.
SAE-Bench writes them with `torch.save` to the final path; here each save goes to a temporary
file renamed into place, so a crash cannot leave a truncated artifact that a later run would
load. Size: 458 MB for the embedded suite at 'cpu' sizes (bf16 activations of every position);
SAE-Bench's defaults on Gemma-2-2B need tens of GB.

Reproducibility: with the artifacts cached SAE-Bench skips the LLM probes, which draw from
torch's global generator, so the SAE probes would start from another random state than on the
first run (measured: SAE accuracies up to 1.3 points apart for the same SAE). The generator is
reseeded before the SAE probes of each dataset (`sae_probes_seeded`), so a run's SAE numbers do
not depend on whether an earlier run left artifacts.

SAE-Bench quirk (not changed here, since the probes are SAE-Bench's): its top-k probes are
scikit-learn logistic regressions on unscaled features. Gemma-3-270M's residual stream has a
few channels with values ~1000-2000; the top-1 channel by class-mean difference is one of them
and the unscaled fit predicts one class, so `llm_top_1_test_accuracy` is 0.5 on every embedded
task (standardising that channel gives ~0.55). Compare SAE and LLM at k >= 2.

The SAE is evaluated in its own dtype (our SAE's `encode` casts inputs to fp32); SAE-Bench's
`run_eval` would cast it to the model's dtype, `run_eval_single_sae` does not.
"""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from sae_harness.data.language_model import LanguageModel
from sae_harness.data.presets import Preset
from sae_harness.data.sae_probes_data import EMBEDDED_PROBING_SUITE, read_dataset
from sae_harness.errors import ConfigurationError, DataError
from sae_harness.evals.eval_logs import say
from sae_harness.evals.patching import patched
from sae_harness.evals.sae_bench_results import (
    SAE_BENCH_RELEASE,
    flat_means,
    identity_fields,
    write_eval_output,
)
from sae_harness.records.cache_keys import keyed_folder
from sae_harness.records.run_directory import atomic_write_json, read_json

K_VALUES = [1, 2, 5, 10, 20, 50]
"""Numbers of SAE latents / residual channels the top-k probes use (both settings)."""

EMBEDDED_PREFIX = "sae_probes/"
"""Dataset names starting with this are served from the sae-probes wheel."""

SPLIT_VERSION = 1
"""Bump when the embedded train/test split rule changes: it is part of the artifact key."""


@dataclass(frozen=True)
class ProbingSizes:
    """How much data sparse probing uses."""

    probe_train_set_size: int
    """Training texts per binary task (train_set_size // 2 per class)."""
    probe_test_set_size: int
    """Test texts per binary task."""
    llm_batch_size: int | None
    """Texts per model forward pass; None: the preset's llm_batch_size."""
    sae_batch_size: int = 125
    """Texts per SAE encode (SAE-Bench's default)."""


PROBING_SIZES: dict[str, ProbingSizes] = {
    "sae_bench": ProbingSizes(4000, 1000, llm_batch_size=32),
    "cpu": ProbingSizes(300, 150, llm_batch_size=None),
    "tiny": ProbingSizes(8, 4, llm_batch_size=None),
}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
def probing_dataset_names(preset: Preset) -> list[str]:
    """The datasets `preset.probing_datasets` names, in SAE-Bench's order."""
    if preset.probing_datasets == "sae_bench":
        from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

        return list(SparseProbingEvalConfig().dataset_names)
    if preset.probing_datasets == "sae_probes":
        return list(EMBEDDED_PROBING_SUITE)
    raise ConfigurationError(
        f"probing_datasets={preset.probing_datasets!r} is not 'sae_bench' or 'sae_probes' (see presets.py)"
    )


def probing_config(preset: Preset, dataset_names: list[str] | None = None):
    """SAE-Bench's SparseProbingEvalConfig for the preset (its datasets, sizes, dtype, context)."""
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    if preset.eval_sizes not in PROBING_SIZES:
        raise ConfigurationError(
            f"eval_sizes={preset.eval_sizes!r} is not one of {sorted(PROBING_SIZES)} (see sparse_probing.py)"
        )
    sizes = PROBING_SIZES[preset.eval_sizes]
    config = SparseProbingEvalConfig(
        model_name=preset.model_name,
        probe_train_set_size=sizes.probe_train_set_size,
        probe_test_set_size=sizes.probe_test_set_size,
        context_length=preset.context_length,
        llm_batch_size=sizes.llm_batch_size or preset.llm_batch_size,
        sae_batch_size=sizes.sae_batch_size,
        llm_dtype=preset.model_dtype,
        k_values=list(K_VALUES),
    )
    config.dataset_names = list(dataset_names) if dataset_names else probing_dataset_names(preset)
    return config


def artifacts_dir(artifacts_root: Path, config, lm: LanguageModel, hook_name: str, device: str) -> Path:
    """The folder of SAE-Bench's probing artifacts for exactly this setting (see the module doc)."""
    embedded = [name for name in config.dataset_names if name.startswith(EMBEDDED_PREFIX)]
    key = {
        "model_name": config.model_name,
        "weights_id": lm.weights_id,
        "hook_name": hook_name,
        "dataset_names": list(config.dataset_names),
        "data_source": (f"sae-probes=={version('sae-probes')}, split v{SPLIT_VERSION}"
                        if embedded else "hub"),
        "probe_train_set_size": config.probe_train_set_size,
        "probe_test_set_size": config.probe_test_set_size,
        "context_length": config.context_length,
        "random_seed": config.random_seed,
        "llm_dtype": config.llm_dtype,
        "k_values": list(config.k_values),
        "device": torch.device(device).type,
        "sae_bench": version("sae-bench"),
    }
    return keyed_folder(artifacts_root, key)


# --------------------------------------------------------------------------------------------
# The embedded datasets
# --------------------------------------------------------------------------------------------
def embedded_class_texts(dataset_name: str) -> dict[str, list[str]]:
    """Each class's distinct, non-empty texts (file order); texts in two classes are dropped."""
    if dataset_name not in EMBEDDED_PROBING_SUITE:
        raise DataError(
            f"{dataset_name!r} is not in the embedded probing suite; use one of {sorted(EMBEDDED_PROBING_SUITE)}"
        )
    texts = {}
    for class_name, (stem, target) in EMBEDDED_PROBING_SUITE[dataset_name].items():
        frame = read_dataset(stem)
        rows = frame.loc[frame["target"] == target, "prompt"]
        # sae-probes files repeat some texts (e.g. ~40% of the wikidata ones): a repeat could
        # land in both train and test
        texts[class_name] = list(dict.fromkeys(t for t in rows if t.strip()))
    seen: dict[str, int] = {}
    for class_texts in texts.values():
        for text in class_texts:
            seen[text] = seen.get(text, 0) + 1
    return {name: [t for t in class_texts if seen[t] == 1] for name, class_texts in texts.items()}


def check_embedded_sizes(dataset_names: list[str], train_set_size: int, test_set_size: int) -> None:
    """Fail before any model work if an embedded class has too few texts for the sizes."""
    need_train, need_test = train_set_size // 2, test_set_size // 2
    short = []
    for name in dataset_names:
        if not name.startswith(EMBEDDED_PREFIX):
            continue
        for class_name, texts in embedded_class_texts(name).items():
            if len(texts) < need_train + need_test:
                short.append(f"{name}:{class_name} has {len(texts)}")
    if short:
        raise DataError(
            f"embedded probing data too small for {need_train} train + {need_test} test texts per "
            f"class: {', '.join(short)}; use smaller probe sizes (eval_sizes='cpu')"
        )


def embedded_train_test_data(dataset_name: str, train_set_size: int, test_set_size: int,
                             random_seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """SAE-Bench's `get_multi_label_train_test_data` for an embedded dataset: class -> texts.

    Per class: train_set_size // 2 training and test_set_size // 2 test texts, drawn without
    overlap by a generator seeded with (random_seed, dataset, class).
    """
    check_embedded_sizes([dataset_name], train_set_size, test_set_size)
    n_train, n_test = train_set_size // 2, test_set_size // 2
    train, test = {}, {}
    for class_name, texts in embedded_class_texts(dataset_name).items():
        picked = random.Random(f"{random_seed}/{dataset_name}/{class_name}").sample(texts, n_train + n_test)
        train[class_name], test[class_name] = picked[:n_train], picked[n_train:]
    return train, test


@contextmanager
def embedded_probing_datasets(suite: dict = EMBEDDED_PROBING_SUITE):
    """Within the block, SAE-Bench's sparse probing can read the embedded datasets by name.

    Adds their classes to `dataset_info.chosen_classes_per_dataset` and wraps
    `dataset_utils.get_multi_label_train_test_data` so that names starting with 'sae_probes/' are
    served from the sae-probes wheel and every other name goes to SAE-Bench's own loader. Both
    globals are restored on exit.
    """
    import sae_bench.sae_bench_utils.dataset_info as dataset_info
    import sae_bench.sae_bench_utils.dataset_utils as dataset_utils

    original_loader = dataset_utils.get_multi_label_train_test_data
    chosen = dataset_info.chosen_classes_per_dataset
    previous = {name: chosen[name] for name in suite if name in chosen}

    def get_multi_label_train_test_data(dataset_name, train_set_size, test_set_size, random_seed):
        if dataset_name.startswith(EMBEDDED_PREFIX):
            return embedded_train_test_data(dataset_name, train_set_size, test_set_size, random_seed)
        return original_loader(dataset_name, train_set_size, test_set_size, random_seed)

    chosen.update({name: list(classes) for name, classes in suite.items()})
    try:
        with patched(dataset_utils, "get_multi_label_train_test_data", get_multi_label_train_test_data):
            yield
    finally:
        for name in suite:
            chosen.pop(name, None)
        chosen.update(previous)


# --------------------------------------------------------------------------------------------
# Reproducible SAE probes
# --------------------------------------------------------------------------------------------
@contextmanager
def sae_probes_seeded(seed: int, encoded_log: list | None = None):
    """Within the block, SAE-Bench's SAE probes start from the same random state on every run.

    torch's global generator is reseeded right after the SAE activations are encoded, the step
    that follows both the fresh and the cached LLM part (see the module docstring). What SAE-Bench
    encoded is appended to `encoded_log` (train, then test, dataset after dataset) for the
    standardised probes, which then need not encode the texts again.
    """
    import sae_bench.sae_bench_utils.activation_collection as activation_collection

    original = activation_collection.get_sae_meaned_activations

    def get_sae_meaned_activations(*args, **kwargs):
        encoded = original(*args, **kwargs)
        torch.manual_seed(seed)
        if encoded_log is not None:
            encoded_log.append(encoded)
        return encoded

    with patched(activation_collection, "get_sae_meaned_activations", get_sae_meaned_activations):
        yield


# --------------------------------------------------------------------------------------------
# Crash-safe artifacts
# --------------------------------------------------------------------------------------------
@contextmanager
def atomic_torch_saves_into(folder: Path):
    """Within the block, `torch.save` to a file in `folder` writes a temporary file and renames it.

    SAE-Bench saves its artifacts with `torch.save(acts, final_path)` and later trusts any file at
    that path; this makes a file there always complete. Other saves are untouched.
    """
    folder = Path(folder).resolve()
    original = torch.save

    def save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)) or Path(f).resolve().parent != folder:
            return original(obj, f, *args, **kwargs)
        final = Path(f)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            original(obj, tmp, *args, **kwargs)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    remove_stale_temporaries(folder)
    with patched(torch, "save", save):
        yield


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary artifact files left by processes that no longer run."""
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
        except ValueError:
            continue
        if not _process_alive(pid):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def artifact_files(folder: Path, dataset_names: list[str]) -> dict[str, Path]:
    """dataset -> the artifact path SAE-Bench uses for it (whether or not it exists yet)."""
    return {name: Path(folder) / f"{name}_activations.pt".replace("/", "_") for name in dataset_names}


# --------------------------------------------------------------------------------------------
# The standardised probes (ours, beside SAE-Bench's)
# --------------------------------------------------------------------------------------------
STANDARDISED_KEY = "harness_standardised_top_k"
"""The key of our addition in sparse_probing.json (the rest is SAE-Bench's output as it is)."""
STANDARDISED_DEFINITION = (
    "Not SAE-Bench's: its top-k probe with every feature z-scored on the task's training split "
    "before the class-mean-difference ranking and the logistic regression (as sae-probes does); "
    "for the LLM's residual channels and, for symmetry, the SAE's latents. Means over datasets.")
STANDARDISED_K = (1, 2, 5)
"""k of the standardised top-k probes (the headline k's; each costs one probe per task)."""


def standardised_top_k_accuracies(train: dict[str, torch.Tensor], test: dict[str, torch.Tensor],
                                  k_values=STANDARDISED_K) -> dict[int, dict[str, float]]:
    """SAE-Bench's top-k probe with the features z-scored first, as sae-probes does: for each
    binary task (SAE-Bench's prepare_probe_data), every feature is standardised with the mean and
    std of the task's training split (std 0 -> 1), then SAE-Bench's own class-mean-difference
    ranking picks k features and its own scikit-learn logistic regression is fit on them.
    Returns {k: {class: test accuracy}}. Standardising moves no decision of the ranking for an
    SAE whose latents have similar scales, and it lets a massive residual channel stop
    dominating both the ranking and the unscaled fit."""
    from sae_bench.evals.sparse_probing import probe_training as P

    accuracies: dict[int, dict[str, float]] = {k: {} for k in k_values}
    for name in train:
        train_x, train_y = P.prepare_probe_data(train, name)
        test_x, test_y = P.prepare_probe_data(test, name)
        train_x, test_x = train_x.float(), test_x.float()
        mean, std = train_x.mean(0), train_x.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        train_z, test_z = (train_x - mean) / std, (test_x - mean) / std
        for k in k_values:
            mask = P.get_top_k_mean_diff_mask(train_z, train_y, k)
            _, accuracy = P.train_sklearn_probe(P.apply_topk_mask_reduce_dim(train_z, mask), train_y,
                                                P.apply_topk_mask_reduce_dim(test_z, mask), test_y)
            accuracies[k][name] = float(accuracy)
    return accuracies


def replay_negative_draws(train: dict[str, torch.Tensor], test: dict[str, torch.Tensor]) -> None:
    """Draw from torch's generator what standardised_top_k_accuracies' LLM probes would have
    drawn, by running SAE-Bench's prepare_probe_data (its negative sampling and shuffle: draws
    that depend only on the class sizes, which the SAE's meaned activations share with the
    LLM's) in the same order, so that with the LLM's results cached the SAE's probes sample the
    same negatives as in an uncached run."""
    from sae_bench.evals.sparse_probing import probe_training as P

    for name in train:
        P.prepare_probe_data(train, name)
        P.prepare_probe_data(test, name)


STANDARDISED_LLM_FILE = "harness_standardised_llm.json"
"""The LLM's standardised probe results per dataset, kept beside SAE-Bench's artifacts (they
depend on nothing the SAE does, so a later run reads them instead of refitting)."""


def standardised_probes(sae, folder: Path, dataset_names: list[str], sae_batch_size: int,
                        seed: int, sae_encoded: list | None = None) -> dict[str, float]:
    """The standardised top-k probes for the LLM (residual channels) and the SAE (latents), on
    the activations SAE-Bench cached in `folder`: means over datasets of the per-task means, as
    SAE-Bench averages its own, named like SAE-Bench's keys with a `_standardised` suffix.

    `sae_encoded`: the SAE's meaned activations SAE-Bench made (sae_probes_seeded's log, train
    and test per dataset in order); without them, or if they do not fit, the texts are encoded
    again. The LLM's results are read from STANDARDISED_LLM_FILE for each dataset it holds at
    the current STANDARDISED_K, and computed (and added to it) for the others."""
    import sae_bench.sae_bench_utils.activation_collection as activation_collection

    llm_path = folder / STANDARDISED_LLM_FILE
    ks = {str(k) for k in STANDARDISED_K}
    stored = read_json(llm_path) if llm_path.is_file() else {}
    llm_cached = {name: values for name, values in stored.items() if set(values) == ks}
    fits = sae_encoded is not None and len(sae_encoded) == 2 * len(dataset_names)
    per_dataset: dict[str, list[float]] = {}
    for i, (name, path) in enumerate(artifact_files(folder, dataset_names).items()):
        acts = None
        if name not in llm_cached or not fits:
            acts = torch.load(path, weights_only=False)
        if fits:
            sae_train, sae_test = sae_encoded[2 * i], sae_encoded[2 * i + 1]
        else:
            sae_train = activation_collection.get_sae_meaned_activations(acts["train"], sae, sae_batch_size)
            sae_test = activation_collection.get_sae_meaned_activations(acts["test"], sae, sae_batch_size)
        torch.manual_seed(seed)  # the LLM's probes, then the SAE's, draw their negatives from here
        if name in llm_cached:
            replay_negative_draws(sae_train, sae_test)
        else:
            llm_train = activation_collection.create_meaned_model_activations(acts["train"])
            llm_test = activation_collection.create_meaned_model_activations(acts["test"])
            llm_cached[name] = {str(k): sum(by_class.values()) / len(by_class) for k, by_class in
                                standardised_top_k_accuracies(llm_train, llm_test).items()}
            atomic_write_json(llm_path, llm_cached)
        for k, value in llm_cached[name].items():
            per_dataset.setdefault(f"llm_top_{k}_test_accuracy_standardised", []).append(value)
        for k, by_class in standardised_top_k_accuracies(sae_train, sae_test).items():
            per_dataset.setdefault(f"sae_top_{k}_test_accuracy_standardised", []).append(
                sum(by_class.values()) / len(by_class))
    return {key: sum(values) / len(values) for key, values in per_dataset.items()}


# --------------------------------------------------------------------------------------------
# The eval
# --------------------------------------------------------------------------------------------
@contextmanager
def probe_fitting():
    """Where scikit-learn fits the probes: one BLAS thread (see the module docstring; torch's
    threads are untouched), and without scikit-learn 1.8's FutureWarning about the `penalty`
    argument SAE-Bench passes (~120 two-line warnings a run; the fits are unchanged)."""
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'penalty' was deprecated", category=FutureWarning)
        yield


def run_sparse_probing(sae, lm: LanguageModel, preset: Preset, out_path: Path, artifacts_root: Path,
                       *, dataset_names: list[str] | None = None) -> dict[str, float]:
    """Run SAE-Bench sparse probing, write its JSON to `out_path`, return the llm/sae means.

    `dataset_names` narrows the preset's datasets (tests use it); by default all of them.
    """
    import sae_bench.sae_bench_utils.general_utils as general_utils
    from sae_bench.evals.sparse_probing.eval_output import (
        SparseProbingEvalOutput,
        SparseProbingLlmMetrics,
        SparseProbingMetricCategories,
        SparseProbingResultDetail,
        SparseProbingSaeMetrics,
    )
    from sae_bench.evals.sparse_probing.main import run_eval_single_sae
    from sae_bench.sae_bench_utils import get_eval_uuid

    started = time.time()
    config = probing_config(preset, dataset_names)
    check_embedded_sizes(config.dataset_names, config.probe_train_set_size, config.probe_test_set_size)
    device = preset.device
    if sae.device != torch.device(device):
        sae.to(device)
    # as SAE-Bench's run_eval: decoder-norm check, cfg standardised (adds cfg.metadata etc.)
    sae_id, sae, _ = general_utils.load_and_format_sae(SAE_BENCH_RELEASE, sae, device)

    folder = artifacts_dir(artifacts_root, config, lm, sae.cfg.hook_name, device)
    cached = [name for name, path in artifact_files(folder, config.dataset_names).items() if path.is_file()]
    say(f"[sparse_probing] {len(config.dataset_names)} datasets, {config.probe_train_set_size}/"
        f"{config.probe_test_set_size} texts per task; artifacts {folder} "
        f"({len(cached)} of {len(config.dataset_names)} datasets cached)")
    sae_encoded: list = []  # what SAE-Bench encodes, for the standardised probes
    with embedded_probing_datasets(), atomic_torch_saves_into(folder), \
            sae_probes_seeded(config.random_seed, sae_encoded), probe_fitting():
        results, per_class = run_eval_single_sae(config, sae, lm.model, device, str(folder),
                                                 save_activations=True)

    # exactly as SAE-Bench's run_eval builds its output
    output = SparseProbingEvalOutput(
        eval_config=config,
        eval_id=get_eval_uuid(),
        datetime_epoch_millis=int(datetime.now().timestamp() * 1000),
        eval_result_metrics=SparseProbingMetricCategories(
            llm=SparseProbingLlmMetrics(**{k: v for k, v in results.items()
                                           if k.startswith("llm_") and not isinstance(v, dict)}),
            sae=SparseProbingSaeMetrics(**{k: v for k, v in results.items()
                                           if k.startswith("sae_") and not isinstance(v, dict)}),
        ),
        eval_result_details=[SparseProbingResultDetail(dataset_name=name, **result)
                             for name, result in results.items() if isinstance(result, dict)],
        eval_result_unstructured=per_class,
        **identity_fields(sae, sae_id),
    )
    write_eval_output(output, out_path)
    means = flat_means(output.eval_result_metrics)
    # ours, beside SAE-Bench's numbers (which stay as they are): the standardised top-k probes
    with probe_fitting():
        standardised = standardised_probes(sae, folder, config.dataset_names, config.sae_batch_size,
                                           config.random_seed, sae_encoded)
    written = json.loads(out_path.read_text())
    written[STANDARDISED_KEY] = {"definition": STANDARDISED_DEFINITION, "means": standardised}
    atomic_write_json(out_path, written)
    means.update(standardised)
    say("[sparse_probing] accuracy LLM / SAE: " + ", ".join(
        f"top-{k} {means.get(f'llm_top_{k}_test_accuracy', float('nan')):.3f} / "
        f"{means.get(f'sae_top_{k}_test_accuracy', float('nan')):.3f} (standardised "
        f"{means.get(f'llm_top_{k}_test_accuracy_standardised', float('nan')):.3f} / "
        f"{means.get(f'sae_top_{k}_test_accuracy_standardised', float('nan')):.3f})" for k in (1, 5))
        + f"; {time.time() - started:.0f} s")
    return means
