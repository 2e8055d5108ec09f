"""The SAE on disk: its whole state, read back strictly, with SAE-Lens' view of its base level.

    sae/sae_state.safetensors     every parameter and buffer of the module (its state_dict)
    sae/sae_state.json            format version, the class, its Config and d_in, metadata
    sae/cfg.json + sae/sae_weights.safetensors
                                  the base level alone as SAE-Lens' standard ReLU SAE (a view
                                  derived from the state; `sae_lens.SAE.load_from_disk` reads it)

Loading builds the module from its constructor arguments and loads the state with
`strict=True`: a tensor the module has and the file lacks (a new buffer, say) or the reverse is
an error, never silently dropped. The folder is written beside its destination and renamed into
place (run_directory.atomic_folder). Weights read raw activations: the training-time input scale
is folded into the biases before saving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sae_harness.errors import DataError
from sae_harness.records.run_directory import atomic_folder

STATE_WEIGHTS = "sae_state.safetensors"
STATE_DESCRIPTION = "sae_state.json"
FORMAT_VERSION = 3
"""3: the constructor arguments are the Config the SAE was built from and d_in."""


def save_sae_files(directory: Path, module: torch.nn.Module, constructor_args: dict[str, Any],
                   metadata: dict[str, Any], sae_lens_base: dict[str, torch.Tensor] | None) -> Path:
    """Write `module`'s state, how to rebuild it, and (if given) the SAE-Lens view
    `sae_lens_base` = {W_enc (d, n), b_enc (n,), W_dec (n, d), b_dec (d,)}."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    with atomic_folder(directory) as tmp:
        save_file(state, tmp / STATE_WEIGHTS)
        (tmp / STATE_DESCRIPTION).write_text(json.dumps({
            "format_version": FORMAT_VERSION, "class": type(module).__name__,
            "constructor_args": constructor_args, "metadata": metadata}, indent=2, default=str))
        if sae_lens_base is not None:
            _save_sae_lens_view(tmp, sae_lens_base, metadata)
    return Path(directory)


def load_sae_files(directory: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], dict]:
    """(class name, constructor arguments, state dict, metadata) of a saved SAE."""
    directory = Path(directory)
    try:
        description = json.loads((directory / STATE_DESCRIPTION).read_text())
        state = load_file(directory / STATE_WEIGHTS)
    except (OSError, ValueError) as error:
        raise DataError(f"{directory} holds no saved SAE of this harness ({error})") from error
    if description.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{directory} was saved in format {description.get('format_version')}, "
                        f"this harness reads format {FORMAT_VERSION}")
    return description["class"], description["constructor_args"], state, description["metadata"]


def _save_sae_lens_view(folder: Path, base: dict[str, torch.Tensor], metadata: dict) -> None:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    base = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in base.items()}
    d_in, n_base = base["W_enc"].shape
    cfg = StandardSAEConfig(
        d_in=d_in, d_sae=n_base, dtype="float32", device="cpu", apply_b_dec_to_input=True,
        normalize_activations="none",
        metadata=SAEMetadata(model_name=metadata.get("model_name"), hook_name=metadata.get("hook_name"),
                             context_size=metadata.get("context_size"),
                             dataset_path=metadata.get("dataset_path"), prepend_bos=True),
    )
    sae = StandardSAE(cfg)
    sae.load_state_dict(base)
    sae.save_model(folder)
