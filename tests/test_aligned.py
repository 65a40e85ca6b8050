"""The arrays a training step streams through start on a 64-byte boundary
(``nnscratch/aligned.py``): NumPy alone promises only 16 bytes."""

from __future__ import annotations

import numpy as np
import pytest

import nnscratch as nn
from nnscratch import aligned
from nnscratch.threaded import ThreadedStep


def _offset(a: np.ndarray) -> int:
    return a.ctypes.data % 64


@pytest.mark.parametrize("shape", [(), 0, 1, 7, (3, 5), (784, 256), (2, 0, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.intp])
def test_empty_and_zeros_are_aligned_c_contiguous_arrays_of_that_shape_and_dtype(shape, dtype):
    # Many allocations in a row: NumPy's own would land on every 16-byte offset.
    for _ in range(20):
        for a in (aligned.empty(shape, dtype), aligned.zeros(shape, dtype)):
            assert a.shape == np.empty(shape).shape and a.dtype == dtype
            assert a.flags.c_contiguous and a.flags.writeable
            assert _offset(a) == 0 or a.size == 0  # an empty array has no data to align
    assert not aligned.zeros(shape, dtype).any()


def test_copy_is_an_aligned_copy_with_the_values_converted():
    src = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2] * 0.1  # not contiguous
    out = aligned.copy(src, np.float32)
    assert out.dtype == np.float32 and out.flags.c_contiguous and _offset(out) == 0
    np.testing.assert_array_equal(out, src.astype(np.float32))
    out[...] = 0
    assert src.any()  # a copy, not a view
    same = aligned.copy(src)
    assert same.dtype == np.float64 and np.array_equal(same, src)


def _model(dtype=np.float32):
    return nn.Sequential(nn.Flatten(), nn.Dense(12, 9), nn.ReLU(), nn.Dropout(0.2),
                         nn.Dense(9, 5), nn.ReLU(), nn.Dense(5, 3), seed=0, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_gradients_and_adam_moments_are_aligned(dtype):
    model = _model(dtype)
    opt = nn.Adam(model.parameters())
    for p in model.parameters():
        assert p.value.dtype == dtype
        assert _offset(p.value) == 0 and _offset(p.grad) == 0, p.name
        assert _offset(opt.m[p.name]) == 0 and _offset(opt.v[p.name]) == 0, p.name


def test_a_dense_layer_converted_to_another_dtype_stays_aligned():
    dense = nn.Dense(30, 7, rng=0)
    before = dense.params["weight"].copy()
    dense.astype(np.float64)
    for arrays in (dense.params, dense.grads):
        assert all(a.dtype == np.float64 and _offset(a) == 0 for a in arrays.values())
    np.testing.assert_array_equal(dense.params["weight"], before.astype(np.float64))


def test_loading_state_keeps_the_same_aligned_arrays():
    model = _model()
    opt = nn.Adam(model.parameters())
    arrays = [p.value for p in model.parameters()] + list(opt.m.values()) + list(opt.v.values())
    model.load_state_dict(_model().state_dict())
    opt.load_state_dict(nn.Adam(_model().parameters()).state_dict())
    after = [p.value for p in model.parameters()] + list(opt.m.values()) + list(opt.v.values())
    assert all(a is b for a, b in zip(arrays, after))


def test_the_training_buffers_are_aligned(monkeypatch):
    monkeypatch.setenv("NNSCRATCH_THREADED_STEP", "0")  # the layer path's buffers
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 12), dtype=np.uint8)
    y = rng.integers(0, 3, 50)
    model = _model()
    trainer = nn.Trainer(model, x, y, epochs=1, batch_size=16, verbose=0)
    trainer.run()
    layer_buffers = [b for stage in model._current_stages() for b in stage._buffers.values()]
    assert layer_buffers and all(_offset(b) == 0 for b in layer_buffers)
    plan = ThreadedStep(model, trainer.optimizer, [model.layers[1], model.layers[4], model.layers[6]],
                        [model.layers[3], None], 2, [12, 9, 5, 3])
    acts, deltas, row_loss, partials = plan._buffers_for(16)
    assert partials.shape == (1, 16, 9)
    assert all(_offset(a) == 0 for a in acts + deltas + (row_loss, partials))
