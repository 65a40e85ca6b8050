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
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # the dropout hash's constants: see reference.py
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN32, _LOWBIAS1, _LOWBIAS2 = 0x9E3779B9, 0x7FEB352D, 0x846CA68B
_S24 = float(2**24)


@njit(cache=True, error_model="numpy", inline="always")
def _bias_rows(z, b, out, r0, r1):
    for i in range(r0, r1):
        for j in range(z.shape[1]):
            out[i, j] = z[i, j] + b[j]


@njit(cache=True, error_model="numpy")
def add_bias(z, b, out):
    _bias_rows(z, b, out, 0, z.shape[0])


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
def _row_seed(key, row):
    """The dropout seed of a row: the top 32 bits of SplitMix64(key + (row + 1) * golden)."""
    z = key + np.uint64(row + 1) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return (z ^ (z >> np.uint64(31))) >> np.uint64(32)


@intrinsic
def _keeps(typingctx, seed, column, threshold):
    """Whether the unit at ``column`` of a row with ``seed`` is kept: the top 24
    bits of lowbias32(seed ^ (column * golden32)) reach ``threshold``. Written in
    32-bit LLVM integers (the arguments truncated; the threshold is below 2**24)
    because Numba would widen Python-level arithmetic to 64 bits, and then LLVM
    could not put 8 units in each AVX2 vector."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)

        def const(value):
            return ir.Constant(i32, value - 2**32 if value >= 2**31 else value)

        def xorshift(v, bits):
            return builder.xor(v, builder.lshr(v, const(bits)))
        seed32, column32, threshold32 = (builder.trunc(a, i32) for a in args)
        v = builder.xor(seed32, builder.mul(column32, const(_GOLDEN32)))
        v = builder.mul(xorshift(v, 16), const(_LOWBIAS1))
        v = builder.mul(xorshift(v, 15), const(_LOWBIAS2))
        v = xorshift(v, 16)
        return builder.icmp_unsigned(">=", builder.lshr(v, const(8)), threshold32)
    if not all(isinstance(t, types.Integer) for t in (seed, column, threshold)):
        return None
    return types.boolean(seed, column, threshold), codegen


@njit(cache=True, error_model="numpy")
def _dropout_forward(x, key, threshold, scale, mask, out, cols):
    xf = x.reshape(-1)
    mf = mask.reshape(-1)
    of = out.reshape(-1)
    zero = scale - scale
    for start in range(0, xf.size, max(cols, 1)):  # (max: no rows, but a valid step, if cols is 0)
        seed = _row_seed(key, start // cols)
        # Slices from 0: Numba then vectorises the loop.
        xr, mr, orow = xf[start:start + cols], mf[start:start + cols], of[start:start + cols]
        for c in range(cols):
            m = scale if _keeps(seed, c, threshold) else zero
            mr[c] = m
            orow[c] = xr[c] * m


def dropout_forward(x: np.ndarray, key: int, p: float, mask: np.ndarray, out: np.ndarray) -> None:
    # Threshold and scale are computed in Python exactly as the twin computes them.
    _dropout_forward(x, np.uint64(key), np.uint64(round(p * 2**24)),
                     mask.dtype.type(1.0 / (1.0 - p)), mask, out, mask.shape[-1] if mask.ndim else 1)


@njit(cache=True, error_model="numpy", inline="always")
def _bias_relu_rows(z, b, out, r0, r1):
    for i in range(r0, r1):
        for j in range(z.shape[1]):
            v = z[i, j] + b[j]
            out[i, j] = v if not (v <= 0) else 0


@njit(cache=True, error_model="numpy", inline="always")
def _bias_relu_dropout_rows(z, b, key, threshold, scale, out, r0, r1):
    zero = scale - scale
    for i in range(r0, r1):
        seed = _row_seed(key, i)
        z_row, out_row = z[i], out[i]
        for j in range(z.shape[1]):
            m = scale if _keeps(seed, j, threshold) else zero  # the mask _dropout_forward draws
            v = z_row[j] + b[j]
            out_row[j] = (v if not (v <= 0) else zero) * m


@njit(cache=True, error_model="numpy")
def bias_relu_forward(z, b, out):
    _bias_relu_rows(z, b, out, 0, z.shape[0])


@njit(cache=True, error_model="numpy")
def _bias_relu_dropout_forward(z, b, key, threshold, scale, out):
    _bias_relu_dropout_rows(z, b, key, threshold, scale, out, 0, z.shape[0])


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


@njit(cache=True, error_model="numpy", inline="always")
def _gather_columns(src, idx, scale, out, c0, c1):
    """out[:, c0:c1] = src[idx, c0:c1] * scale: all of the batch's rows, a band of
    their columns (the threaded step gives each thread its own band)."""
    step = max(1, 64 // src.itemsize)  # one prefetch hint per 64-byte line
    n = out.shape[0]
    for i in range(n):
        # Rows are scattered over the whole dataset, so each one is a cache miss:
        # ask for row i + 4 while converting row i, overlapping their latencies.
        if i + _PREFETCH_ROWS < n:
            ahead = idx[i + _PREFETCH_ROWS]
            for j in range(c0, c1, step):
                _prefetch(src, ahead, j)
        row_in, row_out = src[idx[i], c0:c1], out[i, c0:c1]
        for j in range(c1 - c0):
            row_out[j] = row_in[j] * scale


@njit(cache=True, error_model="numpy")
def gather_scale(src, idx, scale, out):
    _gather_columns(src, idx, scale, out, 0, out.shape[1])


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

# ---- the whole training step, on Numba's threads ---------------------------------
#
# One whole training step of an MLP in three parallel passes over Numba's threads.
#
# Read ``reference._train_step`` first: it computes the same step in plain NumPy
# with the twin kernels. The network is Dense -> ReLU [-> Dropout] blocks and a
# last Dense, trained with softmax cross-entropy and Adam. Each of the T threads
# calls single-threaded BLAS on its share of every matrix product (OpenBLAS's own
# threads are held at one meanwhile, ``blas.one_thread``) and does the
# elementwise work on the same share while it is still in cache:
#
#     pass 0, input columns c0:c1 (thread t of T)
#         gather + scale those columns of the batch's rows;  the first layer's
#         partial product  P_t = a0[:, c0:c1] @ W0[c0:c1]  (BLAS)
#     pass 1, rows r0:r1 of the batch (all partial products are ready)
#         z0 = P_0 + ... + P_{T-1};  then for each layer  z = a @ W  (BLAS; the first
#         layer's is z0), a' = relu(z + b) * dropout mask (last layer: z + b);  loss,
#         dL/dlogits and argmax of the rows;  then down the layers  da = dz @ W^T
#         (BLAS),  dz_below = da * s where a > 0 else 0
#     pass 2, rows i0:i1 of every layer's W (all rows of the batch are ready; for
#     the first layer i0:i1 = c0:c1)
#         dW[i0:i1] = a[:, i0:i1]^T @ dz  (BLAS),  then Adam on W[i0:i1] while
#         dW[i0:i1] is in cache;  and for columns j0:j1, db = sum_n dz, Adam on b
#
# ``train_steps`` runs K such steps per call from Python, one after another.
#
# Why the first layer is split by its input columns in pass 0: then each thread
# reads only the rows of W0 that it updated itself in the previous step's pass
# 2 (they stay in its own cache; the largest matrix never travels between
# cores), and the batch's gather is still shared out, each thread fetching its
# columns of every row. The price is the partial sums, 2 x 128 x 256 floats
# against W0's 784 x 256 for the reference model (measured: the step took
# ~0.95x the time of the row split; ``docs/runs/bench/first-layer-split.txt``).
#
# Every value is computed by the same formula, in the same order, as the
# one-thread path (the fused blocks, the loss kernel, Adam); only BLAS may round
# differently, since OpenBLAS picks its kernels by matrix size and here gets
# pieces of each product, and the first layer's product is summed from T pieces,
# so runs agree with the layer-by-layer ones to float32 rounding, not bit for
# bit (tests hold them close). For a given number of threads a run is
# reproducible. Why the threads are our own and not
# OpenBLAS's: OpenBLAS's idle worker keeps spinning on the second core after each
# product, slowing the one-thread elementwise passes in between; here both cores
# do both kinds of work, and Adam runs on both.
#
# It lives in this file, not a module of its own, because it inlines the
# per-element functions above, and Numba's on-disk cache only notices changes
# to the file that defines a function: an edit here must recompile the step too.

_NO_TRANS, _TRANS = 111, 112  # CBLAS's enums; 101 is row-major


@intrinsic
def _address(typingctx, arr, row, col):
    """The address of arr[row, col], as an integer."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, args[1:])
        return builder.ptrtoint(ptr, ir.IntType(64))
    return types.int64(arr, row, col), codegen


