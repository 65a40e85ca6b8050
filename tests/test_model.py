"""Sequential: structure, modes, state dicts, and the Keras-style fit /
evaluate / predict, on small synthetic problems."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnscratch import (
    Adam,
    Dense,
    Dropout,
    Flatten,
    ReLU,
    Sequential,
    Trainer,
    TrainingDiverged,
    kernels,
)


def blobs(n=400, k=4, d=20, seed=0, spread=3.0):
    """k well-separated Gaussian blobs in d dimensions, float32, labels 0..k-1."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * spread
    y = rng.integers(0, k, n)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return x, y


def blob_model(seed=0, dropout=0.2, k=4, d=20):
    layers = [Dense(d, 32), ReLU()]
    if dropout:
        layers.append(Dropout(dropout))
    layers += [Dense(32, 16), ReLU(), Dense(16, k)]
    return Sequential(*layers, seed=seed)


def image_model(seed=0):
    return Sequential(Flatten(), Dense(784, 16), ReLU(), Dropout(0.3), Dense(16, 10), seed=seed)


def images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), rng.integers(0, 10, n)


def ce_reference(logits, labels):
    z = np.asarray(logits, np.float64)
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), labels]))


# ---- structure --------------------------------------------------------------------

def test_sequential_keeps_its_layers_in_order():
    layers = [Dense(4, 8), ReLU(), Dropout(0.1), Dense(8, 3)]
    model = Sequential(*layers, seed=0)
    assert model.layers == layers
    assert all(a is b for a, b in zip(model.layers, layers))
    assert model.in_features == 4 and model.num_classes == 3
    assert Sequential(layers, seed=0).layers == layers  # a list works too


def test_train_and_eval_propagate_to_every_layer():
    model = blob_model()
    assert model.training and all(layer.training for layer in model.layers)
    assert model.eval() is model
    assert not model.training and not any(layer.training for layer in model.layers)
    assert model.train() is model
    assert model.training and all(layer.training for layer in model.layers)


def test_parameters_are_named_layers_index_weight_and_bias():
    model = Sequential(Flatten(), Dense(6, 5), ReLU(), Dropout(0.5), Dense(5, 3), seed=0)
    params = model.parameters()
    assert [p.name for p in params] == ["layers.1.weight", "layers.1.bias",
                                        "layers.4.weight", "layers.4.bias"]
    # The live arrays, not copies: the optimizer updates the layers through them.
    assert params[0].value is model.layers[1].params["weight"]
    assert params[0].grad is model.layers[1].grads["weight"]
    assert params[3].value is model.layers[4].params["bias"]
    assert params[0].value.shape == (6, 5) and params[3].value.shape == (3,)
    assert all(p.value.dtype == np.float32 for p in params)


def test_float64_model_converts_its_dense_layers():
    model = Sequential(Dense(3, 4), ReLU(), Dense(4, 2), seed=0, dtype="float64")
    assert all(p.value.dtype == np.float64 and p.grad.dtype == np.float64
               for p in model.parameters())
    assert model.forward(np.ones((2, 3), np.float32)).dtype == np.float64


def test_mismatched_dense_sizes_raise_at_construction():
    with pytest.raises(ValueError, match="8.*7|7.*8"):
        Sequential(Dense(4, 8), ReLU(), Dense(7, 3))


@pytest.mark.parametrize("args, kwargs, exc", [
    ((ReLU(),), {}, ValueError),                      # no Dense layer
    ((Dense(2, 2), "relu"), {}, TypeError),            # not a Layer
    ((Dense(2, 2),), {"dtype": "float16"}, ValueError),
    ((Dense(2, 2),), {"dtype": "int32"}, ValueError),
    ((Dense(2, 2),), {"seed": 1.5}, TypeError),
    ((Dense(2, 2),), {"seed": "0"}, TypeError),
])
def test_sequential_rejects_bad_construction(args, kwargs, exc):
    with pytest.raises(exc):
        Sequential(*args, **kwargs)


def test_same_seed_same_initial_weights_different_seed_different():
    a, b, c = blob_model(seed=3).state_dict(), blob_model(seed=3).state_dict(), \
        blob_model(seed=4).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["layers.0.weight"], c["layers.0.weight"])


# ---- state dicts ------------------------------------------------------------------

