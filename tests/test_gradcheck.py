"""Float64 gradient checks through the public ``nnscratch.gradcheck``, and checks
that gradcheck itself catches a wrong backward."""

from __future__ import annotations

import numpy as np
import pytest

from nnscratch import (
    Dense,
    Dropout,
    GradcheckResult,
    Layer,
    ReLU,
    Sequential,
    SoftmaxCrossEntropy,
    gradcheck,
)

TOL = 1e-6
# (batch, in_features, out_features); batch size 1 included on purpose.
LAYER_SHAPES = [(1, 1, 1), (1, 6, 4), (3, 5, 7), (8, 12, 3)]


def _check_passed(result: GradcheckResult, expected_names: set[str]) -> None:
    assert isinstance(result, GradcheckResult)
    assert {c.name for c in result.checks} == expected_names
    assert result.passed, result.report()
    assert result.max_rel_error <= TOL, result.report()
    for c in result.checks:
        assert c.checked > 0, result.report()


@pytest.mark.parametrize("n, fin, fout", LAYER_SHAPES)
def test_dense_gradients_pass_gradcheck(n, fin, fout):
    rng = np.random.default_rng(n * 31 + fin * 7 + fout)
    layer = Dense(fin, fout, rng=rng, dtype=np.float64)
    layer.params["bias"][...] = rng.standard_normal(fout)
    x = rng.standard_normal((n, fin))
    result = gradcheck(layer, x)
    _check_passed(result, {"input", "weight", "bias"})
    assert bool(result) is True


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (4, 6), (10, 13)])
def test_relu_gradient_passes_gradcheck_away_from_zero(shape):
    rng = np.random.default_rng(sum(shape))
    # |x| in [0.1, 1]: no kink within h of any input.
    x = rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    if x.size > 1:
        x.reshape(-1)[0], x.reshape(-1)[1] = 0.5, -0.5  # both sides present
    result = gradcheck(ReLU(), x)
    _check_passed(result, {"input"})
    assert result.checks[0].skipped_kinks == 0


@pytest.mark.parametrize("p", [0.2, 0.5])
@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (5, 6), (16, 4)])
def test_dropout_gradient_passes_gradcheck_with_fixed_mask(shape, p):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape)
    layer = Dropout(p, rng=3)
    result = gradcheck(layer, x)
    _check_passed(result, {"input"})


@pytest.mark.parametrize("n, k", [(1, 2), (1, 10), (4, 10), (16, 5)])
def test_softmax_cross_entropy_gradient_passes_gradcheck(n, k):
    rng = np.random.default_rng(n * 10 + k)
    logits = rng.standard_normal((n, k)) * 0.5  # no tiny probabilities (see the end of the file)
    y = rng.integers(0, k, n)
    result = gradcheck(SoftmaxCrossEntropy(), logits, labels=y)
    _check_passed(result, {"input"})


# (batch, in, hidden1, hidden2, classes, seed). The seed fixes weights, inputs and
# dropout masks. Inputs are kept away from 0, biases are positive (no unit sits
# exactly on a ReLU kink) and the last layer is scaled down so no class
# probability is tiny: gradcheck's purely relative error cannot resolve gradient
# entries much below ~1e-4 at h = 1e-6 (see the two tests at the end of this file).
NET_SHAPES = [
    (1, 6, 16, 12, 10, 0),
    (1, 4, 8, 8, 2, 1),
    (2, 5, 7, 4, 3, 2),
    (5, 8, 10, 6, 10, 8),
    (16, 12, 9, 9, 4, 4),
]


