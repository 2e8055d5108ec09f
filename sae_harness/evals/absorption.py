"""SAE-Bench feature absorption (first-letter spelling) on an already loaded model.

    means = run_absorption(sae, lm, preset, run_dir / "absorption.json", probes_root, work_dir)

Pinned to sae-bench 0.6.0 (the metric changed across versions; another version is refused).
SAE-Bench's own functions do the work, as its `run_eval` (sae_bench/evals/absorption/main.py)
calls them, minus loading the model by hub name and writing into the current directory:

1. LLM probe (independent of the SAE): a 26-way one-vs-rest logistic probe for a word's first
   letter on the residual stream at the word, in ICL prompts
   "\\ncat has the first letter: C\\n... (10 examples) ...\\ndog has the first letter:".
   Words are the model's alphabetic vocabulary tokens (`vocab.get_alpha_tokens`), 80% train,
   20% test. SAE-Bench's `probing.gen_and_save_df_acts_probing`, `train_linear_probe_for_task`
   and `save_probe_and_data` with the arguments its `train_and_save_probes` passes (batch 64,
   50 epochs, lr 1e-2). Kept under `probes_root / <model>-layer<L>-<digest>` (digest of model
   name, weights id, layer, prompt template and position, excluded words, dtype, sae-bench
   version, word sample, seed; `probe_key.json` inside), so later runs reuse it.
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
- The model is read through `AbsorptionModelView`. Its `run_with_cache` stops after the hook
  layer: SAE-Bench reads only that layer, whose values do not depend on the blocks above
  (measured: 5x faster for Gemma-3-270M at layer 6 of 18, whose 262k-row unembedding then never
  runs). Its vocabulary (in token-id order, so that seeded sampling is reproducible: a fast
  tokenizer's own `vocab` comes in a different hash-map order in every process) leaves out the
  words that break the prompt's layout (`locate_word_token`): SAE-Bench batches the prompts
  right-padded and reads one position counted from the end, so a word that re-tokenises in the
  prompt shifts that position for its whole batch and makes step 3 raise "All prompts must have
  the same token length". Gemma-3-270M: 55 of 139,585 words (' YYYY', ' yyyy', ' diffformul',
  and the byte-fallback tokens <0x41>..<0x7A>, which are the same words as the tokens 'A'..'z').
- `prompt_token_pos` is read from the tokenizer: the position of the word's token from the
  prompt's end. SAE-Bench's default -6 assumes " has the first letter:" is five tokens
  ('▁has', '▁the', '▁first', '▁letter', ':') after the word, as in Gemma-2's SentencePiece
  vocabulary (SAE-Bench's reference model; its tokenizer is not on this machine to re-check, but
  the run re-checks it). Measured for Gemma-3-270M: -6, the word, for all 139,530 kept words, so
  the default stands. A tokenizer that splits the answers (" Q" as two tokens) is refused with a
  ConfigurationError: SAE-Bench's prompts would not have one length.
- The words are split 80/20 within each first letter rather than over the shuffled vocabulary:
  SAE-Bench fails on a letter missing from either split (KeyError, roc_auc_score), which a small
  sample would risk; for a large vocabulary both splits have the same distribution.
- SAE-Bench records `random_seed` but never seeds; here Python's, NumPy's and torch's generators
  are seeded with it (word sample and split, ICL examples, probe training), then restored.
  Results are reproducible: the same figures came out with 1 and 2 CPU threads.
- The SAE is evaluated as a copy cast to the model's dtype (as `run_eval` casts it; step 3 fails
  otherwise); the caller's SAE is untouched. `sae_bench_commit_hash` records the package version
  (SAE-Bench's helper records the git commit of the current directory, i.e. ours).
- A skip is an error: SAE-Bench prints a line and writes no JSON when fewer than
  `min_feats_for_eval` letters have an LLM-probe F1 above `min_GT_probe_f1`. Here that raises
  `AbsorptionNotEvaluable` (the F1 of every letter in its message), unless the sizes name lower
  thresholds (LOWERED_THRESHOLDS: Gemma-3-270M only); those are used only when the defaults would
  skip, and are then recorded in the JSON's eval_config and eval_result_unstructured and in the
  returned means. At least 2 letters are needed whatever the thresholds (a standard deviation
  over letters is taken). Nothing is written to `out_path` unless the eval completes.

Sizes (`preset.eval_sizes`, ABSORPTION_SIZES):
  'sae_bench'  SAE-Bench's defaults: AbsorptionEvalConfig(), the whole alphabetic vocabulary,
               llm_batch_size from `LLM_NAME_TO_BATCH_SIZE` (gemma-2-2b: 32), llm_dtype the
               model's (bfloat16 for gemma-2-2b, as `LLM_NAME_TO_DTYPE`).
  'cpu'        Gemma-3-270M on the 2-core CPU. Each change from the defaults, measured with
               bf16, layer 6, on this machine while other jobs used ~2-3 cores' worth of CPU:
    llm_probe_words=3000, min_words_per_letter=30: the LLM probe sees 3,056 words (each letter
        in proportion, at least 30 each: x, q, y, z) instead of all 139,530; the probe's forward
        costs ~30-40 ms per word (88-token prompts), ~80 min for the whole vocabulary, 113 s
        for the sample. Fewer words give a weaker probe: training on 1,203 / 2,406 / 4,812 words,
        11 / 18 / 21 letters passed F1 > 0.6 (same 1,204 test words). The sample gives 20.
    precalc_k_sparse_probe_sae_acts=True (SAE-Bench recommends it for small SAEs): otherwise
        each of the 260 k-sparse fits re-encodes the training words (that step: 85 s -> 43 s
        at 2,083 words, 2 threads).
    llm_batch_size=64: SAE-Bench's table has no gemma-3-270m (its config default is 10).
    cpu_threads='auto': with torch's default 2 threads, a busy second core makes every forward
        wait (isolated: 55-60 prompts/s with 2 threads when the other core is free, 4-19 when it
        is busy, 35-38 with 1 thread either way). Whole eval with the other core busy: 378 s ->
        121 s the first time, 222 s -> 52 s with the probe cached; identical results. So the eval
        measures the other processes' load at its start (cpu_threads.py) and takes 1 thread only
        when they keep a core busy.
  'tiny'       Tests on the tiny Gemma-2: two words per letter (one train, one test word).
  Result ('cpu'): 135 s the first time (LLM probe 113 s), 32 s with the probe cached (4.3 GB peak RSS
  with the model loaded). LOWERED_THRESHOLDS keeps the F1 bar (0.6) and accepts 10 letters
  instead of 20: the count sits at the edge (20 with this sample, 'i' at F1 0.60; 14 to 21 in
  other samples of ~2,000 words).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning

from sae_harness.cpu_threads import threads_for_phase
from sae_harness.errors import ConfigurationError, HarnessError
from sae_harness.evals.sae_bench_results import SAE_BENCH_RELEASE, identity_fields, write_eval_output
from sae_harness.language_model import LanguageModel
from sae_harness.presets import Preset
from sae_harness.run_directory import atomic_path

SAE_BENCH_VERSION = "0.6.0"
"""The only sae-bench this eval runs with: the absorption metric changed across versions."""

PROBE_FORMAT_VERSION = 1
"""Bump when the LLM-probe folder's contents or the word selection change (part of its digest)."""

