"""What counts as an integer and as a number in a setting, wherever settings come from.

YAML's and JSON's `true` arrive as Python bools, and a bool is an int in Python: a batch
size of `true` is a mistake, not 1. NaN and the infinities compare falsely with every
bound, so a number here is finite. Sampling settings, training configs and model configs
all check their values with these two.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_integer(value: Any) -> bool:
    """An integer (Python's or numpy's), not a bool and not 5.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite integer or float, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)
