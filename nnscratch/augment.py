"""Data augmentation for image batches: random shifts and horizontal flips.

Clothes stay the same class when moved by a pixel or two or mirrored left to
right, so showing the network such variants during training is free extra
data. Applied per batch, after gathering, with the model's generator.
"""

from __future__ import annotations

import numpy as np

from . import kernels


class RandomShiftFlip:
    """Shift each image by up to ``max_shift`` pixels in each direction (the
    uncovered border is 0, the background) and mirror it with probability
    ``flip``. Works on batches of shape (N, H, W) or (N, H*W) of square images.

    Output pixel (r, c) of image n reads input pixel (r + dy_n - s, c' + dx_n - s),
    0 outside the frame, with c' = W-1-c for flipped images and dy_n, dx_n drawn
    from 0..2s (``kernels.shift_flip``).
    """

    def __init__(self, max_shift: int = 2, flip: float = 0.5) -> None:
        if not isinstance(max_shift, int) or max_shift < 0:
            raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}")
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {flip!r}")
        self.max_shift, self.flip = max_shift, flip

    def config(self) -> dict[str, float]:
        return {"max_shift": self.max_shift, "flip": self.flip}

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = batch.shape[0]
        side = int(round(np.sqrt(batch[0].size)))
        if side * side != batch[0].size:
            raise ValueError(f"RandomShiftFlip needs square images, got {batch[0].size} values each")
        s = self.max_shift
        if 2 * s >= side:  # the item could leave the frame entirely
            raise ValueError(f"max_shift {s} is too large for {side}x{side} images: "
                             f"use at most {(side - 1) // 2}")
        dy, dx = rng.integers(0, 2 * s + 1, size=(2, n))
        flipped = rng.random(n) < self.flip
        images = np.ascontiguousarray(batch).reshape(n, side, side)
        out = np.empty_like(images)
        # Numba compiles for booleans, integers and floats of 32/64 bits; other
        # dtypes (float16, objects) take the NumPy twin, which handles any.
        numba_ok = images.dtype.kind in "biufc" and images.dtype != np.float16
        shift_flip = kernels.shift_flip if numba_ok else kernels.reference.shift_flip
        shift_flip(images, dy, dx, flipped, s, out)
        return out.reshape(batch.shape)
