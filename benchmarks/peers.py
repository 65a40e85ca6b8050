"""Peer implementations of the nnscratch reference training workload.

Every function here trains (or, for :func:`gemm_floor`, only does the matrix
multiplies of) the same reference work so that nnscratch can be compared with
other ways of doing it on the same machine:

* model ``784 -> hidden... -> 10`` with ReLU + Dropout(0.2) after every hidden
  layer, softmax cross-entropy on the logits;
* Adam, lr 1e-3, betas (0.9, 0.999), eps 1e-8;
* batch 128, float32, a fresh shuffle every epoch;
* the training images are ``uint8`` of shape ``(N, 28, 28)`` and are scaled by
  1/255 per batch (except :func:`sklearn_mlp`, which can only take the whole
  scaled array; see its ``note``).

The reference ("small") model has ``hidden=(256, 128)``; the "large" model used
for scaling has ``hidden=(1024, 1024)``.

All peers share one signature::

    peer(x_uint8, y, hidden=(256, 128), epochs=1, batch_size=128, seed=0,
         x_test=None) -> dict

and return a dict with the keys

``name``          peer name
``available``     False when the framework could not be imported (then
                  ``reason`` says why and the timing fields are empty/None)
``reason``        None, or why the peer was skipped
``epoch_times``   wall seconds of each epoch (list of float)
``first_batch_s`` seconds from the start of the call (including importing
                  the framework, building the model and any compilation) to
                  the end of the first training step
``infer_s``       seconds to predict ``x_test`` in batches of 1000 after
                  training: the median of 5 warm runs after the first; None
                  when ``x_test`` is None
``infer_cold_s``  the same for the first (cold) run, which includes any
                  compilation a framework does on first use
``final_loss``    mean training loss over the last epoch (None for the floor)
``note``          anything that makes the peer differ from the reference

Frameworks are imported lazily inside each function, so this module imports
with NumPy alone.  Run ``python benchmarks/peers.py`` for a self-contained
table on random data; by default each peer runs in its own subprocess so that
thread pools of one framework cannot slow down another.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

#: Reference hyper-parameters shared by every peer.
N_IN = 28 * 28
N_OUT = 10
DROPOUT = 0.2
LR = 1e-3
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-8
INFER_BATCH = 1000

#: The two model sizes the benchmarks use.
MODELS: dict[str, tuple[int, ...]] = {"small": (256, 128), "large": (1024, 1024)}

#: Environment variables that are known to slow NumPy's OpenBLAS down when set.
SLOW_BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

PeerResult = dict[str, Any]
PeerFn = Callable[..., PeerResult]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def _result(
    name: str,
    *,
    available: bool = True,
    reason: str | None = None,
    epoch_times: list[float] | None = None,
    first_batch_s: float | None = None,
    infer_s: float | None = None,
    infer_cold_s: float | None = None,
    final_loss: float | None = None,
    note: str | None = None,
) -> PeerResult:
    """Build the result dict every peer returns (one place for the schema)."""
    return {
        "name": name,
        "available": available,
        "reason": reason,
        "epoch_times": list(epoch_times or []),
        "first_batch_s": first_batch_s,
        "infer_s": infer_s,
        "infer_cold_s": infer_cold_s,
        "final_loss": final_loss,
        "note": note,
    }


def _skipped(name: str, reason: str) -> PeerResult:
    """Result of a peer whose framework is not available."""
    return _result(name, available=False, reason=reason)


def _layer_dims(hidden: tuple[int, ...]) -> list[int]:
    """``[784, *hidden, 10]``: the widths of every activation."""
    return [N_IN, *(int(h) for h in hidden), N_OUT]


def batch_bounds(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` of each batch: ``ceil(n / batch_size)`` batches,
    the last one partial when ``batch_size`` does not divide ``n``."""
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def n_steps(n: int, batch_size: int) -> int:
    """Number of optimiser steps per epoch (``ceil(n / batch_size)``)."""
    return math.ceil(n / batch_size)


def _time_cold_then_warm(fn: Callable[[], Any], warm_runs: int = 5) -> tuple[float, float]:
    """Run ``fn`` once cold, then ``warm_runs`` times; return ``(cold_seconds,
    median warm seconds)``: one warm run alone is at the mercy of the machine's drift."""
    times = []
    for _ in range(1 + warm_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times[1:])