def test_state_dict_round_trip_reproduces_the_model():
    x, _ = blobs(n=20)
    src = blob_model(seed=1)
    dst = blob_model(seed=2)
    state = src.state_dict()
    assert sorted(state) == sorted(p.name for p in src.parameters())
    dst.load_state_dict(state)
    for name, value in dst.state_dict().items():
        assert np.array_equal(value, state[name]), name
    src.eval()
    dst.eval()
    assert np.array_equal(src.forward(x), dst.forward(x))


def test_state_dict_holds_copies():
    model = blob_model()
    state = model.state_dict()
    model.parameters()[0].value[...] = 123.0
    assert not np.any(state["layers.0.weight"] == 123.0)


def test_load_state_dict_copies_in_place_keeping_array_identity():
    model = blob_model(seed=1)
    before = [p.value for p in model.parameters()]
    model.load_state_dict(blob_model(seed=2).state_dict())
    assert all(a is p.value for a, p in zip(before, model.parameters()))


def test_strict_load_lists_all_missing_extra_and_shape_problems_at_once():
    model = blob_model(seed=1)
    original = model.state_dict()
    state = blob_model(seed=2).state_dict()
    del state["layers.0.bias"]
    del state["layers.5.weight"]
    state["layers.9.weight"] = np.zeros((2, 2), np.float32)
    state["layers.3.weight"] = np.zeros((16, 32), np.float32)  # transposed
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    msg = str(info.value)
    for fragment in ("layers.0.bias", "layers.5.weight", "layers.9.weight",
                     "layers.3.weight", "(16, 32)", "(32, 16)"):
        assert fragment in msg, (fragment, msg)
    assert "missing" in msg and "unexpected" in msg
    # Nothing was changed, not even the keys that were fine.
    for name, value in model.state_dict().items():
        assert np.array_equal(value, original[name]), name


def test_load_state_dict_rejects_non_numeric_arrays():
    model = blob_model()
    state = model.state_dict()
    state["layers.0.bias"] = np.array(["x"] * 32)
    with pytest.raises(ValueError, match="layers.0.bias"):
        model.load_state_dict(state)


# ---- fit ----------------------------------------------------------------------------

def test_same_seed_gives_bit_identical_weights_after_fit():
    x, y = blobs(n=200)
    states, histories = [], []
    for _ in range(2):
        model = blob_model(seed=11, dropout=0.3)
        hist = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
        states.append(model.state_dict())
        histories.append(hist)
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        assert np.array_equal(states[0][name], states[1][name]), name
    assert histories[0]["loss"] == histories[1]["loss"]


def test_different_seed_gives_different_weights_after_fit():
    x, y = blobs(n=200)
    a, b = blob_model(seed=11), blob_model(seed=12)
    a.fit(x, y, epochs=1, batch_size=32, verbose=0)
    b.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert not np.array_equal(a.state_dict()["layers.0.weight"], b.state_dict()["layers.0.weight"])


def test_fit_seed_argument_makes_shuffling_and_dropout_reproducible():
    x, y = blobs(n=120)
    results = []
    for _ in range(2):
        model = blob_model(seed=0, dropout=0.5)
        model.set_rng(np.random.default_rng(999))  # whatever the generator was before
        model.fit(x, y, epochs=1, batch_size=16, seed=5, verbose=0)
        results.append(model.state_dict())
    assert all(np.array_equal(results[0][k], results[1][k]) for k in results[0])


def test_fit_learns_separable_blobs_to_high_accuracy():
    x, y = blobs(n=400, k=4)
    model = blob_model(seed=0)
    hist = model.fit(x, y, optimizer=Adam(model.parameters(), lr=1e-2), epochs=5,
                     batch_size=32, verbose=0)
    assert hist["accuracy"][-1] >= 0.95
    assert hist["loss"][-1] < hist["loss"][0]
    assert model.evaluate(x, y)["accuracy"] >= 0.95
    # Fresh points near each blob's center are classified correctly.
    centers = np.random.default_rng(0).standard_normal((4, 20)) * 3.0  # blobs()'s first draw
    fresh = (centers + 0.5 * np.random.default_rng(1).standard_normal((4, 20))).astype(np.float32)
    assert np.array_equal(model.predict(fresh).argmax(axis=1), np.arange(4))


