"""Fused Dense -> ReLU [-> Dropout] blocks (``nnscratch.blocks``) against the
same layers run one by one (``Sequential(fuse=False)``)."""

from __future__ import annotations

import numpy as np
import pytest

from nnscratch import Adam, Dense, Dropout, Flatten, ReLU, Sequential, Trainer
from nnscratch.blocks import DenseReLU, fuse


def _layers(p1=0.3, p2=0.0):
    layers = [Flatten(), Dense(12, 16), ReLU(), Dropout(p1), Dense(16, 8), ReLU()]
    if p2:
        layers.append(Dropout(p2))
    return layers + [Dense(8, 3)]


def _pair(dtype, **kw):
    return [Sequential(*_layers(**kw), seed=7, dtype=dtype, fuse=f) for f in (True, False)]


def _data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 4)), rng.integers(0, 3, n)


def test_fuse_groups_dense_relu_and_an_optional_dropout():
    layers = [Flatten(), Dense(4, 4), ReLU(), Dropout(0.1), Dense(4, 4), ReLU(), Dense(4, 4),
              Dropout(0.2), Dense(4, 4), ReLU(), ReLU(), Dense(4, 2)]
    stages = fuse(layers)
    kinds = [type(s).__name__ for s in stages]
    assert kinds == ["Flatten", "DenseReLU", "DenseReLU", "Dense", "Dropout", "DenseReLU",
                     "ReLU", "Dense"]
    assert stages[1].layers == tuple(layers[1:4]) and stages[2].dropout is None
    # Every layer appears exactly once, in order.
    flat = [layer for s in stages for layer in (s.layers if isinstance(s, DenseReLU) else (s,))]
    assert flat == layers


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [{}, {"p1": 0.0}, {"p1": 0.5, "p2": 0.2}])
def test_fused_forward_and_backward_equal_layer_by_layer(dtype, kw):
    fused, plain = _pair(dtype, **kw)
    x, y = _data()
    for model in (fused, plain):
        model.train()
    # Same generator state: the same dropout keys are drawn in the same order.
    logits_f = fused._forward(fused._as_batch(x, np.arange(len(x)))).copy()
    logits_p = plain._forward(plain._as_batch(x, np.arange(len(x)))).copy()
    assert np.array_equal(logits_f, logits_p)  # bias, ReLU, dropout: same operations
    grads = []
    for model in (fused, plain):
        model.loss.forward(model._forward(model._as_batch(x, np.arange(len(x)))), y)
        dx = model._backward(model.loss.backward(), input_grad=True).copy()
        grads.append((dx, {p.name: p.grad.copy() for p in model.parameters()}))
    (dx_f, g_f), (dx_p, g_p) = grads
    assert np.array_equal(dx_f, dx_p)
    for name in g_p:
        assert np.any(g_p[name] != 0), name
        np.testing.assert_array_equal(g_f[name], g_p[name], err_msg=name)


