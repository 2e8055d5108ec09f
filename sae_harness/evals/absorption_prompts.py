"""How SAE-Bench's absorption prompts meet the model: the word's position, the vocabulary that
keeps the prompts' layout, and the model as the absorption code reads it.

SAE-Bench batches its prompts right-padded and reads one position counted from the end, so
everything here serves one invariant: every prompt has the same token length and the word's
token at `prompt_token_pos` from the end.

* `locate_word_token` finds that position from the tokenizer (SAE-Bench's default -6 assumes
  Gemma-2's tokenisation of " has the first letter:") and the words that would break the layout
  (a word that re-tokenises inside the prompt). Gemma-3-270M: -6, and 55 of 139,585 words
  excluded (' YYYY', ' yyyy', ' diffformul', and the byte-fallback tokens <0x41>..<0x7A>, which
  are the same words as the tokens 'A'..'z'). A tokenizer that splits the answers (" Q" as two
  tokens) is refused.
* `VocabularyView` leaves those words out of `tokenizer.vocab`, in token-id order (a fast
  tokenizer's own `vocab` comes in another hash-map order in every process, and SAE-Bench's
  seeded sampling of words follows it).
* `AbsorptionModelView` stops `run_with_cache` after the hook layer (SAE-Bench reads only that
  layer; for Gemma-3-270M at layer 6 of 18 the 262k-row unembedding then never runs) and keeps
  the feature-absorption prompts' activations, which depend on the LLM probe, not the SAE.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from sae_harness.errors import ConfigurationError
from sae_harness.records.run_directory import atomic_path


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
