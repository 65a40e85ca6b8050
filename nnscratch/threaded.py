"""The threaded training step: when a run qualifies, ``Trainer`` hands each
whole step (gather, forward, loss, backward, Adam) to ``kernels.train_steps``,
which splits it between the threads of Numba's pool (see the last section of ``kernels/fused.py``).

It qualifies for the usual MLP: [Flatten ->] Dense -> ReLU [-> Dropout] blocks,
a last Dense, float32, fused (the default), softmax cross-entropy, Adam over
every parameter, no augmentation, the Numba backend, and NumPy's own OpenBLAS
(``blas.py``), with at least two threads allowed to both Numba and OpenBLAS. It
uses as many threads as both allow, so ``OPENBLAS_NUM_THREADS=1`` (several runs
side by side) keeps a run on one core. Anything else runs the layer-by-layer step.
The two compute the same formulas and agree to float32 rounding (OpenBLAS may
round a half product differently from the whole; tests hold them close).
``NNSCRATCH_THREADED_STEP=0`` turns it off (e.g. to compare the two).
"""

from __future__ import annotations

import os
import statistics
import time

import numba
import numpy as np

from . import aligned, blas, kernels
from .blocks import DenseReLU
from .kernels import fused
from .layers import Dense, Flatten, reuse_buffer
from .losses import SoftmaxCrossEntropy
from .optim import Adam


def _enabled_by_environment() -> bool:
    return os.environ.get("NNSCRATCH_THREADED_STEP", "1").strip() not in ("0", "false", "no", "off")


# GNU OpenMP cannot follow a fork: a forked child that starts a parallel loop after
# its parent used Numba's OpenMP pool is terminated ("fork() called from a process
# already using GNU OpenMP, this is unsafe"). So a child forked from a process whose
# pool was started (by this step or any other Numba parallel code) trains on the
# layer-by-layer step instead, which never wakes the pool.
_forked_after_pool = False


def _note_fork() -> None:
    global _forked_after_pool
    parallel = getattr(numba.np.ufunc, "parallel", None)
    if getattr(parallel, "_is_initialized", True):  # unknown Numba internals: assume started
        _forked_after_pool = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


def expected(augment: bool) -> bool:
    """Whether a run of a plain float32 MLP would take the threaded step, as far as
    the environment tells without a model or starting Numba's threads (the pool
    kind and a changed ``numba.set_num_threads`` are only known later)."""
    return (_enabled_by_environment() and kernels.BACKEND == "numba" and blas.available()
            and not _forked_after_pool and not augment
            and min(numba.config.NUMBA_NUM_THREADS, blas.allowed_threads()) >= 2)


@numba.njit(parallel=True, cache=True)
def _touch_threads(out):
    for t in numba.prange(out.size):
        out[t] = t


def pool_wakes_fast() -> bool:
    """Whether Numba's pool is one whose idle threads wait spinning (OpenMP or TBB):
    a step wakes it twice, and the fallback 'workqueue' pool sleeps between
    jobs, which costs more per step than the threads gain (measured: 1.26x the
    products' time for the products alone, against 1.02x with OpenMP)."""
    _touch_threads(np.zeros(numba.get_num_threads()))
    return numba.threading_layer() != "workqueue"


class StoreChooser:
    """Whether the next steps write the new weights with streaming stores
    (``kernels.fused.train_steps``): the same values either way, but on this VM
    streaming cost 3% of a step in its fast phases and saved 25% in its slow ones
    (minutes long), and nothing tells the two apart but the clock
    (``benchmarks/streaming_stores.py``). So in every ``PERIOD`` steps the first
    ``TRIAL`` write plainly and the next ``TRIAL`` stream, each timed alone, and
    the rest of the period streams only if that was clearly faster (median time
    below ``MARGIN`` times the plain median). Only steps of the first trial step's
    batch size count (a short last batch is not a fair sample); with no sample of
    one kind, the previous choice stands."""

    PERIOD, TRIAL, MARGIN = 256, 4, 0.9

    def __init__(self) -> None:
        self.count = 0
        self.streaming = False
        self._rows = 0
        self._times: tuple[list[float], list[float]] = ([], [])

    def next(self) -> tuple[bool, int]:
        """The kind of store for the next steps, and how many steps may take it
        before asking again: one while the trials are timed, else the rest of the period."""
        k = self.count % self.PERIOD
        if k < 2 * self.TRIAL:
            return k >= self.TRIAL, 1
        return self.streaming, self.PERIOD - k

    def record(self, streaming: bool, seconds: float, rows: int, steps: int = 1) -> None:
        """``steps`` steps, on batches of ``rows``, took ``seconds`` with the kind
        ``next`` gave. Only single steps are trial samples."""
        k = self.count % self.PERIOD
        self.count += steps
        if k == 0:
            self._rows = rows
        if k < 2 * self.TRIAL and steps == 1 and rows == self._rows:
            self._times[streaming].append(seconds)
        if k == 2 * self.TRIAL - 1:
            plain, stream = self._times
            if plain and stream:
                self.streaming = statistics.median(stream) < self.MARGIN * statistics.median(plain)
            self._times = ([], [])