def test_fit_history_has_per_epoch_lists_with_validation():
    x, y = blobs(n=240)
    model = blob_model()
    hist = model.fit(x[:200], y[:200], validation_data=(x[200:], y[200:]), epochs=3,
                     batch_size=50, verbose=0)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_time"):
        assert isinstance(hist[key], list) and len(hist[key]) == 3, key
        assert all(isinstance(v, float) and math.isfinite(v) for v in hist[key]), key
    assert all(0.0 <= v <= 1.0 for v in hist["accuracy"] + hist["val_accuracy"])
    # val metrics are those of evaluate() on the validation set after the epoch.
    final = model.evaluate(x[200:], y[200:])
    assert final["accuracy"] == hist["val_accuracy"][-1]
    assert final["loss"] == pytest.approx(hist["val_loss"][-1], rel=1e-6)


def test_fit_history_without_validation_has_no_val_keys():
    x, y = blobs(n=64)
    hist = blob_model().fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert "val_loss" not in hist and "val_accuracy" not in hist
    assert len(hist["loss"]) == len(hist["accuracy"]) == 2


def test_fit_with_verbose_zero_prints_nothing(capsys):
    x, y = blobs(n=64)
    blob_model().fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"epochs": 1.5}, "epochs must be a positive integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"lr_schedule": "step"}, "lr_schedule must be"),
    ({"restore_best": True}, "restore_best needs validation_data"),
    ({"validation_data": "xy"}, r"validation_data must be a pair \(x, y\), got str"),
    ({"lr_schedule": "cosine", "warmup_epochs": float("nan")}, "warmup_epochs must be a finite"),
    ({"lr_schedule": "cosine", "warmup_epochs": -1}, "warmup_epochs must be a finite"),
    ({"seed": 1.5}, "seed must be an integer >= 0 or a numpy.random.Generator"),
    ({"seed": -3}, "seed must be an integer >= 0"),
])
def test_fit_rejects_bad_arguments(kwargs, message):
    x, y = blobs(n=32)
    args = {"epochs": 1, "verbose": 0, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        blob_model().fit(x, y, **args)


def test_validation_data_of_three_arrays_is_refused_clearly():
    x, y = blobs(n=32)
    with pytest.raises(ValueError, match="must be a pair .* tuple of length 3"):
        blob_model().fit(x, y, validation_data=(x, y, y), verbose=0)


@pytest.mark.parametrize("labels", [
    np.full(32, 4), np.full(32, -1), np.zeros(31, int), np.zeros(32, float),
])
def test_fit_rejects_bad_labels(labels):
    x, _ = blobs(n=32)
    with pytest.raises(ValueError, match="labels"):
        blob_model().fit(x, labels, epochs=1, verbose=0)


def test_restore_best_ends_with_the_weights_of_the_best_validation_epoch():
    x, y = blobs(n=300, spread=0.6)  # overlapping blobs: val accuracy well below 1
    xt, yt, xv, yv = x[:240], y[:240], x[240:], y[240:]
    steps = 240 // 40

    def schedule(step):  # learn for two epochs, then wreck the model with a huge lr
        return 1e-2 if step <= 2 * steps else 1.0

    results = {}
    for restore in (False, True):
        model = blob_model(seed=2)
        hist = model.fit(xt, yt, validation_data=(xv, yv), epochs=4, batch_size=40,
                         lr_schedule=schedule, restore_best=restore, verbose=0)
        results[restore] = (model, hist)
    model, hist = results[True]
    best = int(np.argmax(hist["val_accuracy"]))
    assert best < 3 and hist["val_accuracy"][best] > hist["val_accuracy"][-1], hist
    final = model.evaluate(xv, yv)
    assert final["accuracy"] == hist["val_accuracy"][best]
    assert final["loss"] == pytest.approx(hist["val_loss"][best], rel=1e-6)
    # Without restore_best the model keeps the (worse) last epoch's weights.
    last_model, last_hist = results[False]
    assert last_hist["val_accuracy"] == hist["val_accuracy"]
    assert last_model.evaluate(xv, yv)["accuracy"] == hist["val_accuracy"][-1]


def test_cosine_schedule_with_warmup_sets_the_lr_per_step():
    x, y = blobs(n=400)
    model = blob_model(seed=0)
    opt = Adam(model.parameters(), lr=0.01)
    hist = model.fit(x, y, optimizer=opt, epochs=4, batch_size=50, lr_schedule="cosine",
                     warmup_epochs=1, verbose=0)
    # 8 steps per epoch, 32 in all, 8 of warm-up: lr at the end of each epoch.
    expected = [0.01, 0.01 * (1 + math.cos(math.pi / 3)) / 2,
                0.01 * (1 + math.cos(2 * math.pi / 3)) / 2, 0.0]
    np.testing.assert_allclose(hist["lr"], expected, rtol=1e-9, atol=1e-15)
    assert opt.step_count == 32
    assert hist["accuracy"][-1] >= 0.9


def test_callable_lr_schedule_receives_the_one_based_step():
    x, y = blobs(n=64)
    seen = []

    def schedule(step):
        seen.append(step)
        return 1e-3 / step

    hist = blob_model().fit(x, y, epochs=2, batch_size=16, lr_schedule=schedule, verbose=0)
    assert seen == list(range(1, 9))
    assert hist["lr"] == [pytest.approx(1e-3 / 4), pytest.approx(1e-3 / 8)]


def test_each_fit_with_a_reused_optimizer_runs_its_own_schedule():
    """A second fit with the same Adam starts its cosine schedule again (it used
    to see steps past the end, lr 0, and train nothing); Adam's step count and
    bias correction carry on."""
    x, y = blobs(n=64)
    model = blob_model(seed=0)
    opt = Adam(model.parameters(), lr=0.01)
    for fit in range(3):
        before = model.state_dict()
        hist = model.fit(x, y, optimizer=opt, epochs=2, batch_size=16, lr_schedule="cosine",
                         warmup_epochs=0.5, verbose=0)
        assert opt.step_count == 8 * (fit + 1)
        assert hist["lr"] == [pytest.approx(0.01 * (1 + math.cos(math.pi * 2 / 6)) / 2), 0.0]
        assert any(not np.array_equal(before[k], v) for k, v in model.state_dict().items())

    seen = []
    model.fit(x, y, optimizer=opt, epochs=1, batch_size=16, verbose=0,
              lr_schedule=lambda step: seen.append(step) or 1e-3)
    assert seen == [1, 2, 3, 4]


@pytest.mark.parametrize("lr", [-1e-3, float("nan"), float("inf"), None, "0.1"])
def test_a_schedule_returning_a_bad_learning_rate_is_refused(lr):
    x, y = blobs(n=32)
    model = blob_model(seed=0)
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"lr_schedule returned .* for step 1: a learning rate "
                                         r"must be a finite number >= 0"):
        model.fit(x, y, batch_size=16, lr_schedule=lambda step: lr, verbose=0)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_absurd_learning_rate_raises_training_diverged():
    x, y = images(n=256)
    model = Sequential(Flatten(), Dense(784, 32), ReLU(), Dense(32, 10), seed=0)
    with pytest.raises(TrainingDiverged, match="learning rate"):
        model.fit(x, y, optimizer=Adam(model.parameters(), lr=1e6), epochs=3,
                  batch_size=32, verbose=0)


