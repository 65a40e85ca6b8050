"""The Numba kernels (``nnscratch.kernels.fused``) against their plain-NumPy twins
(``nnscratch.kernels.reference``).

Each twin writes into caller-provided arrays; we run both on copies of the same
inputs and compare. Where the arithmetic is the same operation sequence the
results must be bit-identical (``np.array_equal``); only the softmax
cross-entropy, whose exp/log and summation order differ, is compared with a
tight tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnscratch import kernels
from nnscratch.kernels import KERNEL_NAMES, flush_threshold, fused, reference

SHAPES = [(1, 1), (3, 7), (17, 33), (128, 257)]
DTYPES = [np.float32, np.float64]


def _rng(shape, dtype, salt=0):
    # A distinct, reproducible stream per (shape, dtype, salt).
    return np.random.default_rng([shape[0], shape[1], np.dtype(dtype).itemsize, salt])


def _both_backends(name, shape, dtype, *args):
    """Run kernel ``name`` from reference.py and fused.py into NaN-filled outputs."""
    outs = []
    for mod in (reference, fused):
        out = np.full(shape, np.nan, dtype)
        getattr(mod, name)(*args, out)
        outs.append(out)
    return outs


def _adam_coef(dtype, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, wd=0.0):
    """coef as documented: [b1, 1-b1, b2, 1-b2, eps, 1-lr*wd, lr/(1-b1^t), 1/sqrt(1-b2^t), FLUSH]."""
    b1, b2 = betas
    inv_sqrt_bc2 = 1 / np.sqrt(1 - b2**t)
    return np.array([b1, 1 - b1, b2, 1 - b2, eps, 1 - lr * wd, lr / (1 - b1**t),
                     inv_sqrt_bc2, flush_threshold(dtype, eps, inv_sqrt_bc2)], dtype=dtype)


# ---- the kernel table -------------------------------------------------------------

def test_every_kernel_name_has_a_fused_and_a_reference_twin():
    assert len(KERNEL_NAMES) == len(set(KERNEL_NAMES)) == 14
    for name in KERNEL_NAMES:
        assert callable(getattr(reference, name)), name
        assert callable(getattr(fused, name)), name
        assert getattr(fused, name) is not getattr(reference, name), name


def test_dispatch_table_binds_every_kernel_to_the_selected_backend():
    impl = fused if kernels.BACKEND == "numba" else reference
    assert kernels.BACKEND in ("numba", "numpy")
    for name in KERNEL_NAMES:
        assert getattr(kernels, name) is getattr(impl, name), name


# ---- exact twins ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_add_bias_fused_equals_reference_exactly(shape, dtype):
    rng = _rng(shape, dtype)
    z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    outs = _both_backends("add_bias", shape, dtype, z, b)
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[1], z + b)
    assert outs[1].dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_add_bias_in_place_fused_equals_reference_exactly(shape, dtype):
    rng = _rng(shape, dtype, 1)
    z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    z_ref, z_fused = z.copy(), z.copy()
    reference.add_bias(z_ref, b, z_ref)
    fused.add_bias(z_fused, b, z_fused)
    assert np.array_equal(z_ref, z_fused)
    assert np.array_equal(z_fused, z + b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_forward_fused_equals_reference_exactly(shape, dtype):
    rng = _rng(shape, dtype, 2)
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::5] = 0  # exact zeros too
    outs = _both_backends("relu_forward", shape, dtype, x)
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[1], np.where(x > 0, x, 0))
    assert outs[1].dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_backward_fused_equals_reference_exactly(shape, dtype):
    rng = _rng(shape, dtype, 3)
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::4] = 0
    y = np.maximum(x, 0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    outs = _both_backends("relu_backward", shape, dtype, dy, y)
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[1], np.where(y > 0, dy, 0))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dropout_forward_fused_equals_reference_exactly(shape, dtype, p):
    x = _rng(shape, dtype, 4).standard_normal(shape).astype(dtype)
    for key in (0, 12345, 2**63 - 1, int(_rng(shape, dtype, 4).integers(0, 2**63))):
        results = []
        for mod in (reference, fused):
            mask = np.full(shape, np.nan, dtype)
            out = np.full(shape, np.nan, dtype)
            mod.dropout_forward(x, key, p, mask, out)
            results.append((mask, out))
        (mask0, out0), (mask1, out1) = results
        assert np.array_equal(mask0, mask1), key
        assert np.array_equal(out0, out1), key
        # Every mask entry is 0 or exactly the dtype's 1/(1-p); out = x * mask.
        keep = dtype(1.0 / (1.0 - p))
        assert np.all((mask1 == 0) | (mask1 == keep))
        assert np.array_equal(out1, x * mask1)
        assert mask1.dtype == out1.dtype == dtype
        if p == 0.0:
            assert np.all(mask1 == 1) and np.array_equal(out1, x)


@pytest.mark.parametrize("key", [0, 1, 2**63 - 1, 8675309])
def test_dropout_masks_look_independent(key):
    # Each unit is kept with probability 1 - p on its own: the keep rates of
    # rows and of columns scatter as binomial counts do (one seed for every row, or a
    # column pattern repeated down the rows, would show here), and neighbours in
    # a row, down a column, and across two keys are uncorrelated.
    rows, cols, p = 2048, 512, 0.2
    ones = np.ones((rows, cols), np.float32)
    for mod in (reference, fused):
        masks = []
        for k in (key, key ^ 1):
            mask, out = np.empty_like(ones), np.empty_like(ones)
            mod.dropout_forward(ones, k, p, mask, out)
            masks.append(mask != 0)
        kept = masks[0]
        assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / kept.size)
        for axis, n in ((1, cols), (0, rows)):
            spread = kept.mean(axis=axis).std() / np.sqrt(p * (1 - p) / n)
            assert 0.85 < spread < 1.15, (mod.__name__, axis, spread)
        limit = 4 / np.sqrt(kept.size)
        for a, b in ((kept[:, :-1], kept[:, 1:]), (kept[:-1], kept[1:]), (kept, masks[1])):
            assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < limit, mod.__name__


def test_dropout_forward_mask_depends_on_the_key_only():
    x = np.ones((64, 64))
    for mod in (reference, fused):
        masks = []
        for key in (1, 2, 1):
            mask, out = np.empty((64, 64)), np.empty((64, 64))
            mod.dropout_forward(x * key, key, 0.5, mask, out)
            masks.append(mask)
        assert not np.array_equal(masks[0], masks[1])
        assert np.array_equal(masks[0], masks[2])


def _top24(key, row, column):
    """The documented hash, written out in Python integers: the top 24 bits of
    lowbias32(seed ^ (column * golden32)), seed the top 32 bits of
    SplitMix64(key + (row + 1) * golden)."""
    m = 2**64 - 1
    z = (key + (row + 1) * 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    seed = (z ^ (z >> 31)) >> 32
    x = seed ^ ((column * 0x9E3779B9) & 0xFFFFFFFF)
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x846CA68B) & 0xFFFFFFFF
    return (x ^ (x >> 16)) >> 8


def test_no_two_rows_share_a_stretch_of_hash_inputs():
    # The documented hash inputs, seed ^ (column * golden32), of 20000 rows of 256:
    # two rows may share inputs by chance (about 3000 pairs of units here, as many
    # as random inputs would give), two at a time (unit c of one row with c' of
    # the other, and c' with c) and now and then a few more, but never a stretch,
    # as with seed + column * golden32: two rows whose seeds differ by d * golden32,
    # |d| < 256, then share 256 - |d| units (17 pairs of rows here, 20-250 units).
    rows, cols, m = 20000, 256, 2**64 - 1
    z = [(12345 + (r + 1) * 0x9E3779B97F4A7C15) & m for r in range(rows)]
    z = [((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) & m for v in z]
    z = [((v ^ (v >> 27)) * 0x94D049BB133111EB) & m for v in z]
    seeds = np.array([(v ^ (v >> 31)) >> 32 for v in z], np.uint32)
    inputs = (seeds[:, None] ^ (np.arange(cols, dtype=np.uint32) * np.uint32(0x9E3779B9))).ravel()
    order = np.argsort(inputs, kind="stable")
    same = np.flatnonzero(inputs[order][1:] == inputs[order][:-1])
    assert len(same) > 100  # the chance meetings do happen
    pairs = np.stack([order[same] // cols, order[same + 1] // cols], axis=1)
    _, shared = np.unique(pairs, axis=0, return_counts=True)
    assert shared.max() <= 8


@pytest.mark.parametrize("position", [0, 5, 63])
def test_dropout_keeps_a_unit_whose_hash_equals_the_threshold(position):
    # A hash exactly on the threshold (chance 2**-24 per unit, so random tests
    # never meet one) is kept on both backends: kept means hash >= threshold.
    key = 987654321
    value = _top24(key, *divmod(position, 8))
    x = np.ones((8, 8))
    for p, kept in ((value / 2**24, True), ((value + 1) / 2**24, False)):
        for mod in (reference, fused):
            mask, out = np.empty_like(x), np.empty_like(x)
            mod.dropout_forward(x, key, p, mask, out)
            assert (mask.reshape(-1)[position] != 0) == kept, (mod.__name__, p)
            z = np.ones((8, 8))
            mod.bias_relu_dropout_forward(z, np.zeros(8), key, p, z)
            assert (z.reshape(-1)[position] != 0) == kept, (mod.__name__, p)
    # And the Python hash above is the kernels' hash at every position.
    mask, out = np.empty_like(x), np.empty_like(x)
    threshold = 2**23
    fused.dropout_forward(x, key, threshold / 2**24, mask, out)
    assert [bool(m) for m in mask.reshape(-1)] == [_top24(key, *divmod(i, 8)) >= threshold
                                                   for i in range(64)]
    # Rows run along the last axis, whatever the shape: (2, 4, 8) has 8 rows of 8,
    # a vector is one row, a 0-d array a row of one.
    for shape, cols in (((2, 4, 8), 8), ((64,), 64), ((), 1)):
        ones = np.ones(shape)
        for mod in (reference, fused):
            mask, out = np.empty_like(ones), np.empty_like(ones)
            mod.dropout_forward(ones, key, threshold / 2**24, mask, out)
            assert [bool(m) for m in mask.reshape(-1)] == [
                _top24(key, *divmod(i, cols)) >= threshold for i in range(mask.size)], shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_multiply_fused_equals_reference_exactly(shape, dtype):
    rng = _rng(shape, dtype, 5)
    a = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    outs = _both_backends("multiply", shape, dtype, a, b)
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[1], a * b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_adam_update_fused_equals_reference_exactly(shape, dtype):
    rng = _rng(shape, dtype, 6)
    param = rng.standard_normal(shape).astype(dtype)
    m = (rng.standard_normal(shape) * 0.1).astype(dtype)
    v = (rng.random(shape) * 0.01).astype(dtype)
    # Some moments sitting right at the flush threshold.
    m.reshape(-1)[::6] = np.finfo(dtype).tiny * 1.0001
    v.reshape(-1)[::7] = np.finfo(dtype).tiny * 1.0001
    state = {mod: [param.copy(), m.copy(), v.copy()] for mod in (reference, fused)}
    for t in range(1, 4):
        grad = rng.standard_normal(shape).astype(dtype)
        grad.reshape(-1)[::3] = 0
        coef = _adam_coef(dtype, t, lr=1e-2, wd=0.05)
        for mod, (p, mm, vv) in state.items():
            mod.adam_update(p, grad, mm, vv, coef)
    (p0, m0, v0), (p1, m1, v1) = state[reference], state[fused]
    assert np.array_equal(p0, p1)
    assert np.array_equal(m0, m1)
    assert np.array_equal(v0, v1)
    assert p1.dtype == m1.dtype == v1.dtype == dtype
    assert not np.array_equal(p1, param)  # it did update


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update_nan_gradient_gives_nan_in_both_backends(dtype):
    # A NaN gradient must not vanish in one backend and poison the weights in
    # the other: both twins have to produce the same (NaN) result.
    grad = np.array([np.nan, 1.0, -2.0, np.nan], dtype)
    coef = _adam_coef(dtype, 1, lr=1e-2)
    results = []
    for mod in (reference, fused):
        p, m, v = np.ones(4, dtype), np.zeros(4, dtype), np.zeros(4, dtype)
        with np.errstate(invalid="ignore"):
            mod.adam_update(p, grad, m, v, coef)
        results.append((p, m, v))
    for a, b in zip(*results):
        assert np.array_equal(a, b, equal_nan=True), (a, b)
    assert np.isnan(results[1][0][[0, 3]]).all()


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("src_dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_scale_fused_equals_reference_exactly(shape, src_dtype, out_dtype):
    rng = _rng(shape, out_dtype, 7 + np.dtype(src_dtype).itemsize)
    rows = shape[0] + 3
    if src_dtype == np.uint8:
        src = rng.integers(0, 256, (rows, shape[1])).astype(np.uint8)
        scale = np.dtype(out_dtype).type(1 / 255)
    else:
        src = rng.standard_normal((rows, shape[1])).astype(src_dtype)
        scale = np.dtype(out_dtype).type(1)
    idx = rng.integers(0, rows, shape[0])  # with repeats, any order
    outs = []
    for mod in (reference, fused):
        out = np.full(shape, np.nan, out_dtype)
        mod.gather_scale(src, idx, scale, out)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    expected = (src[idx].astype(np.float64) * np.float64(scale)).astype(out_dtype)
    np.testing.assert_allclose(outs[1], expected, rtol=np.finfo(out_dtype).eps, atol=0)
    assert outs[1].dtype == out_dtype


def test_gather_scale_uint8_with_scale_one_over_255_spans_zero_to_one():
    src = np.arange(256, dtype=np.uint8).reshape(16, 16)
    idx = np.arange(16)
    for mod in (reference, fused):
        out = np.empty((16, 16), np.float32)
        mod.gather_scale(src, idx, np.float32(1 / 255), out)
        assert out.min() == 0.0 and abs(out.max() - 1.0) <= 1e-7


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("n, side, shift", [(1, 1, 0), (5, 6, 0), (9, 6, 2), (33, 28, 1), (7, 9, 4)])
def test_shift_flip_fused_equals_reference_exactly(n, side, shift, dtype):
    rng = np.random.default_rng([n, side, shift, np.dtype(dtype).itemsize])
    images = (rng.integers(1, 256, (n, side, side)) if dtype == np.uint8
              else rng.standard_normal((n, side, side))).astype(dtype)   # no zero pixels
    dy, dx = rng.integers(0, 2 * shift + 1, size=(2, n))
    flipped = rng.random(n) < 0.5
    before = images.copy()
    outs = []
    for mod in (reference, fused):
        out = np.full_like(images, 7)
        mod.shift_flip(images, dy, dx, flipped, shift, out)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(images, before)
    # Every image keeps exactly the pixels its shift leaves inside the frame.
    kept = (side - np.abs(dy - shift)) * (side - np.abs(dx - shift))
    assert np.array_equal((outs[1] != 0).sum(axis=(1, 2)), kept)


def test_shift_flip_of_a_single_pixel_moves_and_mirrors_it():
    images = np.zeros((3, 5, 5), np.float32)
    images[:, 1, 1] = 1                              # row 1, column 1
    dy, dx = np.array([2, 0, 2]), np.array([3, 2, 2])
    flipped = np.array([False, False, True])
    for mod in (reference, fused):
        out = np.empty_like(images)
        mod.shift_flip(images, dy, dx, flipped, 2, out)
        # shift (0, +1): the pixel reads from column c + 1, so it appears at column 0
        assert np.argwhere(out[0]).tolist() == [[1, 0]]
        # shift (-2, 0): it reads from row r - 2, so it appears two rows down
        assert np.argwhere(out[1]).tolist() == [[3, 1]]
        # no shift, mirrored: column 1 becomes column 3
        assert np.argwhere(out[2]).tolist() == [[1, 3]]


# ---- fused Dense epilogues: bias + ReLU (+ dropout) and their backward ----------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_relu_forward_fused_equals_reference_exactly(shape, dtype):
    rng = _rng(shape, dtype, 10)
    z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    b[::3] = -z[0, ::3]  # some z + b exactly 0
    outs = _both_backends("bias_relu_forward", shape, dtype, z, b)
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[1], np.maximum(z + b, 0))
    in_place = z.copy()
    fused.bias_relu_forward(in_place, b, in_place)
    assert np.array_equal(in_place, outs[1])


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_relu_dropout_forward_equals_the_three_kernels_in_a_row(shape, dtype, p):
    rng = _rng(shape, dtype, 11)
    z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    for key in (0, 987654321, 2**63 - 1):
        # Unfused: add_bias, relu_forward, dropout_forward (which draws the mask).
        r = np.maximum(z + b, 0)
        mask, expected = np.empty_like(r), np.empty_like(r)
        reference.dropout_forward(r, key, p, mask, expected)
        outs = _both_backends("bias_relu_dropout_forward", shape, dtype, z, b, key, p)
        assert np.array_equal(outs[0], expected), key
        assert np.array_equal(outs[1], expected), key
        assert outs[1].dtype == dtype


@pytest.mark.parametrize("scale", [1.0, 1.25, 2.0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_bias_grad_fused_equals_reference_exactly(shape, dtype, scale):
    rng = _rng(shape, dtype, 12)
    y = np.maximum(rng.standard_normal(shape), 0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    s = dtype(scale)
    results = []
    for mod in (reference, fused):
        dz = np.full(shape, np.nan, dtype)
        db = np.full(shape[1], np.nan, dtype)
        mod.relu_bias_grad(dy, y, s, dz, db)
        results.append((dz, db))
    (dz0, db0), (dz1, db1) = results
    assert np.array_equal(dz0, dz1) and np.array_equal(db0, db1)
    expected = np.where(y > 0, dy * s, 0)
    assert np.array_equal(dz1, expected)
    np.testing.assert_allclose(db1, expected.sum(axis=0), rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6)
    assert dz1.dtype == db1.dtype == dtype


def test_relu_bias_grad_leaves_dy_and_y_unchanged():
    dy = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    y = np.maximum(dy, 0)
    keep = dy.copy(), y.copy()
    for mod in (reference, fused):
        mod.relu_bias_grad(dy, y, np.float32(2), np.empty_like(dy), np.empty(4, np.float32))
        assert np.array_equal(dy, keep[0]) and np.array_equal(y, keep[1])


def test_count_correct_matches_argmax_including_ties_and_nan():
    rng = np.random.default_rng(13)
    logits = rng.integers(0, 3, (200, 5)).astype(np.float32)  # many ties
    logits[::17, 2] = np.nan
    logits[5, :] = np.nan
    labels = rng.integers(0, 5, 200)
    expected = int(np.count_nonzero(logits.argmax(axis=1) == labels))
    assert reference.count_correct(logits, labels) == expected
    assert fused.count_correct(logits, labels) == expected
    labels = logits.argmax(axis=1)
    assert fused.count_correct(logits, labels) == 200


@pytest.mark.parametrize("bad", [-1, 3, 100])
def test_softmax_cross_entropy_flags_a_label_out_of_range_with_minus_one(bad):
    logits = np.zeros((4, 3), np.float32)
    for mod in (reference, fused):
        labels = np.array([0, 1, bad, 2])
        assert mod.softmax_cross_entropy(logits, labels, np.empty_like(logits)) == -1.0
        assert mod.softmax_cross_entropy(logits, labels % 3, np.empty_like(logits)) > 0


# ---- softmax cross-entropy: close, not bit-equal ----------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_cross_entropy_fused_close_to_reference(shape, dtype):
    rng = _rng(shape, dtype, 8)
    n, k = shape
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    labels = rng.integers(0, k, n)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    eps = np.finfo(dtype).eps
    results = []
    for mod in (reference, fused):
        d = np.full(shape, np.nan, dtype)
        loss = mod.softmax_cross_entropy(logits, labels, d)
        results.append((float(loss), d))
    (l0, d0), (l1, d1) = results
    assert l1 == pytest.approx(l0, rel=rtol, abs=10 * eps)
    # dlogits is (p - onehot)/n: absolute error scaled by 1/n near cancellation.
    np.testing.assert_allclose(d1, d0, rtol=rtol, atol=10 * eps / n)
    assert d1.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_with_infinite_logits_agrees_between_twins(dtype):
    """-inf in the first column is a probability of exactly 0, not a NaN."""
    logits = np.array([[-np.inf, 0, 1], [0, -np.inf, 1], [2, 1, -np.inf]], dtype)
    labels = np.array([2, 2, 0])
    results = []
    for mod in (reference, fused):
        d = np.empty_like(logits)
        results.append((mod.softmax_cross_entropy(logits, labels, d), d))
    (l0, d0), (l1, d1) = results
    assert np.isfinite(l0) and l1 == pytest.approx(l0, rel=1e-6)
    np.testing.assert_allclose(d1, d0, rtol=1e-6, atol=1e-7)
    assert d0[0, 0] == d1[0, 0] == 0.0


def test_softmax_cross_entropy_of_no_rows_is_nan_in_both_twins():
    for mod in (reference, fused):
        logits = np.zeros((0, 3), np.float32)
        assert np.isnan(mod.softmax_cross_entropy(logits, np.zeros(0, np.int64), np.empty_like(logits)))


@pytest.mark.parametrize("mod", [reference, fused], ids=["reference", "fused"])
def test_kernels_keep_float32_outputs_float32_and_finite(mod):
    rng = np.random.default_rng(9)
    f32 = np.float32
    x = rng.standard_normal((5, 11)).astype(f32)
    out = np.empty_like(x)
    mod.add_bias(x, x[0], out)
    assert out.dtype == f32 and np.isfinite(out).all()
    mod.relu_forward(x, out)
    assert out.dtype == f32
    mod.relu_backward(x, out, out)
    assert out.dtype == f32
    mask = np.empty_like(x)
    mod.dropout_forward(x, 3, 0.3, mask, out)
    assert out.dtype == mask.dtype == f32 and np.array_equal(out, x * mask)
    mod.multiply(x, x, out)
    assert out.dtype == f32 and np.array_equal(out, x * x)
    logits = np.where(rng.random((5, 11)) < 0.5, f32(-1e4), f32(1e4)).astype(f32)
    d = np.empty_like(logits)
    loss = mod.softmax_cross_entropy(logits, rng.integers(0, 11, 5), d)
    assert np.isfinite(loss) and d.dtype == f32 and np.isfinite(d).all()
    p, g, m, v = x.copy(), x.copy(), np.zeros_like(x), np.zeros_like(x)
    mod.adam_update(p, g, m, v, _adam_coef(f32, 1))
    assert p.dtype == m.dtype == v.dtype == f32 and np.isfinite(p).all()
    src = rng.integers(0, 256, (7, 11)).astype(np.uint8)
    mod.gather_scale(src, np.arange(5), f32(1 / 255), out)
    assert out.dtype == f32 and np.isfinite(out).all()
