"""Weight distributions of the two-level SAE: norms per level, W_enc2 sparsity, and how each
concept's decoder direction relates to the decoders of the base latents it reads.

    means, details = weight_analysis(sae)

`means` is the flat `weights` group of final_info.json; `details` is weights.json. Definitions
(W_enc2 is the (n_base, n_concept) concept-to-base connectivity; column c holds the weights concept c puts
on the base latents):

- Norms. Base level: encoder columns of W_enc1 (d, n_base), decoder rows of W_dec1 (n_base, d). Concept
  level: encoder columns of W_enc2 (which live in base-latent space, not input space), decoder
  rows of W_dec2 (n_concept, d). Statistics over latents: mean, std (population), min, max.
- Sparsity of W_enc2. Absolute: the fraction of all entries with |w| < t, on the float32
  weights as trained (folding the input scale into the saved SAE changes the biases only, so
  W_enc2 is in the units the trainer used). Relative: the fraction of entries with
  |w_bc| < t * max_b |w_bc|, i.e. against the largest weight of the same concept, which does
  not depend on the weights' scale. An all-zero column counts as entirely below.
- Effective number of base latents per concept: the participation ratio
  (sum_b |w_bc|)^2 / sum_b w_bc^2 = 1 / sum_b p_b^2 with p_b = |w_bc| / sum_b |w_bc| (the
  exponential of the order-2 Renyi entropy of p). It is m for m equal-magnitude entries and 1
  for a single one; unlike exp(Shannon entropy) it is dominated by the large entries, so the long
  tail of tiny nonzero weights that Adam leaves under an L1 penalty moves it little. It is 0 for
  an all-zero column (the concept reads nothing).
- Entries per concept above 1% of its max: #{b : |w_bc| > 0.01 * max_b |w_bc|}.
- Decoder cosines: for each concept c, its top-m base latents by |W_enc2[:, c]| (descending);
  the cosine between W_dec2[c] and W_dec1[b] (signed; not multiplied by the weight's sign) for
  the strongest one (top-1) and averaged over the m (top-m). Null: the mean cosine with m base
  latents drawn at random (seeded, without replacement) from those outside c's top-m.

An SAE without a concept level gets the base-level figures only. weights.json layout:

    {"format_version": 1, "definitions": {name: text}, "parameters": {...},
     "levels": {level: {"encoder_column_norm" | "decoder_row_norm":
                        {"mean", "std", "min", "max", "histogram": {"bin_edges", "counts"}}}},
     "w_enc2": {"frac_abs_below": {"1e-4": f, ...}, "frac_rel_below": {...},
                "zero_entries": n, "zero_columns": n,
                "abs_log10_histogram": {"bin_edges", "counts", "below_first_edge",
                                        "above_last_edge"} (nonzero entries, fixed edges),
                "effective_base_per_concept": {"mean", "median", "histogram", "per_concept"},
                "entries_above_1pct_of_max": {"mean", "median", "histogram", "per_concept"}},
     "concept_base_decoder_cosine": {"top_m", "null_m", "top1_mean", "topm_mean", "random_mean",
                                     "per_concept": [{"concept", "top_base", "top_weights",
                                                      "cosines", "random_cosine_mean"}]}}
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sae_harness.records.schemas import WeightsOutput, validated

FORMAT_VERSION = 1
THRESHOLDS = {"1e-4": 1e-4, "1e-3": 1e-3, "1e-2": 1e-2}
"""Thresholds for the W_enc2 sparsity fractions, keyed by the name used in metric names."""
LOG10_EDGES = np.linspace(-10.0, 2.0, 49)
"""Fixed quarter-decade bins for the histogram of log10 |w| over nonzero W_enc2 entries, the
same for every run so that plot.py can overlay runs."""
RELATIVE_ENTRY_THRESHOLD = 0.01
"""An entry counts towards 'entries above 1% of max' when |w| exceeds this fraction of the max."""


def strongest_base_latents(W_enc2: torch.Tensor, m: int) -> torch.Tensor:
    """(n_concept, m) ids of each concept's m base latents with the largest |W_enc2[:, c]|, descending."""
    return W_enc2.detach().abs().topk(min(m, W_enc2.shape[0]), dim=0).indices.T.contiguous()