def test_non_finite_loss_raises_training_diverged_mentioning_the_learning_rate():
    x, y = blobs(n=64)
    model = blob_model()
    with pytest.raises(TrainingDiverged, match="learning rate"), np.errstate(all="ignore"):
        model.fit(x, y, epochs=2, batch_size=16, verbose=0,
                  lr_schedule=lambda step: 1e-3 if step < 3 else 1e30)


def test_divergence_on_unscaled_float_pixels_says_so():
    x, y = images(n=512)
    model = Sequential(Flatten(), Dense(784, 64), ReLU(), Dense(64, 10), seed=0)
    with pytest.raises(TrainingDiverged, match=r"floats up to 25\d, used as they are .* "
                                               r"divide them by 255"), np.errstate(all="ignore"), \
            pytest.warns(UserWarning, match="raw 0-255 pixels"):   # warned before training
        model.fit(x.astype(np.float32), y, epochs=3, lr_schedule=lambda step: 0.05, verbose=0)


# ---- evaluate -----------------------------------------------------------------------

def test_evaluate_matches_a_manual_computation():
    x, y = blobs(n=150)
    model = blob_model(seed=5)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    result = model.evaluate(x, y, batch_size=64)  # several batches, the last one short
    assert set(result) == {"loss", "accuracy"}
    model.eval()
    logits = model.forward(x)
    model.train()
    assert result["loss"] == pytest.approx(ce_reference(logits, y), rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == y))