def _he_init(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """He-normal float32 weight matrix of shape ``(fan_in, fan_out)``."""
    w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
    w *= np.float32(math.sqrt(2.0 / fan_in))
    return w


# ----------------------------------------------------------------------------
# 1. the GEMM floor
# ----------------------------------------------------------------------------


def gemm_floor(
    x_uint8: np.ndarray,
    y: np.ndarray,
    hidden: tuple[int, ...] = MODELS["small"],
    epochs: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    x_test: np.ndarray | None = None,
) -> PeerResult:
    """Time ONLY the matrix multiplies of each training step.

    Per step, for ``L = len(hidden) + 1`` layers: ``L`` forward products
    (``x@W1``, ``h1@W2``, ...), ``L`` weight-gradient products
    (``x.T@d1``, ...) and ``L - 1`` input-gradient products
    (``d_L@W_L.T``, ..., ``d2@W2.T``; none for the first layer).  For the
    reference model that is 3 + 3 + 2 = 8 GEMMs.  All operands are
    preallocated random float32 arrays and every product is written with
    ``np.matmul(..., out=...)``.  The steps per epoch are
    ``ceil(N / batch_size)`` with the last one of the true partial size
    (60000 / 128: 468 full steps and one of 96 rows).

    This is the floor no NumPy-based framework can beat on this machine.
    ``x_uint8`` and ``y`` only set ``N``; their values are not used.
    """
    t_start = time.perf_counter()
    n = int(x_uint8.shape[0])
    dims = _layer_dims(hidden)
    n_layers = len(dims) - 1
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        # values in [0, 1) / sqrt(fan) keep every product well scaled (no
        # overflow, no denormals) no matter how often it is recomputed
        a = rng.random(shape, dtype=np.float32)
        a *= np.float32(1.0 / math.sqrt(shape[-1]))
        return a

    x = rand(batch_size, dims[0])
    weights = [rand(dims[i], dims[i + 1]) for i in range(n_layers)]
    acts = [np.empty((batch_size, dims[i + 1]), np.float32) for i in range(n_layers)]
    deltas = [rand(batch_size, dims[i + 1]) for i in range(n_layers)]
    grads = [np.empty_like(w) for w in weights]
    in_grads = [np.empty((batch_size, dims[i]), np.float32) for i in range(n_layers)]

    def step(b: int) -> None:
        inp = x[:b]
        for i in range(n_layers):  # forward
            np.matmul(inp, weights[i], out=acts[i][:b])
            inp = acts[i][:b]
        for i in reversed(range(n_layers)):  # backward
            below = x[:b] if i == 0 else acts[i - 1][:b]
            np.matmul(below.T, deltas[i][:b], out=grads[i])
            if i > 0:
                np.matmul(deltas[i][:b], weights[i].T, out=in_grads[i][:b])

    epoch_times: list[float] = []
    first_batch_s: float | None = None
    for _ in range(epochs):
        t0 = time.perf_counter()
        for start, stop in batch_bounds(n, batch_size):
            step(stop - start)
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - t_start
        epoch_times.append(time.perf_counter() - t0)

    infer_s = infer_cold_s = None
    if x_test is not None:
        ib = INFER_BATCH
        xin = rand(ib, dims[0])
        outs = [np.empty((ib, d), np.float32) for d in dims[1:]]
        n_test = int(x_test.shape[0])

        def infer() -> None:
            for start, stop in batch_bounds(n_test, ib):
                inp = xin[: stop - start]
                for i in range(n_layers):
                    np.matmul(inp, weights[i], out=outs[i][: stop - start])
                    inp = outs[i][: stop - start]

        infer_cold_s, infer_s = _time_cold_then_warm(infer)

    n_gemm = 3 * n_layers - 1
    return _result(
        "gemm_floor",
        epoch_times=epoch_times,
        first_batch_s=first_batch_s,
        infer_s=infer_s,
        infer_cold_s=infer_cold_s,
        note=f"only the {n_gemm} GEMMs per step (np.matmul out=), random data; "
        "no bias, activation, dropout, loss or Adam",
    )


# ----------------------------------------------------------------------------
# 2. careful pure NumPy
# ----------------------------------------------------------------------------


class _NumpyMLP:
    """Preallocated float32 MLP + Adam written the way a careful NumPy user would.

    All parameters live in one flat buffer (and so do their gradients and the
    two Adam moments), so the optimiser is a handful of whole-buffer ufuncs.
    Every per-step array is preallocated for ``batch_size`` rows and used via
    ``[:b]`` views for the last, partial batch; every op writes with ``out=``.
    Dropout and the ReLU derivative are folded into one float mask per hidden
    layer: ``mask = (z > 0) * (u >= p) / (1 - p)``, ``h = z * mask``,
    ``dz = dh * mask``.
    """

    def __init__(self, hidden: tuple[int, ...], batch_size: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.dims = _layer_dims(hidden)
        self.n_layers = len(self.dims) - 1
        self.batch_size = batch_size
        shapes: list[tuple[int, ...]] = []
        for i in range(self.n_layers):
            shapes += [(self.dims[i], self.dims[i + 1]), (self.dims[i + 1],)]
        total = sum(math.prod(s) for s in shapes)

        self.flat = np.zeros(total, np.float32)  # parameters
        self.flat_grad = np.zeros(total, np.float32)
        self.m = np.zeros(total, np.float32)
        self.v = np.zeros(total, np.float32)
        self.tmp = np.empty(total, np.float32)
        self.t = 0

        def views(buf: np.ndarray) -> list[np.ndarray]:
            out, off = [], 0
            for s in shapes:
                k = math.prod(s)
                out.append(buf[off : off + k].reshape(s))
                off += k
            return out

        p, g = views(self.flat), views(self.flat_grad)
        self.W, self.b = p[0::2], p[1::2]
        self.gW, self.gb = g[0::2], g[1::2]
        for i, w in enumerate(self.W):
            w[...] = _he_init(self.rng, self.dims[i], self.dims[i + 1])

        bs = batch_size
        self.x_u8 = np.empty((bs, N_IN), np.uint8)
        self.x = np.empty((bs, N_IN), np.float32)
        self.y = np.empty(bs, np.int64)
        self.z = [np.empty((bs, d), np.float32) for d in self.dims[1:]]  # pre-acts
        self.h = [np.empty((bs, d), np.float32) for d in self.dims[1:-1]]  # post
        self.mask = [np.empty((bs, d), np.float32) for d in self.dims[1:-1]]
        self.pos = [np.empty((bs, d), np.bool_) for d in self.dims[1:-1]]
        self.dh = [np.empty((bs, d), np.float32) for d in self.dims[1:-1]]
        self.row = np.empty((bs, 1), np.float32)
        self.arange = np.arange(bs)
        self.keep_scale = np.float32(1.0 / (1.0 - DROPOUT))

    def load_batch(self, x_flat: np.ndarray, y: np.ndarray, idx: np.ndarray) -> int:
        """Gather the rows ``idx`` into the batch buffers, scaled by 1/255."""
        b = idx.shape[0]
        np.take(x_flat, idx, axis=0, out=self.x_u8[:b])
        np.multiply(self.x_u8[:b], np.float32(1.0 / 255.0), out=self.x[:b])
        np.take(y, idx, out=self.y[:b])
        return b

    def train_step(self, b: int) -> float:
        """Forward, backward and Adam on the ``b`` rows loaded; returns the loss."""
        L = self.n_layers
        inp = self.x[:b]
        # ---- forward
        for i in range(L):
            z = self.z[i][:b]
            np.matmul(inp, self.W[i], out=z)
            z += self.b[i]
            if i == L - 1:
                break
            mask, pos = self.mask[i][:b], self.pos[i][:b]
            self.rng.random(out=mask, dtype=np.float32)
            np.greater_equal(mask, DROPOUT, out=mask)  # 1.0 = kept
            np.greater(z, 0.0, out=pos)
            mask *= pos
            mask *= self.keep_scale
            inp = np.multiply(z, mask, out=self.h[i][:b])
        # ---- softmax cross-entropy on the logits; grad written in place
        logits, row, yb, ar = self.z[L - 1][:b], self.row[:b], self.y[:b], self.arange[:b]
        np.max(logits, axis=1, keepdims=True, out=row)
        logits -= row
        picked = logits[ar, yb]  # shifted logit of the true class (b,)
        np.exp(logits, out=logits)
        np.sum(logits, axis=1, keepdims=True, out=row)
        loss = float(np.mean(np.log(row[:, 0]) - picked))
        logits /= row
        logits[ar, yb] -= 1.0
        logits *= np.float32(1.0 / b)
        # ---- backward
        delta = logits
        for i in reversed(range(L)):
            below = self.x[:b] if i == 0 else self.h[i - 1][:b]
            np.matmul(below.T, delta, out=self.gW[i])
            np.sum(delta, axis=0, out=self.gb[i])
            if i > 0:
                dh = self.dh[i - 1][:b]
                np.matmul(delta, self.W[i].T, out=dh)
                dh *= self.mask[i - 1][:b]
                delta = dh
        self._adam()
        return loss

    def _adam(self) -> None:
        """One Adam update on the flat buffers (PyTorch's formulation)."""
        self.t += 1
        g, m, v, tmp = self.flat_grad, self.m, self.v, self.tmp
        m *= np.float32(BETA1)
        np.multiply(g, np.float32(1.0 - BETA1), out=tmp)
        m += tmp
        v *= np.float32(BETA2)
        np.multiply(g, g, out=tmp)
        tmp *= np.float32(1.0 - BETA2)
        v += tmp
        # lr/bc1 * m / (sqrt(v)/s + eps) == (lr*s/bc1) * m / (sqrt(v) + eps*s)
        # with s = sqrt(bc2): the same update with one pass less
        s = math.sqrt(1.0 - BETA2**self.t)
        bc1 = 1.0 - BETA1**self.t
        np.sqrt(v, out=tmp)
        tmp += np.float32(EPS * s)
        np.divide(m, tmp, out=tmp)
        tmp *= np.float32(LR * s / bc1)
        self.flat -= tmp

    def predict(self, x_uint8: np.ndarray) -> np.ndarray:
        """Class predictions (no dropout) in batches of ``INFER_BATCH``."""
        x_flat = x_uint8.reshape(x_uint8.shape[0], -1)
        preds = np.empty(x_flat.shape[0], np.int64)
        ib = INFER_BATCH
        xf = np.empty((ib, N_IN), np.float32)
        outs = [np.empty((ib, d), np.float32) for d in self.dims[1:]]
        for start, stop in batch_bounds(x_flat.shape[0], ib):
            b = stop - start
            inp = np.multiply(x_flat[start:stop], np.float32(1.0 / 255.0), out=xf[:b])
            for i in range(self.n_layers):
                z = np.matmul(inp, self.W[i], out=outs[i][:b])
                z += self.b[i]
                if i < self.n_layers - 1:
                    np.maximum(z, 0.0, out=z)
                inp = z
            np.argmax(inp, axis=1, out=preds[start:stop])
        return preds


def numpy_careful(
    x_uint8: np.ndarray,
    y: np.ndarray,
    hidden: tuple[int, ...] = MODELS["small"],
    epochs: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    x_test: np.ndarray | None = None,
) -> PeerResult:
    """Train the reference model with carefully written pure NumPy (float32).

    Preallocated buffers, ``out=`` everywhere, one flat Adam buffer, uint8
    rows gathered and scaled by 1/255 per batch: the realistic "good NumPy"
    peer.  See :class:`_NumpyMLP`.
    """
    t_start = time.perf_counter()
    n = int(x_uint8.shape[0])
    x_flat = x_uint8.reshape(n, -1)
    y = np.ascontiguousarray(y, dtype=np.int64)
    net = _NumpyMLP(hidden, batch_size, seed)
    shuffle_rng = np.random.default_rng(seed + 1)

    epoch_times: list[float] = []
    first_batch_s: float | None = None
    final_loss = float("nan")
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = shuffle_rng.permutation(n)
        loss_sum = 0.0
        for start, stop in batch_bounds(n, batch_size):
            b = net.load_batch(x_flat, y, perm[start:stop])
            loss_sum += net.train_step(b) * b
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - t_start
        epoch_times.append(time.perf_counter() - t0)
        final_loss = loss_sum / n

    infer_s = infer_cold_s = None
    if x_test is not None:
        infer_cold_s, infer_s = _time_cold_then_warm(lambda: net.predict(x_test))

    return _result(
        "numpy_careful",
        epoch_times=epoch_times,
        first_batch_s=first_batch_s,
        infer_s=infer_s,
        infer_cold_s=infer_cold_s,
        final_loss=final_loss,
        note="pure NumPy float32, preallocated, out= everywhere, flat Adam",
    )


# ----------------------------------------------------------------------------
# 3. PyTorch eager
# ----------------------------------------------------------------------------


def torch_eager(
    x_uint8: np.ndarray,
    y: np.ndarray,
    hidden: tuple[int, ...] = MODELS["small"],
    epochs: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    x_test: np.ndarray | None = None,
) -> PeerResult:
    """Train the reference model with PyTorch eager on the CPU (2 threads).

    ``nn.Sequential`` + ``torch.optim.Adam`` (its default implementation),
    ``F.cross_entropy`` on the logits.  No DataLoader: the uint8 tensor is
    indexed by a permutation and each batch converted to float32 / 255.
    ``first_batch_s`` includes ``import torch`` when torch was not imported
    yet in this process.
    """
    t_start = time.perf_counter()
    try:
        import torch
        import torch.nn.functional as F
        from torch import nn
    except Exception as exc:  # ImportError, or a broken install
        return _skipped("torch_eager", f"torch not importable: {exc!r}")

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    dims = _layer_dims(hidden)
    layers: list[nn.Module] = []
    for i in range(len(dims) - 2):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU(), nn.Dropout(DROPOUT)]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    model = nn.Sequential(*layers).float()
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS)

    n = int(x_uint8.shape[0])
    xt = torch.from_numpy(np.ascontiguousarray(x_uint8).reshape(n, -1))  # no copy
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    gen = torch.Generator().manual_seed(seed + 1)
    inv255 = 1.0 / 255.0

    epoch_times: list[float] = []
    first_batch_s: float | None = None
    final_loss = float("nan")
    model.train()
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for start, stop in batch_bounds(n, batch_size):
            idx = perm[start:stop]
            xb = xt.index_select(0, idx).to(torch.float32).mul_(inv255)
            yb = yt.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * (stop - start)
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - t_start
        final_loss = float(loss_sum) / n
        epoch_times.append(time.perf_counter() - t0)

    infer_s = infer_cold_s = None
    if x_test is not None:
        xtest = torch.from_numpy(np.ascontiguousarray(x_test).reshape(x_test.shape[0], -1))
        model.eval()

        def infer() -> np.ndarray:
            preds = []
            with torch.inference_mode():
                for start, stop in batch_bounds(xtest.shape[0], INFER_BATCH):
                    xb = xtest[start:stop].to(torch.float32).mul_(inv255)
                    preds.append(model(xb).argmax(dim=1))
            return torch.cat(preds).numpy()

        infer_cold_s, infer_s = _time_cold_then_warm(infer)

    return _result(
        "torch_eager",
        epoch_times=epoch_times,
        first_batch_s=first_batch_s,
        infer_s=infer_s,
        infer_cold_s=infer_cold_s,
        final_loss=final_loss,
        note=f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        "default Adam (single-tensor on CPU)",
    )


