"""The layers: Dense, ReLU, Dropout, Flatten.

Every layer has the same interface:

* ``forward(x)`` computes the output and caches exactly what ``backward`` needs;
* ``backward(dy)`` takes dL/dy (same shape as the output), returns dL/dx (same
  shape as the input), fills ``grads`` for layers with parameters, and never
  modifies ``dy``;
* ``params`` and ``grads`` are dicts with the same keys (empty for layers
  without parameters); ``training`` is the train/eval flag.

A standalone layer returns new arrays (Flatten returns a reshaped view, and an
inactive Dropout returns its argument itself, forward and backward). Inside a ``Sequential`` the
layers write into buffers that are reused from one batch to the next (see
``Layer._buffer``), so the training loop allocates nothing in steady state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from . import aligned, kernels
from .checks import float_dtype, is_int, is_number


def param_key_problem(layer: Layer) -> str | None:
    """Why ``layer``'s ``params`` and ``grads`` do not pair up, or None."""
    if layer.params.keys() == layer.grads.keys():
        return None
    return (f"{type(layer).__name__} has params {sorted(layer.params)} but grads "
            f"{sorted(layer.grads)}; a layer needs one gradient array per parameter, same key")


# Said by fit and gradcheck when a backward assigned grads[key] = new array.
GRADS_REPLACED = ("backward replaced the gradient array instead of writing into it, so an "
                  "optimizer holding the array never sees the values; write "
                  "grads[key][...] = ... (or use out=grads[key])")


def reuse_buffer(store: dict, name: str, shape: tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """An array of this name, shape and dtype from ``store``, made on first use.

    Keyed by shape too, so an epoch's full batches and its shorter last batch
    each keep their own arrays and nothing is allocated in steady state; a
    third shape for the same name replaces the older of the two, so memory
    stays bounded whatever batch sizes come."""
    key = (name, tuple(shape), np.dtype(dtype))
    buf = store.get(key)
    if buf is None:
        # At most two shapes per name (a full and a short batch): keep the newest other one.
        for old in [k for k in store if k[0] == name][:-1]:
            del store[old]
        buf = store[key] = aligned.empty(shape, dtype)
    return buf


# A Sequential with fuse=True runs Dense -> ReLU [-> Dropout] as one block and
# leaves these layers' own caches empty.
_FUSED_HINT = (" (inside a Sequential built with fuse=True the model's forward runs fused "
               "blocks, not this layer's forward; use fuse=False to call layers one by one)")


def float_array(where: str, a: Any) -> np.ndarray:
    """``a`` as a float32 or float64 array (a list is converted), or a TypeError.

    The kernels take exactly these two dtypes: an integer array would make
    Dropout's 1/(1-p) an integer, and other dtypes fail deep inside Numba."""
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if a.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{where} takes a float32 or float64 array (native byte order), got "
                        f"dtype {a.dtype}; convert it first, e.g. a.astype(np.float32)")
    return a


def check_dy_shape(where: str, dy: np.ndarray, shape: tuple[int, ...]) -> None:
    """A ValueError unless ``dy`` has the shape of the forward's output: the kernels
    loop over it by position, so another shape would read past the cached arrays."""
    if dy.shape != tuple(shape):
        raise ValueError(f"{where}: dy must have the shape of the last forward's output, "
                         f"{tuple(shape)}, got {dy.shape}")


