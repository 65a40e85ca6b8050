"""Fused stages: Dense -> ReLU [-> Dropout] run as one forward and one backward pass.

Read ``layers.py`` first: a ``DenseReLU`` block computes exactly what its
layers compute one after the other, with fewer passes over memory. Layer by
layer, the forward is a matrix product and then three elementwise passes (bias,
ReLU, dropout, which also writes its mask), and the backward three more
(dropout, ReLU, the bias gradient's column sum) before two matrix products.
Fused:

    forward   z = x @ W                                   (BLAS)
              y = max(z + b, 0) * mask                    one pass, in place over z
    backward  dz = dy * s where y > 0, else 0;  db = sum_n dz   one pass
              dW = x^T @ dz,   dx = dz @ W^T              (BLAS)

Shapes: x (N, in), W (in, out), b (out,), z, y, dy, dz (N, out), dx (N, in);
s = 1/(1-p) (1 without dropout). Why y alone suffices for the backward:
d y / d(z + b) is s where the unit was kept and z + b > 0, and 0 elsewhere, and
those are exactly the places where y > 0. So the dropout mask is never stored.

Same parameters, same dropout draws from the same generator: the results equal
the layer-by-layer ones bit for bit (``Sequential(fuse=False)`` runs those; tests
hold them equal), as long as gradients are finite (where dy is inf at a dropped
unit, the layers compute inf * 0 = nan and the block 0). The block writes into
the Dense layer's own ``grads``, so optimizers and state dicts see no difference.
It empties the layers' private caches instead of filling them: after a fused
forward, call the block's (or the model's) ``backward``, not the layers'.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .layers import Dense, Dropout, Layer, ReLU, check_dy_shape, reuse_buffer


class DenseReLU:
    """``dense`` -> ``relu`` [-> ``dropout``] as one stage of a ``Sequential``."""

    def __init__(self, dense: Dense, relu: ReLU, dropout: Dropout | None = None) -> None:
        self.dense, self.relu, self.dropout = dense, relu, dropout
        self.layers: tuple[Layer, ...] = (dense, relu) + ((dropout,) if dropout else ())
        self._buffers: dict = {}
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None  # the output: where it is > 0, d y / d(z + b) = scale
        self._scale = np.float32(1.0)      # 1/(1-p) after a forward with dropout, else 1

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return reuse_buffer(self._buffers, name, shape, dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        dense, dropout = self.dense, self.dropout
        w, b = dense.params["weight"], dense.params["bias"]
        if x.ndim != 2 or x.shape[1] != dense.in_features:
            raise ValueError(f"Dense expects input of shape (N, {dense.in_features}), got {x.shape}")
        y = self._buffer("y", (x.shape[0], dense.out_features), np.result_type(x, w))
        np.matmul(x, w, out=y)
        if dropout is not None and dropout.training and dropout.p > 0.0:
            # One key per forward from the dropout's generator, as Dropout.forward draws it.
            key = int(dropout.rng.integers(0, 2**63))
            kernels.bias_relu_dropout_forward(y, b, key, dropout.p, y)
            self._scale = y.dtype.type(1.0 / (1.0 - dropout.p))
        else:
            kernels.bias_relu_forward(y, b, y)
            self._scale = y.dtype.type(1.0)
        self._x, self._y = x, y
        # The layers' own caches would be stale now: empty them, so that calling
        # a layer's backward directly fails clearly instead of using an old input.
        self.dense._x, self.relu._y = None, None
        if dropout is not None:
            dropout._shape = dropout._mask = None
        return y

    def backward(self, dy: np.ndarray, *, input_grad: bool = True) -> np.ndarray | None:
        if self._x is None or self._y is None:
            raise RuntimeError("DenseReLU.backward called before forward")
        x, w, grads = self._x, self.dense.params["weight"], self.dense.grads
        check_dy_shape("DenseReLU.backward", dy, self._y.shape)
        dy = np.ascontiguousarray(dy)
        dz = self._buffer("dz", dy.shape, dy.dtype)
        kernels.relu_bias_grad(dy, self._y, self._scale, dz, grads["bias"])
        np.matmul(x.T, dz, out=grads["weight"])
        if not input_grad:
            return None
        dx = self._buffer("dx", x.shape, dz.dtype)
        np.matmul(dz, w.T, out=dx)
        return dx

    def __repr__(self) -> str:
        return f"DenseReLU({', '.join(repr(layer) for layer in self.layers)})"


def fuse(layers: list[Layer]) -> list[Layer | DenseReLU]:
    """Group ``layers`` into stages: each Dense -> ReLU [-> Dropout] run becomes
    one ``DenseReLU``; every other layer (and any subclass) stays a stage of its own."""
    stages: list[Layer | DenseReLU] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        # Exact types only: a subclass may override forward or backward, and must run them.
        if type(layer) is Dense and i + 1 < len(layers) and type(layers[i + 1]) is ReLU:
            dropout = layers[i + 2] if i + 2 < len(layers) and type(layers[i + 2]) is Dropout \
                else None
            stages.append(DenseReLU(layer, layers[i + 1], dropout))
            i += 3 if dropout is not None else 2
        else:
            stages.append(layer)
            i += 1
    return stages
