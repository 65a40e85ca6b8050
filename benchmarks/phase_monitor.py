"""Watch this machine's slow phases: where nnscratch's step time goes, chunk by chunk.

    python benchmarks/phase_monitor.py 300      # watch for 300 seconds

Trains the reference model (784-256-128-10, batch 128) in chunks of 100 steps and
prints one line per chunk: the step's total and its parts (gather, forward, loss,
backward, Adam), the 8 matrix products of the floor for the same shapes, and then,
after a 0.3 s pause in which OpenBLAS's idle worker stops spinning, Adam and the
gather run alone, 100 times each. The last three columns are controls: the gather
from an anonymous (huge-page backed) copy of the data instead of the memory-mapped
cache, and the Adam kernel on one flat set of arrays, huge-page backed or not.

What it showed here (README "Performance"): in slow phases the in-step Adam grows
3-9x and the gather 2-4x while the same work run alone does not, and with
OPENBLAS_NUM_THREADS=1 (no worker thread) the growth almost disappears.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import peers  # benchmarks/peers.py, next to this script

import nnscratch as nn
from nnscratch import kernels

B, CHUNK = 128, 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("seconds", nargs="?", type=float, default=60.0,
                        help="how long to watch (default 60)")
    seconds = parser.parse_args().seconds
    (x, y), _ = nn.load_fashion_mnist()
    y = y.astype(np.intp)
    model = nn.Sequential(nn.Flatten(), nn.Dense(784, 256), nn.ReLU(), nn.Dropout(0.2),
                          nn.Dense(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Dense(128, 10), seed=0)
    opt = nn.Adam(model.parameters())
    nn.Trainer(model, x, y, optimizer=opt, epochs=1, verbose=0).run()  # warm-up, compiles
    model.train()
    rng = np.random.default_rng(0)
    f32 = np.float32
    x_anon = np.array(x).reshape(len(x), -1)  # NumPy puts allocations >= 4 MiB on huge pages
    n = sum(p.value.size for p in model.parameters())
    big = np.zeros(4 << 20, f32)
    huge = [big[i * n:(i + 1) * n] for i in range(4)]
    small = [np.zeros(n, f32) for _ in range(4)]
    for arrays in (huge, small):
        arrays[1][:] = rng.standard_normal(n).astype(f32) * f32(1e-3)
    coef = np.array([0.9, 0.1, 0.999, 0.001, 1e-8, 1.0, 1e-3, 1.0, 1.2e-38], f32)
    batch, yb = np.empty((B, 784), f32), np.empty(B, np.intp)
    clock = time.perf_counter

    def per_call(fn) -> float:
        """Mean microseconds of fn(i) over i = 0..CHUNK-1."""
        start = clock()
        for i in range(CHUNK):
            fn(i)
        return (clock() - start) / CHUNK * 1e6

    print("time     step_us floor_us ratio | gather fwd loss bwd adam | adam_alone gather_alone"
          " | gather_anon adam_huge adam_4k", flush=True)
    end = time.time() + seconds
    while time.time() < end:
        spent: dict[str, float] = defaultdict(float)
        perm = rng.permutation(len(x))
        for step in range(CHUNK):
            idx = perm[step * B:(step + 1) * B]
            t0 = clock()
            h = model._as_batch(x, idx)
            t1 = clock()
            for stage in model._stages:
                h = stage.forward(h)
            t2 = clock()
            np.take(y, idx, out=yb)
            model.loss.forward(h, yb)
            g = model.loss.backward()
            t3 = clock()
            for i in range(len(model._stages) - 1, 0, -1):
                stage = model._stages[i]
                g = stage.backward(g, input_grad=False) if i == 1 else stage.backward(g)
            t4 = clock()
            opt.step()
            t5 = clock()
            for key, dt in (("gather", t1 - t0), ("fwd", t2 - t1), ("loss", t3 - t2),
                            ("bwd", t4 - t3), ("adam", t5 - t4)):
                spent[key] += dt / CHUNK * 1e6
        # the floor's 8 products for CHUNK steps: one "epoch" of CHUNK * B rows
        floor = peers.gemm_floor(x[:CHUNK * B], y[:CHUNK * B], epochs=1)["epoch_times"][0] / CHUNK * 1e6
        time.sleep(0.3)  # OpenBLAS's idle worker spins ~0.1 s after a product, then sleeps
        adam_alone = per_call(lambda i: opt.step())
        # the same fresh random rows as the chunk's steps: every row a cache miss
        gather_alone = per_call(lambda i: model._as_batch(x, perm[i * B:(i + 1) * B]))  # noqa: B023
        gather_anon = per_call(lambda i: kernels.gather_scale(
            x_anon, perm[i * B:(i + 1) * B], f32(1 / 255), batch))  # noqa: B023
        adam_huge = per_call(lambda i: kernels.adam_update(*huge, coef))
        adam_4k = per_call(lambda i: kernels.adam_update(*small, coef))
        total = sum(spent.values())
        print(time.strftime("%H:%M:%S"), f"{total:7.0f} {floor:7.0f} {total / floor:5.2f} |",
              " ".join(f"{spent[k]:4.0f}" for k in ("gather", "fwd", "loss", "bwd", "adam")),
              f"| {adam_alone:5.0f} {gather_alone:5.0f} | {gather_anon:5.0f} {adam_huge:5.0f} {adam_4k:5.0f}",
              flush=True)


if __name__ == "__main__":
    main()