def _conditioned_network(n, fin, h1, h2, k, seed, last=Dense, fuse=True):
    rng = np.random.default_rng(seed)
    model = Sequential(
        Dense(fin, h1), ReLU(), Dropout(0.25),
        Dense(h1, h2), ReLU(), Dropout(0.1),
        last(h2, k),
        seed=seed, dtype="float64", fuse=fuse,
    )
    for layer in model.layers:
        if isinstance(layer, Dense):
            layer.params["bias"][...] = rng.uniform(0.1, 0.3, layer.out_features)
    model.layers[-1].params["weight"] *= 0.5
    x = rng.uniform(0.5, 1.5, (n, fin)) * rng.choice([-1.0, 1.0], (n, fin))
    y = rng.integers(0, k, n)
    return model, x, y


@pytest.mark.parametrize("fuse", [True, False], ids=["fused-blocks", "layer-by-layer"])
@pytest.mark.parametrize("n, fin, h1, h2, k, seed", NET_SHAPES)
def test_three_dense_network_with_relu_and_dropout_passes_gradcheck(n, fin, h1, h2, k, seed, fuse):
    model, x, y = _conditioned_network(n, fin, h1, h2, k, seed, fuse=fuse)
    assert len(model._stages) == (3 if fuse else 7)
    assert any(isinstance(layer, Dropout) and layer.training for layer in model.layers)
    result = gradcheck(model, x, labels=y)
    names = {"input"} | {p.name for p in model.parameters()}
    _check_passed(result, names)
    # Not vacuous: the gradient reaches every Dense layer.
    for layer in model.layers:
        if isinstance(layer, Dense):
            assert np.any(layer.grads["weight"] != 0)


@pytest.mark.parametrize("scale", [1e3, 1e5, 1e-4])
@pytest.mark.parametrize("seed", range(20))
def test_dense_passes_gradcheck_with_inputs_far_from_unit_size(scale, seed):
    # A fixed absolute step of 1e-6 on an entry of 1e3 is rounded (x + h is not
    # x + h exactly), which once made a smooth linear layer look like a kink.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4)) * scale
    layer = Dense(4, 3, dtype=np.float64, rng=seed)
    layer.params["weight"][...] *= scale
    result = gradcheck(layer, x)
    assert all(c.skipped_kinks == 0 for c in result.checks), result.report()
    if scale < 1:
        _check_passed(result, {"input", "weight", "bias"})
        return
    # With L ~ 1e6..1e10, the rounding noise of L against a step of 1e-6 on a
    # zero bias hides that bias's gradient: not passed, not failed, and said so.
    checks = {c.name: c for c in result.checks}
    assert checks["input"].passed and checks["weight"].passed, result.report()
    bias = checks["bias"]
    assert bias.passed or (bias.unresolved and bias.max_rel_error <= TOL), result.report()
    if not bias.passed:
        assert result.report().splitlines()[-2].startswith("INCONCLUSIVE:")
        assert "bias could not be resolved" in result.report()
        # The layer is linear, so a step of 1 times the entry is still exact
        # (up to rounding), and against it the noise is small: then all pass.
        _check_passed(gradcheck(layer, x, h=1.0), {"input", "weight", "bias"})


def test_a_step_too_small_to_change_an_entry_is_an_error_naming_h():
    layer = Dense(4, 3, dtype=np.float64, rng=0)
    before = layer.params["weight"].copy()
    with pytest.raises(ValueError, match=r"h=1e-17 is too small"):
        gradcheck(layer, np.random.default_rng(0).standard_normal((3, 4)), h=1e-17)
    assert np.array_equal(layer.params["weight"], before)


def test_gradcheck_of_model_leaves_parameters_unchanged():
    model = Sequential(Dense(4, 5), ReLU(), Dense(5, 3), seed=0, dtype="float64")
    before = model.state_dict()
    x = np.random.default_rng(0).standard_normal((3, 4))
    gradcheck(model, x, labels=np.array([0, 1, 2]))
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


# ---- gradcheck catches mistakes ---------------------------------------------------

class DenseScaledWeightGrad(Dense):
    """dL/dW off by 1%."""

    def backward(self, dy, *, input_grad=True):
        dx = super().backward(dy, input_grad=input_grad)
        self.grads["weight"] *= 1.01
        return dx


