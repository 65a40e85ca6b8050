"""Dense, ReLU, Dropout and Flatten, each checked against NumPy written here."""

from __future__ import annotations

import numpy as np
import pytest

from nnscratch import Dense, Dropout, Flatten, ReLU

DTYPES = [np.float32, np.float64]


# ---- Dense ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, fin, fout", [(1, 1, 1), (1, 5, 3), (4, 7, 2), (33, 17, 9)])
def test_dense_forward_is_x_at_w_plus_b(n, fin, fout, dtype):
    rng = np.random.default_rng(0)
    layer = Dense(fin, fout, rng=1, dtype=dtype)
    assert layer.params["weight"].shape == (fin, fout)
    assert layer.params["bias"].shape == (fout,)
    assert layer.params["weight"].dtype == layer.params["bias"].dtype == dtype
    layer.params["bias"][...] = rng.standard_normal(fout)  # nonzero bias
    x = rng.standard_normal((n, fin)).astype(dtype)
    y = layer.forward(x)
    w = layer.params["weight"].astype(np.float64)
    b = layer.params["bias"].astype(np.float64)
    expected = x.astype(np.float64) @ w + b
    assert y.shape == (n, fout) and y.dtype == dtype
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=rtol)


def test_dense_bias_is_initialised_to_zero():
    layer = Dense(6, 4, rng=0)
    assert np.array_equal(layer.params["bias"], np.zeros(4))


def test_dense_he_init_std_is_sqrt_2_over_fan_in():
    fin, fout = 400, 300
    w = Dense(fin, fout, rng=0).params["weight"].astype(np.float64)
    expected = np.sqrt(2.0 / fin)
    # 120k samples: the sample std is within ~0.2% of the true one.
    assert w.std() == pytest.approx(expected, rel=0.01)
    assert abs(w.mean()) < 0.01 * expected
    # Normal, not uniform: about 68% of the weights lie within one std.
    assert np.mean(np.abs(w) < expected) == pytest.approx(0.6827, abs=0.01)


def test_dense_glorot_init_is_uniform_within_the_limit():
    fin, fout = 300, 200
    w = Dense(fin, fout, init="glorot", rng=0).params["weight"].astype(np.float64)
    limit = np.sqrt(6.0 / (fin + fout))
    assert np.abs(w).max() <= limit * (1 + 1e-6)
    assert w.std() == pytest.approx(limit / np.sqrt(3), rel=0.01)


