"""Argument checks shared by the public API: one rule, one message, everywhere."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def is_number(value: Any) -> bool:
    """A real int or float (NumPy's included), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """A real integer (NumPy's included), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_finite_at_least(value: Any, minimum: float = 0.0, *, strict: bool = False) -> bool:
    """A finite number >= ``minimum`` (> with ``strict``)."""
    return is_number(value) and math.isfinite(value) and (
        value > minimum if strict else value >= minimum)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int if it is a positive integer (not a bool), else a ValueError."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def float_dtype(owner: str, dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype if it is float32 or float64 (the kernels' two), else a
    ValueError (``np.dtype(None)`` would quietly mean float64)."""
    if dtype is None or np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"{owner}: dtype must be float32 or float64 (the kernels' two), got {dtype!r}")
    return np.dtype(dtype)


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """The generator itself, or a new one from an integer seed (None: fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (not is_int(seed) or seed < 0):
        raise TypeError(f"seed must be an integer >= 0 or a numpy.random.Generator, got {seed!r}")
    return np.random.default_rng(seed)