class DenseWrongInputGrad(Dense):
    """dL/dx computed with the wrong sign."""

    def backward(self, dy, *, input_grad=True):
        dx = super().backward(dy, input_grad=input_grad)
        return None if dx is None else -dx


class DenseTransposedBiasGrad(Dense):
    """dL/db summed over the wrong axis pattern: reversed entries."""

    def backward(self, dy, *, input_grad=True):
        dx = super().backward(dy, input_grad=input_grad)
        self.grads["bias"][...] = self.grads["bias"][::-1].copy()
        return dx


@pytest.mark.parametrize("cls, wrong", [
    (DenseScaledWeightGrad, "weight"),
    (DenseWrongInputGrad, "input"),
    (DenseTransposedBiasGrad, "bias"),
])
def test_gradcheck_catches_a_wrong_dense_backward(cls, wrong):
    rng = np.random.default_rng(0)
    layer = cls(5, 4, rng=1, dtype=np.float64)
    result = gradcheck(layer, rng.standard_normal((3, 5)))
    assert result.passed is False
    assert bool(result) is False
    by_name = {c.name: c for c in result.checks}
    assert by_name[wrong].passed is False
    assert by_name[wrong].max_rel_error > TOL
    for name, check in by_name.items():
        if name != wrong:
            assert check.passed, result.report()
    assert "FAIL" in result.report()


class DenseDroppingAColumn(Dense):
    """Returns dL/dx without its last column: the wrong shape."""

    def backward(self, dy, *, input_grad=True):
        dx = super().backward(dy, input_grad=input_grad)
        return None if dx is None else dx[:, :-1]


