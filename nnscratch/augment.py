"""Data augmentation for image batches: random shifts and horizontal flips.

Clothes stay the same class when moved by a pixel or two or mirrored left to
right, so showing the network such variants during training is free extra
data. Applied per batch, after gathering, with the model's generator.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernels
from .checks import is_int, is_number


class RandomShiftFlip:
    """Shift each image by up to ``max_shift`` pixels in each direction (the
    uncovered border is 0, the background) and mirror it with probability
    ``flip``. Works on batches of square images shaped (N, S, S), (N, 1, S, S) or
    (N, S*S), of any dtype; returns a new array of the same shape and dtype.

    Output pixel (r, c) of image n reads input pixel (r + dy_n - s, c' + dx_n - s),
    0 outside the frame, with c' = S-1-c for flipped images and dy_n, dx_n drawn
    from 0..2s (``kernels.shift_flip``).
    """

    def __init__(self, max_shift: int = 2, flip: float = 0.5) -> None:
        if not is_int(max_shift) or max_shift < 0:
            raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}")
        if not is_number(flip) or not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {flip!r}")
        self.max_shift, self.flip = int(max_shift), float(flip)

    def config(self) -> dict[str, float]:
        return {"max_shift": self.max_shift, "flip": self.flip}

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"RandomShiftFlip needs a numpy.random.Generator, got {rng!r}")
        batch = np.asarray(batch)
        n, side = len(batch) if batch.ndim else 0, _square_side(batch.shape)
        s = self.max_shift
        if 2 * s >= side:  # the item could leave the frame entirely
            raise ValueError(f"max_shift {s} is too large for {side}x{side} images: "
                             f"use at most {(side - 1) // 2}")
        dy, dx = rng.integers(0, 2 * s + 1, size=(2, n))
        flipped = rng.random(n) < self.flip
        images = np.ascontiguousarray(batch).reshape(n, side, side)
        out = np.empty_like(images)
        shift_flip = kernels.shift_flip if images.dtype in _NUMBA_DTYPES else kernels.reference.shift_flip
        shift_flip(images, dy, dx, flipped, s, out)
        return out.reshape(batch.shape)


# What the Numba kernel compiles for; other dtypes (float16, long double, byte-swapped,
# objects) take the NumPy twin, which handles any.
_NUMBA_DTYPES = frozenset(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
    np.uint64, np.float32, np.float64, np.complex64, np.complex128))


def _square_side(shape: tuple[int, ...]) -> int:
    """The side S of a batch of square images shaped (N, S, S), (N, 1, S, S) or (N, S*S)."""
    def refuse() -> ValueError:
        single = " (for a single image, pass x[None])" if len(shape) == 2 and shape[0] == shape[1] \
            or len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0] > 0 else ""
        return ValueError("RandomShiftFlip needs a batch of square images shaped (N, S, S), "
                          f"(N, 1, S, S) or (N, S*S), got shape {shape}{single}")
    if len(shape) == 2:
        side = math.isqrt(shape[1])
        if side * side != shape[1] or side == 0:
            raise refuse()
        return side
    if len(shape) < 3 or shape[-1] != shape[-2] or math.prod(shape[1:-2]) != 1 or shape[-1] == 0:
        raise refuse()
    return shape[-1]