def _gradient(where: str, dy: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``dy`` as a float array of the forward output's shape, or a clear error."""
    dy = float_array(where, dy)
    check_dy_shape(where, dy, shape)
    return dy


class Layer(ABC):
    """Base class: train/eval flag, parameter dicts and the output buffers."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True
        # None: allocate every output afresh. A dict: reuse one array per name
        # and shape (set by Sequential, which knows when an output is consumed).
        self._buffers: dict | None = None

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if self._buffers is None:
            return np.empty(shape, dtype)
        return reuse_buffer(self._buffers, name, shape, dtype)

    def train(self, mode: bool = True) -> Layer:
        self.training = mode
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def config(self) -> dict[str, Any]:
        """The architecture entry saved in model files, e.g. ``{"type": "ReLU"}``."""
        return {"type": type(self).__name__}

    @abstractmethod
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Compute the output for a batch ``x`` and cache what backward needs."""

    @abstractmethod
    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Return dL/dx for the last forward, given dy = dL/dy; fill ``grads``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer: y = x @ W + b.

    Shapes: x (N, in_features), W (in_features, out_features), b (out_features,),
    y (N, out_features).

    Backward, from y_nj = sum_i x_ni W_ij + b_j and the upstream gradient dy = dL/dy:
        dL/dW = x^T @ dy                  (in_features, out_features)
        dL/db = sum over the batch of dy  (out_features,)
        dL/dx = dy @ W^T                  (N, in_features)
    ``forward`` therefore caches x, the only thing backward needs besides W: x
    itself, not a copy, so changing x between forward and backward changes dL/dW.

    Initialisation: ``init="he"`` draws W ~ N(0, 2 / in_features), which keeps
    the variance of activations constant through ReLU layers; ``"glorot"``
    draws W ~ U(-a, a) with a = sqrt(6 / (in_features + out_features)). b = 0.
    """

    def __init__(self, in_features: int, out_features: int, *, init: str = "he",
                 rng: np.random.Generator | int | None = None,
                 dtype: DTypeLike = np.float32) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not is_int(value) or value < 1:
                raise ValueError(f"Dense: {name} must be a positive integer, got {value!r}")
        if init not in ("he", "glorot"):
            raise ValueError(f"Dense: init must be 'he' or 'glorot', got {init!r}")
        dtype = float_dtype("Dense", dtype)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.init = init
        self.params = {"weight": aligned.empty((self.in_features, self.out_features), dtype),
                       "bias": aligned.empty(self.out_features, dtype)}
        self.grads = {k: aligned.zeros(v.shape, v.dtype) for k, v in self.params.items()}
        self.reset_parameters(np.random.default_rng(rng))
        self._x: np.ndarray | None = None

    def reset_parameters(self, rng: np.random.Generator) -> None:
        """Draw fresh weights from ``rng`` (in place, so optimizers keep their references)."""
        w = self.params["weight"]
        if self.init == "he":
            values = rng.standard_normal(w.shape) * np.sqrt(2.0 / self.in_features)
        else:
            limit = np.sqrt(6.0 / (self.in_features + self.out_features))
            values = rng.uniform(-limit, limit, w.shape)
        w[...] = values
        self.params["bias"][...] = 0

    def astype(self, dtype: DTypeLike) -> Dense:
        """Convert parameters and gradients to ``dtype`` (new arrays)."""
        self.params = {k: aligned.copy(v, dtype) for k, v in self.params.items()}
        self.grads = {k: aligned.zeros(v.shape, v.dtype) for k, v in self.params.items()}
        return self

    def config(self) -> dict[str, Any]:
        return {"type": "Dense", "in_features": self.in_features,
                "out_features": self.out_features}

    def forward(self, x: np.ndarray) -> np.ndarray:
        w, b = self.params["weight"], self.params["bias"]
        x = float_array("Dense.forward", x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Dense expects input of shape (N, {self.in_features}), "
                             f"got {x.shape}")
        y = self._buffer("y", (x.shape[0], self.out_features), np.result_type(x, w))
        np.matmul(x, w, out=y)
        kernels.add_bias(y, b, y)
        self._x = x
        return y

    def backward(self, dy: np.ndarray, *, input_grad: bool = True) -> np.ndarray | None:
        """Fill ``grads`` and return dL/dx (or None when ``input_grad`` is False,
        which saves the largest matrix product for a network's first layer)."""
        x, w = self._x, self.params["weight"]
        if x is None:
            raise RuntimeError("Dense.backward called before forward" + _FUSED_HINT)
        dy = _gradient("Dense.backward", dy, (x.shape[0], self.out_features))
        np.matmul(x.T, dy, out=self.grads["weight"])
        np.sum(dy, axis=0, out=self.grads["bias"])
        if not input_grad:
            return None
        dx = self._buffer("dx", x.shape, dy.dtype)
        np.matmul(dy, w.T, out=dx)
        return dx


class ReLU(Layer):
    """Rectified linear unit: y = max(x, 0), elementwise.

    Backward: dy/dx is 1 where x > 0 and 0 elsewhere (at exactly 0 we take 0),
    so dL/dx = dy * [y > 0]. Since y > 0 exactly where x > 0, forward caches
    its output y (which it computes anyway) as the mask.
    """

    def __init__(self) -> None:
        super().__init__()
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = float_array("ReLU.forward", x)
        x = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        y = self._buffer("y", x.shape, x.dtype)
        kernels.relu_forward(x, y)
        self._y = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._y is None:
            raise RuntimeError("ReLU.backward called before forward" + _FUSED_HINT)
        dy = _gradient("ReLU.backward", dy, self._y.shape)
        dx = self._buffer("dx", self._y.shape, dy.dtype)
        kernels.relu_backward(np.ascontiguousarray(dy), self._y, dx)
        return dx


class Dropout(Layer):
    """Inverted dropout: in training, y = x * mask with mask_i = 0 with
    probability p and 1/(1-p) otherwise, so E[y] = x; in eval mode y = x.

    ``p`` is the probability of *dropping* a unit (as in PyTorch and Keras).
    Backward: y is linear in x with the same mask, so dL/dx = dy * mask, using
    the mask drawn by the last training forward (which forward caches).

    Randomness: each training forward draws one 64-bit key from ``rng`` and
    the mask is a hash of (key, position) computed by the kernel. Same
    generator state, same mask, on either backend.
    """

    def __init__(self, p: float = 0.5, *, rng: np.random.Generator | int | None = None) -> None:
        super().__init__()
        if not is_number(p) or not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout: p is the drop probability and must be in [0, 1), got {p!r}")
        if round(float(p) * 2**24) >= 2**24:  # the kernels' 24-bit threshold would drop every unit
            raise ValueError(f"Dropout: p={p!r} is too close to 1: the mask keeps a unit with "
                             "probability 1 - p in steps of 2**-24, so p must be below 1 - 2**-25")
        self.p = float(p)
        self.rng = np.random.default_rng(rng)
        self._mask: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None  # backward needs a forward first, even in eval mode

    def config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p}

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = float_array("Dropout.forward", x)
        self._shape = x.shape
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        x = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        mask = self._buffer("mask", x.shape, x.dtype)
        y = self._buffer("y", x.shape, x.dtype)
        kernels.dropout_forward(x, int(self.rng.integers(0, 2**63)), self.p, mask, y)
        self._mask = mask
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._shape is None:
            raise RuntimeError("Dropout.backward called before forward" + _FUSED_HINT)
        dy = _gradient("Dropout.backward", dy, self._shape)
        if self._mask is None:  # eval mode or p == 0: the identity
            return dy
        dx = self._buffer("dx", dy.shape, dy.dtype)
        kernels.multiply(np.ascontiguousarray(dy), self._mask, dx)
        return dx


class Flatten(Layer):
    """Reshape (N, d1, d2, ...) to (N, d1*d2*...); (N, F) passes unchanged.

    Backward reshapes the gradient back to the cached input shape.
    """

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"Flatten expects a batch (N, ...), got shape {x.shape}")
        self._shape = x.shape
        # Not reshape(N, -1): with N = 0 the -1 could be anything.
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._shape is None:
            raise RuntimeError("Flatten.backward called before forward")
        dy = np.asarray(dy)
        check_dy_shape("Flatten.backward", dy, (self._shape[0], math.prod(self._shape[1:])))
        return dy.reshape(self._shape)


# The closed set of layer types a model file may name (see nnscratch.io).
LAYER_TYPES: dict[str, type[Layer]] = {
    "Dense": Dense, "ReLU": ReLU, "Dropout": Dropout, "Flatten": Flatten,
}
