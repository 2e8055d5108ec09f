"""experiment.py's Config refused before any work when impossible, with a one-line reason.

    check_config(cfg, non_negative=(...), positive=(...), problems=[...])

Every check names its field. A field named in `non_negative` or `positive` that Config lacks
(renamed or removed in experiment.py) is itself a problem: no check is skipped silently.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Literal, get_args, get_origin, get_type_hints

from sae_harness.errors import ConfigurationError


def check_config(cfg, non_negative: tuple[str, ...] = (), positive: tuple[str, ...] = (),
                 problems: list[str] | None = None) -> None:
    """Raise ConfigurationError naming every problem: a Literal field outside its choices, a
    sign that cannot be, a sign check of a field Config lacks, and the caller's `problems`."""
    found = []
    # the names in the annotations are resolved in the module that defines the config (its
    # __post_init__'s globals), which is right also where sys.modules does not name that module
    # as the class does (experiment.py run under `python -m cProfile` or runpy)
    defining_module = getattr(getattr(type(cfg), "__post_init__", None), "__globals__", None)
    for name, hint in get_type_hints(type(cfg), globalns=defining_module).items():
        if get_origin(hint) is Literal and getattr(cfg, name) not in get_args(hint):
            found.append(f"{name}={getattr(cfg, name)!r} is not one of {', '.join(map(str, get_args(hint)))}")
    names = {f.name for f in fields(cfg)}
    for rule, listed, bad in (("must not be negative", non_negative, lambda v: v < 0),
                              ("must be positive", positive, lambda v: v <= 0)):
        for name in listed:
            if name not in names:
                found.append(f"the check '{name} {rule}' names a field Config does not have "
                             "(renamed or removed? update the list of checks beside Config)")
            elif bad(getattr(cfg, name)):
                found.append(f"{name}={getattr(cfg, name)} {rule}")
    found += problems or []
    if found:
        raise ConfigurationError("invalid configuration: " + "; ".join(found)
                                 + " (edit Config/VARIANTS in experiment.py)")
