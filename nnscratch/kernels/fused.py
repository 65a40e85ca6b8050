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
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

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


@njit(cache=True, error_model="numpy", inline="always")
def _keep_scale(key, position, threshold, scale):
    """The dropout mask entry of flat ``position``: ``scale`` if the top 24 bits
    of SplitMix64(key + (position + 1) * golden) reach ``threshold``, else 0."""
    z = key + np.uint64(position + 1) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return scale if (z >> np.uint64(40)) >= threshold else scale - scale


@njit(cache=True, error_model="numpy")
def _dropout_forward(x, key, threshold, scale, mask, out):
    xf = x.reshape(-1)
    mf = mask.reshape(-1)
    of = out.reshape(-1)
    for i in range(mf.size):
        m = _keep_scale(key, i, threshold, scale)
        mf[i] = m
        of[i] = xf[i] * m


def dropout_forward(x: np.ndarray, key: int, p: float, mask: np.ndarray, out: np.ndarray) -> None:
    # Threshold and scale are computed in Python exactly as the twin computes them.
    _dropout_forward(x, np.uint64(key), np.uint64(round(p * 2**24)),
                     mask.dtype.type(1.0 / (1.0 - p)), mask, out)


@njit(cache=True, error_model="numpy")
def bias_relu_forward(z, b, out):
    n, k = z.shape
    for i in range(n):
        for j in range(k):
            v = z[i, j] + b[j]
            out[i, j] = v if not (v <= 0) else 0


@njit(cache=True, error_model="numpy")
def _bias_relu_dropout_forward(z, b, key, threshold, scale, out):
    n, k = z.shape
    zero = scale - scale
    for i in range(n):
        for j in range(k):
            m = _keep_scale(key, i * k + j, threshold, scale)  # the mask _dropout_forward draws
            v = z[i, j] + b[j]
            out[i, j] = (v if not (v <= 0) else zero) * m


def bias_relu_dropout_forward(z: np.ndarray, b: np.ndarray, key: int, p: float,
                              out: np.ndarray) -> None:
    _bias_relu_dropout_forward(z, b, np.uint64(key), np.uint64(round(p * 2**24)),
                               out.dtype.type(1.0 / (1.0 - p)), out)


@njit(cache=True, error_model="numpy")
def relu_bias_grad(dy, y, scale, dz, db):
    n, k = dy.shape
    zero = scale - scale
    for j in range(k):
        db[j] = zero
    for i in range(n):
        for j in range(k):
            g = dy[i, j] * scale if y[i, j] > 0 else zero
            dz[i, j] = g
            db[j] += g


@njit(cache=True, error_model="numpy")
def multiply(a, b, out):
    af = a.reshape(-1)
    bf = b.reshape(-1)
    of = out.reshape(-1)
    for i in range(af.size):
        of[i] = af[i] * bf[i]


@njit(cache=True, error_model="numpy", inline="always")
def _softmax_cross_entropy_row(logits, label, dlogits, i, inv_n):
    """Row i's loss (float32); writes its dL/dlogits, already divided by N."""
    k = logits.shape[1]
    # float32 constants keep every step below in float32 (a bare 1 or 1.0 would promote to float64).
    zero = inv_n - inv_n
    one = inv_n / inv_n
    row_max = logits[i, 0]
    for j in range(1, k):
        if logits[i, j] > row_max:
            row_max = logits[i, j]
    s = zero  # not logits[i, 0] - logits[i, 0], which is NaN for an infinite logit
    for j in range(k):
        e = np.exp(logits[i, j] - row_max)
        dlogits[i, j] = e
        s += e
    loss = np.log(s) - (logits[i, label] - row_max)
    for j in range(k):
        dlogits[i, j] = dlogits[i, j] / s
    dlogits[i, label] -= one
    for j in range(k):
        dlogits[i, j] *= inv_n
    return loss


@njit(cache=True, error_model="numpy")
def softmax_cross_entropy(logits, labels, dlogits):
    n, k = logits.shape
    if n == 0:
        return np.nan
    # 1/N rounded once to the array's dtype, as in the twin.
    inv_n = dlogits.dtype.type(1.0 / n)
    total = 0.0
    for i in range(n):
        if labels[i] < 0 or labels[i] >= k:
            return -1.0
        total += _softmax_cross_entropy_row(logits, labels[i], dlogits, i, inv_n)
    return total / n


@njit(cache=True, error_model="numpy", inline="always")
def _argmax_row(logits, i):
    best = 0
    for j in range(1, logits.shape[1]):
        # Like np.argmax: the first maximum wins, and the first NaN beats everything.
        if logits[i, j] > logits[i, best] or (logits[i, j] != logits[i, j]
                                               and logits[i, best] == logits[i, best]):
            best = j
    return best


@njit(cache=True, error_model="numpy")
def count_correct(logits, labels):
    n, k = logits.shape
    correct = 0
    for i in range(n):
        correct += _argmax_row(logits, i) == labels[i]
    return correct


@njit(cache=True, error_model="numpy", inline="always")
def _adam_element(p, g, m, v, beta1, c1, beta2, c2, eps, decay, step_size, inv_sqrt_bc2, flush, zero):
    """One parameter's Adam step: the new (p, m, v)."""
    m = m * beta1 + c1 * g
    m = zero if abs(m) < flush else m  # NaN passes through, as in the twin
    v = v * beta2 + c2 * (g * g)
    v = zero if v < flush else v
    return p * decay - step_size * (m / (np.sqrt(v) * inv_sqrt_bc2 + eps)), m, v


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
        pf[i], mf[i], vf[i] = _adam_element(pf[i], gf[i], mf[i], vf[i], beta1, c1, beta2, c2, eps,
                                            decay, step_size, inv_sqrt_bc2, flush, zero)


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Hint the CPU to start loading arr[row, col] into cache (no effect on results)."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, args[1:])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
        # (address, read, high temporal locality, data cache)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(arr, row, col), codegen


_PREFETCH_ROWS = 4  # how far ahead; measured: 4 rows ahead cuts a random gather by ~35%


@njit(cache=True, error_model="numpy")
def gather_scale(src, idx, scale, out):
    n, k = out.shape
    for i in range(n):
        # Rows are scattered over the whole dataset, so each one is a cache miss:
        # ask for row i + 4 while converting row i, overlapping their latencies.
        if i + _PREFETCH_ROWS < n:
            ahead = idx[i + _PREFETCH_ROWS]
            for j in range(0, k, max(1, 64 // src.itemsize)):  # one hint per 64-byte line
                _prefetch(src, ahead, j)
        r = idx[i]
        for j in range(k):
            out[i, j] = src[r, j] * scale


@njit(cache=True, error_model="numpy")
def shift_flip(images, dy, dx, flipped, shift, out):
    # Reads each kept pixel once and writes each output pixel once; the NumPy twin
    # builds a padded copy and three broadcast index arrays instead.
    n, side, _ = images.shape
    for k in range(n):
        oy = dy[k] - shift
        ox = dx[k] - shift
        flip = flipped[k]
        for r in range(side):
            rr = r + oy
            if rr < 0 or rr >= side:
                for c in range(side):
                    out[k, r, c] = 0
                continue
            for c in range(side):
                cc = (side - 1 - c if flip else c) + ox
                if 0 <= cc < side:
                    out[k, r, c] = images[k, rr, cc]
                else:
                    out[k, r, c] = 0


# The whole training step lives in its own module (it builds on the kernels above).
from .step import train_step as train_step  # noqa: E402
