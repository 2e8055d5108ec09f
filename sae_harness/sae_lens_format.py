"""Saving and loading the two-level SAE in SAE-Lens' on-disk format, concept level alongside.

    sae/cfg.json                  SAE-Lens config of the base level (architecture "standard")
    sae/sae_weights.safetensors   base level: W_enc (d, n1), b_enc, W_dec (n1, d), b_dec
    sae/concept_level.safetensors concept level: W_enc (n1, n2) reading base latents, b_enc, W_dec (n2, d)
    sae/hierarchical_sae.json     how the levels combine (widths, TopK k, latent order)

The base level alone is a standard ReLU SAE that `sae_lens.SAE.load_from_disk` loads. The whole
dictionary encodes to concat[z1, z2] with
    z1 = ReLU((x - b_dec) W_enc1 + b_enc1),  z2 = TopK_k(ReLU(z1 W_enc2 + b_enc2)),
    x_hat = z1 W_dec1 + z2 W_dec2 + b_dec.
Weights read raw activations: the training-time input scale is folded into the biases.
The folder is written beside its destination and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONCEPT_WEIGHTS = "concept_level.safetensors"
DESCRIPTION = "hierarchical_sae.json"
FORMAT_VERSION = 1


@dataclass
class SavedSAE:
    """The tensors and metadata of a two-level SAE as stored on disk."""

    base: dict[str, torch.Tensor]
    """W_enc (d, n1), b_enc (n1,), W_dec (n1, d), b_dec (d,)."""
    concept: dict[str, torch.Tensor] | None
    """W_enc (n1, n2), b_enc (n2,), W_dec (n2, d); None for a one-level SAE."""
    concept_k: int | None
    metadata: dict = field(default_factory=dict)
    """model_name, hook_name, hook_layer, context_size, dataset_path, and anything else."""


def save_sae(directory: Path, saved: SavedSAE) -> Path:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    base = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in saved.base.items()}
    d_in, n_base = base["W_enc"].shape
    cfg = StandardSAEConfig(
        d_in=d_in, d_sae=n_base, dtype="float32", device="cpu", apply_b_dec_to_input=True,
        normalize_activations="none",
        metadata=SAEMetadata(
            model_name=saved.metadata.get("model_name"),
            hook_name=saved.metadata.get("hook_name"),
            context_size=saved.metadata.get("context_size"),
            dataset_path=saved.metadata.get("dataset_path"),
            prepend_bos=True,
        ),
    )
    sae = StandardSAE(cfg)
    sae.load_state_dict(base)

    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        sae.save_model(tmp)
        description = {
            "format_version": FORMAT_VERSION,
            "d_in": d_in,
            "n_base": n_base,
            "n_concept": 0,
            "concept_k": None,
            "latent_order": "base latents 0..n_base-1, then concept latents",
            "metadata": saved.metadata,
        }
        if saved.concept is not None:
            concept = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in saved.concept.items()}
            save_file(concept, tmp / CONCEPT_WEIGHTS)
            description.update(n_concept=concept["W_enc"].shape[1], concept_k=saved.concept_k)
        (tmp / DESCRIPTION).write_text(json.dumps(description, indent=2, default=str))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_sae(directory: Path) -> SavedSAE:
    directory = Path(directory)
    description = json.loads((directory / DESCRIPTION).read_text())
    base = load_file(directory / "sae_weights.safetensors")
    concept = None
    if description["n_concept"]:
        concept = load_file(directory / CONCEPT_WEIGHTS)
    return SavedSAE(base=base, concept=concept, concept_k=description["concept_k"],
                    metadata=description["metadata"])