def test_evaluate_runs_in_eval_mode_and_restores_the_mode():
    x, y = blobs(n=50)
    model = blob_model(dropout=0.5).train()
    first = model.evaluate(x, y)
    assert model.training and all(layer.training for layer in model.layers)
    assert model.evaluate(x, y) == first   # no dropout: deterministic


# ---- predict -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 28, 28), (5, 784), (1, 28, 28), (1, 784)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_predict_returns_probabilities_summing_to_one(shape, dtype):
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        x = rng.integers(0, 256, shape).astype(np.uint8)
    else:
        x = rng.random(shape).astype(dtype)
    probs = image_model().predict(x)
    assert probs.shape == (shape[0], 10)
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_predict_uint8_equals_float_scaled_by_1_over_255():
    x, _ = images(n=20)
    model = image_model()
    p_uint8 = model.predict(x)
    p_float = model.predict(x.astype(np.float32) / 255)
    np.testing.assert_allclose(p_uint8, p_float, rtol=1e-5, atol=1e-7)
    p_flat = model.predict(x.reshape(20, 784))
    assert np.array_equal(p_uint8, p_flat)
    # and uint8 is not silently treated as 0..255 floats (floats that look like raw pixels warn)
    with pytest.warns(UserWarning, match="raw 0-255 pixels"):
        p_raw = model.predict(x.astype(np.float32))
    assert not np.allclose(p_uint8, p_raw, atol=1e-3)


def test_predict_matches_softmax_of_eval_forward_and_batches_consistently():
    x, _ = images(n=25)
    model = image_model()
    probs = model.predict(x, batch_size=7)
    model.eval()
    logits = model.forward(x).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_predict_does_not_change_the_train_eval_mode(mode):
    x, _ = images(n=4)
    model = image_model()
    getattr(model, mode)()
    model.predict(x)
    expected = mode == "train"
    assert model.training is expected
    assert all(layer.training is expected for layer in model.layers)


def test_predict_in_train_mode_is_deterministic():
    # predict always runs in eval mode, so dropout does not make it random.
    x, _ = images(n=6)
    model = image_model().train()
    assert np.array_equal(model.predict(x), model.predict(x))


@pytest.mark.parametrize("x, fragment", [
    (np.zeros((3, 27, 27), np.uint8), "shape"),
    (np.zeros(784, np.uint8), "shape"),
    (np.full((2, 784), np.nan, np.float32), "NaN"),
    (np.array([[np.inf] * 784], np.float64), "NaN or infinite"),
    (np.zeros((2, 784), dtype=object), "dtype"),
    (np.zeros((2, 784), dtype=np.int64), "dtype"),
    (np.zeros((2, 785), np.float32), "shape"),
])
def test_predict_rejects_bad_inputs_with_a_clear_message(x, fragment):
    with pytest.raises(ValueError, match=fragment):
        image_model().predict(x)


def test_predict_error_for_a_single_unbatched_image_suggests_adding_a_batch_axis():
    with pytest.raises(ValueError, match=r"x\[None\]"):
        image_model().predict(np.zeros((28, 28), np.uint8))


def test_predict_on_no_images_returns_no_rows_but_evaluate_and_fit_refuse():
    model = image_model()
    for x in (np.zeros((0, 28, 28), np.uint8), np.zeros((0, 784), np.float32)):
        probs = model.predict(x)
        assert probs.shape == (0, 10) and probs.dtype == np.float32
        with pytest.raises(ValueError, match="empty"):
            model.evaluate(x, np.zeros(0, np.int64))
        with pytest.raises(ValueError, match="empty"):
            model.fit(x, np.zeros(0, np.int64), verbose=0)


@pytest.mark.parametrize("dtype", [">f4", ">f8", np.float16, np.longdouble])
def test_other_float_types_are_converted_not_failed_on(dtype):
    """float16, long double and big-endian floats give what float32/float64 give."""
    x, y = images(n=12)
    model = image_model()
    values = (x / 255).astype(dtype)
    reference = values.astype(np.float64)
    np.testing.assert_allclose(model.predict(values), model.predict(reference), rtol=1e-5, atol=1e-6)
    assert model.evaluate(values, y)["accuracy"] == model.evaluate(reference, y)["accuracy"]
    model.fit(values, y, epochs=1, batch_size=4, verbose=0)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
