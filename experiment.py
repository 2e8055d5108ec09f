"""A two-level hierarchical sparse autoencoder on a language model's residual stream.

    python experiment.py --out_dir=run_i

trains the SAE of one variant on residual-stream activations, scores it (SAE-Bench sparse
probing, absorption and core metrics, plus weight and hierarchy analyses) and writes run_i/.
Environment variables steer a run (the command line takes --out_dir only):
EXPERIMENT_PRESET (real | embedded), EXPERIMENT_VARIANT (baseline | cosine_sparsity |
tuned_cosine), EXPERIMENT_TOKENS, EXPERIMENT_CACHE, EXPERIMENT_OVERWRITE.

This file is the experiment: configuration, the SAE, its trainer, and main. The machinery it
stands on (model loading, activation cache, run directory, evals) lives in sae_harness/.

The SAE, for an input x in R^d scaled by one scalar so that E||x||^2 = d:
    base level (n1 latents)     z1 = ReLU((x - b_dec) W_enc1 + b_enc1)
    concept level (n2 = n1/4)   z2 = TopK_k(ReLU(z1 W_enc2 + b_enc2))     reads base latents
    reconstruction              x_hat = z1 W_dec1 + z2 W_dec2 + b_dec     decoder rows unit norm
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from sae_harness.activations import ActivationData, check_token_budget, prepare_activations
from sae_harness.checkpoint import Checkpoint, GracefulStop, TrainingInterrupted
from sae_harness.degeneracy import degeneracy_reasons
from sae_harness.errors import ConfigurationError, HarnessError
from sae_harness.evaluations import evaluate_sae
from sae_harness.language_model import (load_language_model, load_tokenizer, locate_model,
                                        tokenizer_id, torch_dtype)
from sae_harness.notes import update_notes
from sae_harness.precision import precision_for_run, resolve_matmul_dtype
from sae_harness.preflight import preflight
from sae_harness.presets import Preset, RunEnvironment, read_run_environment
from sae_harness.provenance import provenance
from sae_harness.sae_kernels import (ActiveLatents, centred_encoder, latent_matmul,
                                     selected_preactivations)
from sae_harness.run_directory import (CHECKPOINT, CONFIG, TRAINING_LOG, RunDirectory,
                                       TrainingLog, read_json)
from sae_harness.sae_lens_format import SavedSAE, load_sae, save_sae

REPO = Path(__file__).resolve().parent


# =============================================================================================
# Configuration
# =============================================================================================
@dataclass
class Config:
    """Hyperparameters of one run. Step counts are given for the reference run (REFERENCE_STEPS
    steps) and scale with the run's own step count, so ramps and restarts keep their place."""

    variant: str = "tuned_cosine"
    """Name of the configuration in VARIANTS this run started from."""

    # --- shape ---------------------------------------------------------------------------------
    d_sae_base: int = 16384
    """n1, the base-level width (latents)."""
    concept_ratio: int = 4
    """n2 = n1 / concept_ratio concept latents."""
    concept_k: int = 10
    """Active concept latents per token (TopK). 0: no concept level, a vanilla ReLU SAE."""

    # --- loss --------------------------------------------------------------------------------
    # Every term is scale-free, so a lambda means the same at any width and for any model.
    # With s^2 = E||x - mean(x)||^2 / d, the input's per-dimension variance (first batch):
    #   reconstruction  ||x - x_hat||^2 / (d s^2)       (the fraction of variance unexplained)
    #   l1_base         l1_base * |z1|_1 / (sqrt(d) s)  (activations in units of the input's std)
    #   l1_concept      l1_concept * |z2|_1 / (sqrt(d) s)
    #   lw_base         lw_base * mean over base latents of |W_enc1[:, i]|_1 / sqrt(d)
    #   lw2(t)          lw2(t) * mean over concepts of |W_enc2[:, c]|_1 / sqrt(n1)
    # (a dense unit-norm weight vector costs ~0.8 lambda whatever its length; a sparse one less)
    l1_base: float = 0.1
    l1_concept: float = 0.35
    lw_base: float = 0.02
    lw2_min: float = 0.001
    lw2_max: float = 0.12
    lw2_ramp_steps: int = 5000
    """T: lw2 rises from lw2_min to lw2_max along a half cosine over T steps, then stays."""

    # --- initialisation ----------------------------------------------------------------------------
    base_init: str = "xavier_normal"
    """'xavier_normal': W_enc1 ~ N(0, init_scale_base^2 * 2/(d+n1)).
    'dictionary_learning': W_enc1 ~ N(0, (init_scale_base * 0.1)^2 / d), i.e. encoder columns of
    norm ~0.1, as dictionary_learning's AutoEncoder (the template initialises to zeros, which
    cannot train: every gradient vanishes). Both tie W_dec1 to W_enc1's directions."""
    init_scale_base: float = 1.0
    """Gain on the base level's sigma."""
    init_scale_concept: float = 0.001
    """Sigma of W_enc2's entries (W_dec2 starts as random unit directions)."""

    # --- optimiser ---------------------------------------------------------------------------------
    matmul_dtype: str = "auto"
    """dtype of the forward/backward matmuls (autocast); weights, Adam and the loss stay fp32.
    'auto': bf16 on CUDA, and on a CPU only where a probe at run start measures bf16 faster than
    fp32 (sae_harness/precision.py; ~2.4x with native bf16, ~200x slower without). 'float32' or
    'bfloat16' pins it; EXPERIMENT_PRECISION overrides both."""
    lr: float = 1e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_steps: int = 1000
    """Linear warm-up from lr/warmup to lr."""
    lr_schedule: str = "cosine_restarts"
    """After warm-up: 'constant', 'cosine' (one decay to lr_min_ratio*lr over the run) or
    'cosine_restarts' (cosine annealing with warm restarts, SGDR)."""
    lr_restart_period_steps: int = 2000
    """First cosine period after warm-up ('cosine_restarts')."""
    lr_restart_mult: float = 2.0
    """Each period is this many times the previous one."""
    lr_min_ratio: float = 0.1
    """eta_min as a fraction of lr."""

    # --- data --------------------------------------------------------------------------------------
    training_tokens: int = 50_000_000
    """Training budget in content tokens (BOS/EOS/PAD excluded); one pass, no repeats."""
    heldout_tokens: int = 65_536
    """Tokens held out (first documents) for explained variance and the analyses."""
    batch_size: int = 4096
    """Tokens per optimisation step."""
    seed: int = 0

    # --- bookkeeping -------------------------------------------------------------------------------
    log_every: int = 25
    """Steps between training-log lines (the only steps that synchronise with the device)."""
    dead_window_tokens: int = 1_000_000
    """A latent that has not fired for this many training tokens counts as dead."""
    dead_warning_fraction: float = 0.5
    """Warn during training when more than this fraction of a level is dead."""
    checkpoint_every_steps: int = 2000
    checkpoint_every_minutes: float = 10.0
    """A checkpoint is saved when either many steps or minutes have passed since the last one."""

    @property
    def n_concept(self) -> int:
        return self.d_sae_base // self.concept_ratio if self.concept_k else 0

    @property
    def total_steps(self) -> int:
        return self.training_tokens // self.batch_size