PROBE_FILES = ("probe.pth", "data.npz", "train_df.csv", "test_df.csv")
"""What SAE-Bench reads back from a probe folder (`probes_dir / model / layer_L`)."""

PROBE_KEY = "probe_key.json"
"""Written last into a finished probe folder: what the probe was trained on."""

LETTERS = "abcdefghijklmnopqrstuvwxyz"


class AbsorptionNotEvaluable(HarnessError):
    """The eval cannot give a meaningful result for this model (SAE-Bench would skip silently)."""


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
    "cpu": AbsorptionSizes(llm_probe_words=3000, min_words_per_letter=30, llm_batch_size=64,
                          precalc_k_sparse_probe_sae_acts=True, cpu_threads="auto"),
    "tiny": AbsorptionSizes(llm_probe_words=1, min_words_per_letter=2, llm_batch_size=32,
                           precalc_k_sparse_probe_sae_acts=True, cpu_threads=1),
}

LOWERED_THRESHOLDS: dict[str, Thresholds] = {
    # the probe's F1 bar stays; fewer letters are accepted (see CPU sizes in the docstring)
    "google/gemma-3-270m": Thresholds(min_GT_probe_f1=0.6, min_feats_for_eval=10),
}
"""Model name -> thresholds to fall back to when SAE-Bench's would skip the eval."""


