"""The held-out tokens: which token of which context each held-out activation row belongs to.

    tokens = heldout_tokens(tokenizer, preset, n_heldout)

The held-out activations are the first `n_heldout` content tokens of the packed contexts
(activations.py: contexts cut from the EOS-separated stream of the first documents, BOS, EOS and
PAD dropped). Their token ids are recollected here with the tokenizer alone, by the same packing,
so no model pass and no change to the activation cache (and its key) are needed: tokenising the
embedded setting's 16k held-out tokens takes well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_harness.data.activations import iter_contexts, special_token_ids
from sae_harness.errors import DataError
from sae_harness.data.presets import Preset
from sae_harness.data.text_sources import documents


@dataclass
class HeldoutTokens:
    """Row r of the held-out activations is token `ids[r]`, in packed context `context[r]`."""

    ids: torch.Tensor
    """(n,) token ids, one per held-out activation row."""
    context: torch.Tensor
    """(n,) index of the packed context the row's token sits in."""
    document_start: torch.Tensor
    """(n,) bool: the row's token is the first content token after a document boundary (EOS)."""


def heldout_tokens(tokenizer, preset: Preset, n_heldout: int) -> HeldoutTokens:
    """The held-out rows' tokens, by the packing activations.py uses (module doc)."""
    skip = set(special_token_ids(tokenizer))
    ids: list[int] = []
    context: list[int] = []
    starts: list[bool] = []
    for number, row in enumerate(iter_contexts(documents(preset, seed=0), tokenizer,
                                               preset.context_length)):
        after_boundary = number == 0  # later contexts continue the stream where the last one stopped
        for token in row[1:]:  # row[0] is BOS
            if token in skip:
                after_boundary = after_boundary or token == tokenizer.eos_token_id
                continue
            ids.append(token)
            context.append(number)
            starts.append(after_boundary)
            after_boundary = False
            if len(ids) == n_heldout:
                return HeldoutTokens(torch.tensor(ids), torch.tensor(context), torch.tensor(starts))
    raise DataError(f"the text ran out after {len(ids)} of {n_heldout} held-out tokens")
