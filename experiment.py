"""A two-level hierarchical sparse autoencoder on a language model's residual stream.

    python experiment.py --out_dir=run_i

trains the SAE of one variant on residual-stream activations, scores it (SAE-Bench sparse
probing, absorption and core metrics, plus weight and hierarchy analyses) and writes run_i/.
The command line takes --out_dir only; environment variables steer a run (README):
EXPERIMENT_PRESET, EXPERIMENT_VARIANT, EXPERIMENT_TOKENS, EXPERIMENT_CACHE, EXPERIMENT_OVERWRITE,
EXPERIMENT_PRECISION, EXPERIMENT_CPU_HEAP.

This file is the experiment, top to bottom: what the harness reads from it (HARNESS_READS), its
configuration (Config: the defaults ARE the default run in the real setting; a variant is a
change from them; the embedded setting divides a few sizes by stated factors), the schedules,
the SAE, its trainer, the training loop, main. Every value a run uses is the one written here,
or is printed at start with why it differs. The machinery it stands on (model, activations, run
directory, checkpoints, evaluations) lives in sae_harness/.

The SAE, for an input x in R^d scaled by one scalar so that E||x||^2 = d:
    base level (n_base latents)       z1 = ReLU((x - b_dec) W_enc1 + b_enc1)
    concept level (n_base/4 latents)  z2 = TopK_k(ReLU(z1 W_enc2 + b_enc2))     reads base latents
    reconstruction                    x_hat = z1 W_dec1 + z2 W_dec2 + b_dec     decoder rows unit norm
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sae_harness.hardware import distributed
from sae_harness.data.activations import ActivationData
from sae_harness.run.command_line import run_command
from sae_harness.training.concept_diagnostics import concept_diagnostics
from sae_harness.training.config_checks import check_config
from sae_harness.training.contract import check_contract
from sae_harness.errors import ConfigurationError
from sae_harness.run.experiment_run import ExperimentRun
from sae_harness.training.firing_clock import FiringClock
from sae_harness.data.presets import RunEnvironment
from sae_harness.records.run_directory import RunDirectory
from sae_harness.evals.sae_bench_view import TwoLevelSAE
from sae_harness.training.sae_checks import check_sae, rehearse_training
from sae_harness.training.sae_kernels import (ActiveLatents, centred_encoder, kernel_mode, latent_matmul,
                                              selected_preactivations)
from sae_harness.training.training_session import TrainerState, TrainingSession


# === What the harness reads from this file ===================================================
# sae_harness reads these names and no others of Config, SAEOutput, LossTerms and the SAE (plus
# the functions main and run_experiment below). They are checked when a run starts, before any
# model work: an edit that renames or removes one stops the run with one line naming it.
HARNESS_READS = {
    "Config": {
        "variant": "config.json, notes and plots",
        "training_tokens": "the activations to collect and the token-budget check",
        "heldout_tokens": "the held-out activations (explained variance, analyses)",
        "batch_size": "the activation batches and the training session's token counts",
        "seed": "the order of the activation batches",
        "concept_k": "notes, plots and degeneracy checks (0: no concept level)",
        "n_base": "the precision probe's shapes and the degeneracy checks",
        "matmul_dtype": "the precision choice",
        "log_every": "the training session's log steps",
        "checkpoint_every_steps": "the training session's checkpoints",
        "checkpoint_every_minutes": "the training session's checkpoints",
        "dead_window_tokens": "the training session's dead-latent warning",
        "dead_warning_fraction": "the training session's dead-latent warning",
    },
    "SAEOutput": {
        "x_hat": "explained variance on held-out tokens",
        "z1": "SAE-Bench's encode, held-out L0, the hierarchy analysis",
        "z2_values": "SAE-Bench's encode, held-out L0, the hierarchy analysis",
        "z2_indices": "SAE-Bench's encode, held-out L0, the hierarchy analysis",
        "z2_pre": "the concept diagnostics in the training log",
    },
    "LossTerms": {
        "total": "the training log and progress bar, divergence checks",
        "reconstruction": "the training log and progress bar",
        "l0_base": "the training log and progress bar",
    },
    "SAE": {name: "SAE-Bench's view of the SAE and the weight analysis" for name in (
        "W_enc1", "b_enc1", "W_dec1", "W_enc2", "b_enc2", "W_dec2", "b_dec", "forward_levels")},
}


# === Configuration =========================================================================
DEFAULT_VARIANT = "tuned_cosine"  # what a run trains unless EXPERIMENT_VARIANT names another


@dataclass
class Config:
    """Hyperparameters of one run; the defaults are the default variant (DEFAULT_VARIANT) in the
    real setting. Schedule lengths are fractions of the run's steps (named *_fraction), so T, the
    warm-up and the restart period mean the same in both settings and at any token budget; the
    other step counts are steps."""

    variant: str = DEFAULT_VARIANT  # the VARIANTS entry this came from; recorded, not acted on

    # --- shape ---------------------------------------------------------------------------------
    n_base: int = 16384  # the base-level width (latents; the idea's n1, SAE-Lens' d_sae)
    concept_ratio: int = 4  # n_concept = n_base / concept_ratio concept latents (the idea's n2)
    concept_k: int = 10  # active concept latents per token (TopK); 0: none, a vanilla ReLU SAE
    base_k: int = 0
    """[objective, off] > 0: a TopK base level, the base_k largest ReLU latents a token (as
    SAE-Lens' and OpenAI's TopK SAEs; k sets the sparsity, so l1_base and weight_l1_base go to 0)."""

    # --- loss --------------------------------------------------------------------------------
    # Every term is scale-free, so a lambda means the same at any width and for any model.
    # With s^2 = E||x - mean(x)||^2 / d, the input's per-dimension variance (first batch):
    #   reconstruction  ||x - x_hat||^2 / (d s^2)       (the fraction of variance unexplained)
    #   l1_base         l1_base * |z1|_1 / (sqrt(d) s)  (activations in units of the input's std)
    #   l1_concept      l1_concept * |z2|_1 / (sqrt(d) s)
    #   weight_l1_base     weight_l1_base * mean over base latents of |W_enc1[:, i]|_1 / sqrt(d)
    #                      (the idea's lw1)
    #   weight_l1_concept  coef(t) * mean over concepts of |W_enc2[:, c]|_1 / sqrt(n_base), the
    #                      coefficient coef(t) rising from weight_l1_concept_min to _max (the idea's lw2(t))
    # (a dense unit-norm weight vector costs ~0.8 lambda whatever its length; a sparse one less)
    l1_base: float = 0.1
    l1_concept: float = 0.35
    weight_l1_base: float = 0.02
    weight_l1_concept_min: float = 0.001
    weight_l1_concept_max: float = 0.12
    weight_l1_concept_ramp_fraction: float = 5 / 12
    """T as a fraction of the run: coef(t) rises from weight_l1_concept_min to weight_l1_concept_max
    along a half cosine over T steps, then stays (the idea's T = 5000 of a 12,000-step run)."""

    # --- initialisation ----------------------------------------------------------------------------
    base_init: Literal["xavier_normal", "dictionary_learning"] = "xavier_normal"
    """'xavier_normal': W_enc1 ~ N(0, init_scale_base^2 2/(d+n_base)); 'dictionary_learning': encoder
    columns of norm ~0.1 (the template's zero init cannot train). W_dec1 tied to W_enc1."""
    init_scale_base: float = 1.0  # gain on the base level's sigma
    init_scale_concept: float = 0.001  # sigma of W_enc2's entries (W_dec2: random unit rows)

    # --- optimiser ---------------------------------------------------------------------------------
    matmul_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Matmul dtype (autocast; weights, optimiser and loss stay fp32). 'auto': bf16 on CUDA, and
    on a CPU where a run-start probe measures it faster (precision.py); EXPERIMENT_PRECISION wins."""
    optimizer: Literal["adamw", "adam"] = "adamw"
    """'adamw' as the idea; 'adam' + the decoder constraint = the template's ConstrainedAdam."""
    weight_decay: float = 0.01  # AdamW's decoupled weight decay (torch's default)
    lr: float = 1e-3
    """[optimisation] The idea's and template's 3e-4 (*_as_written, baseline) gives EV 0.825 at
    base L0 77 in the embedded run, 1e-3 EV 0.870 at L0 49 (results/concept_ablation.md)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_fraction: float = 1 / 12
    """Linear warm-up from lr/warmup to lr over this fraction of the run's steps (the idea's 1000
    of 12,000; SAE-Lens warms up 5% of steps, dictionary_learning and H-SAE 1000-2000 steps)."""
    min_lr_warmup_steps: int = 1  # [aid: optimisation, off] the warm-up lasts at least this many steps
    lr_schedule: Literal["constant", "cosine", "cosine_restarts"] = "cosine_restarts"
    """After warm-up: 'constant', 'cosine' (one decay to lr_min_ratio*lr over the run) or
    'cosine_restarts' (cosine annealing with warm restarts, SGDR)."""
    lr_restart_period_fraction: float = 1 / 6
    """First cosine period after warm-up ('cosine_restarts'), as a fraction of the run's steps
    (the idea's 2000 of 12,000)."""
    lr_restart_mult: float = 2.0  # each period is this many times the previous one
    lr_min_ratio: float = 0.1  # eta_min as a fraction of lr

    # --- data --------------------------------------------------------------------------------------
    training_tokens: int = 50_000_000
    """Training budget in content tokens (BOS/EOS/PAD excluded); one pass, no repeats."""
    heldout_tokens: int = 65_536  # held out (first documents) for explained variance, analyses
    batch_size: int = 2048  # tokens per optimisation step (the idea's and the template's 2048)
    seed: int = 0

    # --- aids for the concept level ----------------------------------------------------------------
    # As written the concept level dies in the first steps (README, "The hierarchy lives"). Each
    # aid is off in the *_as_written variants; [objective] changes what is optimised,
    # [optimisation] only how. The defaults are the smallest set that keeps the level alive and
    # spread (scripts/concept_ablation.py); the others are here, off, to try.
    l1_on_topk: bool = False
    """[objective] l1_concept on the TopK activations, as the idea; no trusted TopK trainer has it
    (OpenAI, dictionary_learning, sparsify, SAE-Lens: k sets the sparsity). It kills the level."""
    concept_penalty_warmup_fraction: float = 0.0
    """[optimisation, off] l1_concept and weight_l1_concept's coef(t) rise from 0 over this fraction of the run's
    steps, as SAE-Lens' l1_warm_up_steps and dictionary_learning's sparsity warm-up (1000)."""
    concept_recon_coef: float = 0.0
    """[objective, off] + coef * ||x - (z2 W_dec2 + b_dec)||^2 / (d s^2): the concept level's own
    reconstruction target, as H-SAE's 0.1 x parent-only reconstruction loss."""
    auxk_alpha: float = 1 / 32
    """[objective, dead latents only] AuxK (Gao et al. 2024; dictionary_learning: 1/32): the
    auxk_k dead concepts with the largest pre-activations reconstruct the error x - x_hat."""
    auxk_k: int = 64
    auxk_dead_tokens: int = 200_000  # dead for AuxK after this many silent tokens
    concept_init: Literal["random", "base_subsets"] = "random"
    """[optimisation] 'random' as the idea; 'base_subsets': concept c starts reading
    concept_init_base random base latents, its decoder the normalised sum of theirs."""
    concept_init_base: int = 4
    concept_balance_rate: float = 0.03
    """[TopK's selection] Load balancing without an auxiliary loss (DeepSeek-V3's routing bias):
    TopK chooses among positive pre-activations by pre + beta (values unchanged); beta_c moves by
    rate x std(pre) per step towards a firing rate of k/n_concept. 0: off (TopK as written)."""
    concept_selection: Literal["topk", "batchtopk"] = "topk"
    """[objective] 'topk': k concepts every token, as the idea. 'batchtopk' (Bussmann et al.
    2024, dictionary_learning's BatchTopKSAE): the k x B largest concept pre-activations of the
    batch, so a token's number varies; after training a threshold (the running mean of the
    batch's smallest chosen value, decay concept_threshold_decay) replaces the batch."""
    concept_threshold_decay: float = 0.1
    """Per step, ~10 steps of memory: the threshold follows the batch's smallest chosen value,
    which falls over training (dictionary_learning's 0.001 suits 100k+ steps; in a 976-step run
    it keeps an early value, and eval-mode L0 is then 3-4x k)."""
    parent_gated: bool = False
    """[objective, off] A base latent fires only on tokens where its parent fires, its parent
    being the concept that reads it most (argmax_c |W_enc2[b, c]|, recomputed every forward):
    H-SAE's gating of children by their parent (Muchane et al. 2025), with the tree read off
    W_enc2 since here the concepts read the base latents."""
    parent_child_ortho_coef: float = 0.0
    """[objective, off] + coef x the mean squared cosine between the decoder row of each active
    concept and those of the base latents firing on the same token: OrtSAE's orthogonality
    penalty (Korznikov et al. 2025, arXiv 2509.22033) on co-firing parent-child pairs, so the
    base latents that fire with a concept cannot carry its direction (absorb it)."""

    # --- bookkeeping -------------------------------------------------------------------------------
    log_every: int = 25  # steps between log lines (the only steps that sync with the device)
    dead_window_tokens: int = 1_000_000  # a latent silent this many tokens counts as dead
    dead_warning_fraction: float = 0.5  # warn when more than this fraction of a level is dead
    checkpoint_every_steps: int = 2000  # a checkpoint when either many steps
    checkpoint_every_minutes: float = 10.0  # or minutes have passed since the last one

    @property
    def n_concept(self) -> int:
        return self.n_base // self.concept_ratio if self.concept_k else 0

    @property
    def total_steps(self) -> int:
        return self.training_tokens // self.batch_size

    def __post_init__(self):
        check_config(self, NON_NEGATIVE, POSITIVE, self.problems())  # each named (config_checks.py)

    def problems(self) -> list[str]:
        """Settings that cannot work together (check_config adds the signs and Literal choices)."""
        found = []
        if self.weight_l1_concept_max < self.weight_l1_concept_min:
            found.append(f"weight_l1_concept_max={self.weight_l1_concept_max} is below weight_l1_concept_min={self.weight_l1_concept_min}")
        if self.concept_k > 0 and self.concept_ratio > 0:
            if self.n_base % self.concept_ratio:
                found.append(f"n_base={self.n_base} is not divisible by concept_ratio={self.concept_ratio}")
            elif self.concept_k > self.n_concept:
                found.append(f"concept_k={self.concept_k} exceeds the {self.n_concept} concept latents")
        if self.batch_size > self.training_tokens:
            found.append(f"batch_size={self.batch_size} exceeds training_tokens={self.training_tokens}")
        if self.base_k > self.n_base:
            found.append(f"base_k={self.base_k} exceeds n_base={self.n_base}")
        if self.lr_restart_mult < 1:
            found.append(f"lr_restart_mult={self.lr_restart_mult} must be at least 1")
        if not 0 < self.lr_warmup_fraction <= 1:
            found.append(f"lr_warmup_fraction={self.lr_warmup_fraction} is not in (0, 1]")
        return found


NON_NEGATIVE = ("l1_base", "l1_concept", "weight_l1_base", "weight_l1_concept_min", "weight_l1_concept_max", "init_scale_concept",
                "lr_min_ratio", "weight_decay", "concept_recon_coef", "auxk_alpha", "concept_k", "base_k",
                "concept_penalty_warmup_fraction", "auxk_k", "min_lr_warmup_steps",
                "concept_balance_rate", "parent_child_ortho_coef", "concept_threshold_decay")
POSITIVE = ("n_base", "concept_ratio", "batch_size", "lr", "init_scale_base", "log_every",
            "lr_restart_period_fraction", "weight_l1_concept_ramp_fraction", "heldout_tokens",
            "concept_init_base", "auxk_dead_tokens", "training_tokens")
"""Fields whose sign is checked (a name Config lacks is refused, never skipped)."""

AS_WRITTEN = dict(l1_on_topk=True, concept_penalty_warmup_fraction=0.0, concept_recon_coef=0.0,
                  auxk_alpha=0.0, concept_init="random", concept_balance_rate=0.0,
                  min_lr_warmup_steps=1, lr=3e-4)
"""Every concept-level aid off and the idea's lr: the idea exactly as written."""
PREVIOUS_COSINE = dict(concept_k=12, l1_concept=0.3, weight_l1_concept_max=0.1, init_scale_concept=0.002,
                       lr_schedule="cosine")
"""The previous cosine variant's differences from this idea."""

VARIANTS: dict[str, dict] = {
    # this idea (tuned penalties, smaller concept init, warm-restart cosine LR) with the aids
    # that keep its concept level alive and lr 1e-3: Config's defaults
    "tuned_cosine": {},
    # the previous cosine variant (cosine-annealed weight_l1_concept, single cosine LR decay), same aids
    "cosine_sparsity": PREVIOUS_COSINE,
    # both exactly as the idea writes them
    "tuned_cosine_as_written": AS_WRITTEN,
    "cosine_sparsity_as_written": {**PREVIOUS_COSINE, **AS_WRITTEN},
    # [d] towards the hierarchies that lower absorption (README, "Does the hierarchy pay?"): a
    # TopK base level without the L1 terms that reward absorption (Chanin et al. 2024), the
    # concept level reconstructing x on its own at equal weight (Matryoshka's prefix loss, H-SAE's
    # parent-only term at weight 1), both, and TopK without load balancing; base_k 50 keeps the
    # total L0 at tuned_cosine's ~60
    "topk_base": dict(base_k=50, l1_base=0.0, weight_l1_base=0.0),
    "concept_reconstructs": dict(concept_recon_coef=1.0),
    "nested_topk": dict(base_k=50, l1_base=0.0, weight_l1_base=0.0, concept_recon_coef=1.0),
    "no_balance": dict(concept_balance_rate=0.0),
    # [d] the concept level's L0 free per token (BatchTopK, no load balancing), co-firing
    # parent and child decoders held apart (OrtSAE's penalty), children gated by their parent
    "concept_batchtopk": dict(concept_selection="batchtopk", concept_balance_rate=0.0),
    "parent_child_orthogonal": dict(parent_child_ortho_coef=10.0),
    "parent_gated": dict(parent_gated=True),
    # a vanilla ReLU SAE with L1, as the AI-Scientist template trains it (no concept level;
    # Adam + the decoder constraint = its ConstrainedAdam, lr 3e-4, batch 2048)
    "baseline": dict(concept_k=0, l1_base=0.04, l1_concept=0.0, weight_l1_base=0.0, weight_l1_concept_min=0.0,
                     weight_l1_concept_max=0.0, base_init="dictionary_learning", lr_schedule="constant",
                     optimizer="adam", lr=3e-4, auxk_alpha=0.0, concept_balance_rate=0.0),
}
"""Each variant as a change from Config's defaults."""

VARIANT_TITLES = {"tuned_cosine": "Tuned cosine (this idea)",  # names in notes.txt and plot.py
                  "cosine_sparsity": "Previous cosine variant",
                  "tuned_cosine_as_written": "Tuned cosine as written",
                  "cosine_sparsity_as_written": "Previous cosine variant as written",
                  "topk_base": "TopK base level, no L1",
                  "concept_reconstructs": "Concept level reconstructs x alone",
                  "nested_topk": "Nested: TopK base, concept level reconstructs x",
                  "no_balance": "Concept TopK without load balancing",
                  "concept_batchtopk": "BatchTopK concept level, no balancing",
                  "parent_child_orthogonal": "Co-firing parent/child decoders orthogonal",
                  "parent_gated": "Base latents fire only with their parent concept",
                  "baseline": "Baseline (vanilla ReLU SAE)"}

SETTING_SHRINK: dict[str, dict[str, float]] = {
    "real": {},  # Gemma-2-2B on CUDA: Config as written
    # Gemma-3-270M on a CPU: the same experiment with these fields divided by these factors
    "embedded": dict(training_tokens=100, n_base=8, batch_size=4, heldout_tokens=4,
                     log_every=2.5, dead_window_tokens=10, auxk_dead_tokens=10),
}
"""The one place where a setting changes Config: each field divided by its factor (rounded), so
an edit of Config reaches both settings in proportion (50M tokens -> 500k, 16384 -> 2048)."""


def configure(variant: str | None = None, setting: str = "real", training_tokens: int | None = None,
              overrides: dict | None = None) -> tuple[Config, list[str]]:
    """The run's Config and every way it differs from Config's defaults, with why: the variant
    (DEFAULT_VARIANT when None), the setting's shrink factors, a token budget (EXPERIMENT_TOKENS)
    and `overrides` (tests, scripts), in that order."""
    if (variant or DEFAULT_VARIANT) not in VARIANTS:
        asked = f"EXPERIMENT_VARIANT={variant!r}" if variant else f"DEFAULT_VARIANT={DEFAULT_VARIANT!r}"
        raise ConfigurationError(f"{asked} is not a variant; use one of {sorted(VARIANTS)}")
    variant = variant or DEFAULT_VARIANT
    if setting not in SETTING_SHRINK:
        raise ConfigurationError(f"no SETTING_SHRINK entry for the {setting!r} setting")
    cfg = Config(**{**VARIANTS[variant], "variant": variant})
    shrunk = {name: type(getattr(cfg, name))(max(1, round(getattr(cfg, name) / factor)))
              for name, factor in SETTING_SHRINK[setting].items()}
    later = {**({"training_tokens": training_tokens} if training_tokens is not None else {}),
             **(overrides or {})}
    final = replace(cfg, **{**shrunk, **later})
    written = Config()
    why: dict[str, list[str]] = {}
    for name in VARIANTS[variant]:
        why.setdefault(name, []).append(f"variant {variant}")
    for name, factor in SETTING_SHRINK[setting].items():
        why.setdefault(name, []).append(f"{setting} setting /{factor:g}")
    for name in later:
        why[name] = ["EXPERIMENT_TOKENS" if name == "training_tokens" and name not in (overrides or {})
                     else "overrides"]
    changes = [f"{name} {getattr(written, name)!r} -> {getattr(final, name)!r} ({', then '.join(why[name])})"
               for name in (f.name for f in fields(Config) if f.name != "variant")
               if getattr(final, name) != getattr(written, name)]
    return final, changes


def make_config(variant: str | None = None, setting: str = "real", training_tokens: int | None = None,
                overrides: dict | None = None) -> Config:
    """configure's Config alone (scripts, tests)."""
    return configure(variant, setting, training_tokens, overrides)[0]


# === Schedules =============================================================================
def cosine_ramp(step: int, low: float, high: float, ramp_steps: int) -> float:
    """coef(t) = low + (high - low) * (1 - cos(pi * min(t, T) / T)) / 2, T = ramp_steps."""
    t = min(step, ramp_steps) / ramp_steps
    return low + (high - low) * (1 - math.cos(math.pi * t)) / 2


class StepSchedule:
    """Learning-rate factor and the concept-weight penalty's coefficient per step; the schedule lengths are Config's fractions of this
    run's steps (at least one step each)."""

    def __init__(self, cfg: Config):
        def steps(fraction: float) -> int:
            return max(1, round(fraction * cfg.total_steps))

        self.cfg, self.total_steps = cfg, cfg.total_steps
        self.warmup = min(max(steps(cfg.lr_warmup_fraction), cfg.min_lr_warmup_steps), cfg.total_steps)
        self.weight_l1_concept_ramp = steps(cfg.weight_l1_concept_ramp_fraction)
        self.restart_period = steps(cfg.lr_restart_period_fraction)
        # steps over which l1_concept and weight_l1_concept rise from 0 (0: none)
        self.penalty_warmup = steps(cfg.concept_penalty_warmup_fraction) if cfg.concept_penalty_warmup_fraction else 0

    def weight_l1_concept_coef(self, step: int) -> float:
        """coef(t), the coefficient of the L1 of W_enc2 (the idea's lw2(t))."""
        return cosine_ramp(step, self.cfg.weight_l1_concept_min, self.cfg.weight_l1_concept_max,
                           self.weight_l1_concept_ramp)

    def concept_penalty_factor(self, step: int) -> float:
        """The factor on l1_concept and weight_l1_concept: linear from 0 to 1 over the penalty warm-up."""
        return min(1.0, step / self.penalty_warmup) if self.penalty_warmup else 1.0

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
        """Steps at which a warm restart sets the learning rate back up (read off lr_factor)."""
        rises = range(self.warmup + 1, self.total_steps)
        return [t for t in rises if self.lr_factor(t) > self.lr_factor(t - 1)]


# === The SAE ===============================================================================
class SAEOutput(NamedTuple):
    x_hat: torch.Tensor  # (B, d) reconstruction
    z1: torch.Tensor  # (B, n_base) base latents
    z2_values: torch.Tensor  # (B, m) concept latents' values in m slots a token (any m; an empty
    z2_indices: torch.Tensor  # slot holds 0, e.g. BatchTopK's padding) and their indices (B, m)
    base_active: ActiveLatents | None = None  # z1's nonzero entries when the sparse path ran
    z2_pre: torch.Tensor | None = None  # (B, n_concept) concept pre-activations, no gradient
    x_hat_concept: torch.Tensor | None = None  # (B, d) z2 W_dec2, the concept level's part


class HierarchicalSAE(TwoLevelSAE):
    """ReLU base level plus a TopK concept level that reads the base latents.

    TwoLevelSAE (sae_harness/evals/sae_bench_view.py) makes it an SAE-Bench custom SAE (`encode` gives
    concat[z1, z2], `W_dec` is concat[W_dec1, W_dec2]), folds the input scale into its
    INPUT_SCALED tensors, and saves it with its Config and loads it strictly.
    """

    INPUT_SCALED = ("b_enc1", "b_enc2", "b_dec", "concept_selection_bias", "concept_threshold")
    SCALE_FREE = ("W_enc1", "W_dec1", "W_enc2", "W_dec2")
    """Every parameter and buffer, by how it changes when the input scale is folded in
    (fold_input_scale_; sae_checks.py refuses an SAE whose tensors are not all listed)."""

    def __init__(self, cfg: Config, d_in: int):
        super().__init__(cfg, d_in, n_base=cfg.n_base, n_concept=cfg.n_concept)
        n_base, n_concept = self.n_base, self.n_concept
        self.concept_k, self.base_k = cfg.concept_k, cfg.base_k
        self.balancing = cfg.concept_balance_rate > 0
        self.batch_topk = cfg.concept_selection == "batchtopk"
        self.parent_gated = cfg.parent_gated
        g = torch.Generator().manual_seed(cfg.seed)
        if cfg.base_init == "xavier_normal":
            sigma_base = cfg.init_scale_base * math.sqrt(2.0 / (d_in + n_base))
        else:  # dictionary_learning: encoder columns of norm ~0.1
            sigma_base = cfg.init_scale_base * 0.1 / math.sqrt(d_in)
        W_enc1 = torch.randn(d_in, n_base, generator=g) * sigma_base
        self.W_enc1 = nn.Parameter(W_enc1)
        self.b_enc1 = nn.Parameter(torch.zeros(n_base))
        self.W_dec1 = nn.Parameter(F.normalize(W_enc1.T.contiguous(), dim=-1))  # rows contiguous
        W_enc2 = torch.randn(n_base, n_concept, generator=g) * cfg.init_scale_concept
        W_dec2 = F.normalize(torch.randn(n_concept, d_in, generator=g), dim=-1)
        if cfg.concept_init == "base_subsets" and n_concept:
            # concept c reads m random base latents and decodes to the normalised sum of theirs
            subsets = torch.stack([torch.randperm(n_base, generator=g)[:cfg.concept_init_base]
                                   for _ in range(n_concept)])  # (n_concept, m)
            W_enc2 = torch.zeros(n_base, n_concept).scatter_(0, subsets.T.contiguous(), cfg.init_scale_concept)
            W_dec2 = F.normalize(self.W_dec1.detach()[subsets].sum(1), dim=-1)
        self.W_enc2 = nn.Parameter(W_enc2)
        self.b_enc2 = nn.Parameter(torch.zeros(n_concept))
        self.W_dec2 = nn.Parameter(W_dec2)
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("concept_selection_bias", torch.zeros(n_concept))
        """beta: shifts TopK's choice among positive concept pre-activations (load balancing)."""
        self.register_buffer("concept_threshold", torch.full((), -1.0))
        """BatchTopK's inference threshold on concept pre-activations (-1: not set yet)."""

    def forward_levels(self, x: torch.Tensor) -> SAEOutput:
        """Both levels on (B, d) inputs. The products are sae_kernels' exact forms: on a CPU, the
        base decoder and the concept encoder read only z1's nonzero entries when it is sparse,
        and TopK's gradient reaches the concept encoder through the k selected entries only."""
        z1 = F.relu(centred_encoder(x, self.b_dec, self.W_enc1, self.b_enc1))
        if self.base_k:  # a TopK base level: the base_k largest latents a token
            top = z1.topk(self.base_k, dim=-1, sorted=False)
            z1 = torch.zeros_like(z1).scatter(-1, top.indices, top.values)
        active = ActiveLatents.of(z1)
        x_hat = latent_matmul(z1, self.W_dec1, active, self.b_dec)
        if self.n_concept == 0:
            empty = z1.new_zeros(len(x), 0)
            return SAEOutput(x_hat, z1, empty, empty.long(), active)
        with torch.no_grad():
            pre2 = latent_matmul(z1, self.W_enc2, active, self.b_enc2)
            # TopK's choice among the positive pre-activations is shifted by beta (load balancing;
            # beta - min(beta) >= 0 keeps every positive candidate ahead of the non-positive ones)
            beta = self.concept_selection_bias
            score = torch.where(pre2 > 0, pre2 + (beta - beta.min()), pre2) if self.balancing else pre2
            if self.batch_topk:  # a varying number a token: (B, widest) slots, empty ones kept at 0
                chosen = self.batch_topk_choice(score)
                indices = chosen.float().topk(max(int(chosen.sum(-1).max()), 1), dim=-1).indices
                keep = chosen.gather(1, indices)
            else:
                indices = score.topk(self.concept_k, dim=-1, sorted=False).indices
        values = F.relu(selected_preactivations(z1, self.W_enc2, self.b_enc2, pre2, indices, active))
        if self.batch_topk:
            values = values * keep
        if self.parent_gated:  # a child fires only with its parent: z1 and its decoding, gated
            with torch.no_grad():
                parent = self.W_enc2.abs().argmax(1)  # (n_base,) the concept reading each base latent most
                fired = torch.zeros(len(x), self.n_concept, dtype=torch.bool, device=x.device)
                fired.scatter_(1, indices, values > 0)
                allowed = fired.gather(1, parent.expand(len(x), -1))
            z1 = z1 * allowed
            active = ActiveLatents.of(z1)
            x_hat = latent_matmul(z1, self.W_dec1, active, self.b_dec)
        x_hat_concept = F.embedding_bag(indices, self.W_dec2, mode="sum",
                                        per_sample_weights=values.to(self.W_dec2.dtype))
        return SAEOutput(x_hat + x_hat_concept, z1, values, indices, active, pre2, x_hat_concept)

    def batch_topk_choice(self, score: torch.Tensor) -> torch.Tensor:
        """(B, n_concept) bool: in training the k x B largest positive scores of the batch; after
        training (eval mode, set once the threshold is learnt) the scores above the threshold."""
        if not self.training and self.concept_threshold >= 0:
            return score > self.concept_threshold
        chosen = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
        chosen[score.flatten().topk(self.concept_k * len(score), sorted=False).indices] = True
        return chosen.view_as(score) & (score > 0)

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


# === The trainer ===========================================================================
class LossTerms(NamedTuple):
    """Each term before its coefficient (Config's comment block), the total, and L0 per level.
    Built by keyword; every field (a tensor or a float) goes to the training log by its name."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    l1_base: torch.Tensor
    l1_concept: torch.Tensor
    weight_l1_base: torch.Tensor
    weight_l1_concept: torch.Tensor
    concept_reconstruction: torch.Tensor
    auxk: torch.Tensor
    parent_child_overlap: torch.Tensor
    l0_base: torch.Tensor
    l0_concept: torch.Tensor


def co_firing_overlap(out: SAEOutput, W_dec1: torch.Tensor, W_dec2: torch.Tensor) -> torch.Tensor:
    """Mean over the (token, active concept) pairs of the mean squared cosine between the
    concept's decoder row and those of the base latents firing on the token (rows unit norm)."""
    cosines = W_dec2[out.z2_indices].float() @ W_dec1.float().T  # (B, slots, n_base)
    fired = (out.z1 > 0).float()
    per_pair = (cosines.pow(2) * fired[:, None, :]).sum(-1) / fired.sum(-1, keepdim=True).clamp_min(1)
    active = (out.z2_values > 0).float()
    return (per_pair * active).sum() / active.sum().clamp_min(1)


class HierarchicalTrainer(TrainerState):
    """One optimiser step per `update(step, x)` on raw activations x.

    The first batch sets the input scale c (E||x/c||^2 = d), the input's std s (the loss units)
    and b_dec (its mean); every batch is divided by c before the SAE sees it.
    """

    def __init__(self, sae: HierarchicalSAE, cfg: Config, first_batch: torch.Tensor,
                 matmul_dtype: torch.dtype = torch.float32):
        self.sae, self.cfg, self.schedule = sae, cfg, StepSchedule(cfg)
        self.matmul_dtype = matmul_dtype  # the run's choice (precision.py)
        self.input_scale = math.sqrt(first_batch.pow(2).sum(-1).mean().item() / first_batch.shape[1])
        scaled = first_batch / self.input_scale
        self.input_std = math.sqrt((scaled - scaled.mean(0)).pow(2).sum(-1).mean().item() / scaled.shape[1])
        with torch.no_grad():
            sae.b_dec.copy_(first_batch.mean(0).to(sae.b_dec.device) / self.input_scale)
        self.kernels, self.kernels_note = check_sae(sae, scaled, HARNESS_READS)
        """'exact': sae_kernels' sparse products; 'plain': autograd, where an edited forward_levels
        does not fit them (sae_checks.py: also refuses an SAE that could not be saved or folded)."""
        adamw = cfg.optimizer == "adamw"
        self.optimizer = (torch.optim.AdamW if adamw else torch.optim.Adam)(
            sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas, foreach=True,
            **({"weight_decay": cfg.weight_decay} if adamw else {}))
        self.forward_levels = distributed.data_parallel(sae)
        """sae.forward_levels; under torchrun wrapped in DistributedDataParallel (distributed.py)."""
        self.whole_batch = distributed.WholeBatch()
        """Figures of the whole batch: under torchrun this rank holds only a share of it."""
        self.firing_base = FiringClock(sae.n_base, sae.W_enc1.device)  # dead latents, AuxK
        self.firing_concept = FiringClock(sae.n_concept, sae.W_enc1.device)
        self.diagnostics: dict[str, float] = {}

    def loss_terms(self, x: torch.Tensor, step: int) -> tuple[LossTerms, dict, SAEOutput, torch.Tensor]:
        """On scaled inputs x (matmuls in self.matmul_dtype): the loss terms, the weighted terms
        that add up to the total ({name: coefficient x term}), the SAE's output, and which base
        latents fired on the batch (n_base,)."""
        sae, cfg, schedule = self.sae, self.cfg, self.schedule
        d, s = x.shape[1], self.input_std
        with torch.autocast(x.device.type, dtype=self.matmul_dtype,
                            enabled=self.matmul_dtype != torch.float32), kernel_mode(self.kernels):
            out = self.forward_levels(x)
        zero = x.new_zeros(())
        reconstruction = (x - out.x_hat.float()).pow(2).sum(-1).mean() / (d * s * s)
        # z >= 0, so the sum is the L1 norm
        l1_base = out.z1.sum(-1, dtype=torch.float32).mean() / (math.sqrt(d) * s)
        l1_concept = out.z2_values.sum(-1, dtype=torch.float32).mean() / (math.sqrt(d) * s)
        weight_l1_base = sae.W_enc1.abs().sum(0).mean() / math.sqrt(d)
        weight_l1_concept = sae.W_enc2.abs().sum(0).mean() / math.sqrt(sae.n_base) if sae.n_concept else zero
        concept_reconstruction = auxk = parent_child_overlap = zero
        if sae.n_concept and cfg.concept_recon_coef:
            concept_reconstruction = (x - out.x_hat_concept.float() - sae.b_dec).pow(2).sum(-1).mean() / (d * s * s)
        if sae.n_concept and cfg.auxk_alpha:
            dead = self.firing_concept.dead(cfg.auxk_dead_tokens)
            if x.device.type != "cpu" or dead.any():  # asking costs a device sync: a CPU asks
                auxk = self.auxk_loss(x, out, dead)
        if sae.n_concept and cfg.parent_child_ortho_coef:
            parent_child_overlap = co_firing_overlap(out, sae.W_dec1, sae.W_dec2)
        warm = schedule.concept_penalty_factor(step)
        weighted = {
            "reconstruction": reconstruction,
            "l1_base": cfg.l1_base * l1_base,
            "l1_concept": (cfg.l1_concept * warm if cfg.l1_on_topk else 0.0) * l1_concept,
            "weight_l1_base": cfg.weight_l1_base * weight_l1_base,
            "weight_l1_concept": schedule.weight_l1_concept_coef(step) * warm * weight_l1_concept,
            "concept_reconstruction": cfg.concept_recon_coef * concept_reconstruction,
            "auxk": cfg.auxk_alpha * auxk,
            "parent_child_overlap": cfg.parent_child_ortho_coef * parent_child_overlap,
        }
        total = sum(weighted.values())
        with torch.no_grad():
            # which base latents fired in the batch, and L0 (z1 >= 0; count_nonzero would copy z1
            # to int64 first)
            active = out.z1.amax(0) > 0
            l0_base = (x.new_tensor(len(out.base_active.rows) / len(x)) if out.base_active
                       else (out.z1 > 0).sum(-1, dtype=torch.float32).mean())
            l0_concept = (out.z2_values > 0).sum(-1, dtype=torch.float32).mean()
        terms = LossTerms(total=total, reconstruction=reconstruction, l1_base=l1_base,
                          l1_concept=l1_concept, weight_l1_base=weight_l1_base,
                          weight_l1_concept=weight_l1_concept,
                          concept_reconstruction=concept_reconstruction, auxk=auxk,
                          parent_child_overlap=parent_child_overlap, l0_base=l0_base,
                          l0_concept=l0_concept)
        return terms, weighted, out, active

    def auxk_loss(self, x: torch.Tensor, out: SAEOutput, dead: torch.Tensor) -> torch.Tensor:
        """AuxK: the top-auxk_k `dead` concept latents (by pre-activation) reconstruct the error
        x - x_hat, relative to the error's variance (dictionary_learning's normalisation). The
        gradient reaches only those latents' encoder columns, biases and decoder rows."""
        sae = self.sae
        k = min(self.cfg.auxk_k, sae.n_concept)
        pre = out.z2_pre.float().masked_fill(~dead, float("-inf"))
        indices = pre.topk(k, dim=-1, sorted=False).indices
        values = F.relu(selected_preactivations(out.z1.detach(), sae.W_enc2, sae.b_enc2, out.z2_pre,
                                                indices, out.base_active)).float() * dead[indices]
        error = (x - out.x_hat.float()).detach()
        error_hat = F.embedding_bag(indices, sae.W_dec2, mode="sum", per_sample_weights=values)
        loss = (error - error_hat).pow(2).sum(-1).mean() / self.whole_batch.variance(error)
        return loss * dead.any()

    def update(self, step: int, x: torch.Tensor) -> LossTerms:
        x = x / self.input_scale
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * self.schedule.lr_factor(step)
        terms, weighted, out, active = self.loss_terms(x, step)
        if step % self.cfg.log_every == 0 or step == self.schedule.total_steps - 1:
            self.diagnostics = concept_diagnostics(weighted, out, [self.sae.W_enc2, self.sae.b_enc2],
                                                   self.sae.n_concept)
        terms.total.backward()
        self.sae.remove_decoder_grad_parallel_()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sae.normalize_decoder_()
        with torch.no_grad():
            whole = self.whole_batch  # what fired is counted over the whole batch
            tokens = whole.tokens(len(x))
            self.firing_base.tick(whole.fired(active), tokens)
            if self.sae.n_concept:
                fired = out.z2_indices[out.z2_values > 0]
                counts = whole.counts(torch.bincount(fired, minlength=self.sae.n_concept))
                self.firing_concept.tick(counts > 0, tokens)
                if self.sae.batch_topk:  # BatchTopK's inference threshold (dictionary_learning's)
                    chosen = out.z2_values[out.z2_values > 0]
                    if chosen.numel():
                        smallest, decay = chosen.min().float(), self.cfg.concept_threshold_decay
                        threshold = self.sae.concept_threshold
                        threshold.copy_(smallest if threshold < 0 else (1 - decay) * threshold + decay * smallest)
                if self.cfg.concept_balance_rate:
                    target = self.sae.concept_k / self.sae.n_concept
                    step_size = self.cfg.concept_balance_rate * whole.std(out.z2_pre.float())
                    self.sae.concept_selection_bias.add_(step_size * torch.sign(target - counts / tokens))
        return terms

    def log_values(self, step: int, terms: LossTerms) -> dict[str, float]:
        """One line of training_log.jsonl (the session adds step, tokens and seconds)."""
        window = self.cfg.dead_window_tokens
        return {"lr": self.optimizer.param_groups[0]["lr"], "weight_l1_concept_coef": self.schedule.weight_l1_concept_coef(step),
                "concept_penalty_factor": self.schedule.concept_penalty_factor(step),
                **self.whole_batch.means(terms._asdict()),
                "dead_fraction_base": self.firing_base.dead_fraction(window),
                "dead_fraction_concept": self.firing_concept.dead_fraction(window),
                **self.diagnostics}

    STATE = ("sae", "optimizer", "firing_base", "firing_concept")
    VALUES = ("input_scale", "input_std")
    """What the next step depends on (TrainerState saves and loads it for the session)."""


# === Training ==============================================================================
def make_trainer(cfg: Config, first_batch: torch.Tensor, device: str,
                 matmul_dtype: torch.dtype) -> HierarchicalTrainer:
    """A new HierarchicalSAE and its trainer, set up on the first batch (the rehearsal before
    the model loads builds them the same way)."""
    sae = HierarchicalSAE(cfg, first_batch.shape[1]).to(device)
    return HierarchicalTrainer(sae, cfg, first_batch, matmul_dtype)


def train_sae(cfg: Config, device: str, data: ActivationData, run: RunDirectory,
              matmul_dtype: torch.dtype = torch.float32) -> tuple[HierarchicalSAE, dict]:
    """Train on the activations, resuming from the run's checkpoint if there is one.

    Returns the SAE (with the input scale folded in: it reads raw activations) and the
    training figures. The session (sae_harness/training/training_session.py) logs, checkpoints and
    stops on SIGINT/SIGTERM; the loop itself is here.
    """
    torch.manual_seed(cfg.seed)
    trainer = make_trainer(cfg, data.train.first_batch(), device, matmul_dtype)
    sae = trainer.sae
    world = distributed.current()  # one process, or a rank of torchrun's (its share of each batch)
    session = TrainingSession(run, cfg, trainer, trainer.schedule.total_steps, is_writer=world.is_main)
    schedule = trainer.schedule
    if world.is_main:
        print(f"[train] {schedule.total_steps} steps x {cfg.batch_size} tokens; n_base={sae.n_base} "
              f"n_concept={sae.n_concept} k={sae.concept_k}; input scale {trainer.input_scale:.4g}, std "
              f"{trainer.input_std:.3g}; warm-up {schedule.warmup}, weight_l1_concept ramp {schedule.weight_l1_concept_ramp}, "
              f"restarts at {schedule.restart_steps()}; matmuls {str(matmul_dtype).split('.')[1]}; "
              f"gradients by {trainer.kernels_note}")
    batches = data.train.shard(world.rank, world.world_size) if world.distributed else data.train
    for step, x in session.batches(batches):
        terms = trainer.update(step, x.to(device, non_blocking=True))
        session.step_done(step, terms)
    sae.fold_input_scale_(trainer.input_scale)
    sae.eval()  # trained: a BatchTopK concept level now selects by its threshold
    return sae, {**session.summary(), **trainer.values(), "plain_autograd": float(trainer.kernels == "plain")}


# === Main ==================================================================================
def run_experiment(out_dir: Path, env: RunEnvironment, overrides: dict | None = None) -> RunDirectory:
    """The whole experiment into `out_dir`; `overrides` replaces Config fields (tests use it).

    An unfinished run in `out_dir` with the same configuration is resumed: training from its
    checkpoint, or, when training had finished, straight to the evaluations.
    """
    check_contract(HARNESS_READS, Config=Config, SAEOutput=SAEOutput, LossTerms=LossTerms)
    cfg, changes = configure(env.variant, env.preset.name, env.training_tokens, overrides)
    title = VARIANT_TITLES.get(cfg.variant, cfg.variant)
    with ExperimentRun.start(out_dir, env, cfg, title, changes) as run:
        if not run.training_finished():  # two steps on random rows: an edit that cannot train stops here
            device, dtype = run.preset.device, run.precision.sae_torch_dtype
            rehearse_training(lambda batch: make_trainer(cfg, batch, device, dtype),
                              run.model_width(), device, cfg.batch_size)
        lm = run.load_language_model()
        data = run.activations(lm)
        if run.training_finished():
            sae = run.trained_sae(HierarchicalSAE.load)
        else:
            started = time.time()
            sae, summary = train_sae(cfg, run.preset.device, data, run.directory,
                                     run.precision.sae_torch_dtype)
            run.record_training(sae, summary, data, started)
        return run.evaluate(sae, lm, data)


def main(argv: list[str] | None = None, environment: RunEnvironment | None = None,
         overrides: dict | None = None) -> int:
    """The command line (sae_harness/run/command_line.py: exit codes, the last stderr line)."""
    return run_command(run_experiment, __doc__.splitlines()[0], argv, environment, overrides)


if __name__ == "__main__":
    raise SystemExit(main())
