"""What SAE-Bench and the harness need of a two-level SAE, beyond its own forward pass.

`TwoLevelSAE` is the base class of experiment.py's SAE. The subclass defines its parameters
(W_enc1, b_enc1, W_dec1, W_enc2, b_enc2, W_dec2, b_dec), `forward_levels(x) -> SAEOutput` and
calls `_set_identity(...)` in its constructor; this class adds:

* SAE-Bench's custom-SAE interface (sae_bench.custom_saes.base_sae.BaseSAE's attributes):
  `encode` -> concat[z1, z2] (n1 + n2 latents), `decode`, `W_dec` = concat[W_dec1, W_dec2],
  `W_enc` (for concepts W_enc1 @ W_enc2, the linear part of the path from the input to a concept;
  SAE-Bench uses it only for diagnostics), `b_enc`, `cfg`, `dtype`, `device`;
* saving and strict loading (sae_files.py): the state dict plus the constructor arguments, with
  the base level exported as an SAE-Lens SAE.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from sae_harness.errors import ConfigurationError
from sae_harness.sae_files import load_sae_files, save_sae_files


class TwoLevelSAE(nn.Module):
    """SAE-Bench's view and the files of a base + concept SAE (module docstring)."""

    def _set_identity(self, constructor_args: dict, d_in: int, n_base: int, n_concept: int,
                      model_name: str, hook_layer: int, context_size: int, architecture: str) -> None:
        from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig

        self.constructor_args = dict(constructor_args)
        self.d_in, self.n_base, self.n_concept = d_in, n_base, n_concept
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.cfg = CustomSAEConfig(
            model_name=model_name, d_in=d_in, d_sae=n_base + n_concept, hook_layer=hook_layer,
            hook_name=f"blocks.{hook_layer}.hook_resid_post", context_size=context_size,
            architecture=architecture, activation_fn_str="relu+topk", apply_b_dec_to_input=True,
            dtype="float32", device="cpu")

    # --- SAE-Bench's view ------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """concat[z1, z2] for inputs of shape (..., d)."""
        shape = x.shape
        out = self.forward_levels(x.reshape(-1, shape[-1]).to(self.dtype))
        z2 = out.z1.new_zeros(len(out.z1), self.n_concept).scatter_(-1, out.z2_indices, out.z2_values)
        return torch.cat([out.z1, z2], dim=-1).reshape(*shape[:-1], -1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @property
    def W_dec(self) -> torch.Tensor:
        return torch.cat([self.W_dec1, self.W_dec2], dim=0)

    @property
    def W_enc(self) -> torch.Tensor:
        return torch.cat([self.W_enc1, self.W_enc1 @ self.W_enc2], dim=1)

    @property
    def b_enc(self) -> torch.Tensor:
        return torch.cat([self.b_enc1, self.b_enc2])

    def to(self, *args, **kwargs):
        """As SAE-Bench's BaseSAE: keep `device` and `dtype` in step with the parameters."""
        super().to(*args, **kwargs)
        self.device, self.dtype = self.W_enc1.device, self.W_enc1.dtype
        self.cfg.device, self.cfg.dtype = str(self.device), str(self.dtype).split(".")[1]
        return self

    # --- files -------------------------------------------------------------------------------------
    def save(self, directory: Path, metadata: dict) -> Path:
        """The whole state and the constructor arguments (read back strictly by `load`), plus the
        base level as an SAE-Lens SAE."""
        base = dict(W_enc=self.W_enc1, b_enc=self.b_enc1, W_dec=self.W_dec1, b_dec=self.b_dec)
        identity = {"model_name": self.cfg.model_name, "hook_name": self.cfg.hook_name,
                    "hook_layer": self.cfg.hook_layer, "context_size": self.cfg.context_size}
        return save_sae_files(directory, self, self.constructor_args, {**metadata, **identity}, base)

    @classmethod
    def load(cls, directory: Path):
        name, args, state, _ = load_sae_files(directory)
        if name != cls.__name__:
            raise ConfigurationError(f"{directory} holds a {name}, not a {cls.__name__}")
        sae = cls(**args)
        sae.load_state_dict(state, strict=True)
        return sae
