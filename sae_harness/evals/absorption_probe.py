"""The LLM first-letter probe of SAE-Bench's absorption eval: its words, its training, its cache.

The probe does not depend on the SAE: it is trained once per model, weights, layer, prompt,
dtype and word sample, kept under `probes_root / <model>-layer<L>-<digest>` (`probe_key.json`
inside says what it was trained on) and reused by every later run.

* Words: the model's alphabetic vocabulary tokens (SAE-Bench's `vocab.get_alpha_tokens`), all
  of them (SAE-Bench) or a sample of about `llm_probe_words`, each letter in proportion but at
  least `min_words_per_letter` (`sample_words`); split 80/20 within each first letter
  (`split_words`; SAE-Bench splits the shuffled vocabulary and fails on a letter missing from
  either split, which a sample would risk).
* Training: SAE-Bench's `probing.gen_and_save_df_acts_probing`, `train_linear_probe_for_task`
  and `save_probe_and_data`, with the arguments its `train_and_save_probes` passes (batch 64,
  50 epochs, lr 1e-2), on ICL prompts of 10 examples from the same split.
* SAE-Bench records `random_seed` but never seeds; `seeded` seeds Python's, NumPy's and torch's
  generators for the block and restores them (the same figures come out on 1 and 2 threads).
"""

from __future__ import annotations

import importlib.metadata
import json
import random
import shutil
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from sae_harness.data.language_model import LanguageModel
from sae_harness.data.presets import Preset
from sae_harness.errors import HarnessError
from sae_harness.evals.absorption_prompts import AbsorptionModelView, PromptTokenisation
from sae_harness.evals.eval_logs import say
from sae_harness.records.cache_keys import key_digest
from sae_harness.records.run_directory import atomic_folder

PROBE_FORMAT_VERSION = 1
"""Bump when the LLM-probe folder's contents or the word selection change (part of its digest)."""

PROBE_FILES = ("probe.pth", "data.npz", "train_df.csv", "test_df.csv")
"""What SAE-Bench reads back from a probe folder (`probes_dir / model / layer_L`)."""

PROBE_KEY = "probe_key.json"
"""Written last into a finished probe folder: what the probe was trained on."""

LETTERS = "abcdefghijklmnopqrstuvwxyz"


class AbsorptionNotEvaluable(HarnessError):
    """The eval cannot give a meaningful result for this model (SAE-Bench would skip silently)."""


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


def probe_key(lm: LanguageModel, preset: Preset, layer: int, config, sizes,
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
    digest = key_digest(key, length=16)
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
    from sae_bench.evals.absorption.prompting import (
        create_icl_prompt,
        first_letter_formatter,
    )

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
                     sizes, device: str) -> bool:
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
        say(f"[absorption] LLM probe folder {folder} is incomplete; training it again")
        shutil.rmtree(folder)
    with atomic_folder(folder) as tmp:
        with seeded(config.random_seed):
            words = sample_words(get_alpha_tokens(view.tokenizer), sizes.llm_probe_words,
                                 sizes.min_words_per_letter, random.Random(config.random_seed))
            say(f"[absorption] training the LLM first-letter probe on {len(words)} words "
                f"(once per model, layer and prompt) -> {folder}")
            train_llm_probe(view, words, layer, config, device, tmp)
        for memmap in probe_files(tmp, model_name, layer).glob("*_act_tensor.dat"):
            memmap.unlink()
        (tmp / PROBE_KEY).write_text(json.dumps({**key, "words_used": len(words)}, indent=2))
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
