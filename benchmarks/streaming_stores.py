"""Plain against streaming stores of the new weights in the threaded step, and the
chooser that picks between them (``threaded.StoreChooser``), in one process.

    python benchmarks/streaming_stores.py [ROUNDS]     # default 20 rounds

Three identical trainers of the reference model (784-256-128-10, dropout 0.2,
batch 128) on the real training images, whose threaded steps write the new
weights

  plain      with ordinary stores, always
  streaming  with streaming stores (they bypass the caches), always
  chooser    as nnscratch does: timing both every 256 steps (64 before
             e76b96f's calls of several steps) and picking

timed in chunks of 100 steps, interleaved round by round (order reversed every
other round). Every round is printed, because this VM's phases (minutes long)
decide which store is faster: the median alone would hide that. Then the medians
and the per-round ratios to ``plain``.
"""

from __future__ import annotations

from interleaved import FixedStores, parse_rounds, print_medians, reference_trainer, time_interleaved

from nnscratch.datasets import load_fashion_mnist
from nnscratch.threaded import StoreChooser


def main() -> None:
    rounds = parse_rounds(__doc__)
    (x, y), _ = load_fashion_mnist()
    trainers = {"plain": reference_trainer(x, y, FixedStores(False)),
                "streaming": reference_trainer(x, y, FixedStores(True)),
                "chooser": reference_trainer(x, y, StoreChooser())}

    def report(r: int, times: dict[str, list[float]]) -> None:
        chose = trainers["chooser"]._threaded.stores.streaming
        print(f"round {r + 1:3d}: " + "  ".join(f"{n} {times[n][-1]:5.0f}" for n in trainers)
              + f"   (chooser's last choice: {'streaming' if chose else 'plain'})", flush=True)

    print(f"{rounds} rounds of 100 steps each, interleaved; us per step")
    times = time_interleaved(trainers, rounds, report)
    print_medians(times, "plain")


if __name__ == "__main__":
    main()