@intrinsic
def _sgemm(typingctx, fn, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc):
    """C = op(A) @ op(B), row-major float32, through the cblas_sgemm (64-bit integers)
    at address ``fn``. The address comes in as an argument, never as a constant,
    so the compiled code stays valid in the on-disk cache across processes."""
    def codegen(context, builder, signature, args):
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, f32, i8p, i64, i8p,
                                               i64, f32, i8p, i64])
        vals = [context.cast(builder, v, t, types.int64) for v, t in zip(args, signature.args)]
        fp = builder.inttoptr(vals[0], fnty.as_pointer())
        builder.call(fp, [ir.Constant(i32, 101), builder.trunc(vals[1], i32),
                          builder.trunc(vals[2], i32), vals[3], vals[4], vals[5],
                          ir.Constant(f32, 1.0), builder.inttoptr(vals[6], i8p), vals[7],
                          builder.inttoptr(vals[8], i8p), vals[9], ir.Constant(f32, 0.0),
                          builder.inttoptr(vals[10], i8p), vals[11]])
        return context.get_dummy_value()
    return types.void(fn, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc), codegen


def _is_float32_c_array(t) -> bool:
    return isinstance(t, types.Array) and t.dtype == types.float32 and t.layout == "C"


@intrinsic
def _copy16_streaming(typingctx, dst, di, src, si):
    """dst[di:di + 16] = src[si:si + 16] (1-D float32), as one 64-byte store that
    bypasses the caches (LLVM's !nontemporal: ``vmovntps``). dst[di] must be
    64-byte aligned."""
    if not (_is_float32_c_array(dst) and _is_float32_c_array(src)
            and dst.ndim == 1 and src.ndim == 1):
        return None  # a typing error: 16 float32s are all this copies

    def codegen(context, builder, signature, args):
        vec = ir.VectorType(ir.FloatType(), 16)
        dst_ary = context.make_array(signature.args[0])(context, builder, args[0])
        src_ary = context.make_array(signature.args[2])(context, builder, args[2])
        dst_ptr = cgutils.get_item_pointer(context, builder, signature.args[0], dst_ary, [args[1]])
        src_ptr = cgutils.get_item_pointer(context, builder, signature.args[2], src_ary, [args[3]])
        value = builder.load(builder.bitcast(src_ptr, vec.as_pointer()), align=4)
        store = builder.store(value, builder.bitcast(dst_ptr, vec.as_pointer()), align=64)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()
    return types.void(dst, di, src, si), codegen