def test_predict_and_evaluate_reject_a_bad_batch_size(batch_size):
    x, y = images(n=3)
    model = image_model()
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.predict(x, batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.evaluate(x, y, batch_size=batch_size)


def test_predict_nan_in_one_pixel_is_rejected():
    x = np.zeros((3, 28, 28), np.float32)
    x[1, 5, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        image_model().predict(x)


# ---- forward / backward ---------------------------------------------------------------

def test_forward_returns_fresh_logits_and_backward_returns_input_gradient():
    x, y = blobs(n=6)
    model = Sequential(Dense(20, 8), ReLU(), Dense(8, 4), seed=0, dtype="float64")
    logits = model.forward(x)
    assert logits.shape == (6, 4) and logits.dtype == np.float64
    again = model.forward(x)
    assert again is not logits and np.array_equal(again, logits)
    dlogits = np.random.default_rng(0).standard_normal((6, 4))
    dx = model.backward(dlogits)
    assert dx.shape == (6, 20)
    # Independent backprop in NumPy.
    w0, b0 = model.layers[0].params["weight"], model.layers[0].params["bias"]
    w2 = model.layers[2].params["weight"]
    h = x.astype(np.float64) @ w0 + b0
    dh = (dlogits @ w2.T) * (h > 0)
    np.testing.assert_allclose(dx, dh @ w0.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.layers[2].grads["weight"], np.maximum(h, 0).T @ dlogits,
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.layers[0].grads["bias"], dh.sum(axis=0), rtol=1e-12,
                               atol=1e-14)


def test_fitting_again_after_a_cosine_schedule_starts_from_the_initial_lr():
    x, y = blobs(n=400)
    model = blob_model(seed=0)
    opt = Adam(model.parameters(), lr=0.01)
    model.fit(x, y, optimizer=opt, epochs=2, batch_size=50, lr_schedule="cosine", verbose=0)
    assert opt.lr == 0.0  # the cosine schedule ends at zero
    before = model.state_dict()
    hist = model.fit(x, y, optimizer=opt, epochs=1, batch_size=50, verbose=0)
    assert hist["lr"] == [0.01]
    assert any(not np.array_equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("threaded", ["1", "0"])
def test_training_steps_reuse_their_buffers_across_epochs_with_a_short_last_batch(
        threaded, monkeypatch):
    # 100 samples in batches of 32: three full batches and one of 4 per epoch.
    monkeypatch.setenv("NNSCRATCH_THREADED_STEP", threaded)
    x, y = blobs(n=100)
    model = blob_model(dropout=0.2)
    trainer = Trainer(model, x, y, epochs=1, batch_size=32, verbose=0)

    def buffer_ids():
        stores = [model._batches] + [s._buffers for s in model._stages]
        if trainer._threaded is not None:
            stores.append(trainer._threaded._buffers)
        return {id(a) for store in stores for a in store.values()}

    trainer.run()
    assert (trainer._threaded is not None) == (threaded == "1" and kernels.BACKEND == "numba")
    before = buffer_ids()
    trainer.epochs = 3
    trainer.run()
    assert buffer_ids() == before and len(before) > 4


def test_a_model_without_flatten_takes_images_as_rows():
    # A saved architecture may legally start with ReLU or Dropout and no Flatten:
    # predict, evaluate and fit must still accept (N, 28, 28) images.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 6)
    model = Sequential(ReLU(), Dense(784, 10), seed=0)
    np.testing.assert_array_equal(model.predict(x), model.predict(x.reshape(6, 784)))
    assert model.evaluate(x, y)["loss"] > 0
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)


def test_a_model_without_flatten_returns_dx_shaped_like_its_input_and_gradchecks():
    from nnscratch import gradcheck

    x = np.random.default_rng(1).random((3, 28, 28))
    y = np.array([0, 1, 2])
    model = Sequential(Dense(784, 8), ReLU(), Dense(8, 10), seed=0, dtype="float64")
    model.loss.forward(model.forward(x), y)
    assert model.backward(model.loss.backward()).shape == (3, 28, 28)
    assert gradcheck(model, x, labels=y)
