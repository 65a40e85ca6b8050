"""Numba kernels: the same functions as ``reference.py``, one pass over memory each.

Read ``reference.py`` first; each function here computes the same result with
explicit loops that Numba compiles (``cache=True``: compiled once per signature
and kept on disk). Scalars come from arguments already in the arrays' dtype and
no float literal enters the arithmetic, so float32 stays float32. Arrays must be
C-contiguous (the layers guarantee it). ``error_model="numpy"`` drops Python's
zero-division check from every division, which would stop LLVM from
vectorising the loops (x / 0 gives inf or nan, as in NumPy).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S24 = float(2**24)


@njit(cache=True, error_model="numpy")
def add_bias(z, b, out):
    n, k = z.shape
    for i in range(n):
        for j in range(k):
            out[i, j] = z[i, j] + b[j]


@njit(cache=True, error_model="numpy")
def relu_forward(x, out):
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for i in range(xf.size):
        v = xf[i]
        # "not (v <= 0)" rather than "v > 0" lets NaN through, like np.maximum.
        of[i] = v if not (v <= 0) else 0


@njit(cache=True, error_model="numpy")
def relu_backward(dy, y, out):
    df = dy.reshape(-1)
    yf = y.reshape(-1)
    of = out.reshape(-1)
    for i in range(df.size):
        of[i] = df[i] if yf[i] > 0 else 0


@njit(cache=True, error_model="numpy")
def _dropout_forward(x, key, threshold, scale, mask, out):
    xf = x.reshape(-1)
    mf = mask.reshape(-1)
    of = out.reshape(-1)
    zero = scale - scale
    for i in range(mf.size):
        z = key + np.uint64(i + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        m = scale if (z >> np.uint64(40)) >= threshold else zero
        mf[i] = m
        of[i] = xf[i] * m


def dropout_forward(x: np.ndarray, key: int, p: float, mask: np.ndarray, out: np.ndarray) -> None:
    # Threshold and scale are computed in Python exactly as the twin computes them.
    _dropout_forward(x, np.uint64(key), np.uint64(round(p * 2**24)),
                     mask.dtype.type(1.0 / (1.0 - p)), mask, out)


@njit(cache=True, error_model="numpy")
def multiply(a, b, out):
    af = a.reshape(-1)
    bf = b.reshape(-1)
    of = out.reshape(-1)
    for i in range(af.size):
        of[i] = af[i] * bf[i]


@njit(cache=True, error_model="numpy")
def softmax_cross_entropy(logits, labels, dlogits):
    n, k = logits.shape
    inv_n = dlogits.dtype.type(1.0) / n
    total = 0.0
    for i in range(n):
        row_max = logits[i, 0]
        for j in range(1, k):
            if logits[i, j] > row_max:
                row_max = logits[i, j]
        s = logits[i, 0] - logits[i, 0]
        for j in range(k):
            e = np.exp(logits[i, j] - row_max)
            dlogits[i, j] = e
            s += e
        label = labels[i]
        total += np.log(s) - (logits[i, label] - row_max)
        for j in range(k):
            dlogits[i, j] = dlogits[i, j] / s
        dlogits[i, label] -= 1
        for j in range(k):
            dlogits[i, j] *= inv_n
    return total / n


@njit(cache=True, error_model="numpy")
def adam_update(param, grad, m, v, coef):
    beta1, c1, beta2, c2, eps, decay, step_size, inv_sqrt_bc2, flush = (
        coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], coef[6], coef[7], coef[8])
    zero = flush - flush  # a zero of the arrays' dtype: keeps the loop in float32
    pf = param.reshape(-1)
    gf = grad.reshape(-1)
    mf = m.reshape(-1)
    vf = v.reshape(-1)
    for i in range(pf.size):
        g = gf[i]
        mi = mf[i] * beta1 + c1 * g
        mi = zero if abs(mi) < flush else mi  # NaN passes through, as in the twin
        vi = vf[i] * beta2 + c2 * (g * g)
        vi = zero if vi < flush else vi
        mf[i] = mi
        vf[i] = vi
        pf[i] = pf[i] * decay - step_size * (mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps))


@njit(cache=True, error_model="numpy")
def gather_scale(src, idx, scale, out):
    n, k = out.shape
    for i in range(n):
        r = idx[i]
        for j in range(k):
            out[i, j] = src[r, j] * scale
