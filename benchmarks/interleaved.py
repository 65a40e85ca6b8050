"""Shared by the benchmarks that time variants of the threaded step against each
other in one process (``alignment.py``, ``streaming_stores.py``); it runs nothing
itself.

Each variant is a ``Trainer`` of the reference model (784-256-128-10, dropout
0.2, batch 128) on the real training images; the variants' threaded steps are
timed in chunks of 100 steps, interleaved round by round with the order reversed
every other round, so that all of them see the same phases of the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

import nnscratch as nn
from nnscratch import blas
from nnscratch.threaded import StoreChooser, ThreadedStep

BATCH = 128
CHUNK = 100


class FixedStores(StoreChooser):
    """A store chooser that never changes its mind (plain or streaming stores)."""

    def __init__(self, streaming: bool) -> None:
        super().__init__()
        self.streaming = streaming

    def next(self) -> tuple[bool, int]:
        return self.streaming, ThreadedStep.MOST_STEPS

    def record(self, streaming: bool, seconds: float, rows: int, steps: int = 1) -> None:
        self.count += steps


def threaded_steps(trainer: nn.Trainer, rows: np.ndarray) -> None:
    """The trainer's threaded steps on ``rows`` (whole batches), as ``Trainer`` takes
    them: as many per kernel call as its plan asks for (``ThreadedStep.next_call_size``)."""
    done, total = 0, len(rows) // BATCH
    while done < total:
        count = min(trainer._threaded.next_call_size(), total - done)
        trainer._run_threaded(rows[done * BATCH:(done + count) * BATCH], count)
        done += count


def parse_rounds(doc: str) -> int:
    """The command line of such a benchmark: its docstring for --help, and ROUNDS."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", nargs="?", type=int, default=20,
                        help="rounds of one 100-step chunk per variant (default 20)")
    return parser.parse_args().rounds


def reference_trainer(x: np.ndarray, y: np.ndarray, stores: StoreChooser | None = None,
                      ) -> nn.Trainer:
    """A trainer of the reference model whose steps take the threaded step, with
    ``stores`` choosing its weights' stores (default: nnscratch's own chooser)."""
    model = nn.Sequential(nn.Flatten(), nn.Dense(784, 256), nn.ReLU(), nn.Dropout(0.2),
                          nn.Dense(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Dense(128, 10),
                          seed=0)
    trainer = nn.Trainer(model, x, y, batch_size=BATCH, verbose=0)
    trainer._threaded = ThreadedStep.for_run(model, trainer.optimizer, trainer.x, None)
    if trainer._threaded is None:
        sys.exit("this machine cannot run the threaded step (see nnscratch/threaded.py)")
    trainer._threaded._buffers_for(BATCH)
    if stores is not None:
        trainer._threaded.stores = stores
    return trainer


def time_interleaved(trainers: dict[str, nn.Trainer], rounds: int,
                     after_round: Callable[[int, dict[str, list[float]]], None] | None = None,
                     ) -> dict[str, list[float]]:
    """Microseconds per step of each trainer's chunks, one chunk per round each."""
    n = len(next(iter(trainers.values())).x)
    perm = np.random.default_rng(0).permutation(n)
    steps = n // BATCH

    def chunk(trainer: nn.Trainer, k0: int) -> float:
        started = time.perf_counter()
        start = k0 % (steps - CHUNK)
        threaded_steps(trainer, perm[start * BATCH:(start + CHUNK) * BATCH])
        return (time.perf_counter() - started) / CHUNK * 1e6

    times: dict[str, list[float]] = {name: [] for name in trainers}
    with blas.one_thread():
        for trainer in trainers.values():  # warm-up: compile, fill caches
            chunk(trainer, 0)
        for r in range(rounds):
            names = list(trainers) if r % 2 == 0 else list(trainers)[::-1]
            for name in names:
                times[name].append(chunk(trainers[name], CHUNK * (r + 1)))
            if after_round is not None:
                after_round(r, times)
    return times


def print_medians(times: dict[str, list[float]], base: str) -> None:
    """Each variant's median, and the median of its per-round ratios to ``base``."""
    width = max(len(name) for name in times) + 2
    for name, ts in times.items():
        ratios = [a / b for a, b in zip(ts, times[base])]
        print(f"{name:<{width}}median {statistics.median(ts):6.0f}  x {base} "
              f"{statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print("nothing to run here: see benchmarks/alignment.py and benchmarks/streaming_stores.py")