def absorption_sizes(preset: Preset) -> AbsorptionSizes:
    """The sizes for the preset's eval_sizes, with the model's lowered thresholds if it has any."""
    if preset.eval_sizes not in ABSORPTION_SIZES:
        raise ConfigurationError(
            f"eval_sizes={preset.eval_sizes!r} is not one of {sorted(ABSORPTION_SIZES)} (see absorption.py)"
        )
    sizes = ABSORPTION_SIZES[preset.eval_sizes]
    if sizes.lowered_thresholds is None and preset.model_name in LOWERED_THRESHOLDS:
        sizes = replace(sizes, lowered_thresholds=LOWERED_THRESHOLDS[preset.model_name])
    return sizes


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
class VocabularyView:
    """A tokenizer whose `vocab` leaves out some tokens; everything else is the tokenizer's own.

    SAE-Bench's absorption code reads the vocabulary only through `tokenizer.vocab` (in
    `vocab.get_alpha_tokens`); tokenising prompts goes through the model's own tokenizer.
    """

    def __init__(self, tokenizer, excluded_tokens: set[str]):
        self._tokenizer = tokenizer
        # in token-id order: a fast tokenizer's own vocab comes in hash-map order, which differs
        # from one process to the next, and SAE-Bench's word lists (and so the seeded sampling of
        # words and ICL examples) follow this order
        self._vocab = {t: i for t, i in sorted(tokenizer.vocab.items(), key=lambda item: item[1])
                       if t not in excluded_tokens}

    @property
    def vocab(self) -> dict[str, int]:
        return self._vocab

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


class AbsorptionModelView:
    """A HookedTransformer whose `run_with_cache` stops after `layer` and whose vocabulary leaves
    out `excluded_tokens`; every other attribute is the model's own.

    SAE-Bench reads only `blocks.{layer}.hook_resid_post` from `run_with_cache`, which does not
    depend on the blocks above, so stopping there changes no value. Within `remembering(folder)`
    the hook's activations of each batch of prompt strings are kept in `folder` and read back
    when the same prompts come again (the feature-absorption step's prompts depend on the LLM
    probe and the seed, not on the SAE).
    """

    def __init__(self, model, layer: int, excluded_tokens: set[str]):
        self._model = model
        self._stop_at_layer = layer + 1
        self._hook_name = f"blocks.{layer}.hook_resid_post"
        self.tokenizer = VocabularyView(model.tokenizer, excluded_tokens)
        self._memory: Path | None = None
        self.remembered = self.computed = 0

    @contextmanager
    def remembering(self, folder: Path):
        self._memory = Path(folder)
        try:
            yield self
        finally:
            self._memory = None

    def run_with_cache(self, *args, **kwargs):
        kwargs.setdefault("stop_at_layer", self._stop_at_layer)
        prompts = args[0] if args else None
        if (self._memory is None or not isinstance(prompts, list) or len(args) != 1
                or set(kwargs) != {"stop_at_layer", "names_filter"}
                or kwargs["names_filter"] != [self._hook_name]):
            return self._model.run_with_cache(*args, **kwargs)
        digest = hashlib.sha256("\x00".join(prompts).encode()
                                + json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:24]
        path = self._memory / f"{digest}.pt"
        if path.is_file():
            try:
                self.remembered += 1
                return None, {self._hook_name: torch.load(path, map_location=self._model.cfg.device)}
            except Exception:  # a torn or foreign file: computed again below
                self.remembered -= 1
        self.computed += 1
        out, cache = self._model.run_with_cache(*args, **kwargs)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(cache[self._hook_name].clone(), tmp)
        return out, cache

    def __getattr__(self, name):
        return getattr(self._model, name)


