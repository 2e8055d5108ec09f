"""What decides the concept level's fate during training, measured at log steps.

    values = concept_diagnostics(weighted_terms, out, concept_params, n_concept)

Logged beside the loss terms (training_log.jsonl), drawn by plot.py:

* concept_pre_mean, concept_pre_max, concept_pre_positive_fraction: the concept
  pre-activations z1 W_enc2 + b_enc2 over the batch (in the trainer's scaled units). A level
  whose maximum falls below 0 has no positive pre-activation left for TopK's ReLU: it is dead,
  and no gradient reaches it through the reconstruction.
* concept_bias_mean: the mean of b_enc2.
* concept_latents_in_batch: distinct concept latents that fired (value > 0) on the batch, out
  of n_concept (a level that fills TopK with the same few latents has collapsed).
* grad_share_<term>: each weighted loss term's share of the gradient on the concept encoder
  (W_enc2, b_enc2): <g_term, g_total> / |g_total|^2. The shares sum to 1; a term with a share
  above 1 is pushing harder than the total moves, one below 0 pulls against it. Whichever term
  holds most of the share decides where the concept encoder goes. (Adam rescales the gradient
  per parameter, so the shares say which way the step goes, not its size.)
"""

from __future__ import annotations

import torch


def concept_diagnostics(weighted_terms: dict[str, torch.Tensor], out, params: list[torch.Tensor],
                        n_concept: int) -> dict[str, float]:
    """The figures above, for one batch (`out` is the SAE's SAEOutput, graph intact)."""
    if not n_concept:
        return {}
    with torch.no_grad():
        pre = out.z2_pre.float()
        fired = out.z2_indices[out.z2_values > 0]
        values = {"concept_pre_mean": pre.mean().item(), "concept_pre_max": pre.max().item(),
                  "concept_pre_positive_fraction": (pre > 0).float().mean().item(),
                  "concept_bias_mean": params[1].mean().item(),
                  "concept_latents_in_batch": float(torch.unique(fired).numel())}
    grads = {}
    for name, term in weighted_terms.items():
        if not (isinstance(term, torch.Tensor) and term.requires_grad):
            continue
        found = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        grads[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                 for g, p in zip(found, params)])
    if grads:
        total = torch.stack(list(grads.values())).sum(0)
        norm = total.pow(2).sum().clamp_min(1e-30)
        values.update({f"grad_share_{name}": ((g * total).sum() / norm).item()
                       for name, g in grads.items()})
    return values
