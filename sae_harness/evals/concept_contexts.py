"""Top activating held-out tokens of every latent, and concept coherence. Ours (not SAE-Bench's).

    top = top_activations(sae, heldout_activations, k=10)          # one streaming pass
    means, per_concept = concept_coherence(top, token_ids, top_base, alive_base)

`top_activations` keeps, for every base latent (z1) and every concept latent (z2), the k
held-out rows on which it is largest, in one pass over the activations in batches: each batch's
values are stacked under the running top-k and the top-k of the stack is kept (a concept's
values come from its TopK slots, scattered into a dense (B, n_concept) block; an empty slot is 0).
Rows where a latent is 0 are not contexts of it (their value is 0 and they are dropped later).

Concept coherence asks whether the base latents a concept reads (its top-m by |W_enc2|) fire on
the same kind of text. For each base latent, its top-token set is the set of distinct token ids
at its top-k firing rows. For a concept,

    coherence(c)   mean over pairs (i < j) of its top-m base latents of the Jaccard overlap
                   |S_i & S_j| / |S_i | S_j| of their top-token sets (base latents that never
                   fire have an empty set and take part with overlap 0);
    shares_none(c) no two of its top-m base latents share a top token.

The null: for each concept, m base latents drawn at random (seeded, without replacement) from the
alive base latents outside its top-m, the same figures, averaged over `n_null` draws. A hierarchy
whose concepts group unrelated base latents has coherence near its null. (Top tokens are a crude
view of what a latent means: two latents firing on ' the' in different senses overlap; two
latents for one sense on different words do not. The number says how much a concept's children
fire on the same words, beyond chance.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sae_harness.evals.weights import sample_excluding


class TopActivations(NamedTuple):
    """The k largest held-out values of each latent and the rows they occur on (descending)."""

    base_values: torch.Tensor
    """(k, n_base) float32, 0 where the latent fired on fewer than k rows."""
    base_rows: torch.Tensor
    """(k, n_base) long held-out row of each value."""
    concept_values: torch.Tensor
    """(k, n_concept)"""
    concept_rows: torch.Tensor
    """(k, n_concept)"""
    base_firings: torch.Tensor
    """(n_base,) long: rows on which each base latent is > 0."""
    concept_firings: torch.Tensor
    """(n_concept,) long: rows on which each concept latent is > 0."""
    tokens: int


def _merge(values: torch.Tensor, rows: torch.Tensor, new_values: torch.Tensor, first_row: int,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k of the running (k, n) values and a batch's (B, n), with their rows."""
    new_rows = torch.arange(first_row, first_row + len(new_values)).unsqueeze(1).expand_as(new_values)
    stacked = torch.cat([values, new_values.float()])
    top = stacked.topk(min(k, len(stacked)), dim=0)
    return top.values, torch.cat([rows, new_rows]).gather(0, top.indices)


@torch.no_grad()
def top_activations(sae, activations: torch.Tensor, k: int = 10, batch_size: int = 4096
                    ) -> TopActivations:
    """Per latent, its k largest values on `activations` (raw scale, (T, d)) and their rows."""
    n_base, n_concept = sae.n_base, sae.n_concept
    base_values, base_rows = torch.zeros(0, n_base), torch.zeros(0, n_base, dtype=torch.long)
    concept_values, concept_rows = torch.zeros(0, n_concept), torch.zeros(0, n_concept, dtype=torch.long)
    base_firings = torch.zeros(n_base, dtype=torch.long)
    concept_firings = torch.zeros(n_concept, dtype=torch.long)
    start = 0
    for chunk in activations.split(batch_size):
        out = sae.forward_levels(chunk.to(sae.device, sae.dtype))
        z1 = out.z1.float().cpu()
        z2 = torch.zeros(len(chunk), n_concept)
        if n_concept:
            z2.scatter_add_(1, out.z2_indices.long().cpu(), out.z2_values.float().cpu().clamp_min(0))
        base_firings += (z1 > 0).sum(0)
        concept_firings += (z2 > 0).sum(0)
        base_values, base_rows = _merge(base_values, base_rows, z1, start, k)
        if n_concept:
            concept_values, concept_rows = _merge(concept_values, concept_rows, z2, start, k)
        start += len(chunk)
    return TopActivations(base_values, base_rows, concept_values, concept_rows, base_firings,
                          concept_firings, start)


def top_token_sets(values: torch.Tensor, rows: torch.Tensor, token_ids: torch.Tensor
                   ) -> list[frozenset[int]]:
    """Per latent (column), the distinct token ids at its firing top rows."""
    tokens = token_ids[rows]
    return [frozenset(tokens[values[:, j] > 0, j].tolist()) for j in range(values.shape[1])]


def _overlap(sets: list[frozenset[int]]) -> tuple[float, bool]:
    """(mean pairwise Jaccard overlap, whether no pair shares a token) of a group of sets."""
    pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1:]]
    if not pairs:
        return float("nan"), False
    jaccard = [len(a & b) / len(a | b) if a | b else 0.0 for a, b in pairs]
    return sum(jaccard) / len(jaccard), not any(a & b for a, b in pairs)


def concept_coherence(top: TopActivations, token_ids: torch.Tensor, top_base: torch.Tensor,
                      alive_base: torch.Tensor, n_null: int = 5, seed: int = 0
                      ) -> tuple[dict[str, float], list[dict]]:
    """Coherence of each concept whose top-m base latents are the rows of `top_base` (C, m),
    and its null from `alive_base` (module doc). Returns (means for the hierarchy group, one
    {"coherence", "shares_no_top_token", "null_coherence"} per row of top_base)."""
    sets = top_token_sets(top.base_values, top.base_rows, token_ids)
    real = [_overlap([sets[b] for b in row]) for row in top_base.tolist()]
    generator = torch.Generator().manual_seed(seed)
    m = top_base.shape[1]
    nulls = [sample_excluding(alive_base, top_base, m, generator).tolist() for _ in range(n_null)]
    null = [[_overlap([sets[b] for b in draw[i]]) for draw in nulls] for i in range(len(real))]
    per_concept = [{"coherence": c, "shares_no_top_token": none,
                    "null_coherence": sum(d[0] for d in draws) / n_null,
                    "null_shares_no_top_token": sum(d[1] for d in draws) / n_null}
                   for (c, none), draws in zip(real, null)]

    def mean(key: str) -> float:
        values = [float(row[key]) for row in per_concept if row[key] == row[key]]
        return sum(values) / len(values) if values else float("nan")

    means = {"concept_coherence_mean": mean("coherence"),
             "null_concept_coherence_mean": mean("null_coherence"),
             "no_shared_top_token_fraction": mean("shares_no_top_token"),
             "null_no_shared_top_token_fraction": mean("null_shares_no_top_token")}
    return means, per_concept


COHERENCE_DEFINITIONS = {
    "concept_coherence_mean": "ours: mean over alive concepts of the mean pairwise Jaccard overlap "
                              "of the top-token sets (distinct token ids at the top-k held-out "
                              "firing rows) of its top-m base latents by |W_enc2|",
    "null_concept_coherence_mean": "the same for m random alive base latents per concept (outside "
                                   "its top-m), averaged over n_null seeded draws",
    "no_shared_top_token_fraction": "fraction of alive concepts no two of whose top-m base latents "
                                    "share a top token",
    "null_no_shared_top_token_fraction": "the same for the random base latents",
}
