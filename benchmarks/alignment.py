"""What 64-byte alignment of the training arrays buys, measured in one process.

    python benchmarks/alignment.py [ROUNDS]     # default 20 rounds

Builds three identical trainers of the reference model (784-256-128-10, dropout
0.2, batch 128) on the real training images, which differ only in where their
arrays start (parameters, gradients, Adam's moments, the step's buffers):

  aligned   on a 64-byte boundary, as nnscratch allocates them (``aligned.py``)
  numpy     wherever NumPy's own allocator puts them (16-byte alignment only)
  off16     all 16 bytes past a 64-byte boundary (NumPy's worst case)

and times their threaded steps in chunks of 100, interleaved round by round
(the order reversed every other round) so that all three see the same phases of
the machine. Prints the median microseconds per step of each and the median of
the per-round ratios to ``aligned``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from interleaved import BATCH, FixedStores, parse_rounds, print_medians, reference_trainer, time_interleaved

import nnscratch as nn
from nnscratch import aligned
from nnscratch.datasets import load_fashion_mnist

ALIGNED_EMPTY = aligned.empty


def off16_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return ALIGNED_EMPTY(nbytes + 64, np.uint8)[16:16 + nbytes].view(dtype).reshape(shape)


def hot_offsets(trainer: nn.Trainer) -> list[int]:
    plan = trainer._threaded
    acts, deltas, *_ = plan._buffers_for(BATCH)
    arrays = [a for k in ("weights", "wgrads", "wm", "wv", "biases", "bgrads", "bm", "bv")
              for a in getattr(plan, k)] + list(acts[1:]) + list(deltas)
    return sorted({a.ctypes.data % 64 for a in arrays})


def main() -> None:
    rounds = parse_rounds(__doc__)
    (x, y), _ = load_fashion_mnist()

    def trainer(empty: Callable[..., np.ndarray]) -> nn.Trainer:
        aligned.empty = empty  # what Dense, Adam and the buffers allocate with
        try:  # plain stores throughout: the chooser's choices would blur the comparison
            return reference_trainer(x, y, FixedStores(False))
        finally:
            aligned.empty = ALIGNED_EMPTY

    trainers = {"aligned": trainer(ALIGNED_EMPTY),
                "numpy": trainer(lambda shape, dtype: np.empty(shape, dtype)),
                "off16": trainer(off16_empty)}
    for name, t in trainers.items():
        print(f"{name:<8} arrays start at these offsets into a cache line: {hot_offsets(t)}")
    times = time_interleaved(trainers, rounds)
    print(f"{rounds} rounds of 100 steps each, interleaved; us per step")
    print_medians(times, "aligned")


if __name__ == "__main__":
    main()