@dataclass(frozen=True)
class PromptTokenisation:
    """Where the word sits in the prompt, and which vocabulary words break the prompt's layout."""

    word_token_pos: int
    """Position of the word's token counted from the prompt's end (SAE-Bench's prompt_token_pos)."""
    words: int
    """Alphabetic vocabulary words examined."""
    excluded_tokens: dict[str, str]
    """Raw token -> word, for the words that break the layout."""


def locate_word_token(tokenizer, template: str, separator: str = "\n",
                      min_share: float = 0.99) -> PromptTokenisation:
    """Find the word's position from the prompt's end, and the words that break the layout.

    SAE-Bench's prompts are ICL lines `separator + template.format(word=w) + answer` (answer
    " C" for "cat"), then the query line without its answer; it batches them right-padded and
    reads one position counted from the end. That is the word's token only if every line has
    the same number of tokens and the query line ends [word, suffix of fixed length]. A word is
    fine when its query line tokenises to the separator's tokens, the word's own token, then the
    suffix, and its ICL line has the usual length. Raises ConfigurationError when fewer than
    `min_share` of the words are fine: then the template does not suit this tokenizer (a byte-level
    BPE that splits " Q" into two tokens, say).
    """
    from sae_bench.evals.absorption.prompting import first_letter_formatter
    from sae_bench.evals.absorption.vocab import convert_tokens_to_string, get_alpha_tokens

    # raw tokens, then their words: two get_alpha_tokens calls need not list them in the same
    # order (a fast tokenizer's vocab is a hash map, rebuilt on every access)
    raw = get_alpha_tokens(tokenizer, replace_special_chars=False)
    words = [convert_tokens_to_string(token, tokenizer) for token in raw]
    if not words:
        raise ConfigurationError("the tokenizer has no alphabetic single-token words; "
                                 "the absorption eval cannot run on it")
    vocab, answer = tokenizer.vocab, first_letter_formatter()
    prefix = tokenizer(separator, add_special_tokens=False)["input_ids"]
    queries = tokenizer([separator + template.format(word=w) for w in words],
                        add_special_tokens=False)["input_ids"]
    icl_lengths = [len(ids) for ids in tokenizer(
        [separator + template.format(word=w) + answer(w) for w in words],
        add_special_tokens=False)["input_ids"]]
    n = len(prefix)
    positions = [n - len(ids) if ids[:n] == prefix and len(ids) > n and ids[n] == vocab[token] else None
                 for token, ids in zip(raw, queries)]
    usual = Counter(icl_lengths).most_common(1)[0][0]
    counts = Counter(p for p, length in zip(positions, icl_lengths) if p is not None and length == usual)
    pos, kept = counts.most_common(1)[0] if counts else (None, 0)
    if kept < min_share * len(words):
        raise ConfigurationError(
            f"only {kept} of {len(words)} alphabetic vocabulary words keep SAE-Bench's prompt layout "
            f"(template {template!r}: one token for the word at a fixed position from the end, "
            "ICL lines of one length); the absorption prompt does not suit this tokenizer"
        )
    excluded = {token: word for token, word, p, length in zip(raw, words, positions, icl_lengths)
                if p != pos or length != usual}
    return PromptTokenisation(pos, len(words), excluded)


