"""Custom layers: the README's example runs as printed, and the mistakes a
custom layer can make are errors, not silently wrong training."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import nnscratch as nn

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> dict:
    """Run the README's "Write your own layer" code block; return its namespace."""
    text = README.read_text()
    section = text[text.index("### Write your own layer"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_the_readme_custom_layer_example_runs_and_its_parameter_trains():
    ns = readme_example()
    model, x, y = ns["model"], ns["x"], ns["y"]
    gamma = model.layers[1].params["gamma"]
    assert not np.all(gamma == 1)  # fit moved it (below the first Dense)
    before = gamma.copy()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert not np.array_equal(gamma, before)


def test_training_gives_a_parameter_below_the_first_dense_its_true_gradient():
    Scale = readme_example()["Scale"]
    x, y = np.random.default_rng(1).random((6, 784)), np.array([0, 1, 2, 3, 4, 5])
    model = nn.Sequential(Scale(784), nn.Dense(784, 6), seed=0, dtype="float64")
    # The gradient a full backward computes...
    model.loss.forward(model._forward(model._as_batch(x, np.arange(6))), y)
    model._backward(model.loss.backward(), input_grad=True)
    full = model.layers[0].grads["gamma"].copy()
    # ...is the one the training path (no input gradient wanted) leaves for Adam.
    model.layers[0].grads["gamma"][...] = 0
    model.loss.forward(model._forward(model._as_batch(x, np.arange(6))), y)
    model._backward(model.loss.backward(), input_grad=False)
    np.testing.assert_array_equal(model.layers[0].grads["gamma"], full)
    assert np.any(full)


class ClippedDense(nn.Dense):
    """A Dense subclass whose backward has the plain Layer signature."""

    def backward(self, dy):
        return super().backward(np.clip(dy, -1, 1))


def test_a_dense_subclass_with_the_plain_backward_signature_trains():
    x, y = np.random.default_rng(2).random((8, 784)), np.arange(8) % 10
    model = nn.Sequential(ClippedDense(784, 16), nn.ReLU(), nn.Dense(16, 10), seed=0)
    before = model.layers[0].params["weight"].copy()
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert not np.array_equal(model.layers[0].params["weight"], before)


class ReplacingScale(nn.Layer):
    """Mathematically right, but assigns a new gradient array on every backward."""

    def __init__(self, features):
        super().__init__()
        self.params["gamma"] = np.ones(features)
        self.grads["gamma"] = np.zeros(features)

    def forward(self, x):
        self._x = x
        return x * self.params["gamma"]

    def backward(self, dy):
        self.grads["gamma"] = np.sum(dy * self._x, axis=0)
        return dy * self.params["gamma"]


def test_a_backward_that_replaces_its_gradient_array_is_an_error():
    x, y = np.random.default_rng(3).random((4, 5)), np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match="gamma: backward replaced the gradient array"):
        nn.gradcheck(ReplacingScale(5), x)
    model = nn.Sequential(ReplacingScale(5), nn.Dense(5, 3), seed=0, dtype="float64")
    with pytest.raises(ValueError, match=r"layers\.0\.gamma: backward replaced the gradient array"):
        nn.gradcheck(model, x, labels=y)
    model = nn.Sequential(ReplacingScale(5), nn.Dense(5, 3), seed=0, dtype="float64")
    with pytest.raises(TypeError, match=r"layers\.0\.gamma: backward replaced the gradient array"):
        model.fit(x, y, epochs=1, batch_size=2, verbose=0)


def test_params_and_grads_with_different_keys_are_named():
    layer = ReplacingScale(5)
    del layer.grads["gamma"]
    layer.grads["g"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"has params \['gamma'\] but grads \['g'\]"):
        nn.gradcheck(layer, np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"layers\.0: ReplacingScale has params \[.gamma.\] but grads"):
        nn.Sequential(layer, nn.Dense(5, 3), seed=0).parameters()


def test_gradcheck_explains_a_backward_returning_none_and_refuses_stray_labels():
    class NoDx(nn.ReLU):
        def backward(self, dy):
            super().backward(dy)

    with pytest.raises(ValueError, match="NoDx.backward returned None"):
        nn.gradcheck(NoDx(), np.ones((2, 3)))
    with pytest.raises(ValueError, match="labels apply to a Sequential or the loss"):
        nn.gradcheck(nn.ReLU(), np.ones((2, 3)), labels=np.array([0, 1]))


@pytest.mark.parametrize("first, width", [(lambda: ClippedDense(4, 3), 3), (lambda: ReplacingScale(4), 4)])
def test_save_refuses_layers_a_model_file_cannot_rebuild(tmp_path, first, width):
    layer = first()
    model = nn.Sequential(layer, nn.Dense(width, 2), seed=0)
    with pytest.raises(TypeError, match=f"layers.0 is a {type(layer).__name__}; a model file holds only"):
        nn.save(model, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