# ----------------------------------------------------------------------------
# 4. scikit-learn MLPClassifier
# ----------------------------------------------------------------------------


def sklearn_mlp(
    x_uint8: np.ndarray,
    y: np.ndarray,
    hidden: tuple[int, ...] = MODELS["small"],
    epochs: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    x_test: np.ndarray | None = None,
) -> PeerResult:
    """Train an sklearn ``MLPClassifier`` (adam, batch 128, lr 1e-3, alpha 0).

    One ``partial_fit`` on the whole training set per epoch: that is exactly
    one shuffled pass in minibatches of ``batch_size`` and, unlike
    ``warm_start`` + ``fit(max_iter=1)``, it keeps the Adam state across
    epochs.  sklearn has NO dropout, and needs the whole training set as a
    scaled float32 array, which is made once before the first epoch (counted
    in ``first_batch_s``, not in the epoch times).  ``first_batch_s`` cannot be
    observed inside ``partial_fit``: it is the set-up time plus the first
    epoch's mean time per step.  ``final_loss`` is sklearn's ``loss_``.
    """
    t_start = time.perf_counter()
    try:
        import sklearn
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
    except Exception as exc:
        return _skipped("sklearn_mlp", f"scikit-learn not importable: {exc!r}")

    n = int(x_uint8.shape[0])
    x = x_uint8.reshape(n, -1).astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    y = np.asarray(y, dtype=np.int64)
    clf = MLPClassifier(
        hidden_layer_sizes=tuple(hidden),
        activation="relu",
        solver="adam",
        alpha=0.0,
        batch_size=batch_size,
        learning_rate_init=LR,
        beta_1=BETA1,
        beta_2=BETA2,
        epsilon=EPS,
        shuffle=True,
        random_state=seed,
    )
    setup_s = time.perf_counter() - t_start

    epoch_times: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(epochs):
            t0 = time.perf_counter()
            clf.partial_fit(x, y, classes=np.arange(N_OUT))
            epoch_times.append(time.perf_counter() - t0)
    first_batch_s = setup_s + epoch_times[0] / n_steps(n, batch_size) if epochs else None

    infer_s = infer_cold_s = None
    if x_test is not None:
        xtest = x_test.reshape(x_test.shape[0], -1)

        def infer() -> np.ndarray:
            preds = []
            for start, stop in batch_bounds(xtest.shape[0], INFER_BATCH):
                xb = xtest[start:stop].astype(np.float32)
                xb *= np.float32(1.0 / 255.0)
                preds.append(clf.predict(xb))
            return np.concatenate(preds)

        infer_cold_s, infer_s = _time_cold_then_warm(infer)

    return _result(
        "sklearn_mlp",
        epoch_times=epoch_times,
        first_batch_s=first_batch_s,
        infer_s=infer_s,
        infer_cold_s=infer_cold_s,
        final_loss=float(clf.loss_) if epochs else None,
        note=f"sklearn {sklearn.__version__}: NO dropout; weights "
        f"{clf.coefs_[0].dtype}; data pre-scaled once; first_batch_s estimated",
    )


