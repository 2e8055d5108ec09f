"""The trained SAE on the held-out tokens: explained variance, L0 and dead latents per level.

These figures go into final_info.json's `training` group. The SAE is read through its
`forward_levels` (base latents z1, the selected concept latents) and reads raw activations.
"""

from __future__ import annotations

import torch

from sae_harness.records.degeneracy import DEAD_LEVEL_WARNING


@torch.no_grad()
def heldout_statistics(sae, x: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Explained variance, MSE, L0 per level and dead fractions on raw held-out activations.

    explained_variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the held-out tokens;
    a latent is dead if it never fires on them.
    """
    sq_err = total_var = l0_base = l0_concept = 0.0
    fired_base = torch.zeros(sae.n_base, dtype=torch.bool)
    fired_concept = torch.zeros(sae.n_concept, dtype=torch.bool)
    mean = x.mean(0)
    for chunk in x.split(batch_size):
        out = sae.forward_levels(chunk.to(sae.device))
        sq_err += (chunk - out.x_hat.cpu()).pow(2).sum().item()
        total_var += (chunk - mean).pow(2).sum().item()
        l0_base += (out.z1 > 0).sum().item()
        l0_concept += (out.z2_values > 0).sum().item()
        fired_base |= (out.z1 > 0).any(0).cpu()
        if sae.n_concept:
            fired_concept[out.z2_indices[out.z2_values > 0].cpu()] = True
    n = len(x)
    return {
        "explained_variance": 1 - sq_err / total_var,
        "mse": sq_err / (n * x.shape[1]),
        "l0_base": l0_base / n,
        "l0_concept": l0_concept / n,
        "l0_total": (l0_base + l0_concept) / n,
        "dead_fraction_base": 1 - fired_base.float().mean().item(),
        "dead_fraction_concept": (1 - fired_concept.float().mean().item()) if sae.n_concept else 0.0,
        "heldout_tokens": float(n),
    }


def training_warnings(stats: dict, sae, dead_limit: float = DEAD_LEVEL_WARNING) -> list[str]:
    """Signs of a level that did not learn (worth knowing, and a reason of its own in DESIGN 7's
    checks when a concept level is entirely dead)."""
    warnings = []
    for level, latents in (("base", sae.n_base), ("concept", sae.n_concept)):
        dead = stats[f"dead_fraction_{level}"]
        if latents and dead > dead_limit:
            warnings.append(f"{level} level dead: {dead:.1%} of its {latents} latents never fire on "
                            f"the {stats['heldout_tokens']:.0f} held-out tokens")
    return warnings
