"""Adam with decoupled weight decay (AdamW), owning its state by parameter name."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from . import aligned, kernels
from .checks import is_finite_at_least, is_number


class Parameter(NamedTuple):
    """A trainable array, its gradient array (same shape) and its dotted name."""

    name: str
    value: np.ndarray
    grad: np.ndarray


class Adam:
    """Adam (Kingma & Ba) with bias correction and AdamW-style weight decay.

    For each parameter p with gradient g, at step t = 1, 2, ...:
        m = beta1 m + (1 - beta1) g,          v = beta2 v + (1 - beta2) g^2
        m_hat = m / (1 - beta1^t),            v_hat = v / (1 - beta2^t)
        p = p - lr * weight_decay * p - lr * m_hat / (sqrt(v_hat) + eps)
    The decay term uses p before the step and does not pass through m and v
    (decoupled, Loshchilov & Hutter), so it shrinks every weight at the same
    relative rate whatever its gradient history. The whole update for one
    parameter runs as one kernel pass (``kernels.adam_update``). The decay is
    applied as p * (1 - lr * weight_decay) with that factor rounded to the
    parameters' dtype, so in float32 a per-step decay below ~3e-8 (lr *
    weight_decay) rounds to no decay at all, as in PyTorch's float32 AdamW.
    Moments decaying into the slow subnormal range are set to zero when that
    changes no update by more than ~1e-26 lr (``kernels.flush_threshold``).

    ``params`` is what ``Sequential.parameters()`` returns: ``Parameter``
    tuples (name, value, grad). ``lr`` may be changed between steps (schedules).
    """

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        self.params = [Parameter(*p) for p in params]
        names = [p.name for p in self.params]
        if not self.params:
            raise ValueError("Adam: no parameters to optimize")
        if len(set(names)) != len(names):
            raise ValueError(f"Adam: parameter names must be unique, got {names}")
        problems = _hyperparameter_problems(lr, betas, eps, weight_decay)
        for p in self.params:
            # The kernels walk value and gradient together, element by element.
            if not isinstance(p.value, np.ndarray) or not isinstance(p.grad, np.ndarray):
                problems.append(f"{p.name}: value and grad must be NumPy arrays")
            elif p.value.dtype not in (np.float32, np.float64) or p.grad.dtype != p.value.dtype \
                    or p.grad.shape != p.value.shape:
                problems.append(f"{p.name}: value ({p.value.dtype} {p.value.shape}) and grad "
                                f"({p.grad.dtype} {p.grad.shape}) must be float32 or float64 "
                                "arrays of the same dtype and shape")
            elif not (p.value.flags.c_contiguous and p.grad.flags.c_contiguous) \
                    or not p.value.flags.writeable:
                problems.append(f"{p.name}: value and grad must be C-contiguous, and the value "
                                "writeable (the update is in place)")
        if not problems:
            problems += _shared_memory_problems(self.params)
        if problems:
            raise ValueError("Adam: " + "; ".join(problems))
        self.lr = float(lr)
        # The learning rate asked for; schedules scale from it while they change ``lr``.
        self.initial_lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.step_count = 0
        self.m = {p.name: aligned.zeros(p.value.shape, p.value.dtype) for p in self.params}
        self.v = {p.name: aligned.zeros(p.value.shape, p.value.dtype) for p in self.params}

    def _coefficients(self, dtype: np.dtype) -> np.ndarray:
        """The coefficient array ``kernels.adam_update`` takes for step ``step_count``."""
        return self._coefficient_rows(dtype, [self.lr], self.step_count)[0]

    def _coefficient_rows(self, dtype: np.dtype, lrs: list[float], first: int) -> np.ndarray:
        """One coefficient row per step: steps first, first + 1, ... at learning
        rates ``lrs`` (the threaded step takes several steps per call)."""
        # Computed in float64, then rounded to the parameters' dtype so the
        # kernels stay in float32 on the float32 path.
        b1, b2 = self.betas
        rows = []
        for t, lr in enumerate(lrs, start=first):
            inv_sqrt_bc2 = 1 / math.sqrt(1 - b2**t)  # (np.sqrt's value: both round correctly)
            rows.append((b1, 1 - b1, b2, 1 - b2, self.eps, 1 - lr * self.weight_decay,
                         lr / (1 - b1**t), inv_sqrt_bc2,
                         kernels.flush_threshold(dtype, self.eps, inv_sqrt_bc2)))
        return np.array(rows, dtype=dtype)

    def step(self) -> None:
        """Apply one update to every parameter from its current gradient."""
        self.step_count += 1
        coefs: dict[np.dtype, np.ndarray] = {}
        for p in self.params:
            coef = coefs.get(p.value.dtype)
            if coef is None:
                coef = coefs[p.value.dtype] = self._coefficients(p.value.dtype)
            kernels.adam_update(p.value, p.grad, self.m[p.name], self.v[p.name], coef)

    def zero_grad(self) -> None:
        """Set every gradient to zero (layers overwrite gradients, so training
        does not need this; it is here for code written PyTorch-style)."""
        for p in self.params:
            p.grad[...] = 0

    def state_dict(self, copy: bool = True) -> dict[str, Any]:
        """Hyperparameters, step count and moments keyed by parameter name: copies,
        or with ``copy=False`` the live moment arrays, which the next step changes."""
        def moments(store: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: v.copy() if copy else v for k, v in store.items()}
        return {"lr": self.lr, "initial_lr": self.initial_lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "step": self.step_count,
                "m": moments(self.m), "v": moments(self.v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; every mismatch is reported at once."""
        problems = []
        for key in ("m", "v"):
            given = state.get(key, {})
            for name in sorted(set(self.m) - set(given)):
                problems.append(f"missing {key}[{name!r}]")
            for name in sorted(set(given) - set(self.m)):
                problems.append(f"unexpected {key}[{name!r}]")
            for name in sorted(set(given) & set(self.m)):
                if np.shape(given[name]) != self.m[name].shape:
                    problems.append(f"{key}[{name!r}] has shape {np.shape(given[name])}, "
                                    f"expected {self.m[name].shape}")
        if not isinstance(state.get("step"), (int, np.integer)) or state["step"] < 0:
            problems.append(f"step must be a non-negative integer, got {state.get('step')!r}")
        problems += _hyperparameter_problems(
            state.get("initial_lr", self.initial_lr), state.get("betas", self.betas),
            state.get("eps", self.eps), state.get("weight_decay", self.weight_decay))
        lr = state.get("lr", self.lr)  # 0 is a valid current rate (the end of a cosine)
        if not is_finite_at_least(lr):
            problems.append(f"lr must be a finite number >= 0, got {lr!r}")
        for key in ("m", "v"):
            for name in sorted(set(state.get(key, {})) & set(self.m)):
                values = np.asarray(state[key][name], dtype=np.float64)
                if not np.isfinite(values).all():
                    problems.append(f"{key}[{name!r}] holds NaN or infinite values")
                elif key == "v" and (values < 0).any():  # a mean of squares: sqrt(v) needs v >= 0
                    problems.append(f"v[{name!r}] holds negative values")
        if problems:
            raise ValueError("Adam.load_state_dict: " + "; ".join(problems))
        self.lr = float(state.get("lr", self.lr))
        self.initial_lr = float(state.get("initial_lr", self.initial_lr))
        self.betas = tuple(float(b) for b in state.get("betas", self.betas))
        self.eps = float(state.get("eps", self.eps))
        self.weight_decay = float(state.get("weight_decay", self.weight_decay))
        self.step_count = int(state["step"])
        for name in self.m:
            self.m[name][...] = state["m"][name]
            self.v[name][...] = state["v"][name]


def _shared_memory_problems(params: list[Parameter]) -> list[str]:
    """Parameters whose arrays overlap: each would be stepped once per name (twice in
    all), and a value sharing memory with a gradient would be changed mid-update."""
    arrays = [(f"{p.name} ({kind})", a) for p in params
              for kind, a in (("value", p.value), ("grad", p.grad))]
    return [f"{a} and {b} share memory; every parameter and gradient must be its own array"
            for i, (a, x) in enumerate(arrays) for b, y in arrays[i + 1:]
            if np.may_share_memory(x, y)]


def _hyperparameter_problems(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> list[str]:
    """What is wrong with Adam's hyperparameters (the constructor and
    ``load_state_dict`` apply the same rules)."""
    problems = []
    if not is_finite_at_least(lr, strict=True):
        problems.append(f"lr must be a positive number, got {lr!r}")
    try:
        ok = len(betas) == 2 and all(is_number(b) and 0.0 <= b < 1.0 for b in betas)
    except TypeError:
        ok = False
    if not ok:
        problems.append(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not is_finite_at_least(eps, strict=True):
        problems.append(f"eps must be a positive number, got {eps!r}")
    if not is_finite_at_least(weight_decay):
        problems.append(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    return problems