# ----------------------------------------------------------------------------
# 5. JAX, one jitted lax.scan per epoch
# ----------------------------------------------------------------------------


def jax_scan(
    x_uint8: np.ndarray,
    y: np.ndarray,
    hidden: tuple[int, ...] = MODELS["small"],
    epochs: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    x_test: np.ndarray | None = None,
) -> PeerResult:
    """Train the reference model with JAX: the whole epoch is ONE jitted ``lax.scan``.

    The uint8 training set stays on the device; each epoch passes a
    ``(steps, batch_size)`` index matrix from a NumPy permutation.  The last,
    partial batch is padded to ``batch_size`` and its padding rows get weight
    0 in the loss, so every step has one shape and the epoch is one scan
    (the 32 padding rows are the only extra work).  Dropout uses
    ``jax.random``; Adam is hand-written (PyTorch's formulation).  The epoch
    function is compiled ahead of time, before epoch 1.  ``first_batch_s``
    cannot be observed inside the scan: it is the time to import + build +
    compile plus the first epoch's mean time per step.
    """
    t_start = time.perf_counter()
    try:
        import jax
        import jax.numpy as jnp
    except Exception as exc:
        return _skipped("jax_scan", f"jax not importable: {exc!r}")

    dims = _layer_dims(hidden)
    n_layers = len(dims) - 1
    n = int(x_uint8.shape[0])
    steps = n_steps(n, batch_size)
    keep = 1.0 - DROPOUT

    key = jax.random.PRNGKey(seed)
    params = []
    for i in range(n_layers):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (dims[i], dims[i + 1]), jnp.float32)
        params.append((w * math.sqrt(2.0 / dims[i]), jnp.zeros(dims[i + 1], jnp.float32)))

    def forward(params, x, key, train: bool):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < n_layers - 1:
                h = jax.nn.relu(h)
                if train:
                    key, sub = jax.random.split(key)
                    mask = jax.random.bernoulli(sub, keep, h.shape)
                    h = jnp.where(mask, h / keep, 0.0)
        return h

    def loss_fn(params, xb, yb, wb, key):
        logp = jax.nn.log_softmax(forward(params, xb, key, True))
        nll = -jnp.take_along_axis(logp, yb[:, None], axis=1)[:, 0]
        return jnp.sum(nll * wb) / jnp.sum(wb)

    grad_fn = jax.value_and_grad(loss_fn)

    def epoch(state, x_all, y_all, idx, wts):
        """One epoch: ``lax.scan`` of train steps over the rows of ``idx``."""

        def step(carry, batch):
            params, m, v, t, key = carry
            bi, wb = batch
            xb = x_all[bi].astype(jnp.float32) * (1.0 / 255.0)
            key, sub = jax.random.split(key)
            loss, g = grad_fn(params, xb, y_all[bi], wb, sub)
            t = t + 1
            m = jax.tree_util.tree_map(lambda m_, g_: BETA1 * m_ + (1 - BETA1) * g_, m, g)
            v = jax.tree_util.tree_map(lambda v_, g_: BETA2 * v_ + (1 - BETA2) * g_ * g_, v, g)
            tf = t.astype(jnp.float32)
            lr_t = LR / (1.0 - BETA1**tf)
            inv_bc2 = 1.0 / jnp.sqrt(1.0 - BETA2**tf)
            params = jax.tree_util.tree_map(
                lambda p, m_, v_: p - lr_t * m_ / (jnp.sqrt(v_) * inv_bc2 + EPS), params, m, v
            )
            return (params, m, v, t, key), loss * jnp.sum(wb)

        state, weighted = jax.lax.scan(step, state, (idx, wts))
        return state, jnp.sum(weighted) / jnp.sum(wts)

    adam_m = jax.tree_util.tree_map(jnp.zeros_like, params)
    adam_v = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = (params, adam_m, adam_v, jnp.int32(0), key)
    x_dev = jax.device_put(np.ascontiguousarray(x_uint8).reshape(n, -1))
    y_dev = jax.device_put(np.asarray(y, dtype=np.int32))

    shuffle_rng = np.random.default_rng(seed + 1)

    def epoch_inputs() -> tuple[np.ndarray, np.ndarray]:
        """Shuffled index matrix, padded with row 0 / weight 0 to full batches."""
        idx = np.zeros(steps * batch_size, np.int32)
        idx[:n] = shuffle_rng.permutation(n)
        wts = np.zeros(steps * batch_size, np.float32)
        wts[:n] = 1.0
        return idx.reshape(steps, batch_size), wts.reshape(steps, batch_size)

    idx0, w0 = epoch_inputs()
    compiled = jax.jit(epoch, donate_argnums=0).lower(state, x_dev, y_dev, idx0, w0).compile()
    ready_s = time.perf_counter() - t_start

    epoch_times: list[float] = []
    final_loss = float("nan")
    for e in range(epochs):
        t0 = time.perf_counter()
        idx, wts = (idx0, w0) if e == 0 else epoch_inputs()
        state, loss = compiled(state, x_dev, y_dev, idx, wts)
        final_loss = float(loss)  # blocks until the epoch is done
        epoch_times.append(time.perf_counter() - t0)
    first_batch_s = ready_s + epoch_times[0] / steps if epochs else None

    infer_s = infer_cold_s = None
    if x_test is not None:
        predict = jax.jit(
            lambda p, xb: jnp.argmax(
                forward(p, xb.astype(jnp.float32) * (1.0 / 255.0), None, False), axis=1
            )
        )
        xtest = np.ascontiguousarray(x_test).reshape(x_test.shape[0], -1)
        trained = state[0]

        def infer() -> np.ndarray:
            preds = [
                predict(trained, xtest[start:stop])
                for start, stop in batch_bounds(xtest.shape[0], INFER_BATCH)
            ]
            return np.concatenate([np.asarray(p) for p in preds])

        infer_cold_s, infer_s = _time_cold_then_warm(infer)

    return _result(
        "jax_scan",
        epoch_times=epoch_times,
        first_batch_s=first_batch_s,
        infer_s=infer_s,
        infer_cold_s=infer_cold_s,
        final_loss=final_loss,
        note=f"jax {jax.__version__}: epoch = one jitted lax.scan (AOT-compiled "
        f"in {ready_s:.2f}s incl. import); last batch padded+masked; "
        "first_batch_s estimated",
    )


