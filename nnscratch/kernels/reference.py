"""Plain-NumPy kernels: the versions to read and step through.

Every function here has a Numba twin with the same name and signature in
``fused.py``; ``tests/test_kernels.py`` holds the two equal. Outputs are written
into caller-provided arrays (``out=``), so the training step allocates nothing
once its buffers exist. Scalars arrive already cast to the arrays' dtype, so
float32 arrays stay float32 (NumPy 2 keeps ``float32 * float32-scalar`` float32).
"""

from __future__ import annotations

import functools
import math

import numpy as np


def flush_threshold(dtype: np.dtype, eps: float, inv_sqrt_bc2: float) -> float:
    """The magnitude below which ``adam_update`` sets a moment to exactly zero.

    Adam's moments of weights whose gradient is always zero (e.g. border pixels
    of every image) decay geometrically into the subnormal range, where every
    arithmetic operation is ~100x slower. Flushing them is free only if it
    cannot change an update: zeroing v < tiny moves the denominator
    sqrt(v) inv_sqrt_bc2 + eps by at most sqrt(tiny) inv_sqrt_bc2, and zeroing
    |m| < tiny moves the update by less than step_size tiny / eps. So the
    threshold is the dtype's smallest normal number when the first is below
    half a unit in the last place of eps, so that eps + it rounds to eps (then
    the second is < 1e-26 step_size), and 0 (flush nothing, keep the exact
    subnormals) for an eps that small: below about 1e-10 in float32 in the
    first steps, about 3e-12 later; any sane eps in float64.
    """
    tiny, half_ulp_of_eps = _flush_limits(np.dtype(dtype), eps)
    if math.sqrt(tiny) * inv_sqrt_bc2 < half_ulp_of_eps:
        return tiny
    return 0.0


@functools.lru_cache(maxsize=16)
def _flush_limits(dtype: np.dtype, eps: float) -> tuple[float, float]:
    # Cached: the optimizer asks once per step, and NumPy's finfo and spacing
    # cost ~1 us a call.
    return float(np.finfo(dtype).tiny), float(np.spacing(dtype.type(eps))) / 2

# The dropout mask is a pure function of (key, position), so both backends draw
# the identical mask and a run is reproducible from the key alone. The mask is
# seen as rows along its last axis (an (N, K) activation: N rows of K units).
# Row r gets a 32-bit seed, the top half of SplitMix64(key + (r + 1) * golden)
# (a cheap, well-mixed 64-bit hash), and unit c of the row is hashed from
# seed ^ (c * golden32) by lowbias32 (Chris Wellons' 32-bit integer hash). Why two
# hashes: 32-bit arithmetic lets the Numba twin mix 8 units per AVX2 instruction,
# where a 64-bit multiply per unit has no AVX2 instruction at all (measured with
# ``benchmarks/dropout_hash.py``: the fused bias + ReLU + dropout of the reference
# model's two hidden layers took 19.5 us, against 61.9 us with SplitMix64 per
# unit, the hash 3df4196 replaced, and 6.5 us without dropout). Within a row no
# two units share a hash input (c * golden32 is one-to-one mod 2**32); across
# rows two may, by chance (about 0.15 pairs in a step of the reference model's
# two layers, as many as random inputs would give, though two at a time: unit c
# of one row with c' of the other, and c' with c), and then share their fate:
# harmless for dropout. XOR, not +, puts the seed in: with seed + c * golden32,
# two rows whose seeds differ by d * golden32, |d| < K, would share a whole
# shifted stretch of K - |d| units (tests/test_kernels.py shows both).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN32 = np.uint32(0x9E3779B9)
_LOWBIAS1 = np.uint32(0x7FEB352D)
_LOWBIAS2 = np.uint32(0x846CA68B)


