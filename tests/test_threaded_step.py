"""The threaded training step (``kernels.fused.train_steps``, ``threaded.py``) against the
layer-by-layer step, and the runs that must not take it.

Both paths compute every value by the same formula; what may differ is the last
bit of some matrix products, because the threaded step gives BLAS halves of
them and OpenBLAS picks its kernels by matrix size (a (16, 33) product may not
round like the (33, 33) one it is half of). So whole runs are compared to a
tolerance far below what any wrong mask, missing term or stale buffer gives;
the forward pass of one step, where nothing else differs, exactly.
"""

from __future__ import annotations

import subprocess
import sys

import numba
import numpy as np
import pytest

from nnscratch import Adam, Dense, Dropout, Flatten, ReLU, Sequential, Trainer, aligned, blas, kernels
from nnscratch.augment import RandomShiftFlip
from nnscratch.kernels import fused, reference
from nnscratch.threaded import StoreChooser, ThreadedStep
from nnscratch.training import TrainingDiverged

NUMBA = kernels.BACKEND == "numba"
needs_numba = pytest.mark.skipif(not NUMBA, reason="the threaded step runs on the Numba backend only")


def _data(n, shape, dtype, seed=0, k=10):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.integers(0, 256, (n, *shape)).astype(np.uint8)
    if dtype == np.float32:
        x = (x / 255).astype(np.float32)
    return x, y


ARCHITECTURES = {
    "images, two dropout blocks": (lambda: [Flatten(), Dense(144, 48), ReLU(), Dropout(0.3),
                                            Dense(48, 24), ReLU(), Dropout(0.3), Dense(24, 10)],
                                   (12, 12)),
    "one Dense": (lambda: [Dense(144, 10)], (144,)),
    "three blocks, p=0 and no dropout": (lambda: [Dense(144, 40), ReLU(), Dropout(0.0),
                                                  Dense(40, 33), ReLU(), Dense(33, 17), ReLU(),
                                                  Dropout(0.5), Dense(17, 10)], (144,)),
}


def _train(layers, x, y, threaded, monkeypatch, **fit):
    monkeypatch.setenv("NNSCRATCH_THREADED_STEP", "1" if threaded else "0")
    model = Sequential(*layers, seed=0)
    opt = Adam(model.parameters(), lr=3e-3, weight_decay=fit.pop("weight_decay", 0.0))
    trainer = Trainer(model, x, y, optimizer=opt, verbose=0, seed=1, **fit)
    if threaded:
        return trainer, trainer.run()
    with blas.one_thread():  # the layer path's products on one thread, as the threaded step's
        return trainer, trainer.run()


@needs_numba
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("batch_size, schedule, decay", [(32, "constant", 0.0), (7, "cosine", 0.1),
                                                         (1, "constant", 0.0)])
