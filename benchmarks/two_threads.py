"""Can our own two threads beat OpenBLAS's two threads plus serial kernels?

    pip install threadpoolctl   # benchmark-only, see requirements.txt
    python benchmarks/two_threads.py

nnscratch runs its elementwise kernels on one core while OpenBLAS uses both for
the matrix products. Two ways to put the second core to work, each timed
against what nnscratch does now, in one process, three rounds:

1. Split Adam across the main thread and a persistent Python worker thread
   (the same kernel compiled with ``nogil=True``, each thread on half of every
   array), for the default recipe's 1.33M parameters: alone, and right after a
   matrix product as in a training step.
2. Data parallel: OpenBLAS limited to one thread, each half of the reference
   batch (784-256-128-10, batch 128) runs the step's 8 matrix products in its
   own Python thread. Only the products are timed, for one epoch's 469 steps,
   against the same products on the full batch with OpenBLAS's two threads
   (the GEMM floor of ``bench_train.py``).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from nnscratch.kernels import flush_threshold, fused

# The serial kernel's own loop, compiled again so that it releases the GIL.
adam_nogil = njit(nogil=True, error_model="numpy", cache=True)(fused.adam_update.py_func)


def per_call(fn, n: int) -> float:
    """Seconds per call of fn, over n calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def adam_split(rng: np.random.Generator, pool: ThreadPoolExecutor, rounds: int = 3) -> None:
    n = 784 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10  # the default recipe's parameters
    p, g, m = (rng.standard_normal(n, dtype=np.float32) for _ in range(3))
    v = np.abs(rng.standard_normal(n, dtype=np.float32))
    coef = np.array([0.9, 0.1, 0.999, 0.001, 1e-8, 1.0, 1e-5, 31.6,
                     flush_threshold(np.float32, 1e-8, 31.6)], np.float32)
    half = n // 2
    # Slices, not index ranges: a loop from 0 lets Numba drop negative-index
    # handling and vectorise, exactly as in the kernel nnscratch uses.
    lower = (p[:half], g[:half], m[:half], v[:half], coef)
    upper = (p[half:], g[half:], m[half:], v[half:], coef)

    def serial() -> None:
        fused.adam_update(p, g, m, v, coef)

    def split() -> None:
        other = pool.submit(adam_nogil, *upper)
        adam_nogil(*lower)
        other.result()

    x = rng.standard_normal((256, 784), dtype=np.float32)
    w = rng.standard_normal((784, 1024), dtype=np.float32)
    out = np.empty((256, 1024), np.float32)

    def after_matmul(fn):
        def both() -> None:
            np.matmul(x, w, out=out)
            fn()
        return both

    serial(), split()  # compile (or load from the cache)
    print(f"Adam over {n:,} float32 parameters (ms per call)")
    print(f"{'':8}{'serial':>10}{'2 threads':>11}{'matmul':>10}{'+serial':>10}{'+2 threads':>12}")
    for r in range(1, rounds + 1):
        times = [per_call(f, 200) for f in (serial, split, after_matmul(lambda: None),
                                            after_matmul(serial), after_matmul(split))]
        print(f"round {r} " + "".join(f"{t * 1e3:>{w}.3f}" for t, w in zip(times, (10, 11, 10, 10, 12))))


def split_batch(rng: np.random.Generator, pool: ThreadPoolExecutor, rounds: int = 3) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("\nskipped the split-batch measurement: it needs threadpoolctl to limit OpenBLAS "
              "to one thread (pip install -r benchmarks/requirements.txt)")
        return

    dims = [784, 256, 128, 10]
    weights = [rng.standard_normal((a, b), dtype=np.float32) for a, b in zip(dims, dims[1:])]

    def buffers(rows: int):
        x = rng.standard_normal((rows, dims[0]), dtype=np.float32)
        outs = [np.empty((rows, d), np.float32) for d in dims[1:]]
        grads = [np.empty_like(w) for w in weights]
        dxs = [np.empty((rows, d), np.float32) for d in dims[:-1]]
        return x, outs, grads, dxs

    def products(x, outs, grads, dxs) -> None:
        """The 8 matrix products of one step: 3 forward, 3 dW, dX of the upper two."""
        a = x
        for w, out in zip(weights, outs):
            np.matmul(a, w, out=out)
            a = out
        dz = outs[-1]
        for i in (2, 1, 0):
            np.matmul((x if i == 0 else outs[i - 1]).T, dz, out=grads[i])
            if i:
                np.matmul(dz, weights[i].T, out=dxs[i])
                dz = dxs[i]

    full, lower, upper = buffers(128), buffers(64), buffers(64)
    steps = 60000 // 128

    def epoch(fn) -> float:
        return per_call(fn, steps) * steps

    def halves() -> None:
        other = pool.submit(products, *upper)
        products(*lower)
        other.result()

    print("\nthe reference step's 8 matrix products, one epoch (s)")
    print(f"{'':8}{'OpenBLAS 2 threads':>20}{'2 Python threads x 1-thread OpenBLAS':>38}")
    for r in range(1, rounds + 1):
        ours = epoch(lambda: products(*full))
        with threadpool_limits(1, user_api="blas"):
            theirs = epoch(halves)
        print(f"round {r} {ours:>20.3f}{theirs:>38.3f}")


def main() -> None:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rng = np.random.default_rng(0)
    with ThreadPoolExecutor(1) as pool:
        adam_split(rng, pool)
        split_batch(rng, pool)


if __name__ == "__main__":
    main()