@intrinsic
def _store_fence(typingctx):
    """SFENCE: streaming stores are weakly ordered, so they are fenced before
    the other thread may read the weights they wrote."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse.sfence")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


STREAM_CHUNK = 256  # weights per piece of the streaming update: the scratch rows' length


@njit(cache=True, error_model="numpy")
def _adam_streaming(wf, gf, mf, vf, head, scratch, beta1, c1, beta2, c2, eps, decay, step_size,
                    inv_sqrt_bc2, flush, zero):
    """Adam on wf..vf, the same values as the plain loop, but the new weights
    leave through streaming stores (see ``train_steps``): computed into
    ``scratch`` (in L1) a piece at a time and copied out 16 at once, except the
    first ``head`` (up to the first 64-byte boundary) and the last few, copied
    plainly. (Not inlined into the step: that made the first run, which compiles
    it, peak ~6 MiB higher.)"""
    total = wf.size
    start = 0
    while start < total:
        on_boundary = start >= head
        stop = min(total, (start + STREAM_CHUNK) if on_boundary else head)
        wc, gc, mc, vc = wf[start:stop], gf[start:stop], mf[start:stop], vf[start:stop]
        for e in range(stop - start):
            scratch[e], mc[e], vc[e] = _adam_element(wc[e], gc[e], mc[e], vc[e], beta1, c1, beta2,
                                                     c2, eps, decay, step_size, inv_sqrt_bc2,
                                                     flush, zero)
        whole = (stop - start) // 16 * 16 if on_boundary else 0
        for q in range(0, whole, 16):
            _copy16_streaming(wc, q, scratch, q)
        for q in range(whole, stop - start):
            wc[q] = scratch[q]
        start = stop
    _store_fence()


@njit(cache=True, error_model="numpy", inline="always")
def _input_share(t, threads, k):
    """Where thread t's input columns (the first layer's rows of W) begin, for k
    columns: whole 16-column pieces, so that no cache line of the float32 batch
    is written by two threads."""
    pieces = (k + 15) // 16
    return min(k, t * pieces // threads * 16)


@njit(cache=True, error_model="numpy")
def _inputs_pass(sgemm, t, threads, src, idx, scale, acts, weights, partials):
    """Pass 0 for thread t: its input columns of the batch, and its partial
    product of the first layer, into acts[1] (thread 0) or partials[t - 1]."""
    a, w = acts[0], weights[0]
    n = a.shape[0]
    k_in, k_out = w.shape
    c0, c1 = _input_share(t, threads, k_in), _input_share(t + 1, threads, k_in)
    out = acts[1] if t == 0 else partials[t - 1]
    if c1 > c0:
        _gather_columns(src, idx, scale, a, c0, c1)
        _sgemm(sgemm, _NO_TRANS, _NO_TRANS, n, k_out, c1 - c0, _address(a, 0, c0), k_in,
               _address(w, c0, 0), k_out, _address(out, 0, 0), k_out)
    else:  # no columns: a zero partial (BLAS is not asked for a product over k = 0)
        for i in range(n):
            row = out[i]
            for j in range(k_out):
                row[j] = 0


@njit(cache=True, error_model="numpy")
def _rows_pass(sgemm, r0, r1, idx, y, weights, biases, acts, deltas, keys, thresholds,
               scales, row_loss, inv_n, partials):
    """Pass 1 for batch rows r0:r1: the first layer's sum, forward, loss, and dz of every layer."""
    n, rows, layers = idx.shape[0], r1 - r0, len(weights)
    zero = inv_n - inv_n
    for layer in range(layers):
        a, z, w, b = acts[layer], acts[layer + 1], weights[layer], biases[layer]
        k_in, k_out = w.shape
        if layer == 0:  # thread 0's partial product is already in z; add the others'
            for p in range(partials.shape[0]):
                for i in range(r0, r1):
                    z_row, p_row = z[i], partials[p, i]
                    for j in range(k_out):
                        z_row[j] += p_row[j]
        else:
            _sgemm(sgemm, _NO_TRANS, _NO_TRANS, rows, k_out, k_in, _address(a, r0, 0), k_in,
                   _address(w, 0, 0), k_out, _address(z, r0, 0), k_out)
        # In place, on these rows, by the blocks' own per-element code (and mask).
        if layer == layers - 1:  # the logits
            _bias_rows(z, b, z, r0, r1)
        elif thresholds[layer] == 0 and scales[layer] == 1:  # no dropout
            _bias_relu_rows(z, b, z, r0, r1)
        else:
            _bias_relu_dropout_rows(z, b, keys[layer], thresholds[layer], scales[layer], z, r0, r1)
    logits, dlogits = acts[layers], deltas[layers - 1]
    for i in range(r0, r1):
        label = y[idx[i]]
        row_loss[i] = _softmax_cross_entropy_row(logits, label, dlogits, i, inv_n)
        row_loss[n + i] = 1.0 if _argmax_row(logits, i) == label else 0.0
    for layer in range(layers - 1, 0, -1):
        dz, da, w, a = deltas[layer], deltas[layer - 1], weights[layer], acts[layer]
        k_in, k_out = w.shape
        _sgemm(sgemm, _NO_TRANS, _TRANS, rows, k_in, k_out, _address(dz, r0, 0), k_out,
               _address(w, 0, 0), k_out, _address(da, r0, 0), k_in)
        s = scales[layer - 1]
        for i in range(r0, r1):
            for j in range(k_in):
                da[i, j] = da[i, j] * s if a[i, j] > 0 else zero