def test_threaded_run_matches_the_layer_by_layer_run(arch, dtype, batch_size, schedule,
                                                            decay, monkeypatch):
    build, shape = ARCHITECTURES[arch]
    n = 20 if batch_size == 1 else 100  # 100 = 3 batches of 32 and one of 4
    x, y = _data(n, shape, dtype)
    fit = dict(epochs=2, batch_size=batch_size, lr_schedule=schedule, weight_decay=decay)
    fast, h_fast = _train(build(), x, y, True, monkeypatch, **dict(fit))
    slow, h_slow = _train(build(), x, y, False, monkeypatch, **dict(fit))
    assert fast._threaded is not None and slow._threaded is None
    assert h_fast["lr"] == h_slow["lr"]
    np.testing.assert_allclose(h_fast["loss"], h_slow["loss"], rtol=1e-5)
    # Accuracy counts argmax hits: a last-bit difference could flip a near-tie.
    np.testing.assert_allclose(h_fast["accuracy"], h_slow["accuracy"], atol=1.5 / len(x))
    for name, value in slow.model.state_dict().items():
        np.testing.assert_allclose(fast.model.state_dict()[name], value, rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    for store in ("m", "v"):
        for name, value in getattr(slow.optimizer, store).items():
            np.testing.assert_allclose(getattr(fast.optimizer, store)[name], value, rtol=1e-3,
                                       atol=1e-4 * np.abs(value).max(), err_msg=f"{store} {name}")
    assert fast.optimizer.step_count == slow.optimizer.step_count
    # The Dense layers' own gradient arrays hold the last step's gradients, as after the layer path.
    for d_fast, d_slow in zip(fast.model.layers, slow.model.layers):
        for key, grad in getattr(d_slow, "grads", {}).items():
            np.testing.assert_allclose(d_fast.grads[key], grad, rtol=1e-3,
                                       atol=1e-4 * np.abs(grad).max())


def _step_inputs(seed=0, n=50, widths=(144, 40, 24, 10), p=0.25, steps=1):
    """The arguments of ``train_steps`` after (sgemm, threads), for ``steps`` steps
    on batches of n rows (Adam's steps 3, 4, ...)."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (300, widths[0])).astype(np.uint8)
    y = rng.integers(0, widths[-1], 300).astype(np.intp)
    idx = np.concatenate([rng.permutation(300)[:n] for _ in range(steps)]).astype(np.intp)
    pairs = list(zip(widths, widths[1:]))
    weights = tuple((rng.standard_normal(s) * 0.2).astype(np.float32) for s in pairs)
    biases = tuple((rng.standard_normal(s[1]) * 0.1).astype(np.float32) for s in pairs)
    moments = [tuple(np.abs(rng.standard_normal(w.shape)).astype(np.float32) * 1e-3 for w in ws)
               for ws in (weights, weights, biases, biases)]
    acts = tuple(np.full((n, w), np.nan, np.float32) for w in widths)
    deltas = tuple(np.full((n, w), np.nan, np.float32) for w in widths[1:])
    grads = (tuple(np.full_like(w, np.nan) for w in weights),
             tuple(np.full_like(b, np.nan) for b in biases))
    layers = len(pairs)
    keys = rng.integers(0, 2**63, (steps, layers), dtype=np.uint64)
    thresholds = np.array([round(p * 2**24)] * (layers - 1) + [0], np.uint64)
    scales = np.array([1 / (1 - p)] * (layers - 1) + [1], np.float32)
    b1, b2, lr = 0.9, 0.999, 1e-2
    coefs = np.array([[b1, 1 - b1, b2, 1 - b2, 1e-8, 1 - lr * 0.01, lr / (1 - b1**t),
                       1 / np.sqrt(1 - b2**t), np.finfo(np.float32).tiny]
                      for t in range(3, 3 + steps)], np.float32)
    return [src, idx, np.float32(1 / 255), y, weights, biases, acts, deltas, *grads, *moments,
            keys, thresholds, scales, coefs, np.zeros(2 * n),
            np.zeros((3, fused.STREAM_CHUNK), np.float32), False,
            np.full((2, n, widths[1]), np.nan, np.float32),  # partials: up to 3 threads
            np.full(steps, np.nan), np.full(steps, -1, np.int64), np.inf]


# positions in _step_inputs' list
IDX, KEYS, COEFS = 1, 14, 17
SCRATCH, STREAMING, PARTIALS, LOSSES, CORRECTS, LIMIT = range(-6, 0)


def _assert_same_steps(plain: list, other: list, threads: int, calls: int = 1) -> None:
    """Run ``calls`` calls on each of two _step_inputs lists; the results and every
    array they hold (weights to moments, losses, correct counts) must be equal bit for bit."""
    with blas.one_thread():
        for args in (plain, other):
            for _ in range(calls):
                result = kernels.train_steps(blas.SGEMM, threads, *args)
            args.append(result)
    assert plain[-1] == other[-1]
    for position in [*range(4, 16), LOSSES - 1, CORRECTS - 1]:
        for a, b in zip(plain[position], other[position]):
            assert np.array_equal(a, b, equal_nan=True), position


@needs_numba
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("widths", [(144, 40, 24, 10), (20, 300, 5), (33, 17)])
def test_numba_train_steps_match_their_numpy_twin(threads, widths):
    # (20, 300, 5) on 3 threads: the first thread gets none of the 20 input columns
    # (they are shared in pieces of 16), so its partial product is zeros.
    fused_args, twin_args = _step_inputs(widths=widths), _step_inputs(widths=widths)
    with blas.one_thread():
        assert kernels.train_steps(blas.SGEMM, threads, *fused_args) == 1
        assert reference.train_steps(0, 1, *twin_args) == 1
    assert fused_args[CORRECTS][0] == twin_args[CORRECTS][0]
    assert fused_args[LOSSES][0] == pytest.approx(twin_args[LOSSES][0], rel=1e-6)
    # The gather is the same arithmetic: exact. The first layer's product is summed
    # from the threads' pieces of its inputs, so from there on values agree to
    # float32 rounding, not bit for bit (and exp and log differ in the last bit
    # between NumPy and LLVM).
    assert np.array_equal(fused_args[6][0], twin_args[6][0])
    # weights, biases, activations, deltas, gradients, moments:
    for position in (4, 5, 6, 7, 8, 9, 10, 11, 12, 13):
        for a, b in zip(fused_args[position], twin_args[position]):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


# The kernels' modules by backend: on the NumPy backend, only the twin (nothing there
# may run Numba code).
KERNEL_MODULES = {"numba": fused, "numpy": reference} if NUMBA else {"numpy": reference}


@pytest.mark.parametrize("backend", KERNEL_MODULES)
def test_several_steps_in_one_call_are_the_steps_one_call_each(backend):
    # Each step takes its own rows, dropout keys and Adam coefficients from row s.
    # (The NumPy twin is the loop itself.)
    steps = KERNEL_MODULES[backend].train_steps
    together, apart = _step_inputs(steps=4), _step_inputs(steps=4)
    n = len(together[IDX]) // 4
    with blas.one_thread():
        assert steps(blas.SGEMM, 2, *together) == 4
        for s in range(4):
            one = list(apart)
            one[IDX] = apart[IDX][s * n:(s + 1) * n]
            one[KEYS], one[COEFS] = apart[KEYS][s:s + 1], apart[COEFS][s:s + 1]
            one[LOSSES], one[CORRECTS] = apart[LOSSES][s:s + 1], apart[CORRECTS][s:s + 1]
            assert steps(blas.SGEMM, 2, *one) == 1
    for position in [*range(4, 16), LOSSES, CORRECTS]:
        for a, b in zip(together[position], apart[position]):
            assert np.array_equal(a, b), position
    assert len(set(together[LOSSES])) == 4 and np.isfinite(together[LOSSES]).all()


@pytest.mark.parametrize("backend", KERNEL_MODULES)
@pytest.mark.parametrize("limit", ["between", "nan weights"])
def test_the_steps_stop_after_the_first_loss_over_the_limit(backend, limit):
    steps = KERNEL_MODULES[backend].train_steps
    probe, args, shorter = _step_inputs(steps=4), _step_inputs(steps=4), _step_inputs(steps=4)
    taken = 3 if limit == "between" else 1
    with blas.one_thread():
        steps(blas.SGEMM, 2, *probe)
        if limit == "between":  # the first two steps' losses are <= the limit, the third's not
            args[LIMIT] = max(probe[LOSSES][:2])
            assert probe[LOSSES][2] > args[LIMIT]
        else:  # NaN in a weight: every loss is NaN, so the first step is the last
            for inputs in (args, shorter):
                inputs[4][1][0, 0] = np.nan
        assert steps(blas.SGEMM, 2, *args) == taken
        # The same inputs cut to the steps taken: the steps not taken changed nothing.
        rows = taken * (len(shorter[IDX]) // 4)
        shorter[IDX], shorter[KEYS], shorter[COEFS] = (shorter[IDX][:rows], shorter[KEYS][:taken],
                                                       shorter[COEFS][:taken])
        shorter[LOSSES], shorter[CORRECTS] = shorter[LOSSES][:taken], shorter[CORRECTS][:taken]
        assert steps(blas.SGEMM, 2, *shorter) == taken
    for position in range(4, 16):
        for a, b in zip(args[position], shorter[position]):
            assert np.array_equal(a, b, equal_nan=True), position
    assert np.array_equal(args[LOSSES][:taken], shorter[LOSSES], equal_nan=True)
    assert np.isnan(args[LOSSES][taken:]).all() and (args[CORRECTS][taken:] == -1).all()


@needs_numba
@pytest.mark.parametrize("shape", [(1, 50, 40), (2, 49, 40), (2, 50, 41)])
def test_train_steps_refuse_partials_of_the_wrong_shape(shape):
    args = _step_inputs()  # n = 50, first layer 144 -> 40
    args[PARTIALS] = np.zeros(shape, np.float32)
    with blas.one_thread(), pytest.raises(ValueError, match="partials"):
        kernels.train_steps(blas.SGEMM, 3, *args)


@pytest.mark.parametrize("backend", KERNEL_MODULES)
@pytest.mark.parametrize("problem", ["rows not whole batches", "rows of another batch size",
                                     "no steps", "too few keys", "too few coefficients",
                                     "corrects of another length"])
def test_train_steps_refuse_inputs_that_are_not_whole_batches(backend, problem):
    steps = KERNEL_MODULES[backend].train_steps
    args = _step_inputs(steps=3)  # 3 batches of 50
    if problem == "rows not whole batches":
        args[IDX] = args[IDX][:149]
    elif problem == "rows of another batch size":  # 3 batches of 40, buffers of 50 rows
        args[IDX] = args[IDX][:120]
    elif problem == "no steps":
        args[LOSSES], args[CORRECTS], args[IDX] = args[LOSSES][:0], args[CORRECTS][:0], args[IDX][:0]
    elif problem == "too few keys":
        args[KEYS] = args[KEYS][:2]
    elif problem == "too few coefficients":
        args[COEFS] = args[COEFS][:2]
    else:
        args[CORRECTS] = args[CORRECTS][:2]
    with blas.one_thread(), pytest.raises(ValueError, match="K >= 1 batches"):
        steps(blas.SGEMM, 2, *args)


@needs_numba
def test_the_reference_model_takes_the_threaded_step_here():
    # On this project's machines (NumPy's OpenBLAS wheel, two cores, OpenMP in
    # Numba) the usual MLP must take the fast path; this fails rather than skips
    # when one of them goes missing.
    assert blas.available(), "NumPy's OpenBLAS (cblas_sgemm with 64-bit integers) was not found"
    assert numba.get_num_threads() >= 2
    x, y = _data(64, (144,), np.uint8)
    model = Sequential(Dense(144, 32), ReLU(), Dropout(0.2), Dense(32, 10), seed=0)
    trainer = Trainer(model, x, y, epochs=1, batch_size=32, verbose=0)
    trainer.run()
    assert trainer._threaded is not None
    assert numba.threading_layer() in ("omp", "tbb")


def _subclassed_dense():
    class MyDense(Dense):
        pass
    return [Dense(144, 16), ReLU(), MyDense(16, 10)]


FALLBACKS = {
    "augmentation": dict(augment=RandomShiftFlip(1, 0.5)),
    "fuse=False": dict(fuse=False),
    "float64 model": dict(dtype="float64"),
    "switched off": dict(env="0"),
    "frozen first layer": dict(frozen=True),
    "Dense subclass": dict(layers=_subclassed_dense),
    "one Numba thread": dict(threads=1),
    "one OpenBLAS thread": dict(blas_threads=1),
}


@needs_numba
@pytest.mark.parametrize("case", FALLBACKS)
def test_runs_the_threaded_step_cannot_do_take_the_layer_path(case, monkeypatch):
    spec = FALLBACKS[case]
    monkeypatch.setenv("NNSCRATCH_THREADED_STEP", spec.get("env", "1"))
    x, y = _data(48, (12, 12), np.uint8)
    layers = spec["layers"]() if "layers" in spec else [Flatten(), Dense(144, 16), ReLU(),
                                                        Dropout(0.2), Dense(16, 10)]
    if "layers" in spec:
        x = x.reshape(len(x), -1)
    model = Sequential(*layers, seed=0, dtype=spec.get("dtype", "float32"),
                       fuse=spec.get("fuse", True))
    params = model.parameters()
    opt = Adam(params[2:] if spec.get("frozen") else params)
    frozen = params[0].value.copy()
    trainer = Trainer(model, x, y, optimizer=opt, epochs=1, batch_size=16, verbose=0,
                      augment=spec.get("augment"))
    threads, blas_threads = numba.get_num_threads(), blas.thread_count()
    numba.set_num_threads(spec.get("threads", threads))
    blas._set_threads(spec.get("blas_threads", blas_threads))
    try:
        history = trainer.run()
    finally:
        numba.set_num_threads(threads)
        blas._set_threads(blas_threads)
    assert trainer._threaded is None
    assert np.isfinite(history["loss"]).all()
    if spec.get("frozen"):
        assert np.array_equal(params[0].value, frozen)


@needs_numba
def test_blas_keeps_its_thread_count_outside_the_steps(monkeypatch):
    before = blas._get_threads()
    assert before >= 2, "NumPy's OpenBLAS should run two threads on this machine"
    x, y = _data(64, (144,), np.uint8)
    model = Sequential(Dense(144, 32), ReLU(), Dense(32, 10), seed=0)
    seen_in_steps, seen_at_epoch_end = set(), []
    real_steps = kernels.train_steps

    def spy(*args):
        seen_in_steps.add(blas._get_threads())
        return real_steps(*args)

    monkeypatch.setattr(kernels, "train_steps", spy)
    trainer = Trainer(model, x, y, epochs=2, batch_size=32, verbose=0,
                      validation_data=(x[:10], y[:10]),
                      on_epoch_end=lambda t: seen_at_epoch_end.append(blas._get_threads()))
    trainer.run()
    assert seen_in_steps == {1} and seen_at_epoch_end == [before, before]
    assert blas._get_threads() == before
    # one_thread stops OpenBLAS's workers; the next big product starts them again.
    a = np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32)
    np.testing.assert_allclose(a @ a, a.astype(np.float64) @ a, rtol=1e-4, atol=1e-3)

    # A run that fails in the middle of an epoch puts the count back too.
    def diverge(*args):
        real_steps(*args)
        args[LOSSES][0] = np.nan
        return 1

    monkeypatch.setattr(kernels, "train_steps", diverge)
    with pytest.raises(TrainingDiverged):
        Trainer(model, x, y, epochs=1, batch_size=32, verbose=0).run()
    assert blas._get_threads() == before


FORK_SCRIPT = """
import multiprocessing as mp, numpy as np
import nnscratch as nn

def train(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (256, 64), dtype=np.uint8)
    y = rng.integers(0, 4, 256)
    model = nn.Sequential(nn.Dense(64, 16), nn.ReLU(), nn.Dense(16, 4), seed=0)
    trainer = nn.Trainer(model, x, y, epochs=1, batch_size=32, verbose=0)
    history = trainer.run()
    return trainer._threaded is not None, bool(np.isfinite(history["loss"][0]))

if __name__ == "__main__":
    print("parent", train(0))
    with mp.get_context("fork").Pool(2) as pool:
        print("children", pool.map(train, [1, 2]))
"""


@needs_numba
def test_a_child_forked_after_threaded_training_trains_on_the_layer_path(tmp_path):
    # GNU OpenMP terminates a forked child that starts a parallel loop after its
    # parent used the pool; the child must fall back instead (and not hang its pool).
    script = tmp_path / "fork_after_training.py"
    script.write_text(FORK_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "unsafe" not in proc.stderr
    assert proc.stdout.splitlines() == ["parent (True, True)",
                                        "children [(False, True), (False, True)]"]


@needs_numba
def test_layers_changed_after_the_model_was_built_get_the_layer_paths_errors(monkeypatch):
    # The kernel trusts shapes; a chain that does not fit must reach the layer
    # path, which refuses it, instead of writing out of bounds.
    x, y = _data(64, (144,), np.uint8)
    model = Sequential(Dense(144, 32), ReLU(), Dense(32, 10), seed=0)
    model.layers[-1] = Dense(32, 5)  # num_classes stays 10: labels up to 9 do not fit
    trainer = Trainer(model, x, y, epochs=1, batch_size=32, verbose=0)
    with pytest.raises(ValueError, match="labels must lie in 0..4"):
        trainer.run()
    assert trainer._threaded is None
    model = Sequential(Dense(144, 32), ReLU(), Dense(32, 10), seed=0)
    model.layers[-1] = Dense(48, 10)
    trainer = Trainer(model, x, y, epochs=1, batch_size=32, verbose=0)
    with pytest.raises(ValueError, match=r"Dense expects input of shape \(N, 48\)"):
        trainer.run()
    assert trainer._threaded is None


@needs_numba
@pytest.mark.parametrize("missing", ["openblas", "spinning pool"])
def test_without_numpys_openblas_or_an_openmp_pool_training_takes_the_layer_path(missing,
                                                                                 monkeypatch):
    from nnscratch import threaded
    if missing == "openblas":
        monkeypatch.setattr(blas, "SGEMM", 0)
    else:
        monkeypatch.setattr(threaded, "pool_wakes_fast", lambda: False)
    x, y = _data(64, (144,), np.uint8)
    trainer = Trainer(Sequential(Dense(144, 16), ReLU(), Dense(16, 10), seed=0), x, y,
                      epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(trainer.run()["loss"]).all() and trainer._threaded is None


@needs_numba
def test_the_step_refuses_to_run_with_openblas_on_several_threads():
    x, y = _data(64, (144,), np.uint8)
    model = Sequential(Dense(144, 16), ReLU(), Dense(16, 10), seed=0)
    trainer = Trainer(model, x, y, epochs=1, batch_size=32, verbose=0)
    trainer.run()
    with pytest.raises(RuntimeError, match="one_thread"):
        trainer._threaded.steps(trainer.x, trainer.y, np.arange(32), [1e-3], np.inf)


@needs_numba
def test_threaded_runs_resume_bit_identically_and_keep_the_best_epoch(monkeypatch):
    x, y = _data(120, (12, 12), np.uint8)
    vx, vy = _data(40, (12, 12), np.uint8, seed=1)
    x.flags.writeable = False  # e.g. a memory-mapped dataset

    def trainer_for(epochs):
        model = Sequential(*ARCHITECTURES["images, two dropout blocks"][0](), seed=0)
        return Trainer(model, x, y, epochs=epochs, batch_size=32, verbose=0, seed=2,
                       validation_data=(vx, vy), restore_best=True)

    whole = trainer_for(3)
    whole.run()
    assert whole._threaded is not None
    first = trainer_for(3)
    first.epochs = 1  # stop after one epoch, as an interrupted run would
    first.run()
    first.epochs = 3
    state = first.state_dict()
    resumed = trainer_for(3)
    resumed.load_state_dict(state)
    resumed.run()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert resumed.history[key] == whole.history[key], key
    for name, value in whole.model.state_dict().items():
        assert np.array_equal(resumed.model.state_dict()[name], value), name
    # restore_best: the model holds the best validation epoch's weights.
    best = whole.best
    for name, value in best["weights"].items():
        assert np.array_equal(whole.model.state_dict()[name], value), name


def test_one_thread_stops_openblas_workers_only_when_no_other_thread_runs(monkeypatch):
    import threading

    calls = []
    monkeypatch.setattr(blas, "_stop_workers", lambda: calls.append(1))
    with blas.one_thread():
        pass
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        with blas.one_thread():
            pass
    finally:
        release.set()
        other.join()
    assert calls == ([1] if blas.available() else [])


@needs_numba
def test_runs_in_several_python_threads_at_once_agree_with_runs_one_after_another():
    import threading

    def train(seed, out):
        x, y = _data(600, (144,), np.uint8, seed=seed)
        model = Sequential(Dense(144, 32), ReLU(), Dropout(0.2), Dense(32, 10), seed=0)
        trainer = Trainer(model, x, y, epochs=2, batch_size=32, verbose=0)
        out[seed] = (trainer.run()["loss"], trainer._threaded is not None)

    before = blas.thread_count()
    together, apart = {}, {}
    threads = [threading.Thread(target=train, args=(s, together)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in range(3):
        train(s, apart)
    assert together == apart and all(used for _, used in apart.values())
    assert blas.thread_count() == before


@needs_numba
def test_labels_changed_after_the_trainer_was_built_do_not_reach_the_kernel():
    x, y = _data(96, (144,), np.uint8)
    kept = y.copy()
    model = Sequential(Dense(144, 16), ReLU(), Dense(16, 10), seed=0)
    trainer = Trainer(model, x, y, epochs=2, batch_size=32, verbose=0,
                      on_epoch_end=lambda t: y.fill(10**8))  # would index far out of bounds
    y[:5] = 10
    trainer.run()
    again = Trainer(Sequential(Dense(144, 16), ReLU(), Dense(16, 10), seed=0), x, kept,
                    epochs=2, batch_size=32, verbose=0)
    assert again.run()["loss"] == trainer.history["loss"]


@pytest.mark.parametrize("where", ["stopping the workers", "inside the block"])
def test_ctrl_c_inside_one_thread_leaves_openblas_as_it_was(where, monkeypatch):
    # Without NumPy's OpenBLAS, one_thread does nothing and the count reads 0 throughout.
    def interrupt():
        raise KeyboardInterrupt

    before = blas.thread_count()
    if where == "stopping the workers":
        monkeypatch.setattr(blas, "_stop_workers", interrupt)
    with pytest.raises(KeyboardInterrupt):
        with blas.one_thread():
            interrupt()
    assert blas.thread_count() == before and blas.allowed_threads() == before
    monkeypatch.undo()
    with blas.one_thread():
        assert blas.thread_count() == (1 if blas.available() else 0)
    assert blas.thread_count() == before


@needs_numba
def test_a_model_changed_by_a_callback_is_trained_as_changed():
    # The plan is rebuilt every epoch: after a callback swaps a layer for one the
    # optimizer does not own, the run goes on layer by layer, as it would have anyway.
    x, y = _data(96, (144,), np.uint8)
    model = Sequential(Dense(144, 16), ReLU(), Dense(16, 10), seed=0)
    used = []

    def swap(trainer):
        used.append(trainer._threaded is not None)
        model.layers[-1] = Dense(16, 10, rng=1)

    trainer = Trainer(model, x, y, epochs=3, batch_size=32, verbose=0, on_epoch_end=swap)
    trainer.run()
    assert used == [True, False, False] and np.isfinite(trainer.history["loss"]).all()


@needs_numba
def test_a_step_whose_openblas_count_was_raised_by_another_thread_goes_layer_by_layer(
        monkeypatch):
    x, y = _data(96, (144,), np.uint8)
    trainer = Trainer(Sequential(Dense(144, 16), ReLU(), Dense(16, 10), seed=0), x, y,
                      epochs=1, batch_size=32, verbose=0)
    monkeypatch.setattr(blas, "thread_count", lambda: 2)  # as if another thread had set 2
    assert np.isfinite(trainer.run()["loss"]).all()


def _offset16(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` whose data starts 16 bytes past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + 16
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@needs_numba
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("widths", [(144, 40, 24, 10), (784, 256, 128, 10), (50, 7, 3),
                                    (20, 300, 5), (33, 17)])
@pytest.mark.parametrize("misaligned", [False, True])
def test_streaming_stores_give_the_same_step_bit_for_bit(threads, widths, misaligned):
    # Weights whose rows start anywhere in a cache line (widths not multiples of 16,
    # and arrays 16 bytes into a line) exercise the plain head and tail around the
    # streaming stores.
    plain, streamed = _step_inputs(widths=widths), _step_inputs(widths=widths)
    if misaligned:
        for args in (plain, streamed):
            args[4] = tuple(_offset16(w) for w in args[4])
    streamed[STREAMING] = True
    _assert_same_steps(plain, streamed, threads, calls=3)  # later steps start from streamed weights
    # And within a call: later steps start from the weights the earlier ones streamed.
    plain, streamed = _step_inputs(widths=widths, steps=4), _step_inputs(widths=widths, steps=4)
    streamed[STREAMING] = True
    _assert_same_steps(plain, streamed, threads)


def _streaming_assembly() -> str:
    # Compiled afresh (Numba gives no assembly for cached code).
    fn = numba.njit(error_model="numpy")(fused._adam_streaming.py_func)
    w, g, m, v = (aligned.zeros(300, np.float32) for _ in range(4))  # head 0: w on a boundary
    f32 = np.float32(0)
    fn(w, g, m, v, 0, np.zeros(fused.STREAM_CHUNK, np.float32), *([f32] * 10))
    return next(iter(fn.inspect_asm().values()))


@needs_numba
def test_the_streaming_adam_really_streams_and_fences():
    asm = _streaming_assembly()
    assert "vmovntps" in asm and "sfence" in asm


@needs_numba
def test_too_small_a_scratch_falls_back_to_plain_stores():
    plain, small = _step_inputs(), _step_inputs()
    small[SCRATCH], small[STREAMING] = np.zeros((1, 16), np.float32), True  # 3 threads, 1 row
    _assert_same_steps(plain, small, 3)


@needs_numba
def test_weights_off_a_4_byte_boundary_take_the_layer_path(monkeypatch):
    # A float32 view at an odd byte offset: streaming stores would fault on it.
    x, y = _data(60, (144,), np.uint8)
    model = Sequential(Dense(144, 20), ReLU(), Dense(20, 10), seed=0)
    dense = model.layers[0]
    raw = np.zeros(dense.params["weight"].nbytes + 1, np.uint8)
    odd = np.frombuffer(raw.data, np.float32, dense.params["weight"].size, offset=1)
    odd = odd.reshape(dense.params["weight"].shape)
    odd[...] = dense.params["weight"]
    assert not odd.flags.aligned
    dense.params["weight"] = odd
    trainer = Trainer(model, x, y, epochs=2, batch_size=6, verbose=0)
    trainer.run()  # 20 steps: the chooser would stream in steps 5-8
    assert trainer._threaded is None and np.isfinite(odd).all()


def _period(chooser, plain_time, stream_time, rows=None):
    """One period of steps as the trainer takes them (as many per call as ``next``
    allows); the kind of store of each step."""
    rows = rows or [128] * chooser.PERIOD
    kinds = []
    while len(kinds) < chooser.PERIOD:
        streaming, count = chooser.next()
        kinds += [streaming] * count
        chooser.record(streaming, (stream_time if streaming else plain_time) * count,
                       rows[len(kinds) - 1], count)
    assert len(kinds) == chooser.PERIOD
    return kinds


def test_store_chooser_streams_only_when_it_timed_clearly_faster():
    chooser = StoreChooser()
    trial = [False] * chooser.TRIAL + [True] * chooser.TRIAL
    rest = chooser.PERIOD - 2 * chooser.TRIAL
    assert _period(chooser, 1.0, 0.8) == trial + [True] * rest     # 20% faster: streams
    assert _period(chooser, 1.0, 0.95) == trial + [False] * rest   # 5% faster: not worth it
    assert _period(chooser, 1.0, 1.3) == trial + [False] * rest
    assert _period(chooser, 2.0, 1.0) == trial + [True] * rest     # decided again each period
    assert chooser.count == 4 * chooser.PERIOD


def test_store_chooser_uses_the_median_of_its_trials():
    chooser = StoreChooser()
    times = {False: [1.0, 1.0, 9.0, 1.0], True: [0.5, 0.5, 0.5, 5.0]}  # one outlier each
    for k in range(2 * chooser.TRIAL):
        streaming, count = chooser.next()
        assert count == 1  # trial steps are timed one by one
        chooser.record(streaming, times[streaming][k % chooser.TRIAL], 128)
    assert chooser.streaming and chooser.next() == (True, chooser.PERIOD - 2 * chooser.TRIAL)


def test_store_chooser_counts_only_batches_of_the_first_trial_size():
    # Short batches take less time, but not in proportion: they must not decide.
    chooser = StoreChooser()
    rows = [128, 40, 40, 40, 128, 128, 128, 128]
    times = {128: 1.0, 40: 0.3}
    for k in range(2 * chooser.TRIAL):
        streaming, _ = chooser.next()
        chooser.record(streaming, times[rows[k]] * (0.95 if streaming else 1.0), rows[k])
    assert not chooser.streaming  # 5% faster streaming, on equal batches: stays plain
    chooser.record(False, 1.0, 128, chooser.next()[1])  # the rest of the period
    # A period whose trial saw no plain sample of its size keeps the previous choice.
    chooser.streaming = True
    _period(chooser, 1.0, 1.0, rows=[40] * 4 + [128] * (chooser.PERIOD - 4))
    assert chooser.streaming


def test_store_chooser_takes_no_sample_from_a_call_of_several_steps():
    chooser = StoreChooser()
    chooser.streaming = True
    chooser.record(False, 0.5, 128, chooser.TRIAL)  # the plain trial steps in one fast call
    for _ in range(chooser.TRIAL):
        chooser.record(True, 0.8, 128)
    # No plain sample: the previous choice stands (the call, as a sample, would end it).
    assert chooser.count == 2 * chooser.TRIAL and chooser.streaming


@needs_numba
def test_a_threaded_run_times_its_steps_for_the_chooser(monkeypatch):
    x, y = _data(300, (144,), np.uint8)
    trainer, _ = _train([Dense(144, 20), ReLU(), Dense(20, 10)], x, y, True, monkeypatch,
                        epochs=2, batch_size=10)
    plan = trainer._threaded
    assert plan is not None and plan.stores.count == 60  # both epochs: carried over


def _run_counting_calls(monkeypatch, build_trainer, one_per_call: bool):
    """Run the trainer ``build_trainer()`` gives; returns it (or the TrainingDiverged
    it raised) and the number of steps of each kernel call."""
    monkeypatch.undo()
    if one_per_call:
        monkeypatch.setattr(ThreadedStep, "next_call_size", lambda self: 1)
    calls, real = [], kernels.train_steps

    def counting(*args):
        calls.append(len(args[LOSSES]))
        return real(*args)

    monkeypatch.setattr(kernels, "train_steps", counting)
    trainer = build_trainer()
    try:
        trainer.run()
    except TrainingDiverged as exc:
        return trainer, calls, str(exc)
    return trainer, calls, None


def _assert_same_state(a: Trainer, b: Trainer) -> None:
    """Two trainers' states are the same bit for bit, all but the epochs' times."""
    sa, sb = a.state_dict(), b.state_dict()
    for state in (sa, sb):
        state["history"].pop("epoch_time")
        state.pop("elapsed")
    for key in ("model", "best"):
        for name, value in (sb[key] or {}).get("weights", sb[key] or {}).items():
            assert np.array_equal((sa[key] or {}).get("weights", sa[key] or {})[name], value,
                                  equal_nan=True), (key, name)
    for store in ("m", "v"):
        for name, value in sb["optimizer"][store].items():
            assert np.array_equal(sa["optimizer"][store][name], value, equal_nan=True), (store, name)
    rest = [k for k in sb if k not in ("model", "best", "optimizer", "perm")]
    assert {k: sa[k] for k in rest} == {k: sb[k] for k in rest}
    assert np.array_equal(sa["perm"], sb["perm"])
    assert {k: v for k, v in sa["optimizer"].items() if k not in "mv"} == \
        {k: v for k, v in sb["optimizer"].items() if k not in "mv"}


def _fewer_trials(monkeypatch) -> None:
    # One timed trial step of each store kind: calls of several steps from step 4 on.
    monkeypatch.setattr(StoreChooser, "TRIAL", 1)


@needs_numba
@pytest.mark.parametrize("generators", ["the model's", "one of its own", "one bit generator"])
def test_a_run_takes_the_same_steps_in_calls_of_many_as_in_calls_of_one(generators, monkeypatch):
    # 130 rows in batches of 8: 16 full batches and a short one per epoch. Calls of
    # several steps take the dropout keys (from the model's generator, from one
    # dropout's own, or from two Generators over one bit generator, whose stream
    # they share), rows, learning rates (warm-up, then cosine) and Adam's step
    # count that the single steps take.
    x, y = _data(130, (12, 12), np.uint8)

    def build():
        _fewer_trials(monkeypatch)
        model = Sequential(*ARCHITECTURES["images, two dropout blocks"][0](), seed=0)
        opt = Adam(model.parameters(), lr=3e-3, weight_decay=0.05)
        trainer = Trainer(model, x, y, optimizer=opt, epochs=3, batch_size=8, verbose=0,
                          seed=1, lr_schedule="cosine", warmup_epochs=1)
        dropouts = [model.layers[3], model.layers[6]]
        if generators == "one of its own":  # (after the Trainer, which would replace it)
            dropouts[0].rng = np.random.default_rng(9)
        elif generators == "one bit generator":
            shared = np.random.PCG64(9)
            dropouts[0].rng, dropouts[1].rng = np.random.Generator(shared), np.random.Generator(shared)
        return trainer

    (many, many_calls, _), (one, one_calls, _) = (
        _run_counting_calls(monkeypatch, build, single) for single in (False, True))
    assert max(many_calls) > 1 and set(one_calls) == {1} and sum(many_calls) == sum(one_calls)
    _assert_same_state(many, one)
    for a, b in zip(many.model.layers, one.model.layers):
        if isinstance(a, Dropout):
            assert a.rng.bit_generator.state == b.rng.bit_generator.state


@needs_numba
def test_a_loss_that_diverges_inside_a_call_stops_the_run_at_that_step(monkeypatch):
    x, y = _data(130, (12, 12), np.float32)

    def build(poisoned=None):
        model = Sequential(*ARCHITECTURES["images, two dropout blocks"][0](), seed=0)
        trainer = Trainer(model, x.copy(), y, epochs=1, batch_size=8, verbose=0, seed=1)
        if poisoned is not None:
            trainer.x[poisoned] = np.inf  # after the input checks: as if the data went bad
        return trainer

    probe, _, _ = _run_counting_calls(monkeypatch, build, False)
    row = probe.perm[13 * 8]  # in step 14: in the call of steps 9-16 (after 8 single trial steps)
    (many, many_calls, many_error), (one, _, one_error) = (
        _run_counting_calls(monkeypatch, lambda: build(row), single) for single in (False, True))
    assert many_calls[-1] == 8 and many_error == one_error and "epoch 1, step 14" in many_error
    assert (many.batch, many.optimizer.step_count) == (one.batch, one.optimizer.step_count) == (13, 14)
    # Everything else too: the dropout generator as the 14 steps taken left it.
    _assert_same_state(many, one)


@needs_numba
def test_a_schedule_that_fails_inside_a_call_stops_the_run_at_that_step(monkeypatch):
    x, y = _data(130, (12, 12), np.uint8)

    def schedule(step):
        return 1e-3 if step < 12 else float("nan")

    def build():
        _fewer_trials(monkeypatch)
        model = Sequential(*ARCHITECTURES["images, two dropout blocks"][0](), seed=0)
        return Trainer(model, x, y, epochs=1, batch_size=8, verbose=0, seed=1,
                       lr_schedule=schedule)

    results = []
    for single in (False, True):
        monkeypatch.undo()
        if single:
            monkeypatch.setattr(ThreadedStep, "next_call_size", lambda self: 1)
        trainer = build()
        with pytest.raises(ValueError, match="returned nan for step 12") as error:
            trainer.run()
        results.append((trainer, str(error.value)))
    (many, many_error), (one, one_error) = results
    assert many_error == one_error
    assert (many.batch, many.optimizer.step_count) == (one.batch, one.optimizer.step_count) == (11, 11)
    _assert_same_state(many, one)
