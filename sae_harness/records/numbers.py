"""The one test of "a number a record can hold"."""

from __future__ import annotations

import math
from typing import Any


def finite_number(value: Any) -> float | None:
    """`value` as a finite float, or None.

    ints, floats, numpy scalars and one-element tensors give their float; None, bools, strings,
    NaN and ±inf give None (a bool or a string in a metrics dict is a bug upstream, not a metric).
    """
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
