"""Hierarchy consistency by mutual information: does a concept latent fire together with the
base latents it reads? A new metric of this project (not part of SAE-Bench).

    means, details = hierarchy_consistency(sae, heldout_activations)

On held-out activations (raw scale: the saved SAE reads raw activations) firing is binarised,
base latent b fires when z1_b > 0, concept latent c fires when it is among the TopK and its value
is > 0. A concept is alive when it fires at least `min_firings` times (default MIN_FIRINGS = 5:
with n firings P(b|c) and leakage move in steps of 1/n and have a standard error up to
1/(2 sqrt(n)), so below 5 they are noise). For each alive concept c and each of its top-m base
latents b by |W_enc2[b, c]| (descending; the sign is kept in the details: a negative weight
inhibits c; a concept with fewer than m nonzero weights gets zero-weight latents to fill its m,
which then count like the others), from the 2x2 table of (c fires, b fires) over the T tokens:

    I(c;b)      plug-in mutual information in bits, sum_ij p_ij log2(p_ij / (p_i p_j)).
                For independent c, b, 2 T ln2 I ~ chi^2_1, so its bias is ~ 1 / (2 T ln 2) bits.
    NMI         I / min(H(c), H(b)): 1 exactly when the variable with less entropy is a function
                of the other (b = c, b = not c); 0 when min(H) = 0 (a latent that never or always
                fires shares no information).
    H(b|c)      conditional entropy of b given c in bits.
    P(b|c)      P(b fires | c fires).
    leakage(c)  fraction of c's firings in which none of its top-m base latents fires.

These concept-base figures are high for any concept that reads a few base latents: its firing
is a thresholded function of theirs, so they co-fire by construction (measured on synthetic
data, tests/test_hierarchy_recovery.py: NMI ~17x its null with no hierarchy in the data at
all). What a hierarchy in the data adds is that the base latents a concept reads belong
together: children of one parent co-fire (or exclude each other) beyond chance. So also:

    sibling NMI the mean NMI between pairs of c's top-m base latents, on all T tokens (from
                their 2x2 tables), averaged over pairs, then over alive concepts; its null is the
                same for the random base latents. Near the null when a concept groups unrelated
                base latents; far above it when it groups related ones.

The null: for each alive concept, m base latents drawn at random (seeded, without replacement)
from the alive base latents (same `min_firings`) outside its top-m, the same figures computed for
them; `n_null` independent draws, averaged (their spread is in the details). Pair figures are
averaged over all (alive concept, base latent) pairs, leakage over alive concepts.

Efficiency: concept firings are sparse (k per token), so co-firing counts are gathered only at
concept firings, O(T (n_base + k m (1 + n_null))) per pass, instead of a dense (n_concept x n_base) product of
the binary matrices, O(T n_base n_concept); the sibling counts are (m x m) products per concept and
group, O(T C (1 + n_null) m^2). Two passes over the activations (firing counts, which decide
which latents are alive and so the null, then co-firing counts), in batches.

hierarchy.json layout:

    {"format_version": 1, "definitions": {...}, "parameters": {...}, "means": {...},
     "top1": {"mi_mean", "nmi_mean", "h_b_given_c_mean", "p_b_given_c_mean"},
     "null_draws": [{"mi_mean", "nmi_mean", "h_b_given_c_mean", "p_b_given_c_mean",
                     "leakage_mean"}, ...],
     "concepts": [{"concept", "firings", "firing_rate", "top_base", "top_weights",
                   "top_base_firing_rate", "mi", "nmi", "h_b_given_c", "p_b_given_c", "leakage",
                   "null_mi_mean", "null_nmi_mean", "null_h_b_given_c_mean",
                   "null_p_b_given_c_mean", "null_leakage_mean"}, ...],
     "seconds": s}
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from sae_harness.records.schemas import HierarchyOutput, validated
from sae_harness.evals.weights import sample_excluding, strongest_base_latents

FORMAT_VERSION = 1
MIN_FIRINGS = 5
"""A latent that fires fewer times on the held-out tokens is not alive for this analysis."""


# =============================================================================================
# Information from 2x2 tables
# =============================================================================================
class PairInformation(NamedTuple):
    """Figures for C concepts, each paired with the m base latents in its row of `base_ids`."""

    mi: torch.Tensor
    """(C, m) I(c;b) in bits."""
    nmi: torch.Tensor
    """(C, m) I / min(H(c), H(b)), 0 where min(H) = 0."""
    h_b_given_c: torch.Tensor
    """(C, m) H(b|c) in bits."""
    p_b_given_c: torch.Tensor
    """(C, m) P(b fires | c fires); NaN for a concept that never fires."""
    leakage: torch.Tensor
    """(C,) fraction of c's firings with none of its m base latents firing; NaN if c never fires."""
    concept_firings: torch.Tensor
    """(C,) number of tokens on which c fires."""
    base_firings: torch.Tensor
    """(C, m) number of tokens on which b fires."""
    tokens: int


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) in bits, with 0 log 0 = 0."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) / torch.log(
        torch.tensor(2.0, dtype=p.dtype))


