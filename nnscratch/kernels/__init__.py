"""The one place that picks which kernels run.

``NNSCRATCH_BACKEND=numpy`` (read once, at import) selects the plain-NumPy
twins in ``reference.py``; the default ``numba`` selects ``fused.py``. Every
other module calls ``nnscratch.kernels.<name>`` and never knows which it got.
"""

from __future__ import annotations

import os

from . import reference
from .reference import flush_threshold as flush_threshold  # re-exported for the optimizer

KERNEL_NAMES = (
    "add_bias", "relu_forward", "relu_backward", "dropout_forward", "multiply",
    "bias_relu_forward", "bias_relu_dropout_forward", "relu_bias_grad",
    "softmax_cross_entropy", "count_correct", "adam_update", "gather_scale", "shift_flip",
    "train_steps",
)



class BackendError(ImportError):
    """``NNSCRATCH_BACKEND`` names no backend (raised when nnscratch is imported)."""


BACKEND = os.environ.get("NNSCRATCH_BACKEND", "numba").strip().lower() or "numba"
if BACKEND == "numba":
    from . import fused as _impl
elif BACKEND == "numpy":
    _impl = reference
else:
    raise BackendError(
        f"NNSCRATCH_BACKEND={BACKEND!r} is not a backend; use 'numba' (default) or 'numpy'."
    )

add_bias = _impl.add_bias
relu_forward = _impl.relu_forward
relu_backward = _impl.relu_backward
dropout_forward = _impl.dropout_forward
multiply = _impl.multiply
bias_relu_forward = _impl.bias_relu_forward
bias_relu_dropout_forward = _impl.bias_relu_dropout_forward
relu_bias_grad = _impl.relu_bias_grad
count_correct = _impl.count_correct
softmax_cross_entropy = _impl.softmax_cross_entropy
adam_update = _impl.adam_update
gather_scale = _impl.gather_scale
shift_flip = _impl.shift_flip
train_steps = _impl.train_steps