# --------------------------------------------------------------------------------------------
# The LLM probe (independent of the SAE; cached per model, layer and prompt)
# --------------------------------------------------------------------------------------------
def first_letter(word: str) -> str:
    """The letter SAE-Bench's first_letter_formatter answers for a word, lower case."""
    return next(c for c in word.strip() if c.isalpha()).lower()


def sample_words(words: list[str], n_words: int | None, min_per_letter: int,
                 rng: random.Random) -> list[str]:
    """About `n_words` of `words`, each letter in proportion to its share of the vocabulary but
    at least `min_per_letter` words (all it has if fewer); all words when n_words is None or
    not smaller than the vocabulary."""
    if n_words is None or n_words >= len(words):
        return list(words)
    by_letter: dict[str, list[str]] = {}
    for word in words:
        by_letter.setdefault(first_letter(word), []).append(word)
    chosen = []
    for letter in sorted(by_letter):
        group = by_letter[letter]
        take = min(len(group), max(round(n_words * len(group) / len(words)), min_per_letter))
        chosen += rng.sample(group, take)
    return chosen


def probe_key(lm: LanguageModel, preset: Preset, layer: int, config, sizes: AbsorptionSizes,
              tokenisation: PromptTokenisation) -> dict:
    """Everything the LLM probe depends on."""
    return {
        "format_version": PROBE_FORMAT_VERSION,
        "model_name": preset.model_name,
        "transformer_lens_name": lm.model.cfg.model_name,
        "weights_id": lm.weights_id,
        "layer": layer,
        "hook_name": f"blocks.{layer}.hook_resid_post",
        "prompt_template": config.prompt_template,
        "prompt_token_pos": config.prompt_token_pos,
        "excluded_words": sorted(tokenisation.excluded_tokens.values()),
        "dtype": str(lm.model.cfg.dtype).replace("torch.", ""),
        "sae_bench": importlib.metadata.version("sae-bench"),
        "llm_probe_words": sizes.llm_probe_words,
        "min_words_per_letter": sizes.min_words_per_letter,
        "random_seed": config.random_seed,
    }


