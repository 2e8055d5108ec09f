"""How our caches name what they hold: a digest of the key that says what was computed.

The keyed caches (activations, token counts, the precision probe, the LLM probes, SAE-Bench's
sparse-probing artifacts, the core eval's references) file an entry under `key_digest(key)`,
the sha256 of the key's JSON with sorted keys. A key holds every input that changes the entry
(model, text, versions, sizes), so a changed input is a miss, never a stale hit. The length stays what each cache has always used, so that existing caches stay valid.
(Two caches hash raw bytes rather than a key: absorption_prompts.py's prompt activations and
core.py's token batches.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sae_harness.records.run_directory import atomic_write_json


def key_digest(key: dict[str, Any], length: int = 20) -> str:
    """The first `length` hex digits of sha256(json.dumps(key, sort_keys=True))."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:length]


def keyed_folder(root: Path, key: dict[str, Any]) -> Path:
    """root/<key_digest(key)>/, created, with the key itself in key.json (for a reader)."""
    folder = Path(root) / key_digest(key)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").is_file():
        atomic_write_json(folder / "key.json", key)
    return folder