REFERENCE_STEPS = 12_000
"""Steps of the reference run (the real setting: ~50M tokens at batch 4096) for which the step
counts in Config are given; a run of S steps multiplies them by S / REFERENCE_STEPS."""

VARIANTS: dict[str, dict] = {
    # a vanilla ReLU SAE with L1, as the AI-Scientist template trains it (no concept level)
    "baseline": dict(concept_k=0, l1_base=0.04, l1_concept=0.0, lw_base=0.0, lw2_min=0.0,
                     lw2_max=0.0, base_init="dictionary_learning", lr_schedule="constant"),
    # the previous cosine variant: cosine-annealed lw2, single cosine LR decay
    "cosine_sparsity": dict(concept_k=12, l1_base=0.1, l1_concept=0.3, lw_base=0.02,
                            lw2_min=0.001, lw2_max=0.1, lw2_ramp_steps=5000,
                            init_scale_concept=0.002, base_init="xavier_normal",
                            lr_schedule="cosine"),
    # this idea: tuned penalties, smaller concept init, warm-restart cosine LR
    "tuned_cosine": dict(concept_k=10, l1_base=0.1, l1_concept=0.35, lw_base=0.02,
                         lw2_min=0.001, lw2_max=0.12, lw2_ramp_steps=5000,
                         init_scale_concept=0.001, base_init="xavier_normal",
                         lr_schedule="cosine_restarts"),
}

SETTING_SIZES: dict[str, dict] = {
    # what differs between the settings besides model and data: sizes and budgets
    "real": dict(d_sae_base=16384, batch_size=4096, training_tokens=50_000_000,
                 heldout_tokens=65_536),
    "embedded": dict(d_sae_base=2048, batch_size=1024, training_tokens=500_000,
                     heldout_tokens=16_384, log_every=10, dead_window_tokens=100_000),
}


def make_config(variant: str, setting: str, training_tokens: int | None = None) -> Config:
    """The named variant at the setting's sizes, optionally with another token budget."""
    if variant not in VARIANTS:
        raise ConfigurationError(
            f"EXPERIMENT_VARIANT={variant!r} is not a variant; use one of {sorted(VARIANTS)}"
        )
    cfg = replace(Config(), variant=variant, **SETTING_SIZES.get(setting, SETTING_SIZES["real"]),
                  **VARIANTS[variant])
    if training_tokens is not None:
        cfg = replace(cfg, training_tokens=training_tokens)
    validate_config(cfg)
    return cfg