def sample_excluding(pool: torch.Tensor, exclude: torch.Tensor, count: int,
                     generator: torch.Generator, chunk: int = 256) -> torch.Tensor:
    """For each row of `exclude` (R, e; distinct ids per row), `count` distinct ids drawn
    uniformly from `pool` minus that row's ids; (R, count). Seeded through `generator`; ranks
    random keys in chunks of rows, so memory stays at chunk * len(pool)."""
    pool, exclude = pool.long(), exclude.long()
    if len(pool) == 0:
        raise ValueError("no ids to sample from")
    size = max(pool.max().item(), exclude.max().item() if exclude.numel() else -1) + 1
    position = torch.full((size,), -1, dtype=torch.long)  # id -> its index in pool, or -1
    position[pool] = torch.arange(len(pool))
    available = len(pool) - (position[exclude] >= 0).sum(1)
    if len(exclude) and available.min().item() < count:
        raise ValueError(f"cannot draw {count} ids: a row leaves only {available.min().item()} "
                         f"of the {len(pool)} in the pool")
    rows = []
    for start in range(0, len(exclude), chunk):
        block = exclude[start:start + chunk]
        keys = torch.rand(len(block), len(pool), generator=generator, dtype=torch.float64)
        pos = position[block]
        row_ids = torch.arange(len(block)).unsqueeze(1).expand_as(pos)
        keys[row_ids[pos >= 0], pos[pos >= 0]] = float("inf")  # never pick an excluded id
        rows.append(pool[keys.topk(count, dim=1, largest=False).indices])
    return torch.cat(rows) if rows else torch.empty(0, count, dtype=torch.long)


def _histogram(values: torch.Tensor, bins: int) -> dict:
    counts, edges = np.histogram(values.detach().double().cpu().numpy(), bins=bins)
    return {"bin_edges": edges.tolist(), "counts": counts.tolist()}


def _summary(values: torch.Tensor, bins: int) -> dict:
    v = values.detach().double().cpu()
    return {"mean": v.mean().item(), "std": v.std(correction=0).item(), "min": v.min().item(),
            "max": v.max().item(), "histogram": _histogram(v, bins)}


@torch.no_grad()
def weight_analysis(sae, top_m: int = 5, bins: int = 50, seed: int = 0
                    ) -> tuple[dict[str, float], dict]:
    """Norm statistics per level, W_enc2 sparsity, concept/base decoder cosines (module doc).

    Returns (means for the final_info group `weights`, details for weights.json).
    """
    levels = {"base": (sae.W_enc1, sae.W_dec1)}
    if sae.n_concept:
        levels["concept"] = (sae.W_enc2, sae.W_dec2)
    means: dict[str, float] = {}
    details: dict = {"format_version": FORMAT_VERSION, "definitions": _DEFINITIONS,
                     "parameters": {"top_m": top_m, "bins": bins, "seed": seed,
                                    "n_base": sae.n_base, "n_concept": sae.n_concept},
                     "levels": {}}
    for level, (W_enc, W_dec) in levels.items():
        enc = _summary(W_enc.detach().float().norm(dim=0), bins)
        dec = _summary(W_dec.detach().float().norm(dim=1), bins)
        details["levels"][level] = {"encoder_column_norm": enc, "decoder_row_norm": dec}
        for short, stats in (("enc", enc), ("dec", dec)):
            for stat in ("mean", "std", "min", "max"):
                means[f"{short}_norm_{stat}_{level}"] = stats[stat]
    if not sae.n_concept:
        return means, validated(WeightsOutput, details)

    # on the SAE's device, in float32, with float64 sums
    W = sae.W_enc2.detach().float()
    sparsity, sparsity_means = _connectivity_sparsity(W, bins)
    details["w_enc2"] = sparsity
    means.update(sparsity_means)

    cosine = _decoder_cosines(W, sae.W_dec1.detach().float(), sae.W_dec2.detach().float(),
                              top_m, seed)
    details["concept_base_decoder_cosine"] = cosine
    m = cosine["top_m"]
    means["concept_top1_base_decoder_cosine_mean"] = cosine["top1_mean"]
    means[f"concept_top{m}_base_decoder_cosine_mean"] = cosine["topm_mean"]
    if cosine["random_mean"] is not None:
        means["concept_random_base_decoder_cosine_mean"] = cosine["random_mean"]
    return means, validated(WeightsOutput, details)


