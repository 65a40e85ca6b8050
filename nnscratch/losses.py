"""Softmax cross-entropy on logits, fused, and a standalone softmax."""

from __future__ import annotations

import numpy as np

from . import kernels


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, p_nk = exp(z_nk - max_k z_nk) / sum_k exp(z_nk - max_k z_nk).

    Subtracting the row maximum changes nothing mathematically and keeps exp()
    from overflowing; the result keeps the dtype of ``logits``.
    """
    z = np.asarray(logits)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer class labels.

    Forward, for logits z (N, K) and labels t (N,) in 0..K-1:
        L = (1/N) sum_n [ log sum_j exp(z_nj) - z_n,t_n ]
    computed with the log-sum-exp shift (z - max z), so logits of +-1e4 in
    float32 give a finite loss.

    Backward: d/dz_nk of log sum_j exp(z_nj) is softmax(z)_nk, and of -z_n,t_n
    is -[k == t_n]; averaging over the batch divides by N:
        dL/dz = (softmax(z) - onehot(t)) / N          (N, K)
    Fusing softmax with the loss gives this simple, stable gradient instead of
    dividing by probabilities that may be 0. The kernel computes loss and
    gradient in one pass; forward caches the gradient, backward returns it.
    """

    def __init__(self) -> None:
        self._dlogits: np.ndarray | None = None
        # Sequential sets this: reuse the gradient array from batch to batch.
        self.reuse_buffer = False

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        logits = np.ascontiguousarray(logits)
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy expects logits of shape (N, K), got {logits.shape}")
        if logits.dtype not in (np.float32, np.float64):  # the kernels' two dtypes, on both backends
            raise TypeError(f"SoftmaxCrossEntropy expects float32 or float64 logits, got {logits.dtype}; "
                            f"convert them with .astype(np.float32)")
        labels = np.asarray(labels)
        if labels.shape != (logits.shape[0],) or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers of shape ({logits.shape[0]},), "
                             f"got {labels.dtype} {labels.shape}")
        if not labels.dtype.isnative:  # e.g. big-endian '>i8', which the kernels cannot read
            labels = labels.astype(labels.dtype.newbyteorder("="))
        if logits.shape[0] == 0:
            raise ValueError("SoftmaxCrossEntropy: empty batch")
        dlogits = self._dlogits
        if not self.reuse_buffer or dlogits is None or dlogits.shape != logits.shape \
                or dlogits.dtype != logits.dtype:
            dlogits = np.empty_like(logits)
        # The kernel checks the label range as it goes (-1.0 flags a bad label).
        loss = kernels.softmax_cross_entropy(logits, labels, dlogits)
        if loss < 0:
            self._dlogits = None
            raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1}, "
                             f"found {labels.min()}..{labels.max()}")
        self._dlogits = dlogits
        return loss

    def backward(self) -> np.ndarray:
        """dL/dlogits for the last forward: (softmax(z) - onehot(t)) / N. This is
        the loss's own cached array, the same one on every call: read it, or
        copy it before changing it."""
        if self._dlogits is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return self._dlogits

    __call__ = forward