def validate_config(cfg: Config, d_model: int | None = None) -> None:
    """Refuse impossible settings before any expensive work, with a one-line reason."""
    problems = []
    for name in ("l1_base", "l1_concept", "lw_base", "lw2_min", "lw2_max", "init_scale_concept",
                 "lr_min_ratio"):
        if getattr(cfg, name) < 0:
            problems.append(f"{name}={getattr(cfg, name)} must not be negative")
    for name in ("d_sae_base", "concept_ratio", "batch_size", "lr_warmup_steps",
                 "lr_restart_period_steps", "lw2_ramp_steps", "log_every", "heldout_tokens"):
        if getattr(cfg, name) <= 0:
            problems.append(f"{name}={getattr(cfg, name)} must be positive")
    if cfg.lr <= 0 or cfg.init_scale_base <= 0:
        problems.append("lr and init_scale_base must be positive")
    if cfg.lw2_max < cfg.lw2_min:
        problems.append(f"lw2_max={cfg.lw2_max} is below lw2_min={cfg.lw2_min}")
    if cfg.concept_k < 0:
        problems.append(f"concept_k={cfg.concept_k} must not be negative")
    if cfg.concept_k and cfg.d_sae_base % cfg.concept_ratio:
        problems.append(f"d_sae_base={cfg.d_sae_base} is not divisible by concept_ratio={cfg.concept_ratio}")
    if cfg.concept_k and cfg.concept_k > cfg.n_concept:
        problems.append(f"concept_k={cfg.concept_k} exceeds the {cfg.n_concept} concept latents")
    if cfg.batch_size > cfg.training_tokens:
        problems.append(f"batch_size={cfg.batch_size} exceeds training_tokens={cfg.training_tokens}")
    if cfg.lr_schedule not in ("constant", "cosine", "cosine_restarts"):
        problems.append(f"lr_schedule={cfg.lr_schedule!r} is not constant, cosine or cosine_restarts")
    if cfg.base_init not in ("xavier_normal", "dictionary_learning"):
        problems.append(f"base_init={cfg.base_init!r} is not xavier_normal or dictionary_learning")
    if cfg.matmul_dtype not in ("auto", "bfloat16", "float32"):
        problems.append(f"matmul_dtype={cfg.matmul_dtype!r} is not auto, bfloat16 or float32")
    if cfg.lr_restart_mult < 1:
        problems.append(f"lr_restart_mult={cfg.lr_restart_mult} must be at least 1")
    if d_model is not None and d_model <= 0:
        problems.append(f"model width {d_model} is not positive")
    if problems:
        raise ConfigurationError("invalid configuration: " + "; ".join(problems) + " (edit Config/VARIANTS in experiment.py)")


# =============================================================================================
# Schedules
# =============================================================================================
def lw2_at(step: int, lw2_min: float, lw2_max: float, ramp_steps: int) -> float:
    """lw2(t) = min + (max - min) * (1 - cos(pi * min(t, T) / T)) / 2."""
    t = min(step, ramp_steps) / ramp_steps
    return lw2_min + (lw2_max - lw2_min) * (1 - math.cos(math.pi * t)) / 2


@dataclass(frozen=True)
class StepSchedule:
    """Learning-rate factor and lw2 per step, with step counts scaled to this run's length."""

    total_steps: int
    warmup: int
    lw2_ramp: int
    restart_period: int
    cfg: Config

    @classmethod
    def for_run(cls, cfg: Config) -> StepSchedule:
        def scaled(steps: int) -> int:
            return max(1, round(steps * cfg.total_steps / REFERENCE_STEPS))

        return cls(cfg.total_steps, scaled(cfg.lr_warmup_steps), scaled(cfg.lw2_ramp_steps),
                   scaled(cfg.lr_restart_period_steps), cfg)

    def lw2(self, step: int) -> float:
        return lw2_at(step, self.cfg.lw2_min, self.cfg.lw2_max, self.lw2_ramp)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then constant, one cosine, or cosine with warm restarts."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        schedule, floor = self.cfg.lr_schedule, self.cfg.lr_min_ratio
        t = step - self.warmup
        if schedule == "constant":
            return 1.0
        if schedule == "cosine":
            period = max(1, self.total_steps - self.warmup)
            t = min(t, period)
        else:
            period = self.restart_period
            while t >= period:
                t -= period
                period = max(1, round(period * self.cfg.lr_restart_mult))
        return floor + (1 - floor) * (1 + math.cos(math.pi * t / period)) / 2

    def restart_steps(self) -> list[int]:
        """Steps at which a warm restart sets the learning rate back to its peak."""
        if self.cfg.lr_schedule != "cosine_restarts":
            return []
        steps, start, period = [], self.warmup, self.restart_period
        while start + period < self.total_steps:
            start += period
            steps.append(start)
            period = max(1, round(period * self.cfg.lr_restart_mult))
        return steps


# =============================================================================================
# The SAE
# =============================================================================================
class SAEOutput(NamedTuple):
    x_hat: torch.Tensor
    """(B, d) reconstruction."""
    z1: torch.Tensor
    """(B, n1) base-level latents."""
    z2_values: torch.Tensor
    """(B, k) values of the selected concept latents (empty when there is no concept level)."""
    z2_indices: torch.Tensor
    """(B, k) indices of the selected concept latents."""
    base_active: ActiveLatents | None = None
    """The nonzero entries of z1 when the sparse products were used (sae_kernels)."""


