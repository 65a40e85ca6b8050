"""Arrays that start on a 64-byte boundary: one cache line, one AVX-512 vector.

NumPy promises only 16-byte alignment, so a weight matrix may start 16, 32 or
48 bytes into a cache line, and then many vector loads and stores of a loop over
it (Adam's update, the bias/ReLU passes, BLAS writing a product) straddle two
lines. Measured on the threaded step of the reference model, in one process
(``python benchmarks/alignment.py``, ``docs/runs/bench/alignment.txt``): with
every such array 16 bytes into a line, a step took 1.09x as long as with all of
them on a line boundary (1.25x in a slow phase of the machine), and with
NumPy's own mixed offsets 1.003-1.03x as long.

So the arrays a training step streams through (parameters, gradients, Adam's
moments, the per-batch buffers of a ``Sequential`` and of the threaded step) are
made here. They are ordinary C-contiguous
NumPy arrays; each is a view of a slightly larger byte buffer, which it keeps
alive through ``.base``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

CACHE_LINE = 64


def empty(shape: int | tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """Like ``np.empty``, but the data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimensions are not allowed: {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def zeros(shape: int | tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """Like ``np.zeros``, but the data starts on a 64-byte boundary."""
    out = empty(shape, dtype)
    out[...] = 0
    return out


def copy(a: np.ndarray, dtype: DTypeLike | None = None) -> np.ndarray:
    """A C-contiguous, 64-byte aligned copy of ``a`` (converted to ``dtype`` if given)."""
    a = np.asarray(a)
    out = empty(a.shape, a.dtype if dtype is None else dtype)
    out[...] = a
    return out