# ----------------------------------------------------------------------------
# harness
# ----------------------------------------------------------------------------

#: Every peer, in the order the table shows them.
PEERS: dict[str, PeerFn] = {
    "gemm_floor": gemm_floor,
    "numpy_careful": numpy_careful,
    "torch_eager": torch_eager,
    "sklearn_mlp": sklearn_mlp,
    "jax_scan": jax_scan,
}


def blas_env_warnings() -> list[str]:
    """Warnings for environment variables known to slow NumPy's BLAS down."""
    return [
        f"WARNING: {var}={os.environ[var]!r} is set; it can make NumPy's OpenBLAS "
        "pick a slower kernel or blocking. Unset it for benchmarks."
        for var in SLOW_BLAS_ENV
        if var in os.environ
    ]


def load_warnings(threshold: float = 0.5) -> list[str]:
    """Warn when other processes keep the CPUs busy (timings would be noisy).

    With 2 cores, even one busy neighbour process can slow multi-threaded
    peers (OpenMP/BLAS threads spin-waiting for a descheduled partner) by
    several times, so a benchmark on a loaded machine is not comparable.
    """
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        return []
    if load1 > threshold:
        return [
            f"WARNING: 1-minute load average is {load1:.2f} before the run; "
            "other processes are using the CPUs and timings will be noisy."
        ]
    return []