def test_gradcheck_names_a_backward_that_returns_the_wrong_shape():
    layer = DenseDroppingAColumn(6, 4, rng=1, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((4, 6))
    with pytest.raises(ValueError, match=r"input gradient the shape \(4, 5\).*input, \(4, 6\)"):
        gradcheck(layer, x)


@pytest.mark.parametrize("training", [False, True])
def test_gradcheck_leaves_the_train_or_eval_mode_as_it_found_it(training):
    model = Sequential(Dense(4, 5), ReLU(), Dropout(0.3), Dense(5, 3), seed=0, dtype="float64")
    model.train(training)
    x = np.random.default_rng(0).standard_normal((3, 4))
    assert gradcheck(model, x, labels=np.array([0, 1, 2]))
    assert model.training is training
    layer = Dropout(0.3, rng=0)
    layer.train(training)
    assert gradcheck(layer, x)
    assert layer.training is training
    # Mixed: each layer keeps its own flag.
    model.train()
    model.layers[2].eval()
    assert gradcheck(model, x, labels=np.array([0, 1, 2]))
    assert [layer.training for layer in model.layers] == [True, True, False, True]


def test_gradcheck_catches_a_wrong_backward_inside_a_model():
    good, x, y = _conditioned_network(4, 5, 6, 6, 3, seed=5)
    assert gradcheck(good, x, labels=y).passed  # the control: same net, correct backward
    bad, x_bad, y_bad = _conditioned_network(4, 5, 6, 6, 3, seed=5, last=DenseScaledWeightGrad)
    assert np.array_equal(x_bad, x) and np.array_equal(y_bad, y)
    assert all(np.array_equal(a, b) for a, b in zip(good.state_dict().values(),
                                                    bad.state_dict().values()))
    result = gradcheck(bad, x, labels=y)
    assert result.passed is False
    failed = {c.name for c in result.checks if not c.passed}
    assert failed == {"layers.6.weight"}


def test_a_dense_subclass_before_relu_is_not_fused_away():
    # Fusion must not bypass a subclass's own backward: the wrong gradient is caught.
    rng = np.random.default_rng(3)
    model = Sequential(DenseScaledWeightGrad(5, 6), ReLU(), Dropout(0.2), Dense(6, 3),
                       seed=3, dtype="float64")
    assert model._stages[0] is model.layers[0]
    model.layers[0].params["bias"][...] = 0.2
    x, y = rng.uniform(0.5, 1.5, (4, 5)), rng.integers(0, 3, 4)
    result = gradcheck(model, x, labels=y)
    assert {c.name for c in result.checks if not c.passed} == {"layers.0.weight"}


def test_gradcheck_raises_type_error_for_float32_layer():
    layer = Dense(3, 2, rng=0)  # float32 by default
    with pytest.raises(TypeError, match="float64"):
        gradcheck(layer, np.ones((2, 3)))


def test_gradcheck_raises_type_error_for_float32_model():
    model = Sequential(Dense(3, 4), ReLU(), Dense(4, 2), seed=0)
    with pytest.raises(TypeError, match=r"float64.*layers\.0\.weight|layers\.0\.weight.*float64"):
        gradcheck(model, np.ones((2, 3)), labels=np.array([0, 1]))


def test_gradcheck_of_model_or_loss_without_labels_raises():
    model = Sequential(Dense(3, 2), seed=0, dtype="float64")
    with pytest.raises(ValueError, match="labels"):
        gradcheck(model, np.ones((2, 3)))
    with pytest.raises(ValueError, match="labels"):
        gradcheck(SoftmaxCrossEntropy(), np.ones((2, 3)))


def test_gradcheck_counts_relu_kinks_instead_of_failing():
    x = np.array([[0.0, 0.5, -0.5, 1e-9]])
    result = gradcheck(ReLU(), x)
    check = result.checks[0]
    assert check.skipped_kinks == 2
    assert check.checked == 2
    assert result.passed


# ---- gradcheck must not reject an exact gradient ------------------------------------
# Both tests below check an analytic gradient that is exact (verified here
# independently), so a FAIL from gradcheck is a false alarm of the checker.

def test_gradcheck_accepts_an_exact_gradient_with_small_entries():
    # One class has probability ~2e-5, so its gradient entry is ~2e-5. The
    # central difference of an O(1) loss at h = 1e-6 carries rounding noise of
    # ~1e-10, i.e. a relative error ~5e-6 on that entry: the checker must allow
    # for its own noise floor instead of reporting a correct backward as FAILED.
    logits = np.array([[0.0, 0.3, -10.0, 1.0]])
    labels = np.array([1])
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(logits, labels)
    e = np.exp(logits - logits.max())
    exact = e / e.sum()
    exact[0, 1] -= 1.0
    np.testing.assert_allclose(loss_fn.backward(), exact, rtol=1e-13, atol=1e-18)
    result = gradcheck(SoftmaxCrossEntropy(), logits, labels=labels)
    assert result.passed, result.report()


def test_gradcheck_skips_a_kink_hit_by_one_sample():
    # Sample 0 switches the first hidden layer off entirely, so the second
    # layer's pre-activations for that sample are exactly its (zero) biases:
    # L is not differentiable in those biases. The documented contract is
    # that such kinks are detected and skipped; an undetected kink must not be
    # reported as a wrong gradient.
    model = Sequential(Dense(2, 2), ReLU(), Dense(2, 2), ReLU(), Dense(2, 2), seed=0,
                       dtype="float64")
    d0, d1, d2 = (layer for layer in model.layers if isinstance(layer, Dense))
    d0.params["weight"][...] = [[1.0, 0.5], [0.5, 1.0]]
    d1.params["weight"][...] = [[1.0, -0.5], [0.3, 1.0]]
    d1.params["bias"][...] = 0.0
    d2.params["weight"][...] = [[1.0, -1.0], [-0.5, 0.8]]
    d2.params["bias"][...] = [4.0, -4.0]
    x = np.array([[-1.0, -2.0], [1.0, 0.5], [0.7, 1.2], [1.5, 0.2]])
    y = np.array([0, 1, 0, 1])
    assert np.all(d0.forward(x)[0] < 0)  # sample 0: every first-layer unit is off
    result = gradcheck(model, x, labels=y)
    check = {c.name: c for c in result.checks}["layers.2.bias"]
    # Both entries are detected as kinks: the tensor is inconclusive, not failed.
    assert check.skipped_kinks == 2 and check.inconclusive, result.report()
    assert all(c.passed for c in result.checks if c is not check), result.report()
    assert result.report().splitlines()[-2].startswith("INCONCLUSIVE:")


# ---- custom layers, as a test writer builds them ------------------------------------------
class Scale(Layer):
    """y = x * w elementwise, with w stored in whatever memory layout it is given."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        self.params["weight"] = weight
        self.grads["weight"] = np.zeros_like(weight)

    def forward(self, x):
        self.x = x
        return x * self.params["weight"]

    def backward(self, dy):
        self.grads["weight"][...] = dy * self.x
        return dy * self.params["weight"]


class MultiplicativeNoise(Layer):
    """y = x * (1 + 0.5 e), e ~ N(0, 1) drawn from the layer's own generator."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.noise_source = np.random.default_rng(seed)

    def forward(self, x):
        self.factor = 1 + 0.5 * self.noise_source.standard_normal(x.shape)
        return x * self.factor

    def backward(self, dy):
        return dy * self.factor


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_gradcheck_perturbs_parameters_of_any_memory_layout(layout):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 10))
    weight = {"C": base.copy(), "F": np.asfortranarray(base), "strided": base[:, 1:6]}[layout]
    x = rng.standard_normal(weight.shape)
    result = gradcheck(Scale(weight), x)
    assert result.passed, result.report()
    assert all(c.checked == c.shape[0] * c.shape[1] for c in result.checks)


