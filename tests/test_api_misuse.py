"""Misuse of the Python API that once passed silently or failed deep inside:
each is now a clear error (or, for slow inputs, handled once up front)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnscratch as nn
from nnscratch.schedules import WarmupCosine


def small(seed=0, dtype="float64"):
    return nn.Sequential(nn.Dense(4, 5), nn.ReLU(), nn.Dense(5, 3), seed=seed, dtype=dtype)


class NaNGradient(nn.Layer):
    """Forward is the identity; backward reports NaN for everything."""

    def forward(self, x):
        return x.copy()

    def backward(self, dy):
        return dy * np.nan


def test_gradcheck_fails_a_nan_gradient_and_nan_input():
    x, y = np.random.default_rng(0).random((3, 4)), np.array([0, 1, 2])
    result = nn.gradcheck(NaNGradient(), x)
    assert not result.passed and "FAIL" in result.report()
    model = nn.Sequential(nn.Dense(4, 4), NaNGradient(), nn.Dense(4, 3), seed=0, dtype="float64")
    assert not nn.gradcheck(model, x, labels=y)
    assert not nn.gradcheck(small(), np.full((3, 4), np.nan), labels=y)


@pytest.mark.parametrize("kwargs", [{"h": 0}, {"h": float("nan")}, {"tol": 0}, {"tol": -1},
                                    {"tiny": 0}, {"max_entries": -1}, {"max_entries": 0}])
def test_gradcheck_validates_its_own_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        nn.gradcheck(nn.Dense(3, 2, dtype=np.float64), np.ones((2, 3)), **kwargs)


def test_fit_refuses_an_optimizer_built_for_another_model():
    x, y = np.random.default_rng(0).random((8, 4)), np.arange(8) % 3
    model, other = small(0), small(1)
    with pytest.raises(ValueError, match="not this model's parameters"):
        model.fit(x, y, optimizer=nn.Adam(other.parameters()), verbose=0)
    # A subset of the model's own parameters is fine: the rest stays frozen.
    frozen = model.layers[0].params["weight"].copy()
    model.fit(x, y, optimizer=nn.Adam(model.parameters()[2:]), verbose=0)
    np.testing.assert_array_equal(model.layers[0].params["weight"], frozen)
    with pytest.raises(TypeError, match="optimizer must be an nnscratch.Adam"):
        model.fit(x, y, optimizer="adam", verbose=0)


@pytest.mark.parametrize("grad, message", [
    (np.ones(1, np.float32), "same dtype and shape"),
    (np.ones(1000, np.float64), "same dtype and shape"),
    (np.ones(2000, np.float32)[::2], "C-contiguous"),
])
def test_adam_refuses_a_gradient_that_does_not_match_its_parameter(grad, message):
    # The Numba kernel walks both arrays together: a shorter gradient would be
    # read past its end.
    with pytest.raises(ValueError, match=message):
        nn.Adam([nn.Parameter("a", np.zeros(1000, np.float32), grad)])


def test_the_same_layer_object_twice_in_a_model_is_refused():
    dense = nn.Dense(6, 6)
    with pytest.raises(ValueError, match="same Dense object appears more than once"):
        nn.Sequential(dense, nn.ReLU(), dense)


def test_a_custom_layer_may_change_the_feature_count_between_dense_layers():
    class Halve(nn.Layer):
        def forward(self, x):
            return x[:, ::2].copy()

        def backward(self, dy):
            dx = np.zeros((len(dy), 2 * dy.shape[1]), dy.dtype)
            dx[:, ::2] = dy
            return dx

    model = nn.Sequential(nn.Dense(4, 8), nn.ReLU(), Halve(), nn.Dense(4, 3), seed=0, dtype="float64")
    x, y = np.random.default_rng(0).random((5, 4)), np.array([0, 1, 2, 0, 1])
    assert nn.gradcheck(model, x, labels=y)
    with pytest.raises(ValueError, match="outputs 8 features but the next"):
        nn.Sequential(nn.Dense(4, 8), nn.ReLU(), nn.Dense(4, 3))


def test_a_fortran_ordered_dataset_is_made_contiguous_once_with_the_same_results():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 40)
    model = nn.Sequential(nn.Flatten(), nn.Dense(784, 10), seed=0)
    checked = model.check_input(np.asfortranarray(x))
    assert checked.flags.c_contiguous
    np.testing.assert_array_equal(model.predict(np.asfortranarray(x)), model.predict(x))
    a, b = (nn.Sequential(nn.Flatten(), nn.Dense(784, 10), seed=0) for _ in range(2))
    a.fit(x, y, epochs=1, batch_size=8, seed=1, verbose=0)
    b.fit(np.asfortranarray(x), y, epochs=1, batch_size=8, seed=1, verbose=0)
    np.testing.assert_array_equal(a.layers[1].params["weight"], b.layers[1].params["weight"])


def test_backward_refuses_dlogits_of_the_wrong_shape():
    model = small()
    model(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"shape of the last forward's logits \(3, 3\)"):
        model.backward(np.ones((2, 3)))


@pytest.mark.parametrize("dtype", [np.float16, "int32", complex, None])
def test_dense_and_sequential_take_only_float32_or_float64(dtype):
    with pytest.raises(ValueError, match="float32 or float64"):
        nn.Dense(3, 2, dtype=dtype)
    if dtype is not np.float16:
        with pytest.raises(ValueError, match="float32 or float64"):
            nn.Sequential(nn.Dense(3, 2), dtype=dtype)


def test_trainer_flags_are_checked():
    x, y = np.ones((4, 4)), np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match="verbose must be 0"):
        small().fit(x, y, verbose="yes")
    with pytest.raises(TypeError, match="restore_best must be True or False"):
        small().fit(x, y, restore_best="no", validation_data=(x, y), verbose=0)


def test_warmup_cosine_counts_steps_from_one():
    with pytest.raises(ValueError, match="counted from 1"):
        WarmupCosine(1e-3, 10, 0)(0)
    assert WarmupCosine(1e-3, 10, 0)(1) > 0


def test_plots_refuse_a_non_png_name(tmp_path):
    from nnscratch import plots

    history = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.7]}
    for name in ("curves.pdf", "curves", ".png"):
        with pytest.raises(ValueError, match="ending in .png"):
            plots.plot_training_curves(history, tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    assert plots.plot_training_curves(history, tmp_path / "c.PNG").exists()


def test_distinct_layers_that_compare_equal_are_not_duplicates():
    class Same(nn.ReLU):
        def __eq__(self, other):
            return isinstance(other, Same)

        __hash__ = object.__hash__

    first, second = Same(), Same()
    model = nn.Sequential(first, nn.Dense(4, 3), second, seed=0)
    assert model.layers[0] is first and model.layers[2] is second
    assert model.forward(np.ones((2, 4))).shape == (2, 3)


def test_the_width_check_finds_layers_by_identity():
    class EqDense(nn.Dense):
        def __eq__(self, other):
            return isinstance(other, EqDense)

        __hash__ = object.__hash__

    class Project(nn.Layer):
        def forward(self, x):
            return x[:, :5].copy()

        def backward(self, dy):
            return np.pad(dy, ((0, 0), (0, 3)))

    model = nn.Sequential(EqDense(4, 8), Project(), EqDense(5, 3), seed=0)
    assert model.forward(np.ones((2, 4))).shape == (2, 3)
    # A real width mismatch is still found between layers that compare equal.
    with pytest.raises(ValueError):
        nn.Sequential(EqDense(4, 8), EqDense(5, 3), seed=0)


def test_predict_and_evaluate_warn_about_float_pixels_that_were_not_scaled():
    model = nn.Sequential(nn.Flatten(), nn.Dense(16, 3), seed=0)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 4, 4)).astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1])
    with pytest.warns(UserWarning, match="raw 0-255 pixels"):
        model.predict(pixels.astype(np.float32))
    with pytest.warns(UserWarning, match="divide by 255"):
        model.evaluate(pixels.astype(np.float64), labels)
    features = np.random.default_rng(1).standard_normal((5, 16)) * 3   # real-valued, may exceed 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(pixels)                                   # uint8: scaled by the model
        model.predict(pixels / np.float32(255))                 # already scaled
        model.predict(features)
        model.predict(np.ones((2, 16), np.float32))             # whole numbers, but <= 1


def test_raw_pixel_warnings_name_the_input_and_the_callers_line(recwarn):
    model = nn.Sequential(nn.Flatten(), nn.Dense(16, 3), seed=0)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 4, 4)).astype(np.uint8)
    labels = rng.integers(0, 3, 40)
    raw = pixels.astype(np.float32)
    model.fit(pixels, labels, epochs=1, batch_size=8, verbose=0, validation_data=(raw, labels))
    model.fit(raw / 255, labels, epochs=1, batch_size=8, verbose=0)
    model.predict(raw)
    messages = [(str(w.message).split(":")[0], w.filename) for w in recwarn.list
                if issubclass(w.category, UserWarning)]
    # one warning for the validation data (not one per epoch), none for scaled data
    assert messages == [("validation x", __file__), ("x", __file__)]


def test_raw_pixel_warning_looks_at_every_row_not_just_the_first_thousand():
    model = nn.Sequential(nn.Flatten(), nn.Dense(16, 3), seed=0)
    x = np.zeros((1500, 16), np.float32)
    x[1200:] = np.random.default_rng(2).random((300, 16)) * 3    # real-valued, up to 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(x)
    x[1200:] = np.round(x[1200:] * 80)                             # whole numbers up to 240
    with pytest.warns(UserWarning, match="up to 2[0-9][0-9] looks like raw"):
        model.predict(x)


# ---- layers used on their own (the "Read the backprop" workflow) -------------------

def _forwarded(layer, shape=(4, 3), dtype=np.float64):
    layer.forward(np.random.default_rng(0).standard_normal(shape).astype(dtype))
    return layer


@pytest.mark.parametrize("make", [
    lambda: _forwarded(nn.ReLU()),
    lambda: _forwarded(nn.Dropout(0.5, rng=0)),
    lambda: _forwarded(nn.Dropout(0.5, rng=0).eval()),
    lambda: _forwarded(nn.Dense(3, 2, dtype=np.float64, rng=0)),
    lambda: _forwarded(nn.Flatten(), shape=(4, 3, 1)),
])
@pytest.mark.parametrize("dy_shape", [(2, 3), (3, 4), (400, 1000), (12,), (1, 3)])
def test_a_layers_backward_refuses_dy_of_another_shape(make, dy_shape):
    # The kernels walk dy by position: a larger one read past the cached arrays
    # (a segfault) and a smaller one returned stale buffer contents.
    layer = make()
    with pytest.raises(ValueError, match=r"dy must have the shape of the last forward's output"):
        layer.backward(np.ones(dy_shape))


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.Dropout(0.3, rng=0), nn.Dense(3, 2, rng=0)],
                         ids=["relu", "dropout", "dense"])
@pytest.mark.parametrize("x", [np.full((2, 3), 10), np.ones((2, 3), np.float16),
                               np.ones((2, 3), complex), np.ones((2, 3), bool),
                               np.ones((2, 3), ">f8"), [[1, 2, 3], [4, 5, 6]]],
                         ids=["int", "float16", "complex", "bool", "big-endian", "int-list"])
def test_a_layers_forward_takes_only_float32_or_float64(layer, x):
    # An int input made Dropout's 1/(1-p) an integer (p=0.3: no scaling at all).
    with pytest.raises(TypeError, match=r"takes a float32 or float64 array"):
        layer.forward(x)


def test_a_layers_backward_takes_only_float_gradients():
    relu = _forwarded(nn.ReLU())
    with pytest.raises(TypeError, match=r"ReLU.backward takes a float32 or float64 array"):
        relu.backward(np.ones((4, 3), int))


def test_layers_take_a_list_of_floats_and_keep_odd_shapes():
    dense = nn.Dense(3, 2, dtype=np.float64, rng=0)
    rows = [[1.0, -2.0, 0.5]]
    assert np.array_equal(dense.forward(rows), dense.forward(np.array(rows)))
    assert nn.ReLU().forward(np.float64(-3)).shape == ()
    flat = nn.Flatten()
    assert flat.forward(np.ones((0, 3, 3))).shape == (0, 9)
    assert flat.backward(np.ones((0, 9))).shape == (0, 3, 3)


def test_dropout_scales_float_input_by_one_over_keep_probability():
    y = nn.Dropout(0.3, rng=0).forward(np.full((1, 100_000), 10.0))
    kept = y[y != 0]
    assert np.allclose(kept, 10 / 0.7) and abs(kept.size / y.size - 0.7) < 0.01


def test_dropout_refuses_a_p_that_would_drop_every_unit():
    # The mask keeps a unit when 24 random bits reach round(p * 2**24).
    nn.Dropout(1 - 2**-24)  # the largest p that keeps anything: allowed
    for p in (1 - 2**-25, 1 - 2**-30, np.nextafter(1.0, 0.0)):
        with pytest.raises(ValueError, match="too close to 1"):
            nn.Dropout(p)


def test_adam_refuses_parameters_that_share_memory():
    w, g = np.zeros((3, 2)), np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"a \(value\) and b \(value\) share memory"):
        nn.Adam([("a", w, g), ("b", w, np.zeros((3, 2)))])
    with pytest.raises(ValueError, match=r"a \(value\) and b \(value\) share memory"):
        nn.Adam([("a", w[:2], g[:2]), ("b", w[1:], np.zeros((2, 2)))])
    with pytest.raises(ValueError, match=r"a \(value\) and a \(grad\) share memory"):
        nn.Adam([("a", w, w)])
    buf = np.zeros(12)  # disjoint pieces of one buffer are fine
    nn.Adam([("a", buf[:6].reshape(3, 2), g), ("b", buf[6:].reshape(3, 2), np.zeros((3, 2)))])


@pytest.mark.parametrize("digits", [-1, 1.5, "2", None])
def test_format_report_refuses_a_bad_digits(digits):
    from nnscratch.metrics import classification_report, format_report
    report = classification_report([0, 1, 1], [0, 1, 0], ["a", "b"])
    with pytest.raises(ValueError, match="digits must be an integer >= 0"):
        format_report(report, digits=digits)