class HierarchicalSAE(nn.Module):
    """ReLU base level plus a TopK concept level that reads the base latents.

    It is also an SAE-Bench custom SAE: `encode` returns concat[z1, z2] (n1 + n2 latents),
    `W_dec` is concat[W_dec1, W_dec2], and `cfg`, `dtype`, `device` are what SAE-Bench reads.
    `W_enc` for the concept latents is W_enc1 @ W_enc2, the linear part of the path from the
    input to a concept (the ReLU and TopK are left out); SAE-Bench uses it only for diagnostics.
    """

    def __init__(self, d_in: int, n_base: int, n_concept: int, concept_k: int, *,
                 model_name: str, hook_layer: int, context_size: int,
                 base_init: str = "xavier_normal", init_scale_base: float = 1.0,
                 init_scale_concept: float = 0.001, seed: int = 0):
        super().__init__()
        from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig

        self.d_in, self.n_base, self.n_concept, self.concept_k = d_in, n_base, n_concept, concept_k
        g = torch.Generator().manual_seed(seed)
        if base_init == "xavier_normal":
            sigma_base = init_scale_base * math.sqrt(2.0 / (d_in + n_base))
        else:  # dictionary_learning: encoder columns of norm ~0.1
            sigma_base = init_scale_base * 0.1 / math.sqrt(d_in)
        W_enc1 = torch.randn(d_in, n_base, generator=g) * sigma_base
        self.W_enc1 = nn.Parameter(W_enc1)
        self.b_enc1 = nn.Parameter(torch.zeros(n_base))
        self.W_dec1 = nn.Parameter(F.normalize(W_enc1.T.clone(), dim=-1))
        self.W_enc2 = nn.Parameter(torch.randn(n_base, n_concept, generator=g) * init_scale_concept)
        self.b_enc2 = nn.Parameter(torch.zeros(n_concept))
        self.W_dec2 = nn.Parameter(F.normalize(torch.randn(n_concept, d_in, generator=g), dim=-1))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.cfg = CustomSAEConfig(
            model_name=model_name, d_in=d_in, d_sae=n_base + n_concept, hook_layer=hook_layer,
            hook_name=f"blocks.{hook_layer}.hook_resid_post", context_size=context_size,
            architecture="hierarchical_relu_topk", activation_fn_str="relu+topk",
            apply_b_dec_to_input=True, dtype="float32", device="cpu",
        )

    # --- the model ---------------------------------------------------------------------------------
    def forward_levels(self, x: torch.Tensor) -> SAEOutput:
        """Both levels on (B, d) inputs. The products are sae_kernels' exact forms: on a CPU, the
        base decoder and the concept encoder read only z1's nonzero entries when it is sparse,
        and TopK's gradient reaches the concept encoder through the k selected entries only."""
        z1 = F.relu(centred_encoder(x, self.b_dec, self.W_enc1, self.b_enc1))
        active = ActiveLatents.of(z1)
        x_hat = latent_matmul(z1, self.W_dec1, active, self.b_dec)
        if self.n_concept == 0:
            empty = z1.new_zeros(len(x), 0)
            return SAEOutput(x_hat, z1, empty, empty.long(), active)
        with torch.no_grad():
            pre2 = latent_matmul(z1, self.W_enc2, active, self.b_enc2)
            indices = pre2.topk(self.concept_k, dim=-1, sorted=False).indices
        values = F.relu(selected_preactivations(z1, self.W_enc2, self.b_enc2, pre2, indices))
        x_hat = x_hat + F.embedding_bag(indices, self.W_dec2, mode="sum",
                                        per_sample_weights=values.to(self.W_dec2.dtype))
        return SAEOutput(x_hat, z1, values, indices, active)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """concat[z1, z2] for inputs of shape (..., d); SAE-Bench's view of the dictionary."""
        shape = x.shape
        out = self.forward_levels(x.reshape(-1, shape[-1]).to(self.dtype))
        z2 = out.z1.new_zeros(len(out.z1), self.n_concept).scatter_(-1, out.z2_indices, out.z2_values)
        return torch.cat([out.z1, z2], dim=-1).reshape(*shape[:-1], -1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # --- SAE-Bench's view ------------------------------------------------------------------------
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

    # --- constraints -----------------------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        for W in (self.W_dec1, self.W_dec2):
            W.div_(W.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_decoder_grad_parallel_(self) -> None:
        """Keep only the part of each decoder row's gradient that is tangent to the unit sphere."""
        for W in (self.W_dec1, self.W_dec2):
            if W.grad is not None:
                W.grad -= (W.grad * W).sum(-1, keepdim=True) * W

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Make the SAE read raw activations x = scale * x_normalised.

        Multiplying every bias by `scale` multiplies both levels' latents by `scale` (ReLU and
        TopK commute with a positive factor), so W matrices, TopK choices and unit decoder rows
        stay as they are and x_hat scales with x.
        """
        for b in (self.b_enc1, self.b_enc2, self.b_dec):
            b.mul_(scale)

    # --- files -------------------------------------------------------------------------------------
    def to_saved(self, metadata: dict) -> SavedSAE:
        base = dict(W_enc=self.W_enc1, b_enc=self.b_enc1, W_dec=self.W_dec1, b_dec=self.b_dec)
        concept = (dict(W_enc=self.W_enc2, b_enc=self.b_enc2, W_dec=self.W_dec2)
                   if self.n_concept else None)
        return SavedSAE(base=base, concept=concept, concept_k=self.concept_k or None,
                        metadata={**metadata, "model_name": self.cfg.model_name,
                                  "hook_name": self.cfg.hook_name,
                                  "hook_layer": self.cfg.hook_layer,
                                  "context_size": self.cfg.context_size})

    @classmethod
    def from_saved(cls, saved: SavedSAE) -> HierarchicalSAE:
        d_in, n_base = saved.base["W_enc"].shape
        n_concept = saved.concept["W_enc"].shape[1] if saved.concept else 0
        meta = saved.metadata
        sae = cls(d_in, n_base, n_concept, saved.concept_k or 0, model_name=meta["model_name"],
                  hook_layer=meta["hook_layer"], context_size=meta.get("context_size"))
        state = {"W_enc1": saved.base["W_enc"], "b_enc1": saved.base["b_enc"],
                 "W_dec1": saved.base["W_dec"], "b_dec": saved.base["b_dec"]}
        if saved.concept:
            state.update(W_enc2=saved.concept["W_enc"], b_enc2=saved.concept["b_enc"],
                         W_dec2=saved.concept["W_dec"])
        sae.load_state_dict(state, strict=False)
        return sae


# =============================================================================================
# The trainer
# =============================================================================================
class LossTerms(NamedTuple):
    total: torch.Tensor
    reconstruction: torch.Tensor
    l1_base: torch.Tensor
    l1_concept: torch.Tensor
    weight_l1_base: torch.Tensor
    weight_l1_concept: torch.Tensor
    l0_base: torch.Tensor
    l0_concept: torch.Tensor


class HierarchicalTrainer:
    """One Adam step per `update(step, x)` on inputs already scaled to E||x||^2 = d."""

    def __init__(self, sae: HierarchicalSAE, cfg: Config, schedule: StepSchedule, input_std: float,
                 matmul_dtype: str | None = None):
        self.sae, self.cfg, self.schedule = sae, cfg, schedule
        self.input_std = input_std
        self.matmul_dtype = resolve_matmul_dtype(matmul_dtype or cfg.matmul_dtype, sae.W_enc1.device,
                                                 cfg.batch_size, sae.d_in, sae.n_base)
        """cfg.matmul_dtype resolved: a run passes its choice (precision.py); 'auto' measures."""
        """s: the per-dimension standard deviation of the (scaled) input; sets the loss units."""
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
                                          foreach=True)
        # tokens since each latent last fired, for dead-latent counts (kept on the device)
        self.tokens_since_fired_base = torch.zeros(sae.n_base, device=sae.W_enc1.device)
        self.tokens_since_fired_concept = torch.zeros(sae.n_concept, device=sae.W_enc1.device)

    def loss_terms(self, x: torch.Tensor, step: int) -> tuple[LossTerms, SAEOutput, torch.Tensor]:
        """The loss terms on inputs x (matmuls in self.matmul_dtype), the SAE's output, and which
        base latents fired on the batch (n1,)."""
        sae, cfg = self.sae, self.cfg
        d, s = x.shape[1], self.input_std
        with torch.autocast(x.device.type, dtype=torch_dtype(self.matmul_dtype),
                            enabled=self.matmul_dtype != "float32"):
            out = sae.forward_levels(x)
        reconstruction = (x - out.x_hat.float()).pow(2).sum(-1).mean() / (d * s * s)
        # z >= 0, so the sum is the L1 norm
        l1_base = out.z1.sum(-1, dtype=torch.float32).mean() / (math.sqrt(d) * s)
        l1_concept = out.z2_values.sum(-1, dtype=torch.float32).mean() / (math.sqrt(d) * s)
        weight_l1_base = sae.W_enc1.abs().sum(0).mean() / math.sqrt(d)
        weight_l1_concept = (sae.W_enc2.abs().sum(0).mean() / math.sqrt(sae.n_base)
                             if sae.n_concept else x.new_zeros(()))
        total = (reconstruction + cfg.l1_base * l1_base + cfg.l1_concept * l1_concept
                 + cfg.lw_base * weight_l1_base + self.schedule.lw2(step) * weight_l1_concept)
        with torch.no_grad():
            # which base latents fired in the batch, and L0, without a (B, n1) temporary
            active = out.z1.amax(0) > 0
            l0_base = (x.new_tensor(len(out.base_active.rows) / len(x)) if out.base_active
                       else torch.count_nonzero(out.z1, dim=-1).float().mean())
            l0_concept = (out.z2_values > 0).sum(-1, dtype=torch.float32).mean()
        terms = LossTerms(total, reconstruction, l1_base, l1_concept, weight_l1_base,
                          weight_l1_concept, l0_base, l0_concept)
        return terms, out, active

    def update(self, step: int, x: torch.Tensor) -> LossTerms:
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * self.schedule.lr_factor(step)
        terms, out, active = self.loss_terms(x, step)
        terms.total.backward()
        self.sae.remove_decoder_grad_parallel_()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sae.normalize_decoder_()
        with torch.no_grad():
            self.tokens_since_fired_base.add_(len(x)).masked_fill_(active, 0)
            if self.sae.n_concept:
                fired2 = torch.zeros(self.sae.n_concept, dtype=torch.bool, device=x.device)
                fired2[out.z2_indices[out.z2_values > 0]] = True
                self.tokens_since_fired_concept.add_(len(x)).masked_fill_(fired2, 0)
        return terms

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "tokens_since_fired_base": self.tokens_since_fired_base,
                "tokens_since_fired_concept": self.tokens_since_fired_concept}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.tokens_since_fired_base.copy_(state["tokens_since_fired_base"])
        self.tokens_since_fired_concept.copy_(state["tokens_since_fired_concept"])

    def dead_fractions(self) -> tuple[float, float]:
        window = self.cfg.dead_window_tokens
        base = (self.tokens_since_fired_base >= window).float().mean().item()
        concept = ((self.tokens_since_fired_concept >= window).float().mean().item()
                   if self.sae.n_concept else 0.0)
        return base, concept


# =============================================================================================
# Training and held-out statistics
# =============================================================================================
def input_scale(sample: torch.Tensor) -> float:
    """c such that E||x / c||^2 = d on the sample."""
    return math.sqrt(sample.pow(2).sum(-1).mean().item() / sample.shape[1])


def input_std(sample: torch.Tensor) -> float:
    """s such that E||x - mean(x)||^2 = d s^2 on the sample."""
    return math.sqrt((sample - sample.mean(0)).pow(2).sum(-1).mean().item() / sample.shape[1])


def train_sae(cfg: Config, preset: Preset, data: ActivationData, run: RunDirectory,
              matmul_dtype: str | None = None) -> tuple[HierarchicalSAE, dict]:
    """Train on the activations, resuming from the run's checkpoint if there is one.

    Returns the SAE (with the input scale folded in: it reads raw activations) and summary
    figures. A checkpoint is saved every `checkpoint_every_steps` steps or
    `checkpoint_every_minutes`, and on SIGINT/SIGTERM before stopping.
    """
    torch.manual_seed(cfg.seed)
    device = preset.device
    sae = HierarchicalSAE(
        data.d_model, cfg.d_sae_base, cfg.n_concept, cfg.concept_k,
        model_name=preset.model_name, hook_layer=preset.hook_layer,
        context_size=preset.context_length, base_init=cfg.base_init,
        init_scale_base=cfg.init_scale_base, init_scale_concept=cfg.init_scale_concept,
        seed=cfg.seed,
    ).to(device)
    schedule = StepSchedule.for_run(cfg)
    checkpoint = Checkpoint(run.file(CHECKPOINT))
    state = checkpoint.load()
    if state is not None and state["config"] != asdict(cfg):
        raise ConfigurationError(
            f"{run.path} holds an unfinished run with another configuration; use a new --out_dir "
            "or set EXPERIMENT_OVERWRITE=1 to start it over"
        )
    if state is None:
        # scale and b_dec from the first batch (it is trained on too)
        first = data.train.first_batch()
        scale, start_step, seconds_before = input_scale(first), 0, 0.0
        with torch.no_grad():
            sae.b_dec.copy_(first.mean(0).to(device) / scale)
        trainer = HierarchicalTrainer(sae, cfg, schedule, input_std(first / scale), matmul_dtype)
    else:
        scale, start_step, seconds_before = state["input_scale"], state["step"], state["seconds"]
        sae.load_state_dict(state["sae"])
        trainer = HierarchicalTrainer(sae, cfg, schedule, state["input_std"], matmul_dtype)
        trainer.load_state_dict(state["trainer"])
        torch.set_rng_state(state["torch_rng"])
        print(f"[train] resuming from the checkpoint at step {start_step} of {schedule.total_steps}")
    log = TrainingLog(run.file(TRAINING_LOG), truncate_after_step=start_step if state else None)

    def save_checkpoint(next_step: int) -> None:
        if not all(torch.isfinite(p).all() for p in sae.parameters()):
            raise HarnessError(f"training diverged before step {next_step}: non-finite SAE weights; "
                               "the last good checkpoint is kept; lower lr in experiment.py")
        checkpoint.save({"step": next_step, "config": asdict(cfg), "sae": sae.state_dict(),
                         "trainer": trainer.state_dict(), "input_scale": scale,
                         "input_std": trainer.input_std, "torch_rng": torch.get_rng_state(),
                         "seconds": seconds_before + time.time() - started})

    print(f"[train] {schedule.total_steps} steps x {cfg.batch_size} tokens; n1={sae.n_base} "
          f"n2={sae.n_concept} k={sae.concept_k}; input scale {scale:.4g}, std {trainer.input_std:.3g}; "
          f"warm-up {schedule.warmup}, lw2 ramp {schedule.lw2_ramp}, restarts at {schedule.restart_steps()}")
    started = last_saved = time.time()
    steps_since_save = 0
    progress = tqdm(total=schedule.total_steps * cfg.batch_size, initial=start_step * cfg.batch_size,
                    unit="tok", unit_scale=True, desc="train", dynamic_ncols=True)
    values, warned = {}, set()
    with GracefulStop() as stop:
        batches = data.train.iterate(start_step, schedule.total_steps)
        for step, x in zip(range(start_step, schedule.total_steps), batches):
            terms = trainer.update(step, x.to(device, non_blocking=True) / scale)
            progress.update(cfg.batch_size)
            steps_since_save += 1
            last = step == schedule.total_steps - 1
            if step % cfg.log_every == 0 or last or stop.requested:
                values = {name: value.item() for name, value in terms._asdict().items()}
                if not all(math.isfinite(v) for v in values.values()):
                    raise HarnessError(
                        f"training diverged at step {step}: non-finite loss terms "
                        f"{ {k: round(v, 6) for k, v in values.items()} }; the last good checkpoint "
                        "is kept; lower lr or the penalties in experiment.py")
                dead_base, dead_concept = trainer.dead_fractions()
                log.write({"step": step, "tokens": (step + 1) * cfg.batch_size,
                           "lr": trainer.optimizer.param_groups[0]["lr"], "lw2": schedule.lw2(step),
                           **values, "dead_fraction_base": dead_base,
                           "dead_fraction_concept": dead_concept,
                           "seconds": seconds_before + time.time() - started})
                progress.set_postfix(loss=f"{values['total']:.4f}", rec=f"{values['reconstruction']:.4f}",
                                     l0=f"{values['l0_base']:.0f}/{values['l0_concept']:.1f}")
                for level, fraction in (("base", dead_base), ("concept", dead_concept)):
                    if fraction > cfg.dead_warning_fraction and level not in warned:
                        tqdm.write(f"[train] warning: {fraction:.0%} of the {level} latents have not "
                                   f"fired in the last {cfg.dead_window_tokens} tokens (step {step})")
                        warned.add(level)
                due = (steps_since_save >= cfg.checkpoint_every_steps
                       or time.time() - last_saved >= 60 * cfg.checkpoint_every_minutes)
                if stop.requested or (due and not last):
                    save_checkpoint(step + 1)
                    last_saved, steps_since_save = time.time(), 0
                if stop.requested:
                    progress.close()
                    name = signal.Signals(stop.signal_number).name
                    raise TrainingInterrupted(
                        f"{name} received: stopped after step {step} of {schedule.total_steps} with a "
                        f"checkpoint in {checkpoint.path}; run the same command to resume",
                        stop.signal_number)
    progress.close()
    seconds = seconds_before + time.time() - started

    sae.fold_input_scale_(scale)
    summary = {
        "final_loss": values["total"],
        "final_reconstruction_loss": values["reconstruction"],
        "steps": float(schedule.total_steps),
        "tokens": float(schedule.total_steps * cfg.batch_size),
        "seconds": seconds,
        "tokens_per_second": (schedule.total_steps - start_step) * cfg.batch_size
                             / max(time.time() - started, 1e-9),
        "input_scale": scale,
        "input_std": trainer.input_std,
        "resumed_at_step": float(start_step),
    }
    return sae, summary


@torch.no_grad()
def heldout_statistics(sae: HierarchicalSAE, x: torch.Tensor, batch_size: int = 4096) -> dict:
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


def training_warnings(stats: dict, cfg: Config, dead_limit: float = 0.9) -> list[str]:
    """Signs of a level that did not learn (not degeneracy by DESIGN 7, but worth knowing)."""
    warnings = []
    for level, latents in (("base", cfg.d_sae_base), ("concept", cfg.n_concept)):
        dead = stats[f"dead_fraction_{level}"]
        if latents and dead > dead_limit:
            warnings.append(f"{level} level dead: {dead:.1%} of its {latents} latents never fire on "
                            f"the {stats['heldout_tokens']:.0f} held-out tokens")
    return warnings


# =============================================================================================
# Main
# =============================================================================================
def run_experiment(out_dir: Path, env: RunEnvironment, overrides: dict | None = None) -> RunDirectory:
    """The whole experiment into `out_dir`; `overrides` replaces Config fields (tests use it).

    An unfinished run in `out_dir` with the same configuration is resumed: training from its
    checkpoint, or, when training had finished, straight to the evaluations.
    """
    preset = env.preset
    cfg = make_config(env.variant, preset.name, env.training_tokens)
    if overrides:
        cfg = replace(cfg, **overrides)
        validate_config(cfg)
    preflight(preset, env.cache_dir)
    check_token_budget(preset, cfg.training_tokens, cfg.heldout_tokens, env.cache_dir,
                       lambda: load_tokenizer(preset, env.cache_dir), tokenizer_id(preset))
    run = RunDirectory(out_dir)
    run.prepare(overwrite=env.overwrite)
    with run.lock():
        return _run_locked(run, cfg, env)


def _run_locked(run: RunDirectory, cfg: Config, env: RunEnvironment) -> RunDirectory:
    preset = env.preset
    if env.overwrite:
        run.reset_results()
    elif run.previous_config() not in (None, json_round_trip(asdict(cfg))):
        raise ConfigurationError(
            f"{run.path} holds an unfinished run with another configuration; use a new --out_dir "
            "or set EXPERIMENT_OVERWRITE=1 to start it over"
        )
    resuming = run.status().get("state") in ("running", "failed", "interrupted")
    earlier_precision = (read_json(run.file(CONFIG)).get("precision")
                         if resuming and run.file(CONFIG).is_file() else None)
    origin = provenance(REPO, preset.device)
    print(f"[run] {run.path}: variant {cfg.variant}, preset {preset.name} ({env.preset_reason})"
          + (" - resuming an unfinished run" if resuming else ""))
    print(f"[run] code {origin['git']['commit']}{' (modified)' if origin['git']['dirty'] else ''}; "
          + ", ".join(f"{k} {v}" for k, v in origin["packages"].items()))

    def write_config(precision=None):
        run.write_json(CONFIG, {"variant": cfg.variant, "config": asdict(cfg),
                                "preset": asdict(preset), "preset_reason": env.preset_reason,
                                "cache_dir": str(env.cache_dir), "provenance": origin,
                                **({"precision": precision.record()} if precision else {})})

    write_config()
    run.set_status("running", started=origin["started"])
    started = time.time()

    location = locate_model(preset, env.cache_dir)
    precision = precision_for_run(preset, location, env.precision, cfg.matmul_dtype, cfg.batch_size,
                                  cfg.d_sae_base, earlier_precision, env.cache_dir)
    preset = replace(preset, model_dtype=precision.model_dtype)
    write_config(precision)
    print(f"[run] model {preset.model_name} {preset.hook_name} on {origin['device']}; "
          f"text {preset.text_dataset}; {cfg.training_tokens} tokens")
    print(f"[run] precision: model {precision.model_dtype}, SAE matmuls {precision.sae_matmul_dtype} "
          f"({precision.reason})")
    if precision.warning:
        print(f"[run] WARNING: {precision.warning}")
    lm = load_language_model(preset, env.cache_dir, location)
    print(f"[model] loaded {preset.model_name} from {lm.source} in {lm.load_seconds:.0f} s")
    phases = {"model_conversion": location.seconds, "model_load": lm.load_seconds}
    phase_started = time.time()
    data = prepare_activations(lm, preset, cfg.training_tokens, cfg.heldout_tokens, env.cache_dir,
                               cfg.batch_size, cfg.seed)
    phases["activations"] = time.time() - phase_started
    validate_config(cfg, d_model=data.d_model)

    phase_started = time.time()
    if "training" in run.final_info() and (run.sae_dir / "hierarchical_sae.json").is_file():
        print("[train] training had finished in an earlier attempt; reusing its SAE")
        sae = HierarchicalSAE.from_saved(load_sae(run.sae_dir)).to(preset.device)
        stats = run.final_info()["training"]["means"]
    else:
        sae, summary = train_sae(cfg, preset, data, run, precision.sae_matmul_dtype)
        save_sae(run.sae_dir, sae.to_saved({"variant": cfg.variant, "dataset_path": preset.text_dataset,
                                            "training_tokens": cfg.training_tokens}))
        stats = {**summary, **heldout_statistics(sae, data.heldout),
                 "activation_seconds": data.collect_seconds,
                 "activation_cache_hit": float(data.cache_hit)}
        run.set_group("training", stats)
        Checkpoint(run.file(CHECKPOINT)).remove()
    phases["training"] = time.time() - phase_started
    print(f"[train] EV {stats['explained_variance']:.3f}, L0 base {stats['l0_base']:.1f} / "
          f"concept {stats['l0_concept']:.1f}, dead {stats['dead_fraction_base']:.1%} / "
          f"{stats['dead_fraction_concept']:.1%}, {stats['seconds']:.0f} s")

    warnings = training_warnings(stats, cfg)
    for warning in warnings:
        print(f"[train] WARNING: {warning}")

    outcome = evaluate_sae(run, sae, lm, preset, data.heldout, env.cache_dir)
    phases.update(outcome.done)

    # DESIGN 7: flag a degenerate SAE in final_info.json, on stdout and in notes.txt
    reasons = degeneracy_reasons(run.final_info(), read_json(run.file(CONFIG)))
    training = run.final_info()["training"]
    run.set_group("training", {**training["means"], "degenerate": float(bool(reasons))},
                  degenerate_reasons=reasons)
    if reasons:
        print(f"[run] WARNING: degenerate SAE: {'; '.join(reasons)}")
    phases["total"] = time.time() - started
    run.set_status("finished", seconds=time.time() - started, peak_rss_gb=peak_memory_gb(),
                   degenerate_reasons=reasons, warnings=warnings, phase_seconds=phases)
    update_notes(run.path.resolve().parent / "notes.txt", run.path)
    print(f"[run] finished {run.path} in {time.time() - started:.0f} s")
    if outcome.failed or reasons:  # the loop reads the tail of stderr: say it last, on one line
        problems = [f"eval {name} failed: {why}" for name, why in outcome.failed.items()]
        problems += [f"degenerate SAE: {'; '.join(reasons)}"] if reasons else []
        print(f"warning: {run.path} finished with problems: {' | '.join(problems)}", file=sys.stderr)
    return run


def peak_memory_gb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def json_round_trip(obj):
    """`obj` as it reads back from JSON (tuples become lists), for comparing configurations."""
    return json.loads(json.dumps(obj))


def parse_args(argv: list[str] | None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="run directory to write (e.g. run_1)")
    args = parser.parse_args(argv)
    if not args.out_dir.strip():
        parser.error("--out_dir is empty; pass a directory such as --out_dir=run_1")
    return Path(args.out_dir)


def main(argv: list[str] | None = None, environment: RunEnvironment | None = None,
         overrides: dict | None = None) -> int:
    """The command line: run, and turn every failure into an exit code and one last stderr line.
    `environment` and `overrides` replace the environment variables' settings (tests use them)."""
    out_dir = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # SIGTERM outside training
    try:
        env = environment or read_run_environment()
        run_experiment(out_dir, env, overrides)
        return 0
    except TrainingInterrupted as stop:
        _mark(out_dir, "interrupted", str(stop))
        print(f"error: {stop}", file=sys.stderr)
        return 128 + stop.signal_number
    except KeyboardInterrupt:
        _mark(out_dir, "interrupted", "interrupted outside training")
        print("error: interrupted (SIGINT/SIGTERM) outside training; results already written are "
              "kept; run the same command to resume", file=sys.stderr)
        return 130
    except HarnessError as error:
        _mark(out_dir, "failed", str(error))
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # unforeseen: full traceback, then the one-line summary last
        traceback.print_exc()
        _mark(out_dir, "failed", f"{type(error).__name__}: {error}")
        print(f"error: experiment failed: {type(error).__name__}: {str(error)[:300]}", file=sys.stderr)
        return 1


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _mark(out_dir: Path, state: str, reason: str) -> None:
    """Record why a run stopped, if this process was running it."""
    run = RunDirectory(out_dir)
    if run.path.is_dir() and run.status().get("state") == "running":
        run.set_status(state, error=reason)


if __name__ == "__main__":
    sys.exit(main())
