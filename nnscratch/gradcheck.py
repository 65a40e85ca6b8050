"""Numerical gradient checking: compare each analytic gradient with central
differences computed in float64.

    from nnscratch import gradcheck
    result = gradcheck(layer, x)            # a layer: checks dx and every parameter
    result = gradcheck(model, x, labels=y)  # a Sequential: checks the loss gradient
    result = gradcheck(SoftmaxCrossEntropy(), logits, labels=y)  # the loss itself
    print(result.report()); assert result.passed

For a layer the scalar being differentiated is L = sum(forward(x) * G) with a
fixed random G, so dL/dy = G is what ``backward`` receives. For a model it is
the mean softmax cross-entropy of its logits. For each checked entry w:

    numeric  = (L(w + s) - L(w - s)) / (2s),   s = h max(1, |w|)
    rel_err  = |analytic - numeric| / max(|analytic| + |numeric|, tiny, noise / tol)

(2s being the step really taken: w + s is rounded to float64), where
noise = 16 eps max(|L|, 1) / s is the float64 rounding noise of a
difference quotient (eps = 2.2e-16): gradients smaller than noise / tol are
judged against that floor, not against their own size. But a tensor whose
largest gradient is not at least 100 times the noise (``RESOLUTION``; L of
1e10, say) is inconclusive, not passed: there the floor would let a gradient
off by a factor of 2 through. An error beyond the tolerance is still a failure.

Dropout is checked with a fixed mask: the state of every numpy Generator held
as an attribute of the module or of its layers (Dropout's ``rng``, or a custom
layer's own) is restored before each forward, so every evaluation draws the
same mask.
Kinks (ReLU at 0) are detected, not guessed: on a smooth function the
central differences with steps h and h/2 agree to O(h^2), and the gap between
the one-sided slopes shrinks with h. Where either fails, L is not
differentiable within h of that point; the entry is counted as a kink and
skipped. A tensor with no entry left to check is inconclusive: not passed,
and reported as such, not as a wrong gradient. Differences below float64
rounding noise (about eps |L| / h) are not counted as errors.

It also checks the layer contract that the optimizer relies on: backward must
overwrite every entry of its gradient arrays (backward runs twice, on arrays
holding zeros and then ones, and must give the same gradients: a ``+=``
does not), and a layer's backward must not change its argument dy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checks import is_finite_at_least, positive_int
from .layers import GRADS_REPLACED, Layer, param_key_problem
from .losses import SoftmaxCrossEntropy
from .model import Sequential

# A tensor passes only if L's rounding noise is at most this fraction of its
# largest gradient, i.e. if an error of 1% in that gradient would show: beyond
# it the noise floor in rel_err lets larger errors through (at L ~ 1e10, a
# gradient off by a factor of 2 passed).
RESOLUTION = 1e-2


@dataclass
class ParamCheck:
    """The result for one tensor: the largest relative error over the checked entries."""

    name: str
    shape: tuple[int, ...]
    checked: int
    skipped_kinks: int
    max_rel_error: float
    worst_index: tuple[int, ...] | None
    analytic: float
    numeric: float
    passed: bool
    tol: float = 1e-6
    # The largest rounding noise of the checked quotients over the largest
    # gradient (analytic or numeric) among them (see ``_check_tensor``).
    resolution: float = 0.0

    @property
    def unresolved(self) -> bool:
        """No error beyond the tolerance, but L's rounding noise is too large against
        this tensor's gradients for a wrong one to show (see ``RESOLUTION``). An
        error beyond the tolerance is beyond the noise too: that is a failure."""
        return (self.checked > 0 and not self.passed and self.resolution > RESOLUTION
                and self.max_rel_error <= self.tol)

    @property
    def inconclusive(self) -> bool:
        """Neither passed nor failed: no entry could be checked (each was within h
        of a kink), or the check could not resolve the gradients (``unresolved``)."""
        return self.checked == 0 or self.unresolved


@dataclass
class GradcheckResult:
    """All tensors checked; ``passed`` is True when every one passed."""

    checks: list[ParamCheck] = field(default_factory=list)
    tol: float = 1e-6

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.checks), default=0.0)

    def __bool__(self) -> bool:
        return self.passed

    def report(self) -> str:
        """A readable table, one line per tensor."""
        lines = [f"{'tensor':<18} {'shape':<14} {'checked':>7} {'kinks':>5} "
                 f"{'max rel err':>11}  {'analytic':>12} {'numeric':>12}  result"]
        for c in self.checks:
            lines.append(f"{c.name:<18} {str(c.shape):<14} {c.checked:>7} {c.skipped_kinks:>5} "
                         f"{c.max_rel_error:>11.2e}  {c.analytic:>12.5e} {c.numeric:>12.5e}  "
                         f"{'ok' if c.passed else 'n/a' if c.inconclusive else 'FAIL'}")
        failed = any(not c.passed and not c.inconclusive for c in self.checks)
        verdict = "PASSED" if self.passed else "FAILED" if failed else "INCONCLUSIVE"
        lines.append(f"{verdict}: max relative error {self.max_rel_error:.2e} "
                     f"(tolerance {self.tol:.0e})")
        unchecked = [c.name for c in self.checks if c.checked == 0]
        unresolved = [c for c in self.checks if c.unresolved]
        for c in unresolved:
            if math.isinf(c.resolution):
                lines.append(f"every checked gradient of {c.name} is zero, analytic and numeric, "
                             f"but L's rounding noise is too large to show a wrong one; check "
                             f"at a point where L is smaller")
            else:
                lines.append(f"{c.name} could not be resolved: the float64 rounding noise of L is "
                             f"{c.resolution:.1e} of its largest gradient (more than "
                             f"{RESOLUTION:.0e}), so a wrong gradient would not show; the "
                             f"gradients are too small for L's size (a huge L, or a loss "
                             f"near its minimum): check at another point, or with a larger h")
        if unchecked:
            lines.append(f"no entry of {', '.join(unchecked)} could be checked: each was within h "
                         f"of a point where L is not differentiable (a ReLU at 0, say: zero "
                         f"inputs or biases), or L curves too much for h; check at other "
                         f"values, or with a smaller h")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


def _generators(module: Layer | Sequential) -> list[np.random.Generator]:
    """Every numpy Generator held by the module or its layers, whatever the
    attribute is called (Dropout's ``rng``, a custom layer's own), including
    those of layers held inside a layer (directly or in a list, tuple or dict)."""
    found: dict[int, np.random.Generator] = {}
    seen: set[int] = set()
    pending: list[Any] = [module]
    while pending:
        owner = pending.pop()
        if id(owner) in seen:
            continue
        seen.add(id(owner))
        for value in vars(owner).values():
            items = (list(value.values()) if isinstance(value, dict)
                     else list(value) if isinstance(value, (list, tuple)) else [value])
            for item in items:
                if isinstance(item, np.random.Generator):
                    found[id(item)] = item
                elif isinstance(item, (Layer, Sequential)):
                    pending.append(item)
    return list(found.values())


def gradcheck(module: Layer | Sequential | SoftmaxCrossEntropy, x: np.ndarray, *,
              labels: np.ndarray | None = None, h: float = 1e-6, tol: float = 1e-6, tiny: float = 1e-7,
              max_entries: int = 64, seed: int = 0) -> GradcheckResult:
    """Check ``module``'s backward against central differences.

    Parameters must be float64 (build with ``dtype="float64"`` or
    ``Dense(..., dtype=np.float64)``). ``x`` is converted to float64 and
    ``labels`` are required for a Sequential. Each entry w is perturbed by
    ``h * max(1, |w|)``. Tensors with more than
    ``max_entries`` entries are checked on that many random entries (drawn
    with ``seed``); biases are always checked in full. Returns a
    ``GradcheckResult`` (truthy when passed, ``.report()`` for the table).
    """
    for name, value, ok in (("h", h, is_finite_at_least(h, 0.0, strict=True)),
                            ("tol", tol, is_finite_at_least(tol, 0.0, strict=True)),
                            ("tiny", tiny, is_finite_at_least(tiny, 0.0, strict=True))):
        if not ok:
            raise ValueError(f"gradcheck: {name} must be a finite number > 0, got {value!r}")
    max_entries = positive_int("gradcheck: max_entries", max_entries)
    if isinstance(module, type):
        raise TypeError(f"gradcheck: got the class {module.__name__}, not an instance of it; "
                        f"pass {module.__name__}(...)")
    if not isinstance(module, (Layer, Sequential, SoftmaxCrossEntropy)):
        raise TypeError(f"gradcheck: expected a Layer, a Sequential or a SoftmaxCrossEntropy, got "
                        f"{type(module).__name__}")
    if isinstance(module, Layer) and not all(hasattr(module, a) for a in
                                             ("params", "grads", "training")):
        raise TypeError(f"gradcheck: {type(module).__name__} lacks what Layer.__init__ sets up "
                        "(params, grads, training); did its __init__ call super().__init__()?")
    if isinstance(module, Sequential):
        params = module.parameters()
    elif isinstance(module, SoftmaxCrossEntropy):
        params = []
    else:
        if labels is not None:
            raise ValueError("gradcheck: labels apply to a Sequential or the loss; a single "
                             "layer is checked on L = sum(forward(x) * G) without them")
        problem = param_key_problem(module)
        if problem is not None:
            raise ValueError(f"gradcheck: {problem}")
        params = [(key, value, module.grads[key]) for key, value in module.params.items()]
    for name, value, _ in params:
        if value.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 parameters; {name} is {value.dtype}. "
                            f"Use Sequential(..., dtype='float64'), or Dense(..., dtype=np.float64) for a "
                            f"layer checked on its own; Sequential converts only Dense layers, so "
                            f"create a custom layer's parameters as float64 yourself.")
    x = np.array(x, dtype=np.float64)
    if isinstance(module, SoftmaxCrossEntropy):
        return _gradcheck(module, x, params, labels, h, tol, tiny, max_entries, seed)
    # Checked in training mode (dropout active, with its mask held fixed);
    # the caller's mode is restored afterwards.
    modes = [(m, m.training) for m in [module, *getattr(module, "layers", [])]]
    module.train()
    try:
        return _gradcheck(module, x, params, labels, h, tol, tiny, max_entries, seed)
    finally:
        for m, training in modes:  # each layer's own flag, not just the model's
            m.training = training


def _gradcheck(module: Layer | Sequential | SoftmaxCrossEntropy, x: np.ndarray, params: list,
               labels: np.ndarray | None, h: float, tol: float, tiny: float, max_entries: int,
               seed: int) -> GradcheckResult:
    sample_rng = np.random.default_rng(seed)
    generators = [] if isinstance(module, SoftmaxCrossEntropy) else _generators(module)
    rng_states = [g.bit_generator.state for g in generators]

    def restore_rngs() -> None:
        for g, state in zip(generators, rng_states):
            g.bit_generator.state = state

    if isinstance(module, (Sequential, SoftmaxCrossEntropy)) and labels is None:
        raise ValueError("gradcheck of a Sequential or a loss needs labels")
    if isinstance(module, SoftmaxCrossEntropy):
        def objective() -> float:
            return module.forward(x, labels)

        def backward() -> np.ndarray:
            return module.backward().copy()
    elif isinstance(module, Sequential):
        inputs = x if module._flattens_input() else x.reshape(len(x), -1)

        def objective() -> float:
            restore_rngs()
            # x itself, perturbed in place between calls; as rows if the model has no Flatten.
            return module.loss.forward(module._forward(inputs), labels)

        def backward() -> np.ndarray:
            return module._backward(module.loss.backward(), input_grad=True).reshape(x.shape).copy()

        restore_rngs()
        _require_float64(f"{type(module).__name__}'s logits", module._forward(inputs))
    else:
        restore_rngs()
        out = module.forward(x)
        _require_float64(f"{type(module).__name__}.forward's output", out)
        upstream = sample_rng.standard_normal(np.shape(out))

        def objective() -> float:
            restore_rngs()
            return float(np.sum(module.forward(x) * upstream))

        def backward() -> np.ndarray:
            given = upstream.copy()
            raw = module.backward(given)
            if raw is None:
                raise ValueError(f"gradcheck: {type(module).__name__}.backward returned None; "
                                 "it must return dL/dx, the gradient for its input")
            if not np.array_equal(given, upstream):
                raise ValueError(f"gradcheck: {type(module).__name__}.backward changed its "
                                 "argument dy; it must leave it as it was (the layer below, or "
                                 "the caller, may still need it): write into a new array")
            return np.array(raw, dtype=np.float64)

    def gradients(fill: float) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """L, dL/dx and the parameter gradients, with every gradient array holding
        ``fill`` before backward (which must overwrite all of it)."""
        for _, _, grad in params:
            grad[...] = fill
        loss = objective()
        dx = backward()
        replaced = (module._replaced_grads(params) if isinstance(module, Sequential)
                    else [name for name, _, grad in params if module.grads.get(name) is not grad])
        if replaced:
            raise ValueError(f"gradcheck: {', '.join(replaced)}: {GRADS_REPLACED}")
        return loss, dx, {name: grad.copy() for name, _, grad in params}

    first, dx, analytic = gradients(0.0)
    second, _, again = gradients(1.0)
    if first != second and not (math.isnan(first) and math.isnan(second)):
        raise ValueError(f"gradcheck: the same input gave L = {first!r}, then {second!r}: the "
                         "forward draws randomness from a source gradcheck cannot reset (it "
                         "resets the numpy Generators held by the module and its layers)")
    kept = [name for name in analytic
            if not np.array_equal(analytic[name], again[name], equal_nan=True)]
    if kept:
        raise ValueError(f"gradcheck: {', '.join(kept)}: backward's result depends on what the "
                         "gradient array held before (it added to it, with +=, or left entries "
                         "unwritten); backward must overwrite every entry: grads[key][...] = ... "
                         "or out=grads[key]")
    for name, value, grad in [("input", x, dx)] + [(n, v, analytic[n]) for n, v, _ in params]:
        if grad.shape != value.shape:
            what = "input gradient" if name == "input" else f"gradient of {name}"
            raise ValueError(f"gradcheck: backward gave the {what} the shape {grad.shape}; "
                             f"it must match the shape of {name}, {value.shape}")

    result = GradcheckResult(tol=tol)
    tensors: list[tuple[str, np.ndarray, np.ndarray, bool]] = [("input", x, dx, False)]
    tensors += [(name, value, analytic[name], name.endswith("bias")) for name, value, _ in params]
    for name, value, grad, check_all in tensors:
        result.checks.append(_check_tensor(name, value, grad, objective, h, tol, tiny,
                                           None if check_all else max_entries, sample_rng))
    return result


def _require_float64(what: str, array: Any) -> None:
    dtype = getattr(array, "dtype", None)
    if dtype != np.float64:
        raise TypeError(f"gradcheck needs float64 throughout; {what} is {dtype}: a forward that "
                        "computes in a lower precision hides the gradient in rounding noise")


def _check_tensor(name: str, value: np.ndarray, grad: np.ndarray, objective: Callable[[], float],
                  h: float, tol: float, tiny: float, max_entries: int | None,
                  rng: np.random.Generator) -> ParamCheck:
    entries: Any = np.arange(value.size)
    if max_entries is not None and value.size > max_entries:
        entries = np.sort(rng.choice(value.size, max_entries, replace=False))
    worst = (0.0, None, 0.0, 0.0)
    kinks = 0
    noise_max = scale = 0.0
    for i in entries:
        # Index the tensor itself (not a reshape, which copies a non-contiguous
        # array) so the perturbation reaches the module whatever its layout.
        at = np.unravel_index(i, value.shape)
        original = float(value[at])
        # The step grows with the entry (an absolute 1e-6 on an entry of 1e3 is
        # below the precision that matters there), and the quotients divide by
        # the steps really taken: original + step rounds to the nearest float64.
        step = h * max(1.0, abs(original))
        values, taken = [], []
        for offset in (0.0, step, -step, step / 2, -step / 2):
            value[at] = original + offset
            taken.append(abs(float(value[at]) - original))  # the step really taken
            values.append(objective())
        value[at] = original
        f0, f_plus, f_minus, f_half_plus, f_half_minus = values
        _, up, down, up_half, down_half = taken
        if min(up, down, up_half, down_half) == 0:
            raise ValueError(f"h={h!r} is too small: {name}{list(at)} = {original!r} does not "
                             f"change by h * max(1, |w|) in float64; use h >= 1e-12")
        # Rounding in float64 alone makes a difference quotient uncertain by
        # about eps |f| / step; errors below that say nothing about the gradient.
        noise = 16 * np.finfo(np.float64).eps * max(abs(f0), abs(f_plus), abs(f_minus), 1.0) / step
        numeric = (f_plus - f_minus) / (up + down)
        numeric_half = (f_half_plus - f_half_minus) / (up_half + down_half)
        # Near a kink the estimate depends on the step: on a smooth function
        # the central differences at h and h/2 agree to O(h^2), and the gap
        # between the one-sided slopes halves with h; at a kink it does not.
        gap = (f_plus - f0) / up - (f0 - f_minus) / down
        gap_half = (f_half_plus - f0) / up_half - (f0 - f_half_minus) / down_half
        if abs(numeric - numeric_half) > max(0.1 * tol * (abs(numeric) + abs(numeric_half)), 2 * noise) \
                or (abs(gap) > 8 * noise and abs(gap_half) > 0.75 * abs(gap)):
            kinks += 1
            continue
        a = float(grad[at])
        noise_max, scale = max(noise_max, noise), max(scale, abs(a), abs(numeric))
        rel = abs(a - numeric) / max(abs(a) + abs(numeric), tiny, noise / tol)
        if not math.isfinite(rel):  # a NaN or infinite gradient (or objective) is never right
            rel = math.inf
        if rel >= worst[0]:
            worst = (rel, tuple(int(j) for j in at), a, numeric)
    checked = len(entries) - kinks
    # With every quotient exactly 0, L did not move at all, and a zero gradient
    # is verified to the noise itself: enough unless the noise is large.
    resolution = noise_max / scale if scale > 0 else 0.0 if noise_max <= RESOLUTION else math.inf
    return ParamCheck(name, value.shape, checked, kinks, worst[0], worst[1], worst[2], worst[3],
                      passed=worst[0] <= tol and checked > 0 and resolution <= RESOLUTION,
                      tol=tol, resolution=resolution)