def test_gradcheck_fixes_the_randomness_of_a_custom_layers_own_generator():
    x = np.random.default_rng(1).standard_normal((3, 5))
    result = gradcheck(MultiplicativeNoise(seed=7), x)
    assert result.passed and result.checks[0].checked == 15, result.report()
    model = Sequential(Dense(5, 4, dtype=np.float64), MultiplicativeNoise(seed=7),
                       Dense(4, 3, dtype=np.float64), seed=0, dtype="float64")
    result = gradcheck(model, x, labels=np.array([0, 2, 1]))
    assert result.passed, result.report()


def test_gradcheck_explains_a_forward_that_is_random_between_calls():
    class UncontrolledNoise(MultiplicativeNoise):
        def forward(self, x):  # a fresh generator every call: nothing gradcheck can reset
            self.noise_source = np.random.default_rng()
            return super().forward(x)

    with pytest.raises(ValueError, match=r"the same input gave L = .*, then .*: the forward "
                                         "draws randomness from a source gradcheck cannot reset"):
        gradcheck(UncontrolledNoise(seed=0), np.ones((2, 3)))


# ---- the layer contract the optimizer relies on -------------------------------------------
class AddsIntoItsGradient(Scale):
    """Scale with a PyTorch-style backward: it adds to the gradient array."""

    def backward(self, dy):
        self.grads["weight"] += dy * self.x
        return dy * self.params["weight"]


class ChangesItsArgument(Scale):
    def backward(self, dy):
        self.grads["weight"][...] = dy * self.x
        dy *= self.params["weight"]  # in place: the caller's array changes
        return dy


def test_gradcheck_refuses_a_backward_that_adds_into_its_gradient():
    x = np.random.default_rng(0).standard_normal((3, 4))
    assert gradcheck(Scale(np.ones((3, 4)) * 0.5), x).passed
    with pytest.raises(ValueError, match=r"weight: backward's result depends on what the gradient "
                                         r"array held before \(it added to it, with \+="):
        gradcheck(AddsIntoItsGradient(np.ones((3, 4)) * 0.5), x)
    model = Sequential(Dense(4, 4, dtype=np.float64), AddsIntoItsGradient(np.ones((3, 4)) * 0.5),
                       Dense(4, 2, dtype=np.float64), seed=0, dtype="float64")
    with pytest.raises(ValueError, match=r"layers.1.weight: backward's result depends"):
        gradcheck(model, x, labels=np.array([0, 1, 0]))


