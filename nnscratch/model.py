"""Sequential: a stack of layers with train/eval modes, state dicts and a
Keras-style fit / evaluate / predict."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from . import kernels
from .blocks import DenseReLU
from .blocks import fuse as fuse_layers
from .checks import float_dtype, make_rng, positive_int
from .layers import Dense, Dropout, Flatten, Layer, ReLU, param_key_problem, reuse_buffer
from .losses import SoftmaxCrossEntropy, softmax
from .optim import Adam, Parameter


class Sequential:
    """Layers applied in order: ``forward`` runs them first to last, ``backward``
    last to first, each layer's ``backward`` receiving the gradient that the
    layer above returned (the chain rule, one layer at a time).

    ``seed`` (an int or a ``numpy.random.Generator``) makes the one generator
    of the model: it initialises every Dense layer, draws every dropout mask,
    and shuffles the data in ``fit``. ``dtype`` is the floating type of the
    parameters and of the whole training path ("float32", or "float64" for
    gradient checks).

    ``fuse`` (default True) runs each Dense -> ReLU [-> Dropout] as one
    ``nnscratch.blocks.DenseReLU`` stage: the same computation in fewer passes
    over memory, bit-identical for finite values. ``fuse=False`` calls every
    layer's own forward and backward: the version to step through while
    reading ``layers.py``, and the one to use to call a layer's backward
    yourself after the model's forward, or to wrap a layer's methods.
    """

    def __init__(self, *layers: Layer, seed: int | np.random.Generator | None = None,
                 dtype: DTypeLike = "float32", fuse: bool = True) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Layer")
        ids = [id(layer) for layer in layers]  # identity, not ==: distinct equal layers are fine
        repeated = {type(layer).__name__ for layer in layers if ids.count(id(layer)) > 1}
        if repeated:  # one object twice would cache one forward over the other
            raise ValueError(f"Sequential: the same {', '.join(sorted(repeated))} object appears "
                             "more than once; create a new layer for each place")
        self.dtype = float_dtype("Sequential", dtype)
        self.layers: list[Layer] = list(layers)
        dense = [layer for layer in self.layers if isinstance(layer, Dense)]
        if not dense:
            raise ValueError("Sequential: needs at least one Dense layer")
        where = {id(layer): i for i, layer in enumerate(self.layers)}  # by identity, not ==
        for lower, upper in zip(dense, dense[1:]):
            between = self.layers[where[id(lower)] + 1:where[id(upper)]]
            if any(type(layer) not in (ReLU, Dropout, Flatten) for layer in between):
                continue  # a custom layer between them may change the feature count
            if lower.out_features != upper.in_features:
                raise ValueError(f"Sequential: {lower!r} outputs {lower.out_features} features "
                                 f"but the next {upper!r} expects {upper.in_features}")
        self.in_features = dense[0].in_features
        self.num_classes = dense[-1].out_features
        self.rng = make_rng(seed)
        for layer in self.layers:
            layer._buffers = {}
            if isinstance(layer, Dense):
                if layer.params["weight"].dtype != self.dtype:
                    layer.astype(self.dtype)
                layer.reset_parameters(self.rng)
            elif isinstance(layer, Dropout):
                layer.rng = self.rng
        self.fuse = fuse
        self._stages: list[Layer | DenseReLU] = []
        self._stages_of: tuple = ()  # (fuse, ids of the layers) the stages were built from
        self._input_shape: tuple | None = None  # of the last public forward's x
        self._current_stages()
        self.loss = SoftmaxCrossEntropy()
        self.loss.reuse_buffer = True
        self.training = True
        self.class_names: list[str] | None = None  # set by nnscratch.load
        self._batches: dict = {}  # gathered input batches, reused (see reuse_buffer)

    # ---- modes and parameters -------------------------------------------------
    def train(self, mode: bool = True) -> Sequential:
        """Training mode (dropout active). Returns the model."""
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> Sequential:
        """Evaluation mode (dropout is the identity). Returns the model."""
        return self.train(False)

    def set_rng(self, rng: np.random.Generator) -> None:
        """Make ``rng`` the model's generator (dropout masks, shuffling)."""
        self.rng = rng
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.rng = rng

    def parameters(self) -> list[Parameter]:
        """Every trainable array with its gradient, named ``layers.{i}.{key}``."""
        for i, layer in enumerate(self.layers):
            problem = param_key_problem(layer)
            if problem is not None:
                raise ValueError(f"layers.{i}: {problem}")
        return [Parameter(f"layers.{i}.{key}", value, layer.grads[key])
                for i, layer in enumerate(self.layers) for key, value in layer.params.items()]

    def _replaced_grads(self, params: list[Parameter]) -> list[str]:
        """Names of ``params`` whose layer now holds a different gradient array
        (a backward that assigned ``grads[k] = ...`` instead of writing into it)."""
        current = {p.name: p.grad for p in self.parameters()}
        return [p.name for p in params if current.get(p.name, p.grad) is not p.grad]

    def state_dict(self, copy: bool = True) -> dict[str, np.ndarray]:
        """Copies of all parameters under flat names such as ``layers.0.weight``
        (``copy=False``: the live arrays themselves, which the next step changes)."""
        return {p.name: p.value.copy() if copy else p.value for p in self.parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state`` into the parameters (in place). Strict: any missing or
        unexpected key, shape mismatch or non-numeric array raises one
        ``ValueError`` that lists all of them, and nothing is changed."""
        own = {p.name: p.value for p in self.parameters()}
        problems = [f"missing key {k!r}" for k in own if k not in state]
        problems += [f"unexpected key {k!r}" for k in state if k not in own]
        for name in own.keys() & state.keys():
            value = np.asarray(state[name])
            if value.shape != own[name].shape:
                problems.append(f"{name!r} has shape {value.shape}, expected {own[name].shape}")
            elif value.dtype.kind not in "fiu":
                problems.append(f"{name!r} has dtype {value.dtype}, expected a float array")
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(sorted(problems)))
        for name, value in own.items():
            value[...] = state[name]

    def config(self) -> list[dict[str, Any]]:
        """The architecture: one ``layer.config()`` dict per layer."""
        return [layer.config() for layer in self.layers]

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {layer!r}" for layer in self.layers)
        return f"Sequential(\n{inner}\n)  # dtype={self.dtype}"

    # ---- forward and backward -------------------------------------------------
    def _current_stages(self) -> list[Layer | DenseReLU]:
        """What forward and backward run: the layers, or fused blocks of them,
        rebuilt whenever ``self.layers`` or ``self.fuse`` has been changed (so
        ``model.fuse = False`` on a loaded model steps through every layer)."""
        key = (bool(self.fuse), *map(id, self.layers))
        if key != self._stages_of:
            self._stages = fuse_layers(self.layers) if self.fuse else list(self.layers)
            self._stages_of = key
            # Below the lowest stage with parameters only input gradients flow (found
            # here once, not on every training step).
            self._lowest_trained = next(
                i for i, stage in enumerate(self._stages)
                if isinstance(stage, DenseReLU) or getattr(stage, "params", None))
        return self._stages

    def _forward(self, x: np.ndarray) -> np.ndarray:
        for stage in self._current_stages():
            x = stage.forward(x)
        return x

    def _backward(self, grad: np.ndarray, input_grad: bool) -> np.ndarray | None:
        # Below the lowest stage with parameters only input gradients flow; skip
        # them (and that stage's dx product) when the caller does not want dx.
        stages = self._current_stages()
        lowest = 0 if input_grad else self._lowest_trained
        for i in range(len(stages) - 1, lowest - 1, -1):
            stage = stages[i]
            if i == lowest and not input_grad:
                # Only the built-in Dense backward (and the fused blocks) takes input_grad;
                # a subclass that overrides backward, or a custom layer, runs in full.
                if isinstance(stage, DenseReLU) or type(stage).backward is Dense.backward:
                    stage.backward(grad, input_grad=False)
                else:
                    stage.backward(grad)
                return None
            grad = stage.backward(grad)
        return grad

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) for a batch (a new array). uint8 input is
        scaled by 1/255; float input is converted to the model dtype."""
        x = self.check_input(x)
        self._input_shape = x.shape  # backward returns dL/dx in this shape
        return self._forward(self._as_batch(x, np.arange(len(x)))).copy()

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        """Backpropagate dL/dlogits through every layer after ``forward``: fills
        each layer's ``grads`` and returns dL/dx (a new array, shaped like x).
        The layers' caches hold the model's last forward pass of any kind, so
        call this right after ``forward`` (``predict``/``evaluate``/``fit`` in
        between replace what it differentiates)."""
        dlogits = np.asarray(dlogits, self.dtype)
        last = self._input_shape
        if dlogits.ndim != 2 or dlogits.shape[1] != self.num_classes or (
                last is not None and dlogits.shape[0] != last[0]):
            raise ValueError(f"backward: dlogits must have the shape of the last forward's logits "
                             f"({last[0] if last else 'N'}, {self.num_classes}), got {dlogits.shape}")
        dx = self._backward(dlogits, input_grad=True)
        return (dx if last is None else dx.reshape(last)).copy()

    __call__ = forward

    # ---- input handling -------------------------------------------------------
    def check_input(self, x: Any, name: str = "x", allow_empty: bool = False) -> np.ndarray:
        """Validate a batch of images: shape (N, in_features) or (N, ...) with
        that many values per sample, uint8 or finite floats, N >= 1 (N = 0 too
        with ``allow_empty``). Floats other than native float32/float64
        (float16, long double, big-endian) are converted to the model dtype,
        since the kernels read only those two."""
        x = np.asarray(x)
        side = int(round(np.sqrt(self.in_features)))
        square = f" or (N, {side}, {side})" if side * side == self.in_features else ""
        expected = f"(N, {self.in_features}){square} (any (N, ...) with {self.in_features} values per sample)"
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise ValueError(f"{name}: expected uint8 pixels (0-255) or floats, got dtype {x.dtype}")
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != self.in_features:
            hint = " (for a single image, pass x[None])" if x.ndim >= 1 and \
                x.size == self.in_features else ""
            raise ValueError(f"{name}: expected shape {expected}, got {x.shape}{hint}")
        if len(x) == 0 and not allow_empty:
            raise ValueError(f"{name}: empty batch, shape {x.shape}")
        if x.dtype.kind == "f" and (x.dtype not in (np.float32, np.float64)
                                    or not x.dtype.isnative):
            x = x.astype(self.dtype)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
        if not x.flags.c_contiguous:  # once here, not a whole-array copy per batch later
            x = np.ascontiguousarray(x)
        return x

    def _as_batch(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Gather rows ``idx`` of ``x`` into a reused buffer of the model dtype,
        scaling uint8 pixels by 1/255 on the way (so data can stay uint8)."""
        flat = x.reshape(len(x), -1)
        batch = reuse_buffer(self._batches, "batch", (len(idx), flat.shape[1]), self.dtype)
        scale = self.dtype.type(1 / 255 if x.dtype == np.uint8 else 1)
        kernels.gather_scale(flat, idx, scale, batch)
        if self._flattens_input():
            return batch.reshape((len(idx),) + x.shape[1:])
        return batch

    def _flattens_input(self) -> bool:
        """Whether a Flatten comes before the first Dense layer. Images keep their
        shape only for such a model; any other gets (N, in_features) rows."""
        for layer in self.layers:
            if isinstance(layer, Flatten):
                return True
            if isinstance(layer, Dense):
                return False
        return False

    # ---- Keras-style convenience ----------------------------------------------
    def fit(self, x: np.ndarray, y: np.ndarray, *, optimizer: Adam | None = None,
            epochs: int = 1, batch_size: int = 128,
            validation_data: tuple[np.ndarray, np.ndarray] | None = None,
            seed: int | np.random.Generator | None = None,
            lr_schedule: str | Callable[[int], float] = "constant", warmup_epochs: float = 0.0,
            restore_best: bool = False, verbose: int = 1) -> dict[str, list[float]]:
        """Train with mini-batches of shuffled indices; returns the history dict
        (``loss``, ``accuracy`` and, with validation data, ``val_loss``,
        ``val_accuracy``, one value per epoch, plus ``lr`` and ``epoch_time``).

        ``optimizer`` defaults to ``Adam(self.parameters())``. ``seed``, if
        given, replaces the model's generator for shuffling and dropout.
        ``lr_schedule`` is "constant", "cosine" (linear warm-up over
        ``warmup_epochs``, then cosine decay to 0 at the last step), or a
        function of the 1-based step of this call (a reused optimizer's earlier
        steps do not count), returning a learning rate >= 0. "constant" and
        "cosine" start from ``optimizer.initial_lr`` (the ``lr`` Adam was built
        with), not from ``optimizer.lr``, which a previous schedule may have left
        at 0: to train on at another rate, build a new Adam or set
        ``initial_lr``. ``restore_best`` keeps the weights of the epoch with the
        best validation accuracy.
        """
        from .training import Trainer  # the loop lives in its own module

        trainer = Trainer(self, x, y, optimizer=optimizer, epochs=epochs,
                          batch_size=batch_size, validation_data=validation_data,
                          seed=seed, lr_schedule=lr_schedule, warmup_epochs=warmup_epochs,
                          restore_best=restore_best, verbose=verbose)
        return trainer.run()

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1000) -> dict[str, float]:
        """Mean loss and accuracy on (x, y) in eval mode: ``{"loss", "accuracy"}``."""
        x = self.check_input(x)
        y = self._check_labels(y, len(x))
        batch_size = positive_int("batch_size", batch_size)
        _warn_if_raw_pixels(x)
        return self._evaluate(x, y, batch_size)

    def _evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> dict[str, float]:
        """``evaluate`` on inputs already checked (the training loop's validation pass)."""
        was_training = self.training
        self.eval()
        total_loss, correct = 0.0, 0
        try:
            for start in range(0, len(x), batch_size):
                idx = np.arange(start, min(start + batch_size, len(x)))
                logits = self._forward(self._as_batch(x, idx))
                total_loss += self.loss.forward(logits, y[idx]) * len(idx)
                correct += kernels.count_correct(logits, y[idx])
        finally:
            self.train(was_training)
        return {"loss": total_loss / len(x), "accuracy": correct / len(x)}

    def predict(self, x: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities (N, num_classes) in eval mode, for images of shape
        (N, 28, 28) or (N, 784), uint8 or float. N = 0 gives a (0, num_classes) array."""
        x = self.check_input(x, allow_empty=True)
        batch_size = positive_int("batch_size", batch_size)
        _warn_if_raw_pixels(x)
        was_training = self.training
        self.eval()
        out = np.empty((len(x), self.num_classes), self.dtype)
        try:
            for start in range(0, len(x), batch_size):
                idx = np.arange(start, min(start + batch_size, len(x)))
                out[idx] = softmax(self._forward(self._as_batch(x, idx)))
        finally:
            self.train(was_training)
        return out

    def _check_labels(self, y: Any, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise ValueError(f"labels: expected {n} integers, shape ({n},), got {y.dtype} {y.shape}")
        if y.min() < 0 or y.max() >= self.num_classes:
            raise ValueError(f"labels: expected values in 0..{self.num_classes - 1}, "
                             f"found {y.min()}..{y.max()}")
        return y.astype(np.intp, copy=False)


def _warn_if_raw_pixels(x: np.ndarray, name: str = "x") -> None:
    """Warn when float input looks like unscaled 0-255 pixels (``images.astype(float)``
    without the division): floats are taken as already scaled, so such input reaches
    the model 255 times too bright and its predictions are quietly worse."""
    if x.dtype.kind != "f" or x.size == 0:
        return
    top = float(x.max())
    if not 1 < top <= 255 or float(x.min()) < 0:
        return
    for start in range(0, len(x), 1000):  # in blocks: no whole-array temporary
        block = x[start:start + 1000]
        if not np.array_equal(block, np.round(block)):
            return
    warnings.warn(f"{name}: float input with whole-number values up to {top:g} "
                  "looks like raw 0-255 pixels, but float input is taken as already scaled "
                  "to 0-1: pass the uint8 pixels, or divide by 255",
                  UserWarning, stacklevel=_caller_outside_package())


def _caller_outside_package() -> int:
    """The ``stacklevel`` that makes a warning name the user's line, whichever public
    function (``predict``, ``evaluate``, ``fit``, ``Trainer``) led to it."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "nnscratch":
        frame, level = frame.f_back, level + 1
    return level
