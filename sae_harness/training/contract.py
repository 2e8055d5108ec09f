"""The names the harness reads from experiment.py, checked at start before any model work.

experiment.py declares them at its top, in HARNESS_READS: {"Config": {field: what reads it},
"SAEOutput": {...}, "LossTerms": {...}, "SAE": {attribute: ...}}. `check_contract` holds the
first three against the classes when a run starts; `missing_sae_attributes` holds the last
against the SAE once it is built. A name that is missing (renamed or removed in an edit) stops
the run with one line naming it and what needs it. tests/test_contract.py checks that the
package reads no other name of these classes.

`check_contract` also reads experiment.py's own source: a `cfg.name` that Config lacks (a field
renamed in Config but not where it is used) stops the run before any model work, instead of
failing with an AttributeError once training starts.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from sae_harness.errors import ConfigurationError


def declared_names(cls) -> set[str]:
    """The field names of a dataclass or a NamedTuple."""
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    if hasattr(cls, "_fields"):
        return set(cls._fields)
    raise ConfigurationError(f"{getattr(cls, '__name__', cls)} in experiment.py is neither a "
                             "dataclass nor a NamedTuple; the harness reads its fields by name")


def check_contract(reads: dict[str, dict[str, str]], **classes) -> None:
    """Raise ConfigurationError naming every name in `reads` that its class lacks."""
    missing = []
    for kind, names in reads.items():
        if kind == "SAE":
            continue  # attributes of an instance: missing_sae_attributes, once the SAE exists
        if kind not in classes:
            missing.append(f"the class {kind}")
            continue
        have = declared_names(classes[kind])
        missing += [f"{kind}.{name} (read for {why})" for name, why in names.items() if name not in have]
    if missing:
        raise ConfigurationError(
            f"experiment.py lacks {'; '.join(missing)}: the harness reads these names "
            "(HARNESS_READS at the top of experiment.py); restore them under these names")
    if "Config" in classes:
        config = classes["Config"]
        source = Path(config.__post_init__.__code__.co_filename)
        if unknown := unknown_config_reads(config, source.read_text()):
            raise ConfigurationError(
                f"{source.name} reads {', '.join(unknown)}, which Config does not have "
                "(renamed or removed?); rename them where they are read too")


def unknown_config_reads(config, source: str) -> list[str]:
    """Each `cfg.name` / `self.cfg.name` in `source` whose name is not a field, property or
    method of `config`, as 'cfg.name (line n)'."""
    known = declared_names(config) | {name for name in dir(config) if not name.startswith("__")}
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        is_cfg = (isinstance(base, ast.Name) and base.id == "cfg") or (
            isinstance(base, ast.Attribute) and base.attr == "cfg"
            and isinstance(base.value, ast.Name) and base.value.id == "self")
        if is_cfg and node.attr not in known:
            found.append(f"cfg.{node.attr} (line {node.lineno})")
    return found


def missing_sae_attributes(reads: dict[str, dict[str, str]], sae) -> None:
    """Raise ConfigurationError naming every attribute in reads["SAE"] that `sae` lacks."""
    missing = [f"{name} (read for {why})" for name, why in reads.get("SAE", {}).items()
               if not hasattr(sae, name)]
    if missing:
        raise ConfigurationError(
            f"{type(sae).__name__} lacks {'; '.join(missing)}: the harness reads these attributes "
            "(HARNESS_READS at the top of experiment.py); restore them under these names")