def information_from_counts(tokens: int, n_c: torch.Tensor, n_b: torch.Tensor, n_cb: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(MI, NMI, H(b|c), P(b|c)) in bits from counts: tokens, firings of c, of b, of both.

    n_c broadcasts against n_b and n_cb. Computed cell by cell in float64 (no difference of
    entropies), so independent counts give exactly 0 up to rounding.
    """
    T = float(tokens)
    n_c, n_b, n_cb = (t.double() for t in torch.broadcast_tensors(n_c, n_b, n_cb))
    # cells (c, b): (1,1), (1,0), (0,1), (0,0) with their row (c) and column (b) totals
    cells = [(n_cb, n_c, n_b), (n_c - n_cb, n_c, T - n_b),
             (n_b - n_cb, T - n_c, n_b), (T - n_c - n_b + n_cb, T - n_c, T - n_b)]
    mi = torch.zeros_like(n_cb)
    h_b_given_c = torch.zeros_like(n_cb)
    for n, row, col in cells:
        # an empty cell adds 0; in a filled one, row and col are >= n >= 1, so clamping to 1
        # only keeps the unused branch finite
        n_, row_, col_ = n.clamp_min(1), row.clamp_min(1), col.clamp_min(1)
        mi += torch.where(n > 0, n / T * torch.log2(n_ * T / (row_ * col_)), 0.0)
        h_b_given_c -= torch.where(n > 0, n / T * torch.log2(n_ / row_), 0.0)
    mi = mi.clamp_min(0.0)
    h_min = torch.minimum(binary_entropy(n_c / T), binary_entropy(n_b / T))
    nmi = torch.where(h_min > 0, mi / h_min.clamp_min(1e-300), 0.0).clamp(0.0, 1.0)
    p_b_given_c = n_cb / n_c  # NaN where c never fires
    return mi, nmi, h_b_given_c.clamp_min(0.0), p_b_given_c


# =============================================================================================
# Co-firing counts, accumulated batch by batch
# =============================================================================================
class CoFiringCounter:
    """Counts, over batches of tokens, how often each concept fires together with its partners.

    `partners` (C, G, m) lists for each of C concepts G groups of m base latents (group 0: its
    top-m, groups 1..: null draws); `base_firings` (n_base,) is how often each base latent fires on
    the same tokens (counted once, in the first pass). Per batch, `add` takes the base latents'
    firing (B, n_base) and the concept firings as (token, row) pairs, row indexing the C concepts.
    """

    def __init__(self, partners: torch.Tensor, base_firings: torch.Tensor):
        device = base_firings.device
        self.partners = partners.long().to(device)
        self.base_firings = base_firings.long()
        C, G, m = partners.shape
        self.tokens = 0
        self.concept_firings = torch.zeros(C, dtype=torch.long, device=device)
        self.cofirings = torch.zeros(C, G, m, dtype=torch.long, device=device)
        self.none_fire = torch.zeros(C, G, dtype=torch.long, device=device)
        """Firings of the concept in which no base latent of the group fires."""
        self.pair_cofirings = torch.zeros(C, G, m, m, dtype=torch.float64, device=device)
        """Tokens on which base latents i and j of a group both fire (any token, concept or not)."""

    def add(self, base_fires: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor) -> None:
        """base_fires (B, n_base) bool; concept firings as token ids (F,) and concept rows (F,)."""
        self.tokens += len(base_fires)
        self.concept_firings += torch.bincount(rows, minlength=len(self.concept_firings))
        co = base_fires[tokens[:, None, None], self.partners[rows]]  # (F, G, m) bool
        self.cofirings.index_add_(0, rows, co.long())
        self.none_fire.index_add_(0, rows, (~co.any(-1)).long())
        C, G, m = self.partners.shape
        flat = self.partners.reshape(-1)
        for part in base_fires.split(1024):  # (b, C*G*m) -> per group, the (m, m) co-firing counts
            fires = part[:, flat].float().reshape(len(part), C * G, m).transpose(0, 1)
            self.pair_cofirings += torch.bmm(fires.transpose(1, 2), fires).reshape(C, G, m, m).double()

    def sibling_nmi(self, group: int) -> torch.Tensor:
        """(C,) per concept: the mean NMI between pairs of the base latents of one group. For a
        concept's top-m base latents this says whether the base latents a concept reads belong
        together (they co-fire, or exclude each other, more than chance), which is what a
        hierarchy in the data makes them do; NaN when the group has fewer than 2 latents."""
        C, G, m = self.partners.shape
        if m < 2:
            return torch.full((C,), float("nan"), dtype=torch.float64)
        ids = self.partners[:, group].cpu()
        n = self.base_firings.cpu()[ids].double()  # (C, m)
        i, j = torch.triu_indices(m, m, offset=1)
        counts = self.pair_cofirings[:, group].cpu()[:, i, j]
        _, nmi, _, _ = information_from_counts(self.tokens, n[:, i], n[:, j], counts)
        return nmi.mean(1)

    def information(self, group: int) -> PairInformation:
        """Figures of each concept with the m base latents of one group (0: its top-m)."""
        ids = self.partners[:, group].cpu()  # (C, m)
        n_c, n_b = self.concept_firings.cpu(), self.base_firings.cpu()[ids]
        mi, nmi, h, p = information_from_counts(self.tokens, n_c.unsqueeze(1), n_b,
                                                self.cofirings[:, group].cpu())
        leakage = self.none_fire[:, group].cpu().double() / n_c.double()
        return PairInformation(mi, nmi, h, p, leakage, n_c, n_b, self.tokens)


def pairwise_firing_information(concept_fires: torch.Tensor, base_fires: torch.Tensor,
                                base_ids: torch.Tensor) -> PairInformation:
    """Figures for each concept (column of concept_fires, (T, C) bool) against the m base
    latents in its row of base_ids (C, m), from base_fires (T, n_base) bool."""
    if concept_fires.shape[0] != base_fires.shape[0]:
        raise ValueError(f"{concept_fires.shape[0]} concept rows but "
                         f"{base_fires.shape[0]} base rows")
    base_fires = base_fires.bool()
    counter = CoFiringCounter(base_ids.unsqueeze(1), base_fires.sum(0))
    tokens, rows = concept_fires.to(base_fires.device).bool().nonzero(as_tuple=True)
    counter.add(base_fires, tokens, rows)
    return counter.information(0)


# =============================================================================================
# The analysis of an SAE
# =============================================================================================
@torch.no_grad()
def _firings(sae, activations: torch.Tensor, batch_size: int):
    """Per batch: base firing (B, n_base) bool, and the concept firings as (token, concept) ids."""
    for chunk in activations.split(batch_size):
        out = sae.forward_levels(chunk.to(sae.device, sae.dtype))
        tokens, slots = (out.z2_values > 0).nonzero(as_tuple=True)
        yield out.z1 > 0, tokens, out.z2_indices[tokens, slots]


def _firing_counts(sae, activations: torch.Tensor, batch_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """How many tokens each base latent and each concept latent fires on."""
    n_base_fired = torch.zeros(sae.n_base, dtype=torch.long, device=sae.device)
    n_concept_fired = torch.zeros(sae.n_concept, dtype=torch.long, device=sae.device)
    for base_fires, _, concepts in _firings(sae, activations, batch_size):
        n_base_fired += base_fires.sum(0)
        n_concept_fired += torch.bincount(concepts, minlength=sae.n_concept)
    return n_base_fired, n_concept_fired


def _count_cofirings(sae, activations: torch.Tensor, batch_size: int, alive: torch.Tensor,
                     counter: CoFiringCounter) -> None:
    """Add the co-firings of the alive concepts (counter row i: alive[i]) with their partners."""
    row_of = torch.full((sae.n_concept,), -1, dtype=torch.long)
    row_of[alive] = torch.arange(len(alive))
    row_of = row_of.to(sae.device)
    for base_fires, tokens, concepts in _firings(sae, activations, batch_size):
        rows = row_of[concepts]
        keep = rows >= 0
        counter.add(base_fires, tokens[keep], rows[keep])


def _concept_rows(sae, alive: torch.Tensor, top: torch.Tensor, real: PairInformation,
                  null: list[PairInformation], siblings: torch.Tensor, null_siblings: torch.Tensor,
                  tokens: int) -> list[dict]:
    """hierarchy.json's row of each alive concept: its top base latents, their weights and
    firing rates, the information figures and the null's mean for the same concept."""
    weights = sae.W_enc2.detach().cpu().double()[top, alive.unsqueeze(1)]  # (A, m) signed
    base_rate = real.base_firings.double() / tokens
    null_per_concept = {name: torch.stack([getattr(n, name).double().reshape(len(alive), -1).mean(1)
                                           for n in null]).mean(0)
                        for name in ("mi", "nmi", "h_b_given_c", "p_b_given_c", "leakage")}
    return [
        {"concept": int(c), "firings": int(real.concept_firings[i]),
         "firing_rate": real.concept_firings[i].item() / tokens,
         "top_base": top[i].tolist(), "top_weights": weights[i].tolist(),
         "top_base_firing_rate": base_rate[i].tolist(),
         "mi": real.mi[i].tolist(), "nmi": real.nmi[i].tolist(),
         "h_b_given_c": real.h_b_given_c[i].tolist(), "p_b_given_c": real.p_b_given_c[i].tolist(),
         "leakage": real.leakage[i].item(), "sibling_nmi": siblings[i].item(),
         "null_sibling_nmi_mean": null_siblings[:, i].mean().item(),
         **{f"null_{name}_mean": values[i].item() for name, values in null_per_concept.items()}}
        for i, c in enumerate(alive.tolist())
    ]


@torch.no_grad()
def hierarchy_consistency(sae, activations: torch.Tensor, top_m: int = 5, n_null: int = 5,
                          seed: int = 0, batch_size: int = 4096, min_firings: int = MIN_FIRINGS
                          ) -> tuple[dict[str, float], dict]:
    """MI, NMI, H(b|c), P(b|c) and leakage of alive concepts with their top-m base latents, and
    with random alive base latents as a null (module doc). Raises ValueError when the SAE has no
    concept level or no concept fires `min_firings` times on `activations` (raw scale, (T, d)).

    Returns (means for the final_info group `hierarchy`, details for hierarchy.json).
    """
    started = time.time()
    if not sae.n_concept:
        raise ValueError("hierarchy consistency needs a concept level; this SAE has none")
    if len(activations) == 0:
        raise ValueError("hierarchy consistency needs held-out activations; got none")
    if top_m < 1 or n_null < 1:
        raise ValueError(f"top_m={top_m} and n_null={n_null} must be at least 1")

    n_base_fired, n_concept_fired = _firing_counts(sae, activations, batch_size)  # pass 1
    alive = (n_concept_fired >= min_firings).nonzero().squeeze(1).cpu()
    if len(alive) == 0:
        raise ValueError(f"no concept latent fires {min_firings} times on the "
                         f"{len(activations)} held-out tokens (most: "
                         f"{n_concept_fired.max().item()}); nothing to measure")
    alive_base = (n_base_fired >= min_firings).nonzero().squeeze(1).cpu()

    # partners: the top-m by |W_enc2|, then n_null random draws of m alive base latents
    top = strongest_base_latents(sae.W_enc2.cpu(), top_m)[alive]  # (A, m)
    m = top.shape[1]
    generator = torch.Generator().manual_seed(seed)
    try:
        nulls = [sample_excluding(alive_base, top, m, generator) for _ in range(n_null)]
    except ValueError as error:
        raise ValueError(f"too few alive base latents ({len(alive_base)}) for a null of {m} "
                         f"random base latents per concept: {error}") from error
    counter = CoFiringCounter(torch.stack([top, *nulls], dim=1), n_base_fired)
    _count_cofirings(sae, activations, batch_size, alive, counter)  # pass 2

    real = counter.information(0)
    null = [counter.information(g) for g in range(1, n_null + 1)]
    siblings = counter.sibling_nmi(0)
    null_siblings = torch.stack([counter.sibling_nmi(g) for g in range(1, n_null + 1)])  # (n_null, A)
    means = {"alive_concepts": float(len(alive)),
             "alive_concept_fraction": len(alive) / sae.n_concept,
             **_group_means(real), "sibling_nmi_mean": siblings.nanmean().item()}
    null_draws = [{**_group_means(n), "sibling_nmi_mean": s.nanmean().item()}
                  for n, s in zip(null, null_siblings)]
    means.update({f"null_{name}": sum(draw[name] for draw in null_draws) / n_null
                  for name in null_draws[0]})
    means["tokens"] = float(counter.tokens)
    means.update(tree_shape(top, alive_base, n_null, seed))

    concepts = _concept_rows(sae, alive, top, real, null, siblings, null_siblings, counter.tokens)
    details = {
        "format_version": FORMAT_VERSION, "definitions": _DEFINITIONS,
        "parameters": {"top_m": m, "n_null": n_null, "seed": seed, "min_firings": min_firings,
                       "batch_size": batch_size, "tokens": counter.tokens, "n_base": sae.n_base,
                       "n_concept": sae.n_concept, "alive_base": len(alive_base)},
        "means": means,
        "top1": {f"{name}_mean": getattr(real, name)[:, 0].mean().item()
                 for name in ("mi", "nmi", "h_b_given_c", "p_b_given_c")},
        "null_draws": null_draws,
        "concepts": concepts,
    }
    details["seconds"] = time.time() - started
    return means, validated(HierarchyOutput, details)


HUB_COUNT = 10
"""The tree-ness reading's hubs: the share of child slots held by this many most-read latents."""


def _tree_figures(top: torch.Tensor, alive_base: torch.Tensor) -> dict[str, float]:
    """How tree-like the (concept -> top-m base latents) assignment `top` (A, m) is."""
    slots = top.numel()
    parents = torch.bincount(top.reshape(-1), minlength=int(max(top.max().item(), alive_base.max().item())) + 1)
    alive_parents = parents[alive_base]
    return {"tree_max_parents": float(parents.max()),
            "tree_top10_child_share": parents.sort(descending=True).values[:HUB_COUNT].sum().item() / slots,
            "tree_single_parent_fraction": (alive_parents == 1).double().mean().item(),
            "tree_distinct_children_fraction": (parents > 0).sum().item() / slots}


def tree_shape(top: torch.Tensor, alive_base: torch.Tensor, n_draws: int, seed: int) -> dict[str, float]:
    """Tree-ness of the concepts' top-m children (ours): how many concepts read each base latent
    as a top child (`tree_max_parents`), the share of all child slots the HUB_COUNT most-read
    base latents hold, the fraction of alive base latents that are a child of exactly one
    concept, and distinct children per slot; beside them `null_tree_*` (each concept's m
    children drawn at random from the alive base latents, mean of n_draws seeded draws) and
    `ideal_tree_*` (a tree: every child slot a different base latent, as far as there are
    enough alive base latents)."""
    figures = _tree_figures(top, alive_base)
    generator = torch.Generator().manual_seed(seed + 1)
    draws = [_tree_figures(torch.stack([alive_base[torch.randperm(len(alive_base), generator=generator)[:top.shape[1]]]
                                        for _ in range(len(top))]), alive_base)
             for _ in range(n_draws)]
    slots, alive = top.numel(), len(alive_base)
    ideal = {"tree_max_parents": float(-(-slots // alive)),
             "tree_top10_child_share": min(HUB_COUNT * -(-slots // alive), slots) / slots,
             "tree_single_parent_fraction": min(slots, alive) / alive if slots <= alive else 0.0,
             "tree_distinct_children_fraction": min(slots, alive) / slots}
    return {**figures, **{f"null_{k}": sum(d[k] for d in draws) / n_draws for k in figures},
            **{f"ideal_{k}": v for k, v in ideal.items()}}


def _group_means(info: PairInformation) -> dict[str, float]:
    """Pair figures averaged over all pairs, leakage over concepts."""
    return {f"{name}_mean": getattr(info, name).double().mean().item()
            for name in ("mi", "nmi", "h_b_given_c", "p_b_given_c", "leakage")}


_DEFINITIONS = {
    "alive_concepts": "concept latents firing at least min_firings times on the held-out tokens",
    "mi_mean": "mean over (alive concept c, top-m base latent b by |W_enc2[b, c]|) of the plug-in "
               "mutual information I(c;b) in bits between the binary firing of c and of b",
    "nmi_mean": "mean of I(c;b) / min(H(c), H(b)) (0 where the smaller entropy is 0)",
    "h_b_given_c_mean": "mean of the conditional entropy H(b|c) in bits",
    "p_b_given_c_mean": "mean of P(b fires | c fires)",
    "leakage_mean": "mean over alive concepts of the fraction of c's firings in which none of "
                    "its top-m base latents fires",
    "sibling_nmi_mean": "mean over alive concepts of the mean NMI between pairs of its top-m base "
                        "latents (all tokens): do the base latents a concept reads belong together?",
    "null_*": "the same with m random alive base latents (outside c's top-m) per concept, "
              "averaged over n_null seeded draws",
    "tokens": "held-out tokens the figures are computed on",
    "tree_*": "tree-ness of the alive concepts' top-m children by |W_enc2| (ours): "
              "tree_max_parents, the most concepts reading one base latent as a top child; "
              "tree_top10_child_share, the share of child slots the 10 most-read base latents "
              "hold; tree_single_parent_fraction, alive base latents that are a top child of "
              "exactly one concept; tree_distinct_children_fraction, distinct children per slot; "
              "null_tree_*: random children from the alive base latents; ideal_tree_*: a tree",
}
