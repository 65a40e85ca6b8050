"""Why nnscratch's kernels are single-threaded: Numba threads next to OpenBLAS.

    python benchmarks/parallel_adam.py

Times a matrix product (OpenBLAS, 2 threads) followed by an Adam update of a
784x256 parameter, once with the serial kernel nnscratch uses and once with the
same loop under ``numba.prange``. OpenBLAS's worker thread keeps spinning for a
while after each product, so a parallel Numba region right after it fights for
the cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit, prange

from nnscratch.kernels import flush_threshold, fused


@njit(parallel=True, error_model="numpy")
def adam_parallel(param, grad, m, v, coef):
    beta1, c1, beta2, c2, eps, decay, step_size, inv_sqrt_bc2, flush = coef
    zero = flush - flush
    for i in prange(param.size):
        g = grad[i]
        mi = m[i] * beta1 + c1 * g
        mi = zero if abs(mi) < flush else mi
        vi = v[i] * beta2 + c2 * (g * g)
        vi = zero if vi < flush else vi
        m[i], v[i] = mi, vi
        param[i] = param[i] * decay - step_size * (mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps))


def main() -> None:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 784), dtype=np.float32)
    w = rng.standard_normal((784, 256), dtype=np.float32)
    out = np.empty((128, 256), np.float32)
    p, g, m = (rng.standard_normal(784 * 256, dtype=np.float32) for _ in range(3))
    v = np.abs(rng.standard_normal(784 * 256, dtype=np.float32))
    coef = np.array([0.9, 0.1, 0.999, 0.001, 1e-8, 1.0, 1e-2, 31.6,
                     flush_threshold(np.float32, 1e-8, 31.6)], np.float32)
    for name, adam in (("serial (nnscratch)", fused.adam_update), ("numba prange", adam_parallel)):
        adam(p, g, m, v, coef)  # compile
        start = time.perf_counter()
        for _ in range(300):
            np.matmul(x, w, out=out)
            adam(p, g, m, v, coef)
        print(f"matmul + {name:<20} {(time.perf_counter() - start) / 300 * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