def blas_info() -> str:
    """One line on NumPy's BLAS (via threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS: (install threadpoolctl to see NumPy's BLAS kernel)"
    for pool in threadpool_info():
        if pool.get("user_api") == "blas" and "numpy" in pool.get("filepath", ""):
            return (
                f"BLAS: {pool.get('internal_api')} {pool.get('version')}, "
                f"kernel {pool.get('architecture')}, {pool.get('num_threads')} threads"
            )
    return "BLAS: not found by threadpoolctl"


def machine_info() -> str:
    """CPU model and count, e.g. ``'AMD EPYC, 2 CPUs'``."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, NumPy {np.__version__}"
    )


def make_data(
    n_train: int = 60000, n_test: int = 10000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random MNIST-shaped data: ``x (n_train,28,28) uint8``, ``y (n_train,)``,
    ``x_test (n_test,28,28) uint8``."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    y = rng.integers(0, N_OUT, size=n_train, dtype=np.int64)
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    return x, y, x_test


def median_epoch(res: PeerResult) -> float | None:
    """Median epoch time over epochs 2..N (epoch 1 too when it is the only one)."""
    times = res.get("epoch_times") or []
    if not times:
        return None
    return statistics.median(times[1:] if len(times) > 1 else times)


def run_one(name: str, model: str, epochs: int, n_train: int, seed: int = 0) -> PeerResult:
    """Run one peer on fresh random data, in this process."""
    x, y, x_test = make_data(n_train=n_train, seed=seed)
    res = PEERS[name](x, y, hidden=MODELS[model], epochs=epochs, seed=seed, x_test=x_test)
    res["model"] = model
    return res


def run_isolated(name: str, model: str, epochs: int, n_train: int) -> PeerResult:
    """Run one peer in a fresh Python process (so thread pools don't interfere)."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        "--model",
        model,
        "--epochs",
        str(epochs),
        "--n-train",
        str(n_train),
    ]
    busy0, own0, t0 = _machine_busy_s(), _children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    busy1, own1, t1 = _machine_busy_s(), _children_cpu_s(), time.perf_counter()
    res = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT ") :])
            break
    if res is None:
        res = _skipped(
            name, f"worker failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
        res["model"] = model
    if busy0 is not None and busy1 is not None:
        others = (busy1 - busy0) - (own1 - own0)
        res["other_cores"] = max(0.0, others / (t1 - t0))
    return res


def _machine_busy_s() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle, iowait
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15, window_s: float = 1.0) -> float:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold`` cores.

    Samples /proc/stat over ``window_s`` windows; returns the last measured
    busy-core count (0.0 when it cannot be measured).  On a shared 2-core
    machine, starting a peer while a neighbour is busy makes its timing useless.
    """
    deadline = time.perf_counter() + max_wait_s
    while True:
        b0 = _machine_busy_s()
        time.sleep(window_s)
        b1 = _machine_busy_s()
        if b0 is None or b1 is None:
            return 0.0
        busy = (b1 - b0) / window_s
        if busy < threshold or time.perf_counter() >= deadline:
            return busy
        time.sleep(2.0)


def _children_cpu_s() -> float:
    """CPU seconds used by this process's finished children."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(results: list[PeerResult]) -> str:
    """Plain-text table: median epoch (epochs 2..N) and the other timings.

    ``x floor`` is the median epoch over the GEMM floor's of the same model;
    ``others`` is how many cores other processes kept busy on average while
    the peer ran (only with subprocess isolation; > ~0.1 means noisy timings).
    """
    floors = {r["model"]: median_epoch(r) for r in results if r["name"] == "gemm_floor"}
    head = (
        f"{'peer':<14} {'model':<6} {'median ep s':>11} {'x floor':>8} {'epoch1 s':>9} "
        f"{'1st batch s':>11} {'infer s':>8} {'loss':>7} {'others':>6}  note"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        if not r["available"]:
            lines.append(f"{r['name']:<14} {r['model']:<6} {'skipped':>11}  {r['reason']}")
            continue
        med = median_epoch(r)
        floor = floors.get(r["model"])
        ratio = med / floor if med and floor else None
        ep1 = r["epoch_times"][0] if r["epoch_times"] else None
        lines.append(
            f"{r['name']:<14} {r['model']:<6} {_fmt(med):>11} {_fmt(ratio, 2):>8} "
            f"{_fmt(ep1):>9} {_fmt(r['first_batch_s']):>11} {_fmt(r['infer_s'], 4):>8} "
            f"{_fmt(r['final_loss'], 4):>7} {_fmt(r.get('other_cores'), 2):>6}  {r['note'] or ''}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the peers on random data and print a table (see ``--help``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", choices=[*MODELS, "both"], default="small")
    ap.add_argument(
        "--peers", default=",".join(PEERS), help="comma-separated subset of: " + ", ".join(PEERS)
    )
    ap.add_argument("--n-train", type=int, default=60000)
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run every peer in this process instead of one subprocess each",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each peer this many times and keep the run with the "
        "lowest median epoch (helps on a shared, noisy machine)",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS until other processes "
        "leave the CPUs idle (for shared machines)",
    )
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:  # child of run_isolated
        res = run_one(args.worker, args.model, args.epochs, args.n_train)
        print("RESULT " + json.dumps(res))
        return 0

    for w in blas_env_warnings() + load_warnings():
        print(w)
    print(machine_info())
    print(blas_info())
    names = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        ap.error(f"unknown peers: {unknown}")
    models = list(MODELS) if args.model == "both" else [args.model]

    results = []
    for model in models:
        for name in names:
            print(f"running {name} ({model}, {args.epochs} epochs)...", flush=True)
            runner = run_one if args.in_process else run_isolated
            runs = []
            for _ in range(max(1, args.repeat)):
                if args.wait_quiet > 0:
                    wait_for_quiet(args.wait_quiet)
                runs.append(runner(name, model, args.epochs, args.n_train))
            results.append(min(runs, key=lambda r: median_epoch(r) or math.inf))
    print()
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