def test_gradcheck_refuses_a_backward_that_changes_its_argument():
    x = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(ValueError, match="ChangesItsArgument.backward changed its argument dy"):
        gradcheck(ChangesItsArgument(np.full((3, 4), 0.5)), x)


def test_a_tensor_with_only_kinks_is_inconclusive_not_failed():
    result = gradcheck(ReLU(), np.zeros((2, 3)))
    check = result.checks[0]
    assert check.inconclusive and check.checked == 0 and check.skipped_kinks == 6
    assert not result.passed  # nothing was verified: never a pass
    lines = result.report().splitlines()
    assert lines[1].endswith("n/a") and lines[-2].startswith("INCONCLUSIVE:")
    assert "no entry of input could be checked" in lines[-1] and "smaller h" in lines[-1]


    class WrongShift(Layer):  # y = relu(x) + b, with dL/db doubled
        def __init__(self):
            super().__init__()
            self.params["b"] = np.full(3, 0.5)
            self.grads["b"] = np.zeros(3)

        def forward(self, x):
            self.x = x
            return np.maximum(x, 0) + self.params["b"]

        def backward(self, dy):
            self.grads["b"][...] = 2 * dy.sum(axis=0)
            return dy * (self.x > 0)

    # An inconclusive input and a wrong gradient elsewhere: FAILED, for the wrong one.
    result = gradcheck(WrongShift(), np.zeros((2, 3)))
    assert [c.inconclusive for c in result.checks] == [True, False]
    assert not result.checks[1].passed
    assert result.report().splitlines()[-2].startswith("FAILED:")


def test_gradcheck_holds_the_dropout_of_a_layer_inside_a_layer_fixed():
    class Residual(Layer):  # y = dropout(x) + x, the Dropout held by the layer
        def __init__(self):
            super().__init__()
            self.inner = [Dropout(0.5, rng=0)]

        def forward(self, x):
            return self.inner[0].forward(x) + x

        def backward(self, dy):
            return self.inner[0].backward(dy) + dy

    x = np.random.default_rng(1).standard_normal((4, 5)) + 3  # no kink near
    result = gradcheck(Residual(), x)
    assert result.passed and result.checks[0].checked == 20, result.report()


def test_gradcheck_misuse_is_a_clear_type_error():
    class NoSuper(Layer):
        def __init__(self):  # forgot super().__init__()
            self.params, self.grads = {}, {}

        def forward(self, x):
            return x

        def backward(self, dy):
            return dy

    class InFloat32(Layer):
        def forward(self, x):
            return x.astype(np.float32) * 2

        def backward(self, dy):
            return dy * 2

    x = np.ones((2, 3))
    for module, message in ((SoftmaxCrossEntropy, "got the class SoftmaxCrossEntropy, not an "
                                                  "instance of it; pass SoftmaxCrossEntropy"),
                            (np.tanh, "expected a Layer, a Sequential or a SoftmaxCrossEntropy"),
                            (NoSuper(), "did its __init__ call super\\(\\).__init__\\(\\)"),
                            (InFloat32(), "InFloat32.forward's output is float32")):
        with pytest.raises(TypeError, match=message):
            gradcheck(module, x, labels=np.array([0, 1]) if module is SoftmaxCrossEntropy else None)


class _DoubledWeightGradient(Dense):
    def backward(self, dy, **kwargs):
        dx = super().backward(dy, **kwargs)
        self.grads["weight"][...] *= 2
        return dx