def _column_chunks(n_columns: int, chunk: int):
    return (slice(start, start + chunk) for start in range(0, n_columns, chunk))


def _connectivity_sparsity(W: torch.Tensor, bins: int, chunk: int = 512
                           ) -> tuple[dict, dict[str, float]]:
    """Absolute and relative threshold fractions, effective counts, entries above 1% of max;
    per concept column, `chunk` columns at a time, so memory stays at a few n_base * chunk."""
    n_base, n_concept = W.shape
    below_abs = {name: 0 for name in THRESHOLDS}
    below_rel = {name: 0 for name in THRESHOLDS}
    effective, above, zero_entries, zero_columns = [], [], 0, 0
    lo, hi, n_log_bins = float(LOG10_EDGES[0]), float(LOG10_EDGES[-1]), len(LOG10_EDGES) - 1
    log_counts = torch.zeros(n_log_bins, dtype=torch.float64)
    log_below = log_above = 0
    for columns in _column_chunks(n_concept, chunk):
        A = W[:, columns].abs()
        column_max = A.max(dim=0).values
        zero_column = column_max == 0
        for name, t in THRESHOLDS.items():
            below_abs[name] += int(torch.count_nonzero(A < t))
            # an all-zero column counts as entirely below
            below_rel[name] += int(torch.count_nonzero((A < t * column_max) | zero_column))
        l1 = A.sum(0, dtype=torch.float64)
        l2sq = A.double().pow(2).sum(0)
        effective.append(torch.where(zero_column, 0.0, l1.pow(2) / l2sq.clamp_min(1e-300)).cpu())
        big = A > RELATIVE_ENTRY_THRESHOLD * column_max  # none in an all-zero column
        above.append(torch.count_nonzero(big, dim=0).double().cpu())
        zero_entries += int(torch.count_nonzero(A == 0))
        zero_columns += int(torch.count_nonzero(zero_column))
        logs = A[A > 0].log10()
        log_counts += torch.histc(logs, bins=n_log_bins, min=lo, max=hi).double().cpu()
        log_below += int(torch.count_nonzero(logs < lo))
        log_above += int(torch.count_nonzero(logs > hi))
    total = n_base * n_concept
    out: dict = {"frac_abs_below": {name: n / total for name, n in below_abs.items()},
                 "frac_rel_below": {name: n / total for name, n in below_rel.items()},
                 "zero_entries": zero_entries, "zero_columns": zero_columns,
                 "abs_log10_histogram": {"bin_edges": LOG10_EDGES.tolist(),
                                         "counts": [int(n) for n in log_counts.tolist()],
                                         "below_first_edge": log_below,
                                         "above_last_edge": log_above}}
    means: dict[str, float] = {}
    for name in THRESHOLDS:
        means[f"w_enc2_frac_abs_below_{name}"] = out["frac_abs_below"][name]
        means[f"w_enc2_frac_rel_below_{name}"] = out["frac_rel_below"][name]
    for figure, values, metric in (
            ("effective_base_per_concept", torch.cat(effective), "effective_base_per_concept"),
            ("entries_above_1pct_of_max", torch.cat(above),
             "w_enc2_entries_above_1pct_of_max_per_concept")):
        out[figure] = {"mean": values.mean().item(), "median": values.quantile(0.5).item(),
                       "histogram": _histogram(values, bins), "per_concept": values.tolist()}
        means[f"{metric}_mean"] = out[figure]["mean"]
        means[f"{metric}_median"] = out[figure]["median"]
    return out, means


