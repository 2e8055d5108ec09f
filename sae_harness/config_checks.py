"""experiment.py's Config refused before any work when impossible, with a one-line reason."""

from __future__ import annotations

from typing import Literal, get_args, get_origin, get_type_hints

from sae_harness.errors import ConfigurationError

NON_NEGATIVE = ("l1_base", "l1_concept", "lw_base", "lw2_min", "lw2_max", "init_scale_concept",
                "lr_min_ratio", "weight_decay", "concept_recon_coef", "auxk_alpha", "concept_k",
                "concept_penalty_warmup_steps", "auxk_k", "min_lr_warmup_steps",
                "concept_balance_rate")
POSITIVE = ("d_sae_base", "concept_ratio", "batch_size", "lr_warmup_steps", "lr", "init_scale_base",
            "lr_restart_period_steps", "lw2_ramp_steps", "log_every", "heldout_tokens",
            "concept_init_base", "auxk_dead_tokens")


def check_config(cfg) -> None:
    """Raise ConfigurationError naming every problem: a Literal field outside its choices, a
    sign that cannot be, sizes that do not fit together."""
    problems = []
    # the names in the annotations are resolved in the module that defines the config (its
    # __post_init__'s globals), which is right also where sys.modules does not name that module
    # as the class does (experiment.py run under `python -m cProfile` or runpy)
    defining_module = getattr(getattr(type(cfg), "__post_init__", None), "__globals__", None)
    for name, hint in get_type_hints(type(cfg), globalns=defining_module).items():
        if get_origin(hint) is Literal and getattr(cfg, name) not in get_args(hint):
            problems.append(f"{name}={getattr(cfg, name)!r} is not one of {', '.join(get_args(hint))}")
    problems += [f"{name}={getattr(cfg, name)} must not be negative"
                 for name in NON_NEGATIVE if hasattr(cfg, name) and getattr(cfg, name) < 0]
    problems += [f"{name}={getattr(cfg, name)} must be positive"
                 for name in POSITIVE if hasattr(cfg, name) and getattr(cfg, name) <= 0]
    if cfg.lw2_max < cfg.lw2_min:
        problems.append(f"lw2_max={cfg.lw2_max} is below lw2_min={cfg.lw2_min}")
    if cfg.concept_k > 0 and cfg.concept_ratio > 0:
        if cfg.d_sae_base % cfg.concept_ratio:
            problems.append(f"d_sae_base={cfg.d_sae_base} is not divisible by concept_ratio={cfg.concept_ratio}")
        elif cfg.concept_k > cfg.n_concept:
            problems.append(f"concept_k={cfg.concept_k} exceeds the {cfg.n_concept} concept latents")
    if cfg.batch_size > cfg.training_tokens:
        problems.append(f"batch_size={cfg.batch_size} exceeds training_tokens={cfg.training_tokens}")
    if cfg.lr_restart_mult < 1:
        problems.append(f"lr_restart_mult={cfg.lr_restart_mult} must be at least 1")
    if problems:
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)
                                 + " (edit Config/VARIANTS in experiment.py)")