@pytest.mark.parametrize("bias, verdict", [(1e9, "INCONCLUSIVE"), (1e8, "FAILED")])
def test_a_wrong_gradient_in_rounding_noise_is_never_passed(bias, verdict):
    # With L ~ 1e10 the difference quotients of the weights are mostly rounding
    # noise, and the noise floor used to let this doubled gradient PASS. Where the
    # error still stands out of the noise (L ~ 1e9) it is a failure.
    layer = _DoubledWeightGradient(20, 20, dtype=np.float64, rng=0)
    layer.params["bias"][...] = bias
    result = gradcheck(layer, np.random.default_rng(0).standard_normal((4, 20)))
    weight = next(c for c in result.checks if c.name == "weight")
    assert not result.passed and not weight.passed and weight.resolution > 1e-2
    verdicts = [line for line in result.report().splitlines()
                if line.split(":")[0] in ("PASSED", "FAILED", "INCONCLUSIVE")]
    assert len(verdicts) == 1 and verdicts[0].startswith(verdict + ":"), result.report()
    assert weight.inconclusive == (verdict == "INCONCLUSIVE")
    assert ("weight could not be resolved" in result.report()) == (verdict == "INCONCLUSIVE")
    # At unit scale the same layer fails outright.
    layer.params["bias"][...] = 0.5
    result = gradcheck(layer, np.random.default_rng(0).standard_normal((4, 20)))
    weight = next(c for c in result.checks if c.name == "weight")
    assert not weight.passed and not weight.inconclusive
    assert result.report().splitlines()[-1].startswith("FAILED:")


def test_an_error_that_stands_out_of_the_noise_fails_even_where_resolution_is_poor():
    # Inputs of 1e-6: the weight gradients are ~1e-6, near L's rounding noise, yet
    # a doubled one differs by far more than the noise: FAILED, not INCONCLUSIVE.
    layer = _DoubledWeightGradient(5, 3, dtype=np.float64, rng=0)
    result = gradcheck(layer, np.random.default_rng(0).standard_normal((4, 5)) * 1e-6)
    weight = next(c for c in result.checks if c.name == "weight")
    assert weight.max_rel_error > 1e-6 and not weight.passed and not weight.inconclusive
    assert "FAILED" in result.report()


def test_an_all_zero_gradient_is_verified_when_the_noise_is_small():
    # ReLU of negative inputs: dx is exactly 0 and L does not move; that is a check.
    result = gradcheck(ReLU(), -np.random.default_rng(0).uniform(0.5, 1.0, (3, 4)))
    assert result.passed and result.checks[0].resolution == 0.0


class _ScaledWeightGradient(Dense):
    factor = 1.0

    def backward(self, dy, **kwargs):
        dx = super().backward(dy, **kwargs)
        self.grads["weight"][...] *= self.factor
        return dx


def test_gradcheck_fails_a_weight_gradient_off_by_one_part_in_ten_thousand():
    # The tolerance is 1e-6: an error 100 times that must not pass.
    layer = _ScaledWeightGradient(6, 4, dtype=np.float64, rng=0)
    layer.factor = 1 + 1e-4
    result = gradcheck(layer, np.random.default_rng(0).standard_normal((5, 6)))
    weight = {c.name: c for c in result.checks}["weight"]
    assert not weight.passed and not weight.inconclusive and weight.max_rel_error > 1e-5
    assert result.report().splitlines()[-1].startswith("FAILED:")


def test_gradcheck_judges_small_gradients_by_their_relative_error():
    # Inputs of 1e-5 give weight gradients of ~1e-5: a 1% error on them is
    # ~1e-7 absolute, yet must fail (an absolute test would pass it).
    layer = _ScaledWeightGradient(6, 4, dtype=np.float64, rng=0)
    layer.factor = 1.01
    x = np.random.default_rng(0).standard_normal((5, 6)) * 1e-5
    result = gradcheck(layer, x)
    weight = {c.name: c for c in result.checks}["weight"]
    assert np.abs(layer.grads["weight"]).max() < 1e-4
    assert not weight.passed and not weight.inconclusive, result.report()
    layer.factor = 1.0
    assert gradcheck(layer, x).passed