def probe_folder(probes_root: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = key["transformer_lens_name"].replace("/", "_")
    return Path(probes_root) / f"{name}-layer{key['layer']}-{digest}"


def probe_files(folder: Path, model_name: str, layer: int) -> Path:
    """Where SAE-Bench reads the probe from, given `probes_dir=folder`."""
    return Path(folder) / model_name / f"layer_{layer}"


def probe_complete(folder: Path, model_name: str, layer: int) -> bool:
    files = probe_files(folder, model_name, layer)
    return (folder / PROBE_KEY).is_file() and all((files / f).is_file() for f in PROBE_FILES)


def split_words(words: list[str], rng: random.Random,
                train_fraction: float = 0.8) -> tuple[list[str], list[str]]:
    """SAE-Bench's 80/20 train/test split of the words, made per first letter.

    SAE-Bench splits the shuffled vocabulary at 80%; here each letter's words are, so every letter
    with at least 2 words has words on both sides (SAE-Bench's k-sparse step fails on a letter
    missing from either split). For a large vocabulary the two splits have the same distribution.
    """
    by_letter: dict[str, list[str]] = {}
    for word in words:
        by_letter.setdefault(first_letter(word), []).append(word)
    train, test = [], []
    for letter in sorted(by_letter):
        group = rng.sample(by_letter[letter], len(by_letter[letter]))
        n_train = min(int(len(group) * train_fraction), len(group) - 1) if len(group) > 1 else 1
        train += group[:n_train]
        test += group[n_train:]
    return rng.sample(train, len(train)), rng.sample(test, len(test))


def train_llm_probe(view: AbsorptionModelView, words: list[str], layer: int, config, device: str,
                    probes_dir: Path) -> None:
    """SAE-Bench's `common.create_and_train_probe` with the per-letter split of `split_words`.

    Prompts as `probing.create_dataset_probe_training` makes them (one per word, 10 ICL examples
    from the same split), then SAE-Bench's `gen_and_save_df_acts_probing`,
    `train_linear_probe_for_task` and `save_probe_and_data` with the arguments its
    `train_and_save_probes` passes (batch 64, 50 epochs, lr 1e-2).
    """
    from sae_bench.evals.absorption.probing import (
        gen_and_save_df_acts_probing,
        save_probe_and_data,
        train_linear_probe_for_task,
    )
    from sae_bench.evals.absorption.prompting import create_icl_prompt, first_letter_formatter

    formatter = first_letter_formatter()
    train_words, test_words = split_words(words, random.Random(config.random_seed))
    if len(test_words) <= 10:  # each prompt takes 10 other words of its split as ICL examples
        raise AbsorptionNotEvaluable(
            f"absorption not evaluated: {len(words)} vocabulary words give {len(test_words)} test "
            "words; the prompts need at least 11 (the vocabulary or its sample is too small)"
        )

    def dataset(split: list[str]):
        prompts = [create_icl_prompt(word=w, examples=split, answer_formatter=formatter,
                                     base_template=config.prompt_template, max_icl_examples=10,
                                     prepend_separator_to_first_example=True)
                   for w in split]
        return [(p, LETTERS.index(p.answer.strip().lower())) for p in prompts]

    files = probe_files(probes_dir, view.cfg.model_name, layer)
    train_df, test_df, train_acts, test_acts = gen_and_save_df_acts_probing(
        model=view, train_dataset=dataset(train_words), test_dataset=dataset(test_words),
        path=files, hook_point=f"blocks.{layer}.hook_resid_post", batch_size=64,
        position_idx=config.prompt_token_pos,
    )
    probe, probe_data = train_linear_probe_for_task(
        train_df=train_df, test_df=test_df, train_activations=train_acts,
        test_activations=test_acts, num_classes=len(LETTERS), batch_size=64, num_epochs=50,
        lr=1e-2, device=torch.device(device),
    )
    save_probe_and_data(probe, probe_data, probing_path=files)


def ensure_llm_probe(view: AbsorptionModelView, folder: Path, key: dict, layer: int, config,
                     sizes: AbsorptionSizes, device: str) -> bool:
    """Train the LLM probe into `folder` unless it is there; True if it was already there.

    Trained in a temporary folder beside it and renamed into place, so an interrupted training
    never leaves a folder that looks finished. The activation memmaps SAE-Bench writes while
    training (`*_act_tensor.dat`) are deleted: nothing reads them again (data.npz holds the same).
    """
    from sae_bench.evals.absorption.vocab import get_alpha_tokens

    model_name = view.cfg.model_name
    if probe_complete(folder, model_name, layer):
        return True
    if folder.exists():  # files removed by hand since: train again
        print(f"[absorption] LLM probe folder {folder} is incomplete; training it again")
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        with seeded(config.random_seed):
            words = sample_words(get_alpha_tokens(view.tokenizer), sizes.llm_probe_words,
                                 sizes.min_words_per_letter, random.Random(config.random_seed))
            print(f"[absorption] training the LLM first-letter probe on {len(words)} words "
                  f"(once per model, layer and prompt) -> {folder}")
            train_llm_probe(view, words, layer, config, device, tmp)
        for memmap in probe_files(tmp, model_name, layer).glob("*_act_tensor.dat"):
            memmap.unlink()
        (tmp / PROBE_KEY).write_text(json.dumps({**key, "words_used": len(words)}, indent=2))
        try:
            os.rename(tmp, folder)
        except OSError:  # another run finished the same probe first: keep theirs
            if not probe_complete(folder, model_name, layer):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return False


def split_letter_counts(folder: Path, model_name: str, layer: int) -> dict[str, Counter]:
    """Words per first letter in the probe's train and test splits, as SAE-Bench reads them."""
    import pandas as pd

    counts = {}
    for split in ("train", "test"):
        df = pd.read_csv(probe_files(folder, model_name, layer) / f"{split}_df.csv",
                         keep_default_na=False, na_values=[""])
        counts[split] = Counter(LETTERS[c] for c in df["answer_class"])
    return counts


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
@contextmanager
def seeded(seed: int):
    """Seed Python's, NumPy's and torch's generators for the block; restore them after it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextmanager
def cpu_threads(n: int | None):
    """torch's and the BLAS libraries' thread counts set to `n` within the block (None: unchanged)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


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
            print(f"[absorption] {why}; thresholds lowered to F1 > {lowered.min_GT_probe_f1}, "
                  f"at least {lowered.min_feats_for_eval} letters: {len(letters)} letters count")
            return letters, True
        why += (f"; with the lowered thresholds only {len(letters)} letters have F1 above "
                f"{lowered.min_GT_probe_f1} (needs {max(lowered.min_feats_for_eval, 2)})")
    f1 = ", ".join(f"{row.letter} {row.f1_probe:.2f}" for row in k_sparse_results.itertuples())
    raise AbsorptionNotEvaluable(
        f"absorption not evaluated: {why}; the model shows too few first-letter features at this "
        f"layer (LLM-probe F1 per letter: {f1})"
    )


# --------------------------------------------------------------------------------------------
# The eval
# --------------------------------------------------------------------------------------------
def run_absorption(sae, lm: LanguageModel, preset: Preset, out_path: Path, probes_root: Path,
                   work_dir: Path, *, sizes: AbsorptionSizes | None = None) -> dict[str, float]:
    """Run SAE-Bench's absorption eval, write its JSON to `out_path`, return the means.

    `probes_root` keeps the LLM probe across runs; `work_dir` (one per run) receives the per-SAE
    files. `sizes` overrides the preset's (tests use it). Raises AbsorptionNotEvaluable when the
    eval cannot give a result (nothing is written then).
    """
    require_sae_bench_version()
    import sae_bench.sae_bench_utils.general_utils as general_utils
    from sae_bench.evals.absorption.eval_output import (
        AbsorptionEvalOutput,
        AbsorptionMeanMetrics,
        AbsorptionMetricCategories,
        AbsorptionResultDetail,
    )
    from sae_bench.evals.absorption.feature_absorption import run_feature_absortion_experiment
    from sae_bench.evals.absorption.k_sparse_probing import run_k_sparse_probing_experiment
    from sae_bench.evals.absorption.main import _aggregate_results_df
    from sae_bench.sae_bench_utils import get_eval_uuid

    started = time.time()
    sizes = sizes or absorption_sizes(preset)
    out_path, work_dir = Path(out_path), Path(work_dir)
    layer = sae.cfg.hook_layer
    if layer != preset.hook_layer or sae.cfg.d_in != lm.model.cfg.d_model:
        raise ConfigurationError(
            f"the SAE reads layer {layer} (d_in {sae.cfg.d_in}) but the preset's model is hooked at "
            f"layer {preset.hook_layer} (d_model {lm.model.cfg.d_model}); evaluate it with its own model"
        )
    device = str(lm.model.cfg.device)
    config = absorption_config(lm, preset, sizes)
    tokenisation = locate_word_token(lm.tokenizer, config.prompt_template)
    config.prompt_token_pos = tokenisation.word_token_pos
    view = AbsorptionModelView(lm.model, layer, set(tokenisation.excluded_tokens))
    key = probe_key(lm, preset, layer, config, sizes, tokenisation)
    probes_dir = probe_folder(probes_root, key)

    # as run_eval: decoder-norm check and cfg standardised, then cast to the model's dtype
    # (on a copy: the caller's SAE stays as it is)
    sae_id, sae, _ = general_utils.load_and_format_sae(SAE_BENCH_RELEASE, copy.deepcopy(sae), device)
    sae = sae.to(device=device, dtype=lm.model.cfg.dtype)
    sae_name = f"{SAE_BENCH_RELEASE}_{sae_id}"
    sparse_dir, absorption_dir = work_dir / "k_sparse_probing", work_dir / "feature_absorption"

    # the probes train with autograd (run_eval enables it globally); scikit-learn's warning about
    # letters no probe predicts (precision 0/0) repeats hundreds of times and is not ours to act on
    threads, why = threads_for_phase(sizes.cpu_threads)
    print(f"[absorption] threads: {threads or torch.get_num_threads()} ({why})")
    with torch.enable_grad(), cpu_threads(threads), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
        probe_cached = ensure_llm_probe(view, probes_dir, key, layer, config, sizes, device)
        counts = split_letter_counts(probes_dir, view.cfg.model_name, layer)
        missing = {split: [c for c in LETTERS if not counts[split][c]] for split in counts}
        if any(missing.values()):
            raise AbsorptionNotEvaluable(
                "absorption not evaluated: letters without words in the LLM probe's "
                + "; ".join(f"{split} split: {', '.join(ls)}" for split, ls in missing.items() if ls)
                + " (the vocabulary or its sample is too small)"
            )
        probe_seconds = time.time() - started
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
        k_sparse_results.to_json(work_dir / "k_sparse_probing.json", orient="records", indent=4)
        letters, lowered = choose_thresholds(k_sparse_results, config, sizes.lowered_thresholds)
        k_sparse_seconds = time.time() - started - probe_seconds
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
    seconds = time.time() - started
    defaults = type(config)()
    output = AbsorptionEvalOutput(
        eval_config=config,
        eval_id=get_eval_uuid(),
        datetime_epoch_millis=int(datetime.now().timestamp() * 1000),
        eval_result_metrics=AbsorptionMetricCategories(mean=metrics),
        eval_result_details=details,
        eval_result_unstructured={
            "harness": "sae_harness.evals.absorption (SAE-Bench's functions on a loaded model)",
            "thresholds_lowered": lowered,
            "sae_bench_default_thresholds": {"min_GT_probe_f1": defaults.min_GT_probe_f1,
                                             "min_feats_for_eval": defaults.min_feats_for_eval},
            "llm_probe_f1_by_letter": {k: float(v) for k, v in f1_by_letter.items()},
            "letters_passing_f1": letters,
            "llm_probe_folder": probes_dir.name,
            "llm_probe_words": sizes.llm_probe_words,
            "llm_probe_split_words": {split: sum(c.values()) for split, c in counts.items()},
            "prompt_token_pos_sae_bench_default": defaults.prompt_token_pos,
            "excluded_vocabulary_words": sorted(tokenisation.excluded_tokens.values()),
            "vocabulary_words": tokenisation.words,
            "seconds": {"tokenizer_check_and_llm_probe": probe_seconds,
                        "k_sparse_probing": k_sparse_seconds,
                        "total": seconds, "llm_probe_cached": probe_cached},
            "prompt_activation_batches": {"read_from_cache": view.remembered,
                                          "computed": view.computed},
            "cpu_threads": {"threads": threads or torch.get_num_threads(), "why": why},
        },
        **identity_fields(sae, sae_id),
    )
    write_eval_output(output, out_path)
    means = {name: float(value) for name, value in asdict(metrics).items()}
    means.update(
        letters_evaluated=float(len(details)),
        thresholds_lowered=float(lowered),
        min_GT_probe_f1=float(config.min_GT_probe_f1),
        min_feats_for_eval=float(config.min_feats_for_eval),
        llm_probe_cached=float(probe_cached),
        seconds=seconds,
    )
    print(f"[absorption] {len(details)} letters: absorption fraction "
          f"{means['mean_absorption_fraction_score']:.3f}, full absorption "
          f"{means['mean_full_absorption_score']:.3f}, split features "
          f"{means['mean_num_split_features']:.2f}; {seconds:.0f} s "
          f"(LLM probe {'cached' if probe_cached else f'trained in {probe_seconds:.0f} s'})")
    return means
