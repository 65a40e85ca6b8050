"""SoftmaxCrossEntropy and softmax against an independent float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnscratch import SoftmaxCrossEntropy, softmax


def ce_reference(logits, labels):
    """Mean softmax cross-entropy and its gradient, in float64, written here."""
    z = np.asarray(logits, dtype=np.float64)
    n, k = z.shape
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    loss = np.mean(lse - z[np.arange(n), labels])
    probs = np.exp(z - lse[:, None])
    onehot = np.zeros_like(z)
    onehot[np.arange(n), labels] = 1.0
    return loss, (probs - onehot) / n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 4, 37])
def test_uniform_logits_give_log_of_num_classes(n, dtype):
    labels = np.arange(n) % 10
    loss = SoftmaxCrossEntropy().forward(np.zeros((n, 10), dtype), labels)
    assert loss == pytest.approx(math.log(10), rel=1e-6)
    loss = SoftmaxCrossEntropy().forward(np.full((n, 10), 123.5, dtype), labels)
    assert loss == pytest.approx(math.log(10), rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, k", [(1, 2), (5, 10), (64, 10), (9, 33)])
def test_loss_and_gradient_match_float64_reference(n, k, dtype):
    rng = np.random.default_rng(n * 100 + k)
    logits = (rng.standard_normal((n, k)) * 3).astype(dtype)
    labels = rng.integers(0, k, n)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, labels)
    grad = loss_fn.backward()
    ref_loss, ref_grad = ce_reference(logits, labels)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss == pytest.approx(ref_loss, rel=tol)
    assert grad.dtype == dtype and grad.shape == (n, k)
    np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol / n)


def test_huge_float32_logits_give_finite_loss_and_correct_gradient():
    rng = np.random.default_rng(0)
    n, k = 16, 10
    logits = (rng.choice([-1e4, 1e4], size=(n, k)) + rng.standard_normal((n, k))).astype(np.float32)
    logits[0] = -1e4  # one row tied at -1e4
    labels = rng.integers(0, k, n)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, labels)
    grad = loss_fn.backward()
    ref_loss, ref_grad = ce_reference(logits, labels)
    assert np.isfinite(loss)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grad.dtype == np.float32
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_rows_sum_to_zero(dtype):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((20, 10)) * 5).astype(dtype)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(logits, rng.integers(0, 10, 20))
    sums = loss_fn.backward().astype(np.float64).sum(axis=1)
    atol = 1e-7 if dtype == np.float32 else 1e-16
    np.testing.assert_allclose(sums, 0.0, atol=atol)


def test_forward_does_not_modify_logits_and_call_is_forward():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 4))
    copy = logits.copy()
    labels = np.array([0, 1, 2, 3, 0, 1])
    loss_fn = SoftmaxCrossEntropy()
    assert loss_fn(logits, labels) == loss_fn.forward(logits, labels)
    assert np.array_equal(logits, copy)


def test_perfect_prediction_gives_near_zero_loss():
    logits = np.full((3, 5), -50.0)
    labels = np.array([4, 0, 2])
    logits[np.arange(3), labels] = 50.0
    assert SoftmaxCrossEntropy().forward(logits, labels) < 1e-30


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_rows_sum_to_one_and_stay_finite_for_huge_logits(dtype):
    rng = np.random.default_rng(3)
    big = np.finfo(dtype).max / 4
    logits = np.stack([
        rng.standard_normal(10) * 3,
        np.full(10, 1e4),
        np.linspace(-1e4, 1e4, 10),
        np.full(10, -1e4),
        np.where(np.arange(10) == 3, big, -big),
    ]).astype(dtype)
    p = softmax(logits)
    assert p.dtype == dtype and p.shape == logits.shape
    assert np.isfinite(p).all()
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert p[4, 3] == 1.0
    np.testing.assert_allclose(p[1], 0.1, rtol=1e-6)
    ref = np.exp(logits[0].astype(np.float64) - logits[0].max())
    np.testing.assert_allclose(p[0], ref / ref.sum(), rtol=1e-5)


def test_softmax_does_not_modify_its_input():
    z = np.array([[1.0, 2.0, 3.0]])
    softmax(z)
    assert np.array_equal(z, [[1.0, 2.0, 3.0]])


@pytest.mark.parametrize("labels", [[0, 1, 10], [0, -1, 2], [10, 10, 10]])
def test_labels_out_of_range_raise_value_error(labels):
    with pytest.raises(ValueError, match=r"0\.\.9"):
        SoftmaxCrossEntropy().forward(np.zeros((3, 10)), np.array(labels))


@pytest.mark.parametrize("labels", [
    np.zeros(2, int), np.zeros(4, int), np.zeros((3, 1), int), np.zeros(3, float),
])
def test_labels_of_wrong_shape_or_dtype_raise_value_error(labels):
    with pytest.raises(ValueError, match="labels"):
        SoftmaxCrossEntropy().forward(np.zeros((3, 10)), labels)


@pytest.mark.parametrize("shape", [(10,), (2, 3, 10)])
def test_logits_not_2d_raise_value_error(shape):
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        SoftmaxCrossEntropy().forward(np.zeros(shape), np.zeros(shape[0], int))


def test_empty_batch_raises_value_error():
    with pytest.raises(ValueError, match="empty"):
        SoftmaxCrossEntropy().forward(np.zeros((0, 10)), np.zeros(0, int))


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError):
        SoftmaxCrossEntropy().backward()


def test_big_endian_labels_work_and_bad_ones_give_a_value_error():
    loss = SoftmaxCrossEntropy()
    logits = np.zeros((3, 4), np.float32)
    assert loss.forward(logits, np.array([0, 1, 3], ">i8")) == pytest.approx(np.log(4))
    with pytest.raises(ValueError, match=r"0\.\.3"):
        loss.forward(logits, np.array([0, 1, 5], ">i8"))


@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.complex64])
def test_logits_of_another_dtype_raise_a_type_error_naming_it(dtype):
    # Both backends: the kernels take float32 and float64 only.
    with pytest.raises(TypeError, match=f"float32 or float64 logits, got {np.dtype(dtype)}"):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3), dtype), np.array([0, 1]))
