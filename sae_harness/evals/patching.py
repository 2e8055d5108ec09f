"""Replacing an attribute of SAE-Bench (or any module) for the length of a block, then restoring it.

Every change this harness makes to SAE-Bench's behaviour goes through `patched`, so that each one
is visible at its call site and none outlives the eval that needed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_MISSING = object()


@contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[Any]:
    """Within the block `owner.name` is `value`; afterwards it is what it was (or absent again).
    Yields the original attribute (None if there was none)."""
    original = getattr(owner, name, _MISSING)
    setattr(owner, name, value)
    try:
        yield None if original is _MISSING else original
    finally:
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