@njit(cache=True, error_model="numpy")
def _weights_pass(sgemm, t, threads, weights, biases, acts, deltas, wgrads, bgrads, wm, wv, bm, bv,
                  coef, scratch, streaming):
    """Pass 2 for thread t of T: its rows of every dW, then Adam on them; its biases.
    Streaming stores (if ``streaming``) for every layer's weights but the first:
    thread t alone reads its rows of W0 (pass 0), so they had better stay in its cache."""
    beta1, c1, beta2, c2, eps, decay, step_size, inv_sqrt_bc2, flush = (
        coef[0], coef[1], coef[2], coef[3], coef[4], coef[5], coef[6], coef[7], coef[8])
    zero = flush - flush
    n = acts[0].shape[0]
    for layer in range(len(weights)):
        a, dz, w, b = acts[layer], deltas[layer], weights[layer], biases[layer]
        gw, gb, mw, vw, mb, vb = (wgrads[layer], bgrads[layer], wm[layer], wv[layer],
                                  bm[layer], bv[layer])
        k_in, k_out = w.shape
        # Rows i0:i1 of W: one contiguous block of W, its gradient and moments,
        # which Adam then streams through while the gradient block is in cache.
        if layer == 0:  # the rows whose columns of the batch this thread gathered
            i0, i1 = _input_share(t, threads, k_in), _input_share(t + 1, threads, k_in)
        else:
            i0, i1 = t * k_in // threads, (t + 1) * k_in // threads
        if i1 > i0:
            _sgemm(sgemm, _TRANS, _NO_TRANS, i1 - i0, k_out, n, _address(a, 0, i0), k_in,
                   _address(dz, 0, 0), k_out, _address(gw, i0, 0), k_out)
            e0, e1 = i0 * k_out, i1 * k_out
            # 1-D slices starting at 0: Numba then vectorises the loop.
            wf, gf = w.reshape(-1)[e0:e1], gw.reshape(-1)[e0:e1]
            mf, vf = mw.reshape(-1)[e0:e1], vw.reshape(-1)[e0:e1]
            address = _address(w, i0, 0)
            # ThreadedStep.for_run refuses float32 arrays off a 4-byte boundary; a direct
            # caller's such arrays get plain stores here instead of a faulting streaming store.
            if streaming and layer > 0 and address % 4 == 0:
                head = (-address) % 64 // 4  # float32s before a 64-byte boundary
                _adam_streaming(wf, gf, mf, vf, head, scratch[t], beta1, c1, beta2, c2, eps,
                                decay, step_size, inv_sqrt_bc2, flush, zero)
            else:
                for e in range(e1 - e0):
                    wf[e], mf[e], vf[e] = _adam_element(
                        wf[e], gf[e], mf[e], vf[e], beta1, c1, beta2, c2, eps, decay, step_size,
                        inv_sqrt_bc2, flush, zero)
        # The bias: columns j0:j1, summed over the batch row by row, as the
        # one-thread path sums them. Again over 1-D slices from 0 (measured:
        # ~15 us less per step of the reference model than indexing j0:j1).
        j0 = t * k_out // threads
        j1 = (t + 1) * k_out // threads
        if j1 > j0:
            bs, gs, ms, vs = b[j0:j1], gb[j0:j1], mb[j0:j1], vb[j0:j1]
            for j in range(j1 - j0):
                gs[j] = zero
            for i in range(n):
                row = dz[i, j0:j1]
                for j in range(j1 - j0):
                    gs[j] += row[j]
            for j in range(j1 - j0):
                bs[j], ms[j], vs[j] = _adam_element(
                    bs[j], gs[j], ms[j], vs[j], beta1, c1, beta2, c2, eps, decay, step_size,
                    inv_sqrt_bc2, flush, zero)