def _decoder_cosines(W: torch.Tensor, W_dec1: torch.Tensor, W_dec2: torch.Tensor, top_m: int,
                     seed: int, chunk: int = 512) -> dict:
    """Cosine of each concept decoder with its top-m base decoders and with random ones."""
    n_base, n_concept = W.shape
    top = strongest_base_latents(W, top_m)  # (n_concept, m), on W's device
    m = top.shape[1]
    null_m = min(m, n_base - m)
    random_ids = (sample_excluding(torch.arange(n_base), top.cpu(), null_m,
                                   torch.Generator().manual_seed(seed)).to(top.device)
                  if null_m else None)
    dec1, dec2 = F.normalize(W_dec1, dim=1), F.normalize(W_dec2, dim=1)
    cos_top, cos_random = [], []
    for rows in _column_chunks(n_concept, chunk):  # concepts, `chunk` at a time
        cos_top.append(torch.einsum("cmd,cd->cm", dec1[top[rows]], dec2[rows]).double())
        if random_ids is not None:
            cos_random.append(torch.einsum("cmd,cd->cm", dec1[random_ids[rows]], dec2[rows])
                              .double().mean(1))
    cos_top = torch.cat(cos_top).cpu()  # (n_concept, m)
    random_mean = torch.cat(cos_random).cpu() if random_ids is not None else None  # (n_concept,)
    weights = W.gather(0, top.T).T.cpu()  # (n_concept, m) signed weights in top order
    top = top.cpu()
    return {
        "top_m": m, "null_m": null_m, "top1_mean": cos_top[:, 0].mean().item(),
        "topm_mean": cos_top.mean().item(),
        "random_mean": None if random_mean is None else random_mean.mean().item(),
        "per_concept": [
            {"concept": c, "top_base": top[c].tolist(), "top_weights": weights[c].tolist(),
             "cosines": cos_top[c].tolist(),
             "random_cosine_mean": None if random_mean is None else random_mean[c].item()}
            for c in range(n_concept)
        ],
    }


_DEFINITIONS = {
    "enc_norm_{stat}_{level}": "statistics over latents of the L2 norm of encoder columns "
                               "(base: W_enc1 columns in input space; concept: W_enc2 columns "
                               "in base-latent space)",
    "dec_norm_{stat}_{level}": "statistics over latents of the L2 norm of decoder rows",
    "w_enc2_frac_abs_below_{t}": "fraction of all W_enc2 entries with |w| < t (weights as trained)",
    "w_enc2_frac_rel_below_{t}": "fraction of W_enc2 entries with |w| < t * (max |w| of the same "
                                 "concept column); an all-zero column counts as below",
    "effective_base_per_concept_{mean,median}": "participation ratio (sum|w|)^2 / sum w^2 of each "
                                                "concept column (0 for an all-zero column)",
    "w_enc2_entries_above_1pct_of_max_per_concept_{mean,median}":
        "number of base latents with |w| > 0.01 * max |w| in each concept column",
    "concept_top1_base_decoder_cosine_mean": "mean over concepts of cos(W_dec2[c], W_dec1[b1]), "
                                             "b1 = argmax_b |W_enc2[b, c]|",
    "concept_top{m}_base_decoder_cosine_mean": "mean over concepts and their top-m base latents "
                                               "by |W_enc2[:, c]| of cos(W_dec2[c], W_dec1[b])",
    "concept_random_base_decoder_cosine_mean": "the same for m random base latents outside the "
                                               "concept's top-m (seeded): the null",
}
