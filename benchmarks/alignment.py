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

import argparse
import statistics
import sys
import time

import numpy as np

import nnscratch as nn
from nnscratch import aligned, blas
from nnscratch.datasets import load_fashion_mnist
from nnscratch.threaded import ThreadedStep

BATCH = 128
ALIGNED_EMPTY = aligned.empty


def off16_empty(shape, dtype) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return ALIGNED_EMPTY(nbytes + 64, np.uint8)[16:16 + nbytes].view(dtype).reshape(shape)


def hot_offsets(trainer) -> list[int]:
    plan = trainer._threaded
    acts, deltas, _ = plan._buffers_for(BATCH)
    arrays = [a for k in ("weights", "wgrads", "wm", "wv", "biases", "bgrads", "bm", "bv")
              for a in getattr(plan, k)] + list(acts[1:]) + list(deltas)
    return sorted({a.ctypes.data % 64 for a in arrays})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", nargs="?", type=int, default=20,
                        help="rounds of one 100-step chunk per trainer (default 20)")
    rounds = parser.parse_args().rounds
    (x, y), _ = load_fashion_mnist()

    def trainer(empty) -> nn.Trainer:
        aligned.empty = empty  # what Dense, Adam and the buffers allocate with
        try:
            model = nn.Sequential(nn.Flatten(), nn.Dense(784, 256), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Dense(256, 128), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Dense(128, 10), seed=0)
            t = nn.Trainer(model, x, y, batch_size=BATCH, verbose=0)
            t._threaded = ThreadedStep.for_run(model, t.optimizer, t.x, None)
            if t._threaded is None:
                sys.exit("this machine cannot run the threaded step (see nnscratch/threaded.py)")
            t._threaded._buffers_for(BATCH)
        finally:
            aligned.empty = ALIGNED_EMPTY
        return t

    trainers = {"aligned": trainer(ALIGNED_EMPTY),
                "numpy": trainer(lambda shape, dtype: np.empty(shape, dtype)),
                "off16": trainer(off16_empty)}
    for name, t in trainers.items():
        print(f"{name:<8} arrays start at these offsets into a cache line: {hot_offsets(t)}")
    perm = np.random.default_rng(0).permutation(len(x))
    steps = len(x) // BATCH

    def chunk(t: nn.Trainer, k0: int) -> float:
        started = time.perf_counter()
        for k in range(k0, k0 + 100):
            t._step(perm[(k % steps) * BATCH:][:BATCH])
        return (time.perf_counter() - started) / 100 * 1e6

    times: dict[str, list[float]] = {name: [] for name in trainers}
    with blas.one_thread():
        for t in trainers.values():  # warm-up: compile, fill caches
            chunk(t, 0)
        for r in range(rounds):
            names = list(trainers) if r % 2 == 0 else list(trainers)[::-1]
            for name in names:
                times[name].append(chunk(trainers[name], 100 * (r + 1)))
    print(f"{rounds} rounds of 100 steps each, interleaved; us per step")
    for name, ts in times.items():
        ratios = [a / b for a, b in zip(ts, times["aligned"])]
        print(f"{name:<8} median {statistics.median(ts):6.0f}  x aligned {statistics.median(ratios):.3f} "
              f"(rounds {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