@njit(cache=True, error_model="numpy", parallel=True)
def train_steps(sgemm, threads, src, idx, scale, y, weights, biases, acts, deltas, wgrads, bgrads,
                wm, wv, bm, bv, keys, thresholds, scales, coefs, row_loss, scratch, streaming,
                partials, losses, corrects, loss_limit):
    """K training steps in one call, on K consecutive batches of N rows; returns
    how many it took: K, or fewer when a step's mean loss is not <= ``loss_limit``
    (NaN, inf or too large: that step was taken, and is the last).

    Why several steps per call: each call from Python costs its own time (Numba
    checks and unboxes some thirty arrays, and the Trainer's Python runs in
    between), 5-7% of a step of the reference model (measured in
    ``benchmarks/threaded_step.py``); a loop here costs nothing.

    ``idx`` (K N,) holds step s's rows of ``src`` at [s N, (s + 1) N); ``keys`` (K,
    layers) and ``coefs`` (K, 9) are step s's dropout keys and ``Adam``'s
    coefficients in row s; ``losses`` (K,) float64 and ``corrects`` (K,) int64
    receive each step's mean loss and number of correct argmax predictions.
    ``acts`` = (batch, a_1, ..., logits) and ``deltas`` = (dz_0, ..., dlogits) are
    per-batch-size buffers (N rows); per layer l: ``weights[l]`` (in, out),
    ``thresholds/scales[l]`` its dropout (threshold 0 and scale 1: none),
    ``wgrads``/``bgrads`` the Dense layer's own gradient arrays, ``wm``... Adam's
    moments. The parallel loops only hand out the shares: the passes are
    ordinary functions (which keeps Numba's compile of this one short).

    ``streaming`` (with ``scratch``, a (threads, STREAM_CHUNK) float32 array)
    writes the new weights with streaming stores, which bypass the caches: the same
    values, but no read for ownership before the write, and the new weights go to
    memory instead of staying modified in the writing core's cache, from where
    the other core's next forward pass would have to fetch them core to core.
    On this VM, in its slow phases (minutes long; its two vCPUs then seem to sit
    far apart), a step of the reference model took 1.54 ms with plain stores and
    1.14 ms with streaming ones; in its fast phases streaming cost 3% (0.93
    against 0.90 ms; ``docs/runs/bench/streaming-stores.txt``). ``ThreadedStep``
    times both and picks (``threaded.StoreChooser``). The first layer's weights
    never stream (see ``_weights_pass``).

    ``partials`` is a (threads - 1, N, width of the first layer's output) float32
    array: the first layer's partial products of threads 1.. (pass 0).
    """
    steps = losses.shape[0]
    n = idx.shape[0] // steps if steps > 0 else 0
    if steps == 0 or n == 0 or idx.shape[0] != steps * n or corrects.shape[0] != steps or (
            keys.shape[0] < steps or coefs.shape[0] < steps or acts[0].shape[0] != n):
        raise ValueError("train_steps: idx must hold K >= 1 batches of the buffers' N rows, "
                         "and keys, coefs, losses and corrects K rows")
    if partials.shape[0] < threads - 1 or partials.shape[1] < n or (
            partials.shape[2] != weights[0].shape[1]):
        raise ValueError("train_steps: partials must be (threads - 1, N, first layer's width)")
    partials = partials[:threads - 1]  # (a larger one's other entries are not this step's)
    inv_n = coefs.dtype.type(1.0 / n)
    # Each thread's scratch row must hold a piece: with too small a scratch, plain stores.
    streaming = streaming and scratch.shape[0] >= threads and scratch.shape[1] >= STREAM_CHUNK
    for s in range(steps):
        rows, step_keys, coef = idx[s * n:(s + 1) * n], keys[s], coefs[s]
        for t in prange(threads):
            _inputs_pass(sgemm, t, threads, src, rows, scale, acts, weights, partials)
        for t in prange(threads):
            r0 = t * n // threads
            r1 = (t + 1) * n // threads
            if r1 > r0:
                _rows_pass(sgemm, r0, r1, rows, y, weights, biases, acts, deltas, step_keys,
                           thresholds, scales, row_loss, inv_n, partials)
        for t in prange(threads):
            _weights_pass(sgemm, t, threads, weights, biases, acts, deltas, wgrads, bgrads, wm,
                          wv, bm, bv, coef, scratch, streaming)
        # Summed in row order, in float64, as the loss kernel sums them.
        total = 0.0
        correct = 0
        for i in range(n):
            total += row_loss[i]
            correct += int(row_loss[n + i])
        losses[s] = total / n
        corrects[s] = correct
        if not losses[s] <= loss_limit:  # NaN too: stop here, the caller reports it
            return s + 1
    return steps