def test_dense_same_seed_gives_same_weights_different_seed_different():
    a = Dense(20, 10, rng=42).params["weight"]
    b = Dense(20, 10, rng=42).params["weight"]
    c = Dense(20, 10, rng=43).params["weight"]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dense_accepts_a_generator_and_draws_from_it():
    a = Dense(8, 8, rng=np.random.default_rng(5)).params["weight"]
    b = Dense(8, 8, rng=np.random.default_rng(5)).params["weight"]
    assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_matches_closed_form_and_does_not_modify_dy(dtype):
    rng = np.random.default_rng(1)
    layer = Dense(5, 3, rng=0, dtype=dtype)
    x = rng.standard_normal((4, 5)).astype(dtype)
    dy = rng.standard_normal((4, 3)).astype(dtype)
    dy_copy = dy.copy()
    x_copy = x.copy()
    layer.forward(x)
    dx = layer.backward(dy)
    assert np.array_equal(dy, dy_copy)
    assert np.array_equal(x, x_copy)
    w = layer.params["weight"]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(layer.grads["weight"], x.T @ dy, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(layer.grads["bias"], dy.sum(axis=0), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dx, dy @ w.T, rtol=rtol, atol=rtol)
    assert dx.shape == x.shape and dx.dtype == dtype


def test_dense_backward_without_input_grad_returns_none_and_fills_grads():
    rng = np.random.default_rng(2)
    layer = Dense(6, 4, rng=0, dtype=np.float64)
    x, dy = rng.standard_normal((3, 6)), rng.standard_normal((3, 4))
    layer.grads["weight"][...] = np.nan
    layer.grads["bias"][...] = np.nan
    layer.forward(x)
    assert layer.backward(dy, input_grad=False) is None
    np.testing.assert_allclose(layer.grads["weight"], x.T @ dy, rtol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], dy.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("shape", [(3, 6), (3,), (6,), (2, 5, 1), (3, 4)])
def test_dense_wrong_input_shape_raises_value_error(shape):
    layer = Dense(5, 2, rng=0)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        layer.forward(np.zeros(shape, np.float32))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_dense_rejects_non_positive_integer_sizes(bad):
    with pytest.raises(ValueError):
        Dense(bad, 3)
    with pytest.raises(ValueError):
        Dense(3, bad)


def test_dense_rejects_unknown_init():
    with pytest.raises(ValueError, match="init"):
        Dense(3, 3, init="xavier-ish")


def test_dense_backward_before_forward_raises():
    with pytest.raises(RuntimeError):
        Dense(3, 2).backward(np.zeros((1, 2), np.float32))


# ---- ReLU -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_forward_and_backward(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 9)).astype(dtype)
    x[0, :3] = 0
    dy = rng.standard_normal((7, 9)).astype(dtype)
    dy_copy = dy.copy()
    layer = ReLU()
    y = layer.forward(x)
    assert y.dtype == dtype
    assert np.array_equal(y, np.where(x > 0, x, 0))
    dx = layer.backward(dy)
    assert np.array_equal(dy, dy_copy)
    # Gradient 1 where x > 0 and 0 elsewhere, including at exactly 0.
    assert np.array_equal(dx, np.where(x > 0, dy, 0))


def test_relu_handles_non_2d_and_non_contiguous_input():
    x = np.arange(-12, 12, dtype=np.float32).reshape(2, 3, 4)[:, ::2, :]
    y = ReLU().forward(x)
    assert y.shape == x.shape
    assert np.array_equal(y, np.maximum(x, 0))


# ---- Dropout ----------------------------------------------------------------------

def test_dropout_eval_mode_is_identity():
    x = np.random.default_rng(4).standard_normal((50, 20)).astype(np.float32)
    layer = Dropout(0.5, rng=0).eval()
    y = layer.forward(x)
    assert np.array_equal(y, x)
    dy = np.ones_like(x)
    assert np.array_equal(layer.backward(dy), dy)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_train_mode_keeps_the_expected_value(p):
    x = np.ones((1000, 1000), np.float32)
    layer = Dropout(p, rng=123)
    y = layer.forward(x)
    assert y.shape == x.shape and y.dtype == np.float32
    dropped = np.mean(y == 0)
    assert dropped == pytest.approx(p, rel=0.01)
    assert y.astype(np.float64).mean() == pytest.approx(1.0, rel=0.01)
    # Survivors are scaled by exactly 1/(1-p) in the array's dtype.
    assert np.all(y[y != 0] == np.float32(1 / (1 - p)))


def test_dropout_p_zero_is_identity_in_training():
    x = np.random.default_rng(5).standard_normal((30, 8))
    layer = Dropout(0.0, rng=0)
    assert layer.training
    assert np.array_equal(layer.forward(x), x)
    dy = np.random.default_rng(6).standard_normal((30, 8))
    assert np.array_equal(layer.backward(dy), dy)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_backward_uses_forward_mask(dtype):
    rng = np.random.default_rng(7)
    x = (rng.random((40, 25)) + 0.5).astype(dtype)  # no zeros in x
    dy = rng.standard_normal((40, 25)).astype(dtype)
    dy_copy = dy.copy()
    layer = Dropout(0.4, rng=11)
    y = layer.forward(x).copy()
    mask = y / x  # 0 where dropped, 1/(1-p) where kept
    dx = layer.backward(dy)
    assert np.array_equal(dy, dy_copy)
    assert np.array_equal(dx == 0, y == 0)
    np.testing.assert_allclose(dx, dy * mask, rtol=1e-6 if dtype == np.float32 else 1e-14)
    # A second backward still uses the same (cached) mask.
    assert np.array_equal(layer.backward(dy), dx)


def test_dropout_same_seed_same_mask_and_each_forward_draws_a_new_one():
    x = np.ones((20, 30))
    a, b = Dropout(0.5, rng=9), Dropout(0.5, rng=9)
    first = a.forward(x).copy()
    assert np.array_equal(first, b.forward(x))
    assert not np.array_equal(first, a.forward(x))


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), True, "0.5", None])
def test_dropout_p_outside_zero_one_raises_value_error(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(p)


@pytest.mark.parametrize("p", [0, np.int64(0), np.float32(0.25), np.float64(0.5), 0.999])
def test_dropout_accepts_any_real_number_in_zero_one(p):
    assert Dropout(p).p == float(p)


# ---- Flatten ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 28, 28), (5, 784), (1, 28, 28), (2, 4, 14, 14)])
def test_flatten_gives_n_by_features_and_backward_restores_shape(shape):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    layer = Flatten()
    y = layer.forward(x)
    assert y.shape == (shape[0], 784)
    assert np.array_equal(y, x.reshape(shape[0], -1))
    dy = np.random.default_rng(0).standard_normal(y.shape)
    dx = layer.backward(dy)
    assert dx.shape == shape
    assert np.array_equal(dx.reshape(shape[0], -1), dy)


def test_flatten_rejects_a_single_unbatched_vector():
    with pytest.raises(ValueError):
        Flatten().forward(np.zeros(784))


# ---- modes ------------------------------------------------------------------------

@pytest.mark.parametrize("layer", [Dense(2, 2), ReLU(), Dropout(0.5), Flatten()],
                         ids=["Dense", "ReLU", "Dropout", "Flatten"])
def test_layer_train_and_eval_set_the_training_flag(layer):
    assert layer.training is True
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True
    layer.train(False)
    assert layer.training is False


def test_dropout_backward_before_forward_raises_like_the_other_layers():
    with pytest.raises(RuntimeError, match="before forward"):
        Dropout(0.5, rng=0).backward(np.ones((2, 3)))
    layer = Dropout(0.5, rng=0).eval()
    dy = np.ones((2, 3))
    layer.forward(dy)
    assert layer.backward(dy) is dy  # eval mode: the identity
