"""Plain against streaming stores of the new weights in the threaded step, and the
chooser that picks between them (``threaded.StoreChooser``), in one process.

    python benchmarks/streaming_stores.py [ROUNDS]     # default 20 rounds

Three identical trainers of the reference model (784-256-128-10, dropout 0.2,
batch 128) on the real training images, whose threaded steps write the new
weights

  plain      with ordinary stores, always
  streaming  with streaming stores (they bypass the caches), always
  chooser    as nnscratch does: timing both every 64 steps and picking

timed in chunks of 100 steps, interleaved round by round (order reversed every
other round). Every round is printed, because this VM's phases (minutes long)
decide which store is faster: the median alone would hide that. Then the medians
and the per-round ratios to ``plain``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import nnscratch as nn
from nnscratch import blas
from nnscratch.datasets import load_fashion_mnist
from nnscratch.threaded import StoreChooser, ThreadedStep

BATCH = 128


class Always(StoreChooser):
    """A chooser that never changes its mind."""

    def __init__(self, streaming: bool) -> None:
        super().__init__()
        self.streaming = streaming

    def next(self) -> bool:
        return self.streaming

    def record(self, streaming: bool, seconds_per_row: float) -> None:
        self.count += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", nargs="?", type=int, default=20,
                        help="rounds of one 100-step chunk per trainer (default 20)")
    rounds = parser.parse_args().rounds
    (x, y), _ = load_fashion_mnist()

    def trainer(stores: StoreChooser) -> nn.Trainer:
        model = nn.Sequential(nn.Flatten(), nn.Dense(784, 256), nn.ReLU(), nn.Dropout(0.2),
                              nn.Dense(256, 128), nn.ReLU(), nn.Dropout(0.2),
                              nn.Dense(128, 10), seed=0)
        t = nn.Trainer(model, x, y, batch_size=BATCH, verbose=0)
        t._threaded = ThreadedStep.for_run(model, t.optimizer, t.x, None)
        if t._threaded is None:
            sys.exit("this machine cannot run the threaded step (see nnscratch/threaded.py)")
        t._threaded.stores = stores
        return t

    trainers = {"plain": trainer(Always(False)), "streaming": trainer(Always(True)),
                "chooser": trainer(StoreChooser())}
    perm = np.random.default_rng(0).permutation(len(x))
    steps = len(x) // BATCH

    def chunk(t: nn.Trainer, k0: int) -> float:
        started = time.perf_counter()
        for k in range(k0, k0 + 100):
            t._step(perm[(k % steps) * BATCH:][:BATCH])
        return (time.perf_counter() - started) / 100 * 1e6

    times: dict[str, list[float]] = {name: [] for name in trainers}
    print(f"{rounds} rounds of 100 steps each, interleaved; us per step")
    with blas.one_thread():
        for t in trainers.values():  # warm-up: compile, fill caches
            chunk(t, 0)
        for r in range(rounds):
            names = list(trainers) if r % 2 == 0 else list(trainers)[::-1]
            for name in names:
                times[name].append(chunk(trainers[name], 100 * (r + 1)))
            chose = trainers["chooser"]._threaded.stores.streaming
            print(f"round {r + 1:3d}: " + "  ".join(f"{n} {times[n][-1]:5.0f}" for n in trainers)
                  + f"   (chooser's last choice: {'streaming' if chose else 'plain'})", flush=True)
    for name, ts in times.items():
        ratios = [a / b for a, b in zip(ts, times["plain"])]
        print(f"{name:<10} median {statistics.median(ts):6.0f}  x plain {statistics.median(ratios):.3f} "
              f"(rounds {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
