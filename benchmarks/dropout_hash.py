"""What the dropout hash costs: the fused bias + ReLU + dropout pass of the reference
model's hidden layers (128 x 256 and 128 x 128 float32), one thread.

    python benchmarks/dropout_hash.py

Times, in one process, interleaved rounds of 2000 calls each:

  current     ``kernels.fused.bias_relu_dropout_forward``: a SplitMix64 seed per row,
              then lowbias32 per unit in 32-bit lanes (8 units per AVX2 vector)
  splitmix64  the hash used before 3df4196, written out here: SplitMix64 of each
              unit's flat position, two 64-bit multiplies per unit (AVX2 has no
              64-bit multiply, so LLVM builds each from three 32-bit ones)
  no dropout  ``kernels.fused.bias_relu_forward``: the same pass without a mask
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit

from nnscratch.kernels import fused

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, error_model="numpy")
def splitmix64_pass(z, b, key, threshold, scale, out):
    k = z.shape[1]
    zero = scale - scale
    for i in range(z.shape[0]):
        for j in range(k):
            h = key + np.uint64(i * k + j + 1) * _GOLDEN
            h = (h ^ (h >> np.uint64(30))) * _MIX1
            h = (h ^ (h >> np.uint64(27))) * _MIX2
            h = h ^ (h >> np.uint64(31))
            m = scale if (h >> np.uint64(40)) >= threshold else zero
            v = z[i, j] + b[j]
            out[i, j] = (v if not (v <= 0) else zero) * m


def main() -> None:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rng = np.random.default_rng(0)
    p, key = 0.2, 123456789
    threshold, scale = np.uint64(round(p * 2**24)), np.float32(1 / (1 - p))
    layers = [(rng.standard_normal((128, w)).astype(np.float32), np.zeros(w, np.float32))
              for w in (256, 128)]
    outs = [np.empty_like(z) for z, _ in layers]

    def current() -> None:
        for (z, b), out in zip(layers, outs):
            fused.bias_relu_dropout_forward(z, b, key, p, out)

    def splitmix64() -> None:
        for (z, b), out in zip(layers, outs):
            splitmix64_pass(z, b, np.uint64(key), threshold, scale, out)

    def no_dropout() -> None:
        for (z, b), out in zip(layers, outs):
            fused.bias_relu_forward(z, b, out)

    kinds = {"current": current, "splitmix64": splitmix64, "no dropout": no_dropout}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for fn in kinds.values():
        fn()  # compile or load
    for r in range(10):
        for name in (list(kinds) if r % 2 == 0 else list(kinds)[::-1]):
            started = time.perf_counter()
            for _ in range(2000):
                kinds[name]()
            times[name].append((time.perf_counter() - started) / 2000 * 1e6)
    print("bias + ReLU + dropout of a 128 x 256 and a 128 x 128 batch, one thread, us per call "
          "(median of 10 rounds of 2000)")
    for name, ts in times.items():
        print(f"{name:<11} {statistics.median(ts):6.1f}  ({min(ts):.1f}-{max(ts):.1f})")


if __name__ == "__main__":
    main()
