"""The training loop: mini-batch Adam over shuffled indices, with the state
needed to stop at any step and resume bit-identically."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TextIO

import numpy as np

from . import blas, kernels
from .checks import is_finite_at_least, is_int, is_number, make_rng, positive_int
from .layers import GRADS_REPLACED
from .model import Sequential, _warn_if_raw_pixels
from .optim import Adam
from .progress import Progress
from .schedules import Constant, WarmupCosine
from .threaded import ThreadedStep


class TrainingDiverged(RuntimeError):
    """The loss or a weight became NaN or infinite, or the loss exploded (> 100 ln K)."""


class TrainingInterrupted(Exception):
    """``Trainer.stop_requested`` was set; the trainer stopped between two steps
    and its ``state_dict()`` resumes exactly there."""


class Trainer:
    """One training run of ``model`` on (x, y); ``Sequential.fit`` wraps it.

    Each epoch draws a permutation of the sample indices from the generator
    and walks it in batches; each step is forward, loss, backward, Adam.
    ``stop_requested`` (set e.g. from a signal handler) makes ``run`` raise
    ``TrainingInterrupted`` after the current step (the threaded step's: after
    its current call, whose steps take ~50 ms at most, or one step when that
    is longer); ``on_epoch_end(trainer)``
    runs after each finished epoch (the CLI writes checkpoints there).
    ``augment(batch, rng)``, if given, transforms each training batch.
    """

    def __init__(self, model: Sequential, x: np.ndarray, y: np.ndarray, *,
                 optimizer: Adam | None = None, epochs: int = 1, batch_size: int = 128,
                 validation_data: tuple[np.ndarray, np.ndarray] | None = None,
                 seed: int | np.random.Generator | None = None,
                 lr_schedule: str | Callable[[int], float] = "constant",
                 warmup_epochs: float = 0.0, restore_best: bool = False, verbose: int = 1,
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 stream: TextIO | None = None,
                 on_epoch_end: Callable[[Trainer], None] | None = None) -> None:
        self.model = model
        self.x = model.check_input(x)
        _warn_if_raw_pixels(self.x)
        # A copy: the labels were checked here once, and the threaded step indexes
        # with them unchecked, so the caller must not be able to change them later.
        self.y = np.array(model._check_labels(y, len(self.x)), dtype=np.intp)
        self.epochs = positive_int("epochs", epochs)
        self.batch_size = positive_int("batch_size", batch_size)
        self.validation = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                got = type(validation_data).__name__
                if isinstance(validation_data, (tuple, list)):
                    got += f" of length {len(validation_data)}"
                raise ValueError(f"validation_data must be a pair (x, y), got {got}")
            vx, vy = validation_data
            vx = model.check_input(vx, "validation x")
            self.validation = (vx, model._check_labels(vy, len(vx)))
            _warn_if_raw_pixels(vx, "validation x")
        if not isinstance(restore_best, (bool, np.bool_)):
            raise TypeError(f"restore_best must be True or False, got {restore_best!r}")
        if not is_int(verbose) or verbose < 0:
            raise ValueError(f"verbose must be 0 (silent) or 1 (progress), got {verbose!r}")
        if restore_best and self.validation is None:
            raise ValueError("restore_best needs validation_data to pick the best epoch")
        self.restore_best = restore_best
        if seed is not None:
            model.set_rng(make_rng(seed))
        if optimizer is not None and not isinstance(optimizer, Adam):
            raise TypeError(f"optimizer must be an nnscratch.Adam, got {type(optimizer).__name__}")
        self.optimizer = optimizer if optimizer is not None else Adam(model.parameters())
        own = {id(p.value) for p in model.parameters()}
        foreign = [p.name for p in self.optimizer.params if id(p.value) not in own]
        if foreign:  # (a subset of the model's parameters is fine: the rest stays frozen)
            raise ValueError(f"the optimizer updates arrays that are not this model's parameters "
                             f"({', '.join(foreign)}); build it from model.parameters()")
        # Schedules count this run's steps: an optimizer reused from an earlier
        # fit keeps its step count (Adam's bias correction needs it), but a new
        # cosine schedule must start again from its beginning.
        self.first_step = self.optimizer.step_count
        self.steps_per_epoch = math.ceil(len(self.x) / self.batch_size)
        self.schedule = self._make_schedule(lr_schedule, warmup_epochs)
        self.progress = Progress(self.epochs, self.steps_per_epoch, verbose, stream)
        self.on_epoch_end = on_epoch_end
        self.augment = augment
        self.stop_requested = False
        self.first_step_done: float | None = None  # time.time() after this process's first step
        # A mean cross-entropy of 100 ln K means logits wrong by ~100 nats on
        # average: no learning run gets there except by blowing up.
        self.loss_limit = 100 * math.log(max(model.num_classes, 2))
        # Everything below is the resumable state (see state_dict).
        self.epoch = 0          # index of the epoch in progress
        self.batch = 0          # index of the next batch within it
        self.perm = np.arange(len(self.x))
        self.loss_sum, self.correct, self.seen, self.elapsed = 0.0, 0, 0, 0.0
        self.history: dict[str, list[float]] = {k: [] for k in self._history_keys()}
        self.best: dict[str, Any] | None = None
        # Reused per-step buffer for the batch's labels.
        self._yb = np.empty(self.batch_size, np.intp)
        self._digest: str | None = None  # of the training data, made on first use
        self._threaded: ThreadedStep | None = None  # set by run() when the run qualifies

    def _state_problems(self, state: Any) -> list[str]:
        """What in ``state`` does not fit this run (positions, counts, history)."""
        keys = ("epoch", "batch", "first_step", "perm", "loss_sum", "correct", "seen", "elapsed",
                "history", "best", "rng_state", "optimizer", "model")
        if not isinstance(state, dict) or any(k not in state for k in keys):
            return [f"a trainer state needs the keys {', '.join(keys)}"]
        problems = []
        perm = np.asarray(state["perm"])
        if perm.shape != (len(self.x),):
            problems.append(f"the checkpoint was taken on {perm.size} training samples, "
                            f"this run has {len(self.x)}")
        elif perm.dtype.kind not in "iu" or not np.array_equal(np.sort(perm), np.arange(len(self.x))):
            problems.append("perm is not a permutation of the training samples")
        epoch, batch = state["epoch"], state["batch"]
        if not is_int(epoch) or not 0 <= epoch <= self.epochs:
            problems.append(f"epoch must be an integer in 0..{self.epochs}, got {epoch!r}")
        if not is_int(batch) or not 0 <= batch <= self.steps_per_epoch or (
                is_int(epoch) and epoch == self.epochs and batch != 0):
            problems.append(f"batch must be an integer in 0..{self.steps_per_epoch} "
                            f"(0 once training is done), got {batch!r}")
        steps = state["optimizer"].get("step") if isinstance(state["optimizer"], dict) else None
        if not is_int(state["first_step"]) or not is_int(steps) or not 0 <= state["first_step"] <= steps:
            problems.append(f"first_step must be an integer between 0 and the optimizer's step "
                            f"count, got {state['first_step']!r}")
        elif is_int(epoch) and is_int(batch) and (
                steps != state["first_step"] + epoch * self.steps_per_epoch + batch):
            # Every step of the run so far advanced the optimizer once.
            problems.append(
                f"the optimizer took {steps - state['first_step']} steps in this run, but epoch "
                f"{epoch} and batch {batch} at {self.steps_per_epoch} batches per epoch make "
                f"{epoch * self.steps_per_epoch + batch} (was batch_size changed?)")
        digest = state.get("data_digest")  # absent from states saved before it existed
        if digest is not None and perm.shape == (len(self.x),) and digest != self.data_digest():
            problems.append("the state was saved on other training samples or labels (a "
                            "different train/validation split: was the seed changed?)")
        seen, correct = state["seen"], state["correct"]
        if not is_int(seen) or not 0 <= seen <= len(self.x) or not is_int(correct) \
                or not 0 <= correct <= seen:
            problems.append(f"seen and correct must be counts with correct <= seen <= "
                            f"{len(self.x)}, got {seen!r} and {correct!r}")
        for key in ("loss_sum", "elapsed"):
            if not is_finite_at_least(state[key]):
                problems.append(f"{key} must be a finite number >= 0, got {state[key]!r}")
        history = state["history"]
        if not isinstance(history, dict) or sorted(history) != sorted(self._history_keys()):
            problems.append(f"history must have the lists {', '.join(self._history_keys())}")
        elif is_int(epoch) and any(not isinstance(v, list) or len(v) != epoch
                                   or not all(is_number(x) for x in v) for v in history.values()):
            problems.append(f"every history list must hold {epoch} numbers, one per finished epoch")
        best = state["best"]
        shapes = {p.name: p.value.shape for p in self.model.parameters()}
        if best is not None and (
                not isinstance(best, dict) or not is_int(best.get("epoch"))
                or not is_number(best.get("val_accuracy")) or not isinstance(best.get("weights"), dict)
                or sorted(best["weights"]) != sorted(shapes)
                or any(np.shape(w) != shapes[k] for k, w in best["weights"].items())):
            problems.append("best must be empty or hold the epoch, val_accuracy and weights "
                            "(shaped like the model's) of the best epoch")
        return problems

    def data_digest(self) -> str:
        """SHA-256 of the training images and labels, in order: a checkpoint
        records it, so that a state is never resumed on other samples (e.g. a
        different train/validation split)."""
        if self._digest is None:
            h = hashlib.sha256()
            h.update(repr((self.x.shape, self.x.dtype.str, self.y.dtype.str)).encode())
            for start in range(0, len(self.x), 4096):  # in pieces: never a whole copy
                h.update(np.ascontiguousarray(self.x[start:start + 4096]).data)
            h.update(np.ascontiguousarray(self.y).data)
            self._digest = h.hexdigest()
        return self._digest

    def _history_keys(self) -> list[str]:
        keys = ["loss", "accuracy"]
        if self.validation is not None:
            keys += ["val_loss", "val_accuracy"]
        return keys + ["lr", "epoch_time"]

    def _make_schedule(self, kind: str | Callable[[int], float],
                       warmup_epochs: float) -> Callable[[int], float]:
        if callable(kind):
            return kind
        if not is_finite_at_least(warmup_epochs):
            raise ValueError(f"warmup_epochs must be a finite number >= 0, got {warmup_epochs!r}")
        # From the optimizer's initial lr: a previous run's schedule may have left
        # ``optimizer.lr`` at its final value (0 after a cosine decay).
        if kind == "constant":
            return Constant(self.optimizer.initial_lr)
        if kind == "cosine":
            total = self.epochs * self.steps_per_epoch
            warmup = min(round(warmup_epochs * self.steps_per_epoch), total)
            return WarmupCosine(self.optimizer.initial_lr, total, warmup)
        raise ValueError(f"lr_schedule must be 'constant', 'cosine' or a function, got {kind!r}")

    # ---- the loop --------------------------------------------------------------
    def _learning_rate(self, ahead: int = 0) -> float:
        """The schedule's learning rate for the next step (``ahead`` steps later)."""
        step = self.optimizer.step_count - self.first_step + 1 + ahead
        lr = self.schedule(step)
        if not is_finite_at_least(lr):
            raise ValueError(f"lr_schedule returned {lr!r} for step {step}: a learning rate "
                             "must be a finite number >= 0")
        return float(lr)

    def _step(self, idx: np.ndarray) -> float:
        """One step of the layer-by-layer path on rows ``idx``; returns its mean loss."""
        model, n = self.model, len(idx)
        xb = model._as_batch(self.x, idx)
        if self.augment is not None:
            xb = self.augment(xb, model.rng)
        logits = model._forward(xb)
        yb = self._yb[:n]
        np.take(self.y, idx, out=yb)
        loss = model.loss.forward(logits, yb)
        model._backward(model.loss.backward(), input_grad=False)
        self.optimizer.lr = self._learning_rate()
        self.optimizer.step()
        self.correct += kernels.count_correct(logits, yb)
        return loss

    def _next_call_size(self) -> int:
        """How many of the epoch's next batches the threaded step's next call takes:
        those of full size, at most as many as the plan asks for
        (``ThreadedStep.next_call_size``); the run's first step alone (its time is
        the time to the first batch)."""
        if self.first_step_done is None:
            return 1
        full = len(self.x) // self.batch_size - self.batch
        return max(1, min(full, self._threaded.next_call_size()))

    def _threaded_call(self) -> None:
        """The threaded step's next call: several steps when it may, the short last
        batch alone."""
        start = self.batch * self.batch_size
        count = self._next_call_size()
        self._run_threaded(self.perm[start:start + count * self.batch_size], count)

    def _run_threaded(self, idx: np.ndarray, count: int) -> None:
        """Up to ``count`` threaded steps on the rows ``idx`` (one batch after
        another), each then counted by ``_count_step`` as the layer path counts its
        steps. Fewer when the schedule fails at a later one of them: the call
        stops before it, and the next call, which starts there, raises."""
        lrs: list[float] = []
        for ahead in range(count):
            try:
                lrs.append(self._learning_rate(ahead))
            except Exception:  # noqa: BLE001 - raised again by the next call, at its own step
                if not lrs:
                    raise
                break
        rows = len(idx) // count
        losses, corrects = self._threaded.steps(self.x, self.y, idx[:len(lrs) * rows], lrs,
                                                self.loss_limit)
        self.correct += int(corrects.sum())
        for loss in losses.tolist():
            self._count_step(loss, rows)

    def _count_step(self, loss: float, rows: int) -> None:
        """Account for the step just taken on ``rows`` rows (either path)."""
        if not math.isfinite(loss) or loss > self.loss_limit:
            self._diverged(f"the loss became {loss:.4g}")
        if self.first_step_done is None:
            self.first_step_done = time.time()
            self._check_grads_in_place()
        self.loss_sum += loss * rows
        self.seen += rows
        self.batch += 1

    def _check_grads_in_place(self) -> None:
        # The optimizer holds each layer's gradient arrays; a custom backward that
        # assigns new ones would leave it stepping with stale gradients, silently.
        replaced = self.model._replaced_grads(self.optimizer.params)
        if replaced:
            raise TypeError(f"{', '.join(replaced)}: {GRADS_REPLACED}")

    def run(self) -> dict[str, list[float]]:
        """Train until ``epochs`` are done; returns the history."""
        model = self.model
        model.train()
        while self.epoch < self.epochs:
            if self.batch == 0:
                self.perm = model.rng.permutation(len(self.x))
                self.loss_sum, self.correct, self.seen, self.elapsed = 0.0, 0, 0, 0.0
            # Decided again each epoch: a callback may have changed the model or
            # the optimizer, or forked the process, since the last one.
            previous = self._threaded
            self._threaded = ThreadedStep.for_run(model, self.optimizer, self.x, self.augment)
            if previous is not None and self._threaded is not None:
                self._threaded.reuse_buffers(previous)
            self.progress.start_epoch(self.epoch, self.batch)
            started = time.perf_counter()
            # The threaded step's threads call BLAS themselves; the epoch's end
            # (validation, the caller's on_epoch_end) sees the usual thread count.
            with blas.one_thread() if self._threaded is not None else nullcontext():
                self._epoch_steps(started)
            self.elapsed += time.perf_counter() - started
            self._finish_epoch()
            if self.on_epoch_end is not None:
                self.on_epoch_end(self)
            if self.stop_requested:  # a signal during validation: stop at the boundary
                raise TrainingInterrupted
        if self.restore_best and self.best is not None:
            model.load_state_dict(self.best["weights"])
        return self.history

    def _epoch_steps(self, started: float) -> None:
        """The current epoch's remaining steps."""
        while self.batch < self.steps_per_epoch:
            # The threaded step, unless another Python thread has raised OpenBLAS's
            # thread count meanwhile (then this step goes layer by layer).
            if self._threaded is not None and blas.thread_count() == 1:
                self._threaded_call()
            else:
                idx = self.perm[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
                self._count_step(self._step(idx), len(idx))
            self.progress.update(self.batch, self._running_metrics())
            if self.stop_requested:
                self.elapsed += time.perf_counter() - started
                raise TrainingInterrupted

    def _running_metrics(self) -> dict[str, float]:
        return {"loss": self.loss_sum / max(self.seen, 1),
                "accuracy": self.correct / max(self.seen, 1)}

    def _diverged(self, what: str) -> None:
        lr = self.optimizer.initial_lr
        cause = f"The learning rate is probably too high for this model: try {lr / 10:.3g}."
        if self.x.dtype.kind == "f" and (top := float(np.max(self.x))) > 2.0:
            # The other usual cause: pixels 0-255 passed as floats, used as they are.
            cause = (f"The training images are floats up to {top:.4g}, used as they are (only "
                     "uint8 pixels are scaled by 1/255): divide them by 255 or pass the uint8 "
                     f"pixels. Otherwise the learning rate may be too high: try {lr / 10:.3g}.")
        raise TrainingDiverged(
            f"{what} at epoch {self.epoch + 1}, step {self.batch + 1} (learning rate {lr:.3g}, "
            f"{self.optimizer.lr:.3g} at this step of the schedule). {cause}")

    def _finish_epoch(self) -> None:
        if not all(np.isfinite(p.value).all() for p in self.model.parameters()):
            self._diverged("a weight became NaN or infinite")
        metrics = self._running_metrics()
        if self.validation is not None:
            val = self.model._evaluate(*self.validation)
            metrics.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            if self.best is None or val["accuracy"] > self.best["val_accuracy"]:
                self.best = {"val_accuracy": val["accuracy"], "epoch": self.epoch + 1,
                             "weights": self.model.state_dict()}
        for key, value in metrics.items():
            self.history[key].append(float(value))
        self.history["lr"].append(self.optimizer.lr)
        self.history["epoch_time"].append(self.elapsed)
        self.progress.end_epoch(self.elapsed, metrics)
        self.epoch += 1
        self.batch = 0

    # ---- resumable state -------------------------------------------------------
    def state_dict(self, copy: bool = True) -> dict[str, Any]:
        """Everything that decides the rest of the run: position, permutation,
        running sums, history, best weights, the generator's state, the
        optimizer and the model's weights. ``copy=False`` returns the live
        arrays instead of copies (for writing them out at once, as checkpoints
        do, without holding a second copy of the weights and moments)."""
        return {
            "epoch": self.epoch, "batch": self.batch, "first_step": self.first_step,
            "perm": self.perm.copy() if copy else self.perm,
            "loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen,
            "elapsed": self.elapsed,
            "history": {k: list(v) for k, v in self.history.items()},
            "best": None if self.best is None else dict(self.best),
            "rng_state": self.model.rng.bit_generator.state,
            "data_digest": self.data_digest(),
            "optimizer": self.optimizer.state_dict(copy),
            "model": self.model.state_dict(copy),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict()`` taken from a run of the same setup.
        Every field is checked first (a ValueError lists what is wrong) and
        nothing changes unless all of them fit this run."""
        problems = self._state_problems(state)
        if problems:
            raise ValueError("; ".join(problems))
        # The model, optimizer and generator check their own parts as they load:
        # if one refuses, put back what the others had already taken.
        saved = (self.model.state_dict(), self.optimizer.state_dict(),
                 self.model.rng.bit_generator.state)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.model.rng.bit_generator.state = state["rng_state"]
        except Exception as exc:  # numpy's generator alone raises four kinds
            self.model.load_state_dict(saved[0])
            self.optimizer.load_state_dict(saved[1])
            self.model.rng.bit_generator.state = saved[2]
            raise ValueError(f"the saved model, optimizer or generator state does not fit: "
                             f"{exc}") from None
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.first_step = int(state["first_step"])  # load_checkpoint fills it in for old files
        self.perm = np.asarray(state["perm"], dtype=np.intp)
        self.loss_sum, self.correct = float(state["loss_sum"]), int(state["correct"])
        self.seen, self.elapsed = int(state["seen"]), float(state["elapsed"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.best = state["best"]
