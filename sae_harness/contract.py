"""The names the harness reads from experiment.py, checked at start before any model work.

experiment.py declares them at its top, in HARNESS_READS: {"Config": {field: what reads it},
"SAEOutput": {...}, "LossTerms": {...}, "SAE": {attribute: ...}}. `check_contract` holds the
first three against the classes when a run starts; `missing_sae_attributes` holds the last
against the SAE once it is built. A name that is missing (renamed or removed in an edit) stops
the run with one line naming it and what needs it. tests/test_contract.py checks that the
package reads no other name of these classes.
"""

from __future__ import annotations

import dataclasses

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


def missing_sae_attributes(reads: dict[str, dict[str, str]], sae) -> None:
    """Raise ConfigurationError naming every attribute in reads["SAE"] that `sae` lacks."""
    missing = [f"{name} (read for {why})" for name, why in reads.get("SAE", {}).items()
               if not hasattr(sae, name)]
    if missing:
        raise ConfigurationError(
            f"{type(sae).__name__} lacks {'; '.join(missing)}: the harness reads these attributes "
            "(HARNESS_READS at the top of experiment.py); restore them under these names")