def test_fused_training_follows_the_layer_by_layer_trajectory(monkeypatch):
    # The fused blocks' own path: this run would otherwise qualify for the threaded
    # step, whose one-thread sgemm shares round differently on some CPUs (its own
    # tests, in test_threaded_step.py, hold it close to this path instead).
    monkeypatch.setenv("NNSCRATCH_THREADED_STEP", "0")
    fused, plain = _pair("float32", p1=0.3, p2=0.1)
    x, y = _data(200, seed=1)
    x = (np.abs(x) * 60).astype(np.uint8)
    hist = []
    for model in (fused, plain):
        opt = Adam(model.parameters(), lr=3e-3, weight_decay=1e-2)
        hist.append(Trainer(model, x, y, optimizer=opt, epochs=3, batch_size=32, verbose=0).run())
    # Not just close: the same float operations in the same order, so bit-identical
    # (what keeps results recorded before fusion existed reproducible).
    assert hist[0]["loss"] == hist[1]["loss"]
    for (name, a), b in zip(fused.state_dict().items(), plain.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_eval_mode_block_is_bias_and_relu_only():
    fused, plain = _pair("float64", p1=0.5)
    x, _ = _data()
    fused.eval()
    plain.eval()
    out = fused._forward(fused._as_batch(x, np.arange(len(x))))
    assert np.array_equal(out, plain._forward(plain._as_batch(x, np.arange(len(x)))))
    dense = fused.layers[1]
    h = np.maximum(x.reshape(len(x), -1) @ dense.params["weight"] + dense.params["bias"], 0)
    np.testing.assert_allclose(fused._stages[1]._y, h, rtol=1e-12)


def test_block_backward_before_forward_raises_and_leaves_its_argument_alone():
    block = DenseReLU(Dense(3, 4, rng=0), ReLU(), Dropout(0.5, rng=0))
    with pytest.raises(RuntimeError, match="before forward"):
        block.backward(np.ones((2, 4), np.float32))
    x = np.ones((2, 3), np.float32)
    block.forward(x)
    dy = np.full((2, 4), 2.0, np.float32)
    block.backward(dy)
    assert np.all(dy == 2.0)


def test_block_rejects_a_wrong_input_width():
    block = DenseReLU(Dense(3, 4, rng=0), ReLU())
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        block.forward(np.ones((2, 5), np.float32))


def test_changing_model_layers_rebuilds_the_stages():
    x, _ = _data()
    for fuse_flag in (True, False):
        model = Sequential(*_layers(p1=0.5), seed=1, dtype="float64", fuse=fuse_flag).eval()
        before = model.forward(x)
        model.layers[-1] = Dense(8, 3, rng=99, dtype=np.float64)
        after = model.forward(x)
        assert not np.allclose(before, after)
        head = model.layers[-1]
        expected = model.layers[-1].forward(model._stages[-2]._y if fuse_flag else
                                            model.layers[-2]._y)
        np.testing.assert_array_equal(after, expected)
        assert model._stages[-1] is head
        # Dropping the Dropout makes training-mode outputs deterministic again.
        del model.layers[3]
        model.train()
        assert np.array_equal(model.forward(x), model.forward(x))


def test_switching_fuse_on_an_existing_model_takes_effect():
    """A loaded model is fused; ``model.fuse = False`` must make the next forward
    run every layer's own forward, so a learner can step through them."""
    x, _ = _data()
    model = Sequential(*_layers(p1=0.5), seed=1)
    fused_out = model.eval().forward(x)
    assert any(isinstance(stage, DenseReLU) for stage in model._current_stages())
    model.fuse = False
    assert model._current_stages() == model.layers
    assert np.array_equal(model.forward(x), fused_out)
    model.train().forward(x)
    dense, relu = model.layers[1:3]
    for layer in (relu, dense):  # each ran its own forward: no "called before forward" error
        layer.backward(np.ones((20, 16), np.float32))
    model.fuse = True
    assert any(isinstance(stage, DenseReLU) for stage in model._current_stages())


def test_layer_backward_after_a_fused_forward_fails_clearly():
    model = Sequential(*_layers(p1=0.5), seed=1)
    x, _ = _data()
    dense, relu, dropout = model.layers[1:4]
    dense.forward(np.ones((2, 12), np.float32))  # a stale input from a direct call
    model.forward(x)
    for layer, dy in ((dense, np.ones((20, 16), np.float32)), (relu, np.ones((20, 16), np.float32)),
                      (dropout, np.ones((20, 16), np.float32))):
        with pytest.raises(RuntimeError, match="fuse=False"):
            layer.backward(dy)


def test_buffers_stay_bounded_whatever_the_batch_sizes():
    model = Sequential(*_layers(), seed=0)
    x, _ = _data(60)
    for n in range(1, 40):
        model.predict(x[:n], batch_size=n)
    stores = [model._batches] + [s._buffers for s in model._stages if hasattr(s, "_buffers")]
    for store in stores:
        names = [k[0] for k in store]
        assert all(names.count(name) <= 2 for name in names), store.keys()