def add_bias(z: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[n, j] = z[n, j] + b[j]  (``out`` may be ``z``)."""
    np.add(z, b, out=out)


def relu_forward(x: np.ndarray, out: np.ndarray) -> None:
    """out = max(x, 0)."""
    np.maximum(x, 0, out=out)


def relu_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """out = dy where the forward output y > 0, else 0 (the ReLU mask)."""
    out[...] = np.where(y > 0, dy, 0)


def dropout_forward(x: np.ndarray, key: int, p: float, mask: np.ndarray, out: np.ndarray) -> None:
    """Draw the inverted-dropout mask and apply it: out = x * mask.

    mask_i is 0 (dropped, probability p) or 1/(1-p) (kept). Element i is kept
    when the top 24 bits of hash(key, i's row, i's column) are >= round(p * 2**24),
    so the keep probability is 1 - p up to 2**-24.
    """
    _keep_scale(key, np.uint64(round(p * 2**24)), mask.dtype.type(1.0 / (1.0 - p)), mask)
    np.multiply(x, mask, out=out)


def _keep_scale(key: int, threshold: np.uint64, scale: np.floating, mask: np.ndarray) -> None:
    """mask = scale where the top 24 bits of hash(key, row, column) reach
    ``threshold``, else 0 (rows along the last axis; see the constants above)."""
    if mask.size == 0:
        return
    cols = mask.shape[-1] if mask.ndim else 1  # a 0-d mask is one row of one
    rows = np.arange(1, mask.size // cols + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        z = np.uint64(key) + rows * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    seeds = ((z ^ (z >> np.uint64(31))) >> np.uint64(32)).astype(np.uint32)
    # (N, K) uint32 arrays wrap modulo 2**32, as the hash wants.
    x = seeds[:, None] ^ (np.arange(cols, dtype=np.uint32) * _GOLDEN32)
    x ^= x >> np.uint32(16)
    x *= _LOWBIAS1
    x ^= x >> np.uint32(15)
    x *= _LOWBIAS2
    x ^= x >> np.uint32(16)
    keep = (x >> np.uint32(8)) >= threshold
    np.multiply(keep.reshape(mask.shape), scale, out=mask)


def bias_relu_forward(z: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = max(z + b, 0): Dense's bias and the ReLU after it (``out`` may be ``z``).

    Shapes: z, out (N, K); b (K,). Two NumPy passes here; one in the Numba twin.
    """
    add_bias(z, b, out)
    relu_forward(out, out)


def bias_relu_dropout_forward(z: np.ndarray, b: np.ndarray, key: int, p: float,
                              out: np.ndarray) -> None:
    """Dense's bias, ReLU and inverted dropout (``out`` may be ``z``):
    out = max(z + b, 0) * mask, where ``mask`` is exactly the one
    ``dropout_forward(..., key, p, ...)`` draws. Shapes: z, out (N, K); b (K,).

    The caller keeps no mask: the backward only needs to know where out > 0
    (see ``relu_bias_grad``). This twin makes three passes and a temporary
    mask; the Numba twin does it all in one pass without one.
    """
    add_bias(z, b, out)
    relu_forward(out, out)
    dropout_forward(out, key, p, np.empty_like(out), out)


def relu_bias_grad(dy: np.ndarray, y: np.ndarray, scale: float, dz: np.ndarray,
                   db: np.ndarray) -> None:
    """Backward of bias + ReLU (+ inverted dropout) from the output y alone.
    Shapes: dy, y, dz (N, K); db (K,).

        dz = dy * scale where y > 0, else 0        db = sum over the batch of dz

    y > 0 exactly where z + b > 0 and the unit was kept, and there
    d y / d(z + b) = scale (1/(1-p) with dropout, 1 without), so y carries the
    whole mask. ``scale`` is in the arrays' dtype.
    """
    np.multiply(dy, scale, out=dz)
    dz[~(y > 0)] = 0
    np.sum(dz, axis=0, out=db)


def multiply(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a * b elementwise (dropout backward: dy * mask)."""
    np.multiply(a, b, out=out)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, dlogits: np.ndarray) -> float:
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    With s = logits - max(logits) per row (log-sum-exp shift: exp never overflows),
        loss_n = log(sum_k exp(s_nk)) - s_n,label
        dlogits = (softmax(logits) - onehot(labels)) / N
    Returns the loss as a Python float; writes the gradient into ``dlogits``.
    Returns -1.0 (a loss is never negative) if a label is outside 0..K-1.
    """
    n, k = logits.shape
    if n == 0:
        return float("nan")  # no mean over no samples (the loss layer refuses empty batches)
    if labels.min() < 0 or labels.max() >= k:
        return -1.0
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=dlogits)
    sums = dlogits.sum(axis=1, keepdims=True)
    loss = float(np.sum(np.log(sums[:, 0]) - shifted[rows, labels], dtype=np.float64)) / n
    dlogits /= sums
    dlogits[rows, labels] -= 1
    dlogits *= dlogits.dtype.type(1.0 / n)
    return loss


def count_correct(logits: np.ndarray, labels: np.ndarray) -> int:
    """How many rows have their largest logit (first one on ties) at the label."""
    return int(np.count_nonzero(logits.argmax(axis=1) == labels))


def adam_update(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray,
                coef: np.ndarray) -> None:
    """One AdamW step for one parameter, in place.

    ``coef`` = [beta1, 1-beta1, beta2, 1-beta2, eps, decay, step_size, inv_sqrt_bc2,
    flush] in the parameter's dtype (see ``nnscratch.optim.Adam``; ``flush`` from
    ``flush_threshold``: moments smaller in magnitude become 0), and

        m <- beta1 m + (1 - beta1) g           v <- beta2 v + (1 - beta2) g^2
        p <- decay p - step_size m / (sqrt(v) inv_sqrt_bc2 + eps)

    with decay = 1 - lr * weight_decay (decoupled weight decay, AdamW),
    step_size = lr / (1 - beta1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t).
    The last line is exactly p - lr m_hat / (sqrt(v_hat) + eps), m_hat and v_hat
    being the bias-corrected moments.
    """
    beta1, c1, beta2, c2, eps, decay, step_size, inv_sqrt_bc2, flush = coef
    m *= beta1
    m += c1 * grad
    m[np.abs(m) < flush] = 0
    v *= beta2
    v += c2 * (grad * grad)
    v[v < flush] = 0
    update = m / (np.sqrt(v) * inv_sqrt_bc2 + eps)
    param *= decay
    param -= step_size * update


def gather_scale(src: np.ndarray, idx: np.ndarray, scale: float, out: np.ndarray) -> None:
    """out[i, :] = src[idx[i], :] * scale, converting to out's dtype (uint8 pixels -> floats)."""
    np.multiply(src[idx], scale, out=out, casting="unsafe")


def shift_flip(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flipped: np.ndarray,
               shift: int, out: np.ndarray) -> None:
    """Shift image k by (dy[k] - shift, dx[k] - shift) pixels, then mirror it left to
    right where flipped[k]; pixels shifted in from outside the frame are 0.
    Shapes: images, out (N, S, S); dy, dx in 0..2*shift and flipped (N,).

        out[k, r, c] = images[k, r + dy[k] - shift, c' + dx[k] - shift]   (0 outside)
        c' = S-1-c if flipped[k] else c

    Pad every image by ``shift`` zeros on each side, then read the whole batch
    with one fancy index: row r + dy[k] and column c' + dx[k] of the padded image.
    """
    n, side, _ = images.shape
    s = shift
    padded = np.zeros((n, side + 2 * s, side + 2 * s), images.dtype)
    padded[:, s:s + side, s:s + side] = images
    r = np.arange(side)
    cols = np.where(flipped[:, None], side - 1 - r, r) + dx[:, None]    # (n, side)
    rows = r[None, :] + dy[:, None]                                       # (n, side)
    out[...] = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def train_steps(sgemm: int, threads: int, src: np.ndarray, idx: np.ndarray, scale: float,
                y: np.ndarray, weights: tuple, biases: tuple, acts: tuple, deltas: tuple,
                wgrads: tuple, bgrads: tuple, wm: tuple, wv: tuple, bm: tuple, bv: tuple,
                keys: np.ndarray, thresholds: np.ndarray, scales: np.ndarray, coefs: np.ndarray,
                row_loss: np.ndarray, scratch: np.ndarray, streaming: bool,
                partials: np.ndarray, losses: np.ndarray, corrects: np.ndarray,
                loss_limit: float) -> int:
    """K training steps on K consecutive batches of N rows (``idx`` holds step s's
    rows at [s N, (s + 1) N), ``keys[s]`` and ``coefs[s]`` its dropout keys and
    Adam coefficients); each step's mean loss and correct count go to
    ``losses[s]`` and ``corrects[s]``. Stops after the first step whose loss is
    not <= ``loss_limit``; returns the number of steps taken. The Numba twin runs
    them in one call to save the per-call cost; here it is just this loop.
    ``sgemm``, ``threads``, ``row_loss``, ``scratch``, ``streaming`` and
    ``partials`` are the Numba twin's and unused here (see ``_train_step``)."""
    steps = len(losses)
    n = len(idx) // steps if steps else 0
    if steps == 0 or n == 0 or len(idx) != steps * n or len(corrects) != steps or (
            len(keys) < steps or len(coefs) < steps or len(acts[0]) != n):
        raise ValueError("train_steps: idx must hold K >= 1 batches of the buffers' N rows, "
                         "and keys, coefs, losses and corrects K rows")
    for s in range(steps):
        losses[s], corrects[s] = _train_step(src, idx[s * n:(s + 1) * n], scale, y, weights,
                                             biases, acts, deltas, wgrads, bgrads, wm, wv, bm,
                                             bv, keys[s], thresholds, scales, coefs[s])
        if not losses[s] <= loss_limit:  # NaN too
            return s + 1
    return steps


def _train_step(src: np.ndarray, idx: np.ndarray, scale: float, y: np.ndarray, weights: tuple,
                biases: tuple, acts: tuple, deltas: tuple, wgrads: tuple, bgrads: tuple,
                wm: tuple, wv: tuple, bm: tuple, bv: tuple, keys: np.ndarray,
                thresholds: np.ndarray, scales: np.ndarray, coef: np.ndarray) -> tuple[float, int]:
    """One training step of Dense -> ReLU [-> Dropout] blocks and a last Dense,
    softmax cross-entropy and Adam, exactly as ``Trainer`` runs it layer by
    layer, here in one function. (The Numba twin splits the same work between
    threads, sums the first layer's product from the threads' pieces, and may
    write the weights with streaming stores, which changes no value; see the
    last section of ``fused.py``.)

    Per layer l: a_{l+1} = relu(a_l @ W_l + b_l) * mask_l (the last: a_l @ W_l + b_l,
    the logits); dz of the last layer is dL/dlogits; below it
    dz_{l-1} = (dz_l @ W_l^T) * s_{l-1} where a_l > 0; then dW_l = a_l^T @ dz_l,
    db_l = sum_n dz_l and Adam on every W and b. Returns (mean loss, correct).
    """
    layers = len(weights)
    gather_scale(src, idx, scale, acts[0])
    for layer in range(layers):
        z = acts[layer + 1]
        np.matmul(acts[layer], weights[layer], out=z)
        add_bias(z, biases[layer], z)
        if layer < layers - 1:
            relu_forward(z, z)
            if not (thresholds[layer] == 0 and scales[layer] == 1):  # dropout
                mask = np.empty_like(z)
                _keep_scale(keys[layer], thresholds[layer], scales[layer], mask)
                np.multiply(z, mask, out=z)
    labels = y[idx]
    logits, dlogits = acts[layers], deltas[layers - 1]
    loss = softmax_cross_entropy(logits, labels, dlogits)
    correct = count_correct(logits, labels)
    for layer in range(layers - 1, -1, -1):
        dz = deltas[layer]
        if layer == layers - 1:  # the hidden layers' bias gradients come from relu_bias_grad
            np.sum(dz, axis=0, out=bgrads[layer])
        np.matmul(acts[layer].T, dz, out=wgrads[layer])
        if layer > 0:
            da = deltas[layer - 1]
            np.matmul(dz, weights[layer].T, out=da)
            relu_bias_grad(da, acts[layer], scales[layer - 1], da, bgrads[layer - 1])
    for layer in range(layers):
        adam_update(weights[layer], wgrads[layer], wm[layer], wv[layer], coef)
        adam_update(biases[layer], bgrads[layer], bm[layer], bv[layer], coef)
    return loss, correct
