"""Where the threaded step's time goes, against the GEMM floor, in one process.

    python benchmarks/threaded_step.py [CHUNKS]     # default 8 chunks of each kind

Times, in chunks of 100 steps of the reference model (784-256-128-10, dropout
0.2, batch 128) on the real training images, interleaved so that all five see
the same phases of the machine:

  floor     the 8 matrix products of a step (np.matmul into preallocated
            outputs, OpenBLAS on its 2 threads): the harness's GEMM floor
  split     the same 8 products, split between Numba's threads the way the
            threaded step splits them (single-threaded sgemm calls; the first
            layer's inputs in pass 0, batch rows in pass 1, rows of dW in pass
            2), and nothing else (not even the sum of the first layer's pieces)
  threaded  the whole threaded step as ``Trainer`` takes it (the same products
            plus gather, bias/ReLU/dropout, loss, dz, bias gradients, Adam, and
            the Python around them), several steps per kernel call
            (``ThreadedStep.next_call_size``: 1 while the store kinds are timed, 8 of
            every 256 steps, else up to 64, ~50 ms of steps)
  one-call  the same, one step per kernel call
  layers    the layer-by-layer step (``NNSCRATCH_THREADED_STEP=0`` path)

and prints each one's median microseconds per step and its ratio to the floor
in the same round. threaded - split is what the step adds to its products;
one-call - threaded what a call from Python costs.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import numba
import numpy as np
from interleaved import threaded_steps
from numba import njit, prange

import nnscratch as nn
from nnscratch import blas
from nnscratch.datasets import load_fashion_mnist
from nnscratch.kernels.fused import _NO_TRANS, _TRANS, _address, _input_share, _sgemm
from nnscratch.threaded import ThreadedStep

BATCH = 128


@njit(parallel=True, cache=True)
def split_products(sgemm, threads, x, w1, w2, w3, h1, h2, logits, d2, d1, g1, g2, g3, partials):
    """The step's 8 products, shared out as ``kernels.fused.train_steps`` shares them."""
    n = x.shape[0]
    for t in prange(threads):
        c0, c1 = _input_share(t, threads, 784), _input_share(t + 1, threads, 784)
        out = h1 if t == 0 else partials[t - 1]
        _sgemm(sgemm, _NO_TRANS, _NO_TRANS, n, 256, c1 - c0, _address(x, 0, c0), 784,
               _address(w1, c0, 0), 256, _address(out, 0, 0), 256)
    for t in prange(threads):
        r0, r1 = t * n // threads, (t + 1) * n // threads
        m = r1 - r0
        _sgemm(sgemm, _NO_TRANS, _NO_TRANS, m, 128, 256, _address(h1, r0, 0), 256,
               _address(w2, 0, 0), 128, _address(h2, r0, 0), 128)
        _sgemm(sgemm, _NO_TRANS, _NO_TRANS, m, 10, 128, _address(h2, r0, 0), 128,
               _address(w3, 0, 0), 10, _address(logits, r0, 0), 10)
        _sgemm(sgemm, _NO_TRANS, _TRANS, m, 128, 10, _address(logits, r0, 0), 10,
               _address(w3, 0, 0), 10, _address(d2, r0, 0), 128)
        _sgemm(sgemm, _NO_TRANS, _TRANS, m, 256, 128, _address(d2, r0, 0), 128,
               _address(w2, 0, 0), 128, _address(d1, r0, 0), 256)
    for t in prange(threads):
        for a, dz, g, k_in, k_out in ((x, d1, g1, 784, 256), (h1, d2, g2, 256, 128),
                                      (h2, logits, g3, 128, 10)):
            if k_in == 784:  # the first layer: the rows whose inputs this thread had
                i0, i1 = _input_share(t, threads, k_in), _input_share(t + 1, threads, k_in)
            else:
                i0, i1 = t * k_in // threads, (t + 1) * k_in // threads
            _sgemm(sgemm, _TRANS, _NO_TRANS, i1 - i0, k_out, n, _address(a, 0, i0), k_in,
                   _address(dz, 0, 0), k_out, _address(g, i0, 0), k_out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chunks", nargs="?", type=int, default=8,
                        help="chunks of 100 steps of each kind (default 8)")
    chunks = parser.parse_args().chunks
    if not blas.available():
        sys.exit("NumPy's OpenBLAS (cblas_sgemm with 64-bit integers) not found")
    (x, y), _ = load_fashion_mnist()
    model = nn.Sequential(nn.Flatten(), nn.Dense(784, 256), nn.ReLU(), nn.Dropout(0.2),
                          nn.Dense(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Dense(128, 10), seed=0)
    trainer = nn.Trainer(model, x, y, batch_size=BATCH, verbose=0)
    plan = ThreadedStep.for_run(model, trainer.optimizer, trainer.x, None)
    if plan is None:
        sys.exit("this machine cannot run the threaded step (see nnscratch/threaded.py)")
    images = (x.reshape(len(x), -1)[:20000] / np.float32(255)).astype(np.float32)
    weights = [d.params["weight"].copy() for d in plan.dense]
    shapes = [(BATCH, 256), (BATCH, 128), (BATCH, 10), (BATCH, 128), (BATCH, 256),
              (784, 256), (256, 128), (128, 10)]
    outs = [np.zeros(s, np.float32) for s in shapes]
    threads = numba.get_num_threads()
    partials = np.zeros((threads - 1, BATCH, 256), np.float32)
    shuffles = np.random.default_rng(0)
    perm = shuffles.permutation(len(x))

    def batch(k: int) -> np.ndarray:
        start = (k * BATCH) % (len(images) - BATCH)
        return images[start:start + BATCH]

    def floor(k: int) -> None:
        h1, h2, logits, d2, d1, g1, g2, g3 = outs
        xb = batch(k)
        np.matmul(xb, weights[0], out=h1)
        np.matmul(h1, weights[1], out=h2)
        np.matmul(h2, weights[2], out=logits)
        np.matmul(h2.T, logits, out=g3)
        np.matmul(logits, weights[2].T, out=d2)
        np.matmul(h1.T, d2, out=g2)
        np.matmul(d2, weights[1].T, out=d1)
        np.matmul(xb.T, d1, out=g1)

    def split(k: int) -> None:
        split_products(blas.SGEMM, threads, batch(k), *weights, *outs, partials)

    def rows(k: int) -> np.ndarray:  # the chunk's 100 batches, from batch k of perm
        start = k % (len(x) // BATCH - 100)
        return perm[start * BATCH:(start + 100) * BATCH]

    def layers(k: int) -> None:
        chunk_rows = rows(k)
        for b in range(100):
            trainer._step(chunk_rows[b * BATCH:(b + 1) * BATCH])

    def one_call(k: int) -> None:
        chunk_rows = rows(k)
        for b in range(100):
            trainer._run_threaded(chunk_rows[b * BATCH:(b + 1) * BATCH], 1)

    def chunk(kind: str, k0: int) -> float:
        # A new shuffle for every chunk, so that a chunk does not find its rows in
        # cache, fetched by the chunk before it on the same rows; in an epoch each
        # batch's rows come from memory (the dataset, 47 MB, outgrows the cache).
        nonlocal perm
        perm = shuffles.permutation(len(x))
        trainer._threaded = plan if kind in ("threaded", "one-call") else None
        started = time.perf_counter()
        if kind in ("floor", "split"):
            with blas.one_thread() if kind == "split" else contextlib.nullcontext():
                for k in range(k0, k0 + 100):
                    (floor if kind == "floor" else split)(k)
        elif kind == "layers":
            layers(k0)
        else:
            with blas.one_thread():
                if kind == "threaded":
                    threaded_steps(trainer, rows(k0))
                else:
                    one_call(k0)
        return (time.perf_counter() - started) / 100 * 1e6

    kinds = ("floor", "split", "threaded", "one-call", "layers")
    for kind in kinds:  # warm-up: compile, fill caches
        chunk(kind, 0)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for c in range(chunks):
        order = kinds if c % 2 == 0 else kinds[::-1]
        for kind in order:
            times[kind].append(chunk(kind, 100 * (c + 1)))
    print(f"{numba.threading_layer()} threads: {threads}; {chunks} chunks of 100 steps each, "
          "interleaved; us per step")
    for kind in kinds:
        ratios = [a / b for a, b in zip(times[kind], times["floor"])]
        print(f"{kind:<9} median {statistics.median(times[kind]):6.0f}  x floor "
              f"{statistics.median(ratios):.2f} (chunks {min(ratios):.2f}-{max(ratios):.2f})  "
              + " ".join(f"{t:.0f}" for t in times[kind]))


if __name__ == "__main__":
    main()
