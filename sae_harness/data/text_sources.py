"""Training text: OpenWebText streamed from the hub, or text that ships in installed packages.

`documents(preset)` yields documents (str) in a fixed order for a given preset. The embedded
setting needs no network: it mixes
  * the text of the sae-probes datasets that the probing suite does not use (web text, news,
    reviews, abstracts, questions ... from ~140 files), round-robin across files, and
  * the documentation strings of Python's own standard library (read with `ast`, not imported),
with documentation strings making up DOCSTRING_SHARE of the characters.
"""

from __future__ import annotations

import ast
import random
import sys
import sysconfig
from collections import deque
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

from sae_harness.errors import DataError
from sae_harness.data.presets import EMBEDDED_TEXT, OPENWEBTEXT, Preset
from sae_harness.data import sae_probes_data

MIN_DOCUMENT_CHARS = 200
"""Shorter texts (names, one-line prompts) are poor training documents; they are skipped."""
DOCSTRING_SHARE = 0.2
EMBEDDED_TEXT_VERSION = 1
"""Bump when the embedded mixing rule changes: it is part of the activation-cache key."""

EMBEDDED_TOKENS_FLOOR = 10_000_000
"""Content tokens the embedded text surely holds: measured 11,263,113 Gemma-3 tokens (Python
3.11.7, sae-probes 0.4.2). Budgets below it need no count; above it the text is counted once."""
HUB_TEXT_TOKENS = {OPENWEBTEXT: 9_000_000_000}
"""Upper bounds on the content tokens of streamed hub datasets: OpenWebText's 8,013,769
documents are 9.04B GPT-2 tokens (Gemma's larger vocabulary gives fewer)."""


def text_fingerprint(preset: Preset) -> str:
    """What determines the document stream, for cache keys."""
    if preset.text_dataset == EMBEDDED_TEXT:
        return (
            f"embedded-v{EMBEDDED_TEXT_VERSION}:python-{sys.version_info.major}."
            f"{sys.version_info.minor}.{sys.version_info.micro}:sae-probes-{version('sae-probes')}"
        )
    return f"dataset:{preset.text_dataset}:{preset.text_column}"


def documents(preset: Preset, seed: int = 0) -> Iterator[str]:
    """The preset's documents, in a fixed order."""
    if preset.text_dataset == EMBEDDED_TEXT:
        return embedded_documents(seed)
    return streamed_dataset_documents(preset.text_dataset, preset.text_column)


def streamed_dataset_documents(path: str, column: str = "text") -> Iterator[str]:
    """Stream a `datasets` dataset (hub id or local folder) and yield its `column` texts."""
    import datasets

    try:
        stream = datasets.load_dataset(path, split="train", streaming=True, trust_remote_code=True)
    except Exception as error:  # datasets raises many types; all mean "cannot load"
        raise DataError(
            f"cannot load text dataset {path!r} ({type(error).__name__}: {str(error)[:200]}); "
            "check the hub connection (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) or use "
            "EXPERIMENT_PRESET=embedded"
        ) from error
    for row in stream:
        text = row.get(column)
        if not isinstance(text, str):
            raise DataError(f"dataset {path!r} has no text column {column!r}; its columns: {list(row)}")
        yield text


def python_docstrings(min_chars: int = MIN_DOCUMENT_CHARS) -> list[str]:
    """Docstrings of modules, classes and functions in Python's standard library (not tests)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if parts[0] in ("site-packages", "dist-packages", "idlelib") or {"test", "tests"} & set(parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    found.append(doc)
    return found


def embedded_documents(seed: int = 0) -> Iterator[str]:
    """Offline documents: sae-probes training text and Python docstrings, deduplicated.

    Files are shuffled internally and visited round-robin; a docstring is inserted whenever
    docstrings hold less than DOCSTRING_SHARE of the characters emitted so far.
    """
    rng = random.Random(seed)
    excluded = sae_probes_data.suite_texts()
    queues = []
    for stem in sae_probes_data.training_text_file_stems():
        texts = [t for t in sae_probes_data.read_dataset(stem)["prompt"] if len(t) >= MIN_DOCUMENT_CHARS]
        rng.shuffle(texts)
        if texts:
            queues.append(deque(texts))
    docstrings = python_docstrings()
    rng.shuffle(docstrings)
    docstring_queue = deque(docstrings)

    seen: set[str] = set()
    chars_total = chars_docstrings = 0
    while queues or docstring_queue:
        if docstring_queue and (chars_docstrings <= DOCSTRING_SHARE * chars_total or not queues):
            text = docstring_queue.popleft()
            is_docstring = True
        else:
            queue = queues.pop(0)
            text = queue.popleft()
            if queue:
                queues.append(queue)
            is_docstring = False
        if text in seen or text in excluded:
            continue
        seen.add(text)
        chars_total += len(text)
        chars_docstrings += len(text) if is_docstring else 0
        yield text
