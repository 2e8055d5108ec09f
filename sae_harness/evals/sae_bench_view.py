"""What SAE-Bench and the harness need of a two-level SAE, beyond its own forward pass.

`TwoLevelSAE` is the base class of experiment.py's SAE. The subclass is built from the run's
Config and the input width, `__init__(self, cfg, d_in)`, calls
`super().__init__(cfg, d_in, n_base, n_concept)` first, defines its parameters (W_enc1, b_enc1,
W_dec1, W_enc2, b_enc2, W_dec2, b_dec), says which of its tensors are in input units
(INPUT_SCALED) and which are scale-free (SCALE_FREE), and defines
`forward_levels(x) -> SAEOutput`. This class adds:

* SAE-Bench's custom-SAE interface (sae_bench.custom_saes.base_sae.BaseSAE's attributes):
  `encode` -> concat[z1, z2] (n_base + n_concept latents), `decode`, `W_dec` = concat[W_dec1, W_dec2],
  `W_enc` (for concepts W_enc1 @ W_enc2, the linear part of the path from the input to a concept;
  SAE-Bench uses it only for diagnostics), `b_enc`, `cfg`, `dtype`, `device`. Which model and
  hook the SAE reads (`cfg`) is stamped by the harness (`stamp_identity`), not by the SAE;
* `fold_input_scale_`: the training-time input scale folded into the INPUT_SCALED tensors, so
  that the SAE reads raw activations (sae_checks.py verifies this for every SAE before training);
* saving and strict loading (sae_files.py): the state dict plus the Config it was built from,
  with the base level exported as an SAE-Lens SAE.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import torch
import torch.nn as nn

from sae_harness.errors import ConfigurationError, DataError
from sae_harness.records.run_directory import current_config_names
from sae_harness.training.sae_files import load_sae_files, save_sae_files


class TwoLevelSAE(nn.Module):
    """SAE-Bench's view and the files of a base + concept SAE (module docstring)."""

    INPUT_SCALED: tuple[str, ...] = ()
    """Parameters and buffers in the input's units (biases, thresholds): fold_input_scale_
    multiplies them by the input scale."""
    SCALE_FREE: tuple[str, ...] = ()
    """Parameters and buffers that do not change with the input's scale (weights)."""

    def __init__(self, cfg, d_in: int, n_base: int, n_concept: int):
        super().__init__()
        self.config_record = dataclasses.asdict(cfg)
        """The Config the SAE was built from (saved with it; `load` builds it again)."""
        self.d_in, self.n_base, self.n_concept = d_in, n_base, n_concept
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.cfg = None
        """SAE-Bench's CustomSAEConfig, once the harness has stamped the model and hook."""
        self.silenced_level: str | None = None
        """'base' or 'concept': `encode` gives that level's latents as 0 (the absorption eval
        reads each level alone through a copy so set); None: both levels, as trained."""

    def stamp_identity(self, model_name: str, hook_layer: int, context_size: int) -> TwoLevelSAE:
        """Name the model and hook the SAE reads, as SAE-Bench's evals need (the harness does)."""
        from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig

        self.cfg = CustomSAEConfig(
            model_name=model_name, d_in=self.d_in, d_sae=self.n_base + self.n_concept,
            hook_layer=hook_layer, hook_name=f"blocks.{hook_layer}.hook_resid_post",
            context_size=context_size, architecture=type(self).__name__,
            activation_fn_str="relu+topk", apply_b_dec_to_input=True,
            dtype=str(self.dtype).split(".")[1], device=str(self.device))
        return self

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Make the SAE read raw activations x = scale * x_scaled: every INPUT_SCALED tensor
        times `scale` (for ReLU and TopK levels every latent then scales by `scale` too, so
        weights, TopK's choices and unit decoder rows stay as they are)."""
        tensors = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        for name in self.INPUT_SCALED:
            tensors[name].mul_(scale)

    # --- SAE-Bench's view ------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """concat[z1, z2] for inputs of shape (..., d)."""
        shape = x.shape
        out = self.forward_levels(x.reshape(-1, shape[-1]).to(self.dtype))
        z1, z2 = out.z1, concept_latents(out, self.n_concept)
        if self.silenced_level == "base":
            z1 = torch.zeros_like(z1)
        elif self.silenced_level == "concept":
            z2 = torch.zeros_like(z2)
        return torch.cat([z1, z2], dim=-1).reshape(*shape[:-1], -1)

    def level_views(self) -> list[tuple[str, TwoLevelSAE]]:
        """(name, copy) of each level alone, as the absorption eval scores them besides both."""
        if not self.n_concept:
            return []
        return [("base_only", with_level_silenced(self, "concept")),
                ("concept_only", with_level_silenced(self, "base"))]

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
        if self.cfg is not None:
            self.cfg.device, self.cfg.dtype = str(self.device), str(self.dtype).split(".")[1]
        return self

    # --- files -------------------------------------------------------------------------------------
    def save(self, directory: Path, metadata: dict) -> Path:
        """The whole state and the Config (read back strictly by `load`), plus the base level as
        an SAE-Lens SAE."""
        if self.cfg is None:
            raise ConfigurationError(f"{type(self).__name__}.save: no model identity stamped "
                                     "(stamp_identity) to record which activations it reads")
        base = dict(W_enc=self.W_enc1, b_enc=self.b_enc1, W_dec=self.W_dec1, b_dec=self.b_dec)
        identity = {"model_name": self.cfg.model_name, "hook_name": self.cfg.hook_name,
                    "hook_layer": self.cfg.hook_layer, "context_size": self.cfg.context_size}
        return save_sae_files(directory, self, {"cfg": self.config_record, "d_in": self.d_in},
                              {**metadata, **identity}, base)

    @classmethod
    def load(cls, directory: Path):
        """The saved SAE, built from its Config (the class named in `__init__`'s annotation)."""
        name, args, state, metadata = load_sae_files(directory)
        if name != cls.__name__:
            raise ConfigurationError(f"{directory} holds a {name}, not a {cls.__name__}")
        config_class = typing.get_type_hints(cls.__init__)["cfg"]
        try:
            cfg = config_class(**current_config_names(args["cfg"]))
        except TypeError as error:
            raise DataError(f"{directory} was saved with a Config that experiment.py's no longer "
                            f"accepts ({error}); load it with the experiment.py that trained it") from error
        sae = cls(cfg, args["d_in"])
        buffers = dict(sae.named_buffers())
        added = set(buffers) - set(state)  # a buffer added to the class after this SAE was saved
        state = {**{name: buffers[name] for name in added}, **state}  # keeps its initial value
        sae.load_state_dict(state, strict=True)
        sae.eval()  # a trained SAE (an SAE whose selection differs in training sees it so)
        return sae.stamp_identity(metadata["model_name"], metadata["hook_layer"], metadata["context_size"])


def with_level_silenced(sae: TwoLevelSAE, level: str | None) -> TwoLevelSAE:
    """A copy of `sae` whose `encode` gives `level`'s latents ('base' or 'concept') as 0: the
    other level alone, as SAE-Bench sees it (decoder and latent indices unchanged)."""
    import copy

    if level not in (None, "base", "concept"):
        raise ValueError(f"level {level!r} is not 'base', 'concept' or None")
    view = copy.deepcopy(sae)
    view.silenced_level = level
    return view


def concept_latents(out, n_concept: int) -> torch.Tensor:
    """The (B, n_concept) concept latents of an SAEOutput: its z2_values (B, m) at z2_indices (B, m),
    any m; empty slots hold 0 (a BatchTopK level pads so), so slots are added, not assigned."""
    z1 = out.z1
    dense = torch.zeros(len(z1), n_concept, dtype=out.z2_values.dtype, device=z1.device)
    return dense.scatter_add_(-1, out.z2_indices, out.z2_values).to(z1.dtype)