class ThreadedStep:
    """The arrays ``kernels.train_steps`` works on, gathered once per run."""

    # Steps per kernel call: each call costs 40-70 us, 5-7% of a step of the
    # reference model (benchmarks/threaded_step.py), so calls take several; a
    # stop request is seen between calls, so a call lasts ~CALL_SECONDS at most.
    MOST_STEPS, CALL_SECONDS = 64, 0.05

    def __init__(self, model, optimizer: Adam, dense: list[Dense], dropouts: list,
                 threads: int, widths: list[int]) -> None:
        self.model, self.optimizer, self.threads = model, optimizer, threads
        self.widths = widths  # input, then each layer's output, as checked by for_run
        self.dense, self.dropouts = dense, dropouts
        by_id = {id(p.value): p.name for p in optimizer.params}

        def moments(store: dict, key: str) -> tuple[np.ndarray, ...]:
            return tuple(store[by_id[id(d.params[key])]] for d in dense)

        self.weights = tuple(d.params["weight"] for d in dense)
        self.biases = tuple(d.params["bias"] for d in dense)
        self.wgrads = tuple(d.grads["weight"] for d in dense)
        self.bgrads = tuple(d.grads["bias"] for d in dense)
        self.wm, self.wv = moments(optimizer.m, "weight"), moments(optimizer.v, "weight")
        self.bm, self.bv = moments(optimizer.m, "bias"), moments(optimizer.v, "bias")
        self._keys = np.zeros((self.MOST_STEPS, len(dense)), np.uint64)
        self._losses = np.zeros(self.MOST_STEPS)
        self._corrects = np.zeros(self.MOST_STEPS, np.int64)
        self.thresholds = np.zeros(len(dense), np.uint64)
        self.scales = np.ones(len(dense), np.float32)
        self.scratch = aligned.zeros((threads, fused.STREAM_CHUNK), np.float32)  # streaming stores
        self.stores = StoreChooser()
        self._step_seconds = 0.0  # the last call's time per step (0: none yet)
        self._buffers: dict = {}
        self._last_n, self._last = -1, ()

    @classmethod
    def for_run(cls, model, optimizer: Adam, x: np.ndarray, augment) -> ThreadedStep | None:
        """The plan for this run, or None when it must take the layer-by-layer step."""
        # The cheap checks first: the ones below start Numba's thread pool.
        if not (expected(augment is not None) and model.fuse and model.dtype == np.float32
                and x.dtype in (np.uint8, np.float32)
                and type(model.loss) is SoftmaxCrossEntropy and type(optimizer) is Adam):
            return None
        threads = min(numba.get_num_threads(), blas.allowed_threads())
        if threads < 2 or not pool_wakes_fast():
            return None
        stages = list(model._current_stages())
        while stages and type(stages[0]) is Flatten:
            stages.pop(0)
        if not stages or type(stages[-1]) is not Dense:
            return None
        blocks = stages[:-1]
        if not all(type(b) is DenseReLU for b in blocks):
            return None
        dense = [b.dense for b in blocks] + [stages[-1]]
        if any(type(d) is not Dense for d in dense):
            return None
        # Adam must update exactly these weights and biases, float32 and in place.
        arrays = [d.params[k] for d in dense for k in ("weight", "bias")]
        grads = [d.grads[k] for d in dense for k in ("weight", "bias")]
        owned = {id(p.value): p for p in optimizer.params}
        if len(owned) != len(arrays) or any(id(a) not in owned for a in arrays) or any(
                owned[id(a)].grad is not g for a, g in zip(arrays, grads)):
            return None
        moments = [store[owned[id(a)].name] for store in (optimizer.m, optimizer.v) for a in arrays]
        # (Aligned: a float32 view at an odd byte offset would fault the streaming stores.)
        if any(a.dtype != np.float32 or not a.flags.c_contiguous or not a.flags.aligned
               for a in arrays + grads + moments) or any(
                m.shape != a.shape for m, a in zip(moments, arrays + arrays)):
            return None
        # The kernel trusts every shape (it computes addresses from them), so the
        # chain must fit exactly, as the layer path would insist with an error.
        widths = [int(np.prod(x.shape[1:]))] + [d.out_features for d in dense]
        if any(d.in_features != widths[i] or d.params["weight"].shape != (widths[i], widths[i + 1])
               or d.params["bias"].shape != (widths[i + 1],) for i, d in enumerate(dense)) \
                or widths[-1] != model.num_classes:
            return None
        return cls(model, optimizer, dense, [b.dropout for b in blocks], threads, widths)

    def reuse_buffers(self, other: ThreadedStep) -> None:
        """Take over ``other``'s per-batch-size buffers (a run continued by another
        ``run()`` call allocates nothing new) and its choice of stores."""
        self._buffers = other._buffers
        self.stores = other.stores
        self._last_n, self._last = -1, ()

    def _buffers_for(self, n: int) -> tuple:
        """(activations, deltas, per-row losses, the first layer's partial products)
        for batches of n rows, made on first use."""
        if n != self._last_n:
            def buf(name: str, cols: int, dtype=np.float32) -> np.ndarray:
                return reuse_buffer(self._buffers, name, (n, cols), dtype)
            acts = tuple(buf(f"a{i}", w) for i, w in enumerate(self.widths))
            deltas = tuple(buf(f"d{i}", w) for i, w in enumerate(self.widths[1:]))
            partials = reuse_buffer(self._buffers, "partials",
                                    (self.threads - 1, n, self.widths[1]), np.float32)
            self._last = (acts, deltas, buf("loss", 2, np.float64).reshape(-1), partials)
            self._last_n = n
        return self._last

    def next_call_size(self) -> int:
        """How many steps the next ``steps`` call should take at most: one while the
        store kinds are timed; else as many as take ~``CALL_SECONDS`` at the last
        call's pace (so that a stop request waits little), at most ``MOST_STEPS``."""
        size = min(self.stores.next()[1], self.MOST_STEPS)
        if self._step_seconds > 0:
            size = min(size, max(1, int(self.CALL_SECONDS / self._step_seconds)))
        return size

    def steps(self, x: np.ndarray, y: np.ndarray, idx: np.ndarray, lrs: list[float],
              loss_limit: float) -> tuple[np.ndarray, np.ndarray]:
        """Training steps on ``len(lrs)`` consecutive batches of equal size, whose
        rows of (x, y) ``idx`` lists one batch after another, step s at learning
        rate ``lrs[s]``; returns each step's mean loss and number of correct
        predictions (views of buffers that the next call overwrites). It stops
        after the first step whose loss is not <= ``loss_limit`` (the arrays then
        end with it). The dropout keys are drawn, in step and then layer order, as
        the blocks draw them, and Adam's step count advances as in ``Adam.step``:
        everything as ``len(lrs)`` calls of one step would leave it, also when
        the call stops early. The steps are timed for ``self.stores``, which picks
        plain or streaming stores for the weights."""
        count = len(lrs)
        if not 1 <= count <= self.MOST_STEPS or len(idx) % count:
            raise ValueError(f"ThreadedStep.steps: {len(idx)} rows in {count} batches (at most "
                             f"{self.MOST_STEPS})")
        if blas.thread_count() != 1:  # each thread calls BLAS: OpenBLAS's own pool must be off
            raise RuntimeError("ThreadedStep.steps runs inside blas.one_thread() only")
        generators = self._generators(self._set_dropout())
        before = [rng.bit_generator.state for rng, _ in generators]
        keys = self._keys[:count]
        for rng, columns in generators:
            # The keys the layers drawing from rng would draw, step by step in layer
            # order: a Generator gives the same numbers in an array as one by one.
            drawn = rng.integers(0, 2**63, size=count * len(columns))
            for j, column in enumerate(columns):
                keys[:, column] = drawn[j::len(columns)]
        opt = self.optimizer
        coefs = opt._coefficient_rows(np.dtype(np.float32), lrs, opt.step_count + 1)
        n = len(idx) // count
        acts, deltas, row_loss, partials = self._buffers_for(n)
        src = x.reshape(len(x), -1)
        scale = np.float32(1 / 255 if x.dtype == np.uint8 else 1)
        streaming = self.stores.next()[0]
        losses, corrects = self._losses[:count], self._corrects[:count]
        started = time.perf_counter()
        done = kernels.train_steps(
            blas.SGEMM, self.threads, src, idx, scale, y, self.weights, self.biases,
            acts, deltas, self.wgrads, self.bgrads, self.wm, self.wv, self.bm, self.bv,
            keys, self.thresholds, self.scales, coefs, row_loss, self.scratch, streaming,
            partials, losses, corrects, float(loss_limit))
        seconds = time.perf_counter() - started
        opt.step_count += done
        opt.lr = lrs[done - 1]
        if done < count:  # stopped early: the generators as the steps taken leave them
            for (rng, columns), state in zip(generators, before):
                rng.bit_generator.state = state
                rng.integers(0, 2**63, size=done * len(columns))
        self.stores.record(streaming, seconds, n, done)
        self._step_seconds = seconds / done
        return losses[:done], corrects[:done]

    def _set_dropout(self) -> list[int]:
        """Each layer's dropout threshold and scale for this call (none: 0 and 1);
        returns the layers whose dropout draws a key at each step, as
        ``Dropout.forward`` does: in training, with p > 0."""
        dropping = [i for i, d in enumerate(self.dropouts)
                    if d is not None and d.training and d.p > 0.0]
        self.thresholds[:], self.scales[:] = 0, 1.0
        for i in dropping:
            self.thresholds[i] = round(self.dropouts[i].p * 2**24)
            self.scales[i] = 1.0 / (1.0 - self.dropouts[i].p)
        return dropping

    def _generators(self, dropping: list[int]) -> list[tuple[np.random.Generator, list[int]]]:
        """The generators the ``dropping`` layers draw their keys from, each with
        those layers (in order). Grouped by bit generator: two Generators over one
        share its stream."""
        groups: dict[int, tuple[np.random.Generator, list[int]]] = {}
        for i in dropping:
            rng = self.dropouts[i].rng
            groups.setdefault(id(rng.bit_generator), (rng, []))[1].append(i)
        return list(groups.values())
