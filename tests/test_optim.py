"""Adam (AdamW) against an independent float64 loop, its state dict, the
subnormal flush on both kernel backends, and the learning-rate schedules."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from nnscratch import Adam, Parameter, kernels
from nnscratch.kernels import fused, reference
from nnscratch.schedules import Constant, WarmupCosine, schedule_from_config

TINY32 = np.finfo(np.float32).tiny


def adam_closed_form(p0, grads, lrs, betas, eps, wd):
    """Textbook AdamW in float64: returns (p, m, v) after len(grads) steps."""
    b1, b2 = betas
    p = np.array(p0, dtype=np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = np.asarray(g, dtype=np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * wd * p                           # decoupled decay, on p before the step
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    return [Parameter("w", w, np.zeros_like(w)), Parameter("b", b, np.zeros_like(b))]


@pytest.fixture(params=["reference", "fused"])
def backend(request, monkeypatch):
    """Run the optimizer on one kernel twin, whatever NNSCRATCH_BACKEND selected."""
    impl = reference if request.param == "reference" else fused
    monkeypatch.setattr(kernels, "adam_update", impl.adam_update)
    return impl


# ---- the update rule --------------------------------------------------------------

@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_adam_five_steps_match_closed_form_with_weight_decay(backend, dtype, rtol):
    params = _params(dtype)
    start = {p.name: p.value.copy() for p in params}
    lr, betas, eps, wd = 0.01, (0.9, 0.999), 1e-8, 0.1
    opt = Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    rng = np.random.default_rng(1)
    grads = {p.name: [] for p in params}
    for _ in range(5):
        for p in params:
            g = rng.standard_normal(p.value.shape) * rng.uniform(0.1, 3)
            p.grad[...] = g
            grads[p.name].append(p.grad.copy())   # the gradient as the optimizer sees it
        opt.step()
    assert opt.step_count == 5
    for p in params:
        ref_p, ref_m, ref_v = adam_closed_form(start[p.name], grads[p.name], [lr] * 5,
                                               betas, eps, wd)
        assert p.value.dtype == dtype
        np.testing.assert_allclose(p.value, ref_p, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(opt.m[p.name], ref_m, rtol=rtol, atol=rtol * 1e-3)
        np.testing.assert_allclose(opt.v[p.name], ref_v, rtol=rtol, atol=rtol * 1e-3)


def test_adam_uses_the_lr_set_between_steps(backend):
    params = _params(np.float64, seed=2)
    start = params[0].value.copy()
    opt = Adam(params, lr=0.1, weight_decay=0.01)
    rng = np.random.default_rng(3)
    lrs, grads = [0.1, 0.05, 0.2, 0.001], []
    for lr in lrs:
        opt.lr = lr
        params[0].grad[...] = rng.standard_normal(params[0].grad.shape)
        grads.append(params[0].grad.copy())
        opt.step()
    ref_p, _, _ = adam_closed_form(start, grads, lrs, (0.9, 0.999), 1e-8, 0.01)
    np.testing.assert_allclose(params[0].value, ref_p, rtol=1e-12, atol=1e-14)


def test_first_adam_step_moves_each_weight_by_about_lr(backend):
    # With bias correction the first step is lr * g / (|g| + eps) = lr * sign(g).
    params = _params(np.float64, seed=4)
    start = params[0].value.copy()
    params[0].grad[...] = np.random.default_rng(5).standard_normal(start.shape)
    Adam(params, lr=0.01).step()
    np.testing.assert_allclose(params[0].value - start, -0.01 * np.sign(params[0].grad),
                               rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_decay_is_decoupled_zero_grad_shrinks_by_exact_factor(backend, dtype):
    params = _params(dtype, seed=6)
    lr, wd = 0.01, 0.5
    opt = Adam(params, lr=lr, weight_decay=wd)
    factor = dtype(1 - lr * wd)
    for _ in range(4):
        before = {p.name: p.value.copy() for p in params}
        opt.step()
        for p in params:
            assert np.array_equal(p.value, before[p.name] * factor), p.name
            assert not np.any(opt.m[p.name]) and not np.any(opt.v[p.name])


def test_adam_state_dict_round_trip_continues_identically(backend):
    rng = np.random.default_rng(7)
    params_a = _params(np.float32, seed=8)
    opt_a = Adam(params_a, lr=3e-3, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.02)
    for _ in range(3):
        for p in params_a:
            p.grad[...] = rng.standard_normal(p.grad.shape)
        opt_a.step()
    state = opt_a.state_dict()
    params_b = [Parameter(p.name, p.value.copy(), p.grad.copy()) for p in params_a]
    opt_b = Adam(params_b)  # default hyperparameters: load_state_dict restores them
    opt_b.load_state_dict(state)
    assert opt_b.step_count == 3
    assert (opt_b.lr, opt_b.betas, opt_b.eps, opt_b.weight_decay) == \
           (opt_a.lr, opt_a.betas, opt_a.eps, opt_a.weight_decay)
    for _ in range(3):
        g = {p.name: rng.standard_normal(p.grad.shape) for p in params_a}
        for pa, pb in zip(params_a, params_b):
            pa.grad[...] = g[pa.name]
            pb.grad[...] = g[pb.name]
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(params_a, params_b):
        assert np.array_equal(pa.value, pb.value)
        assert np.array_equal(opt_a.m[pa.name], opt_b.m[pb.name])
        assert np.array_equal(opt_a.v[pa.name], opt_b.v[pb.name])


def test_adam_state_dict_holds_copies():
    params = _params(np.float64)
    opt = Adam(params)
    params[0].grad[...] = 1.0
    opt.step()
    state = opt.state_dict()
    saved = state["m"]["w"].copy()
    opt.step()
    assert np.array_equal(state["m"]["w"], saved)
    assert state["step"] == 1


def test_adam_load_state_dict_wrong_name_raises_listing_problems():
    opt = Adam(_params(np.float64))
    state = opt.state_dict()
    state["m"]["bogus"] = state["m"].pop("w")
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(state)
    msg = str(info.value)
    assert "bogus" in msg and "'w'" in msg


def test_adam_load_state_dict_wrong_shape_raises_and_changes_nothing():
    opt = Adam(_params(np.float64))
    state = opt.state_dict()
    state["v"]["w"] = np.zeros((3, 4))
    state["m"]["b"] = np.zeros(5)
    state["step"] = 7
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(state)
    msg = str(info.value)
    assert "(3, 4)" in msg and "(4, 3)" in msg and "(5,)" in msg
    assert opt.step_count == 0


@pytest.mark.parametrize("changes, message", [
    ({"lr": float("nan")}, "lr must be a finite number >= 0"),
    ({"lr": -1.0}, "lr must be a finite number >= 0"),
    ({"initial_lr": 0.0}, "lr must be a positive number"),
    ({"betas": [1.5, 2]}, "betas must be two numbers in [0, 1)"),
    ({"betas": [0.9]}, "betas must be two numbers"),
    ({"eps": -1}, "eps must be a positive number"),
    ({"weight_decay": float("inf")}, "weight_decay must be a finite number >= 0"),
    ({"m": "nan"}, "m['w'] holds NaN or infinite values"),
    ({"v": "negative"}, "v['w'] holds negative values"),
])
def test_adam_load_state_dict_applies_the_constructors_rules(changes, message):
    opt = Adam(_params(np.float64))
    state = opt.state_dict()
    if changes.get("m") == "nan":
        state["m"]["w"][0, 0] = np.nan
    elif changes.get("v") == "negative":  # a mean of squares: sqrt(v) would be NaN
        state["v"]["w"][0, 0] = -1.0
    else:
        state.update(changes)
    state["step"] = 3
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.load_state_dict(state)
    assert opt.step_count == 0 and opt.lr == 1e-3
    opt.load_state_dict(dict(opt.state_dict(), lr=0.0, step=3))  # lr 0: the end of a cosine
    assert opt.lr == 0.0 and opt.step_count == 3


@pytest.mark.parametrize("kwargs", [
    {"lr": 0.0}, {"lr": -1e-3}, {"lr": float("nan")}, {"lr": float("inf")},
    {"betas": (1.0, 0.999)}, {"betas": (0.9, -0.1)}, {"eps": 0.0}, {"weight_decay": -0.1},
    {"betas": 0.9}, {"lr": "0.1"}, {"eps": float("nan")},
])
def test_adam_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        Adam(_params(np.float64), **kwargs)


def test_adam_rejects_duplicate_names_and_no_parameters():
    w = np.zeros(3)
    with pytest.raises(ValueError, match="unique"):
        Adam([Parameter("w", w, w.copy()), Parameter("w", w.copy(), w.copy())])
    with pytest.raises(ValueError):
        Adam([])


def test_zero_grad_zeroes_every_gradient():
    params = _params(np.float32)
    for p in params:
        p.grad[...] = 3.0
    Adam(params).zero_grad()
    assert all(not np.any(p.grad) for p in params)


# ---- subnormal flush --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_moments_below_the_dtypes_tiny_become_exactly_zero(backend, dtype):
    tiny = np.finfo(dtype).tiny
    n = 6
    p = np.ones(n, dtype)
    g = np.zeros(n, dtype)
    # Just above the dtype's tiny: one decay step takes them below it.
    m = np.array([1.0005, -1.0005, 1.0005, 1e3, -1e3, 0.0], dtype) * dtype(tiny)
    v = np.array([1.0005, 1.0005, 1e4, 1.0005, 1e4, 0.0], dtype) * dtype(tiny)
    b1, b2 = 0.9, 0.999
    inv_sqrt_bc2 = 1 / math.sqrt(1 - b2)
    flush = kernels.flush_threshold(dtype, 1e-8, inv_sqrt_bc2)
    assert flush == tiny
    coef = np.array([b1, 1 - b1, b2, 1 - b2, 1e-8, 1.0, 1e-3 / (1 - b1), inv_sqrt_bc2, flush], dtype)
    backend.adam_update(p, g, m, v, coef)
    assert np.all(m[:3] == 0)
    assert np.all(v[[0, 1, 3]] == 0)
    # Values that stay above the threshold are kept (and decayed).
    assert m[3] == dtype(1e3 * tiny) * dtype(b1) and m[4] == -m[3]
    assert v[2] > 0 and v[4] > 0
    assert np.all((m == 0) | (np.abs(m) >= tiny))
    assert np.all((v == 0) | (v >= tiny))


def test_flush_threshold_is_the_dtypes_tiny_unless_eps_is_so_small_that_flushing_would_matter():
    for dtype in (np.float32, np.float64):
        for inv_sqrt_bc2 in (1.0, 31.6, 1000.0):
            assert kernels.flush_threshold(dtype, 1e-8, inv_sqrt_bc2) == np.finfo(dtype).tiny
    # float32: sqrt(tiny) = 1.08e-19, so eps must be >= ~1.8e-12 x inv_sqrt_bc2.
    assert kernels.flush_threshold(np.float32, 1e-11, 1.0) == np.finfo(np.float32).tiny
    assert kernels.flush_threshold(np.float32, 1e-11, 31.6) == 0.0
    assert kernels.flush_threshold(np.float32, 1e-20, 1.0) == 0.0
    assert kernels.flush_threshold(np.float64, 1e-25, 31.6) == np.finfo(np.float64).tiny
    assert kernels.flush_threshold(np.float64, 1e-140, 31.6) == 0.0


def test_flushing_never_changes_an_update_even_with_eps_at_the_threshold(backend):
    # An eps whose half-ulp is just below sqrt(tiny) * inv_sqrt_bc2: flushing v = 0.99 tiny
    # would move the float32 result by one ulp, so the threshold must be 0 here.
    eps, inv_sqrt_bc2 = np.float32(1.99 * 2**-39), np.float32(1.9)
    assert kernels.flush_threshold(np.float32, float(eps), float(inv_sqrt_bc2)) == 0.0
    results = []
    for flush in (kernels.flush_threshold(np.float32, float(eps), float(inv_sqrt_bc2)), 0.0):
        p, g, m = np.zeros(1, np.float32), np.zeros(1, np.float32), np.ones(1, np.float32)
        v = np.full(1, 0.99 * TINY32, np.float32)
        coef = np.array([1, 0, 1, 0, eps, 1, 0.1, inv_sqrt_bc2, flush], np.float32)
        backend.adam_update(p, g, m, v, coef)
        results.append(p[0])
    assert results[0] == results[1]


@pytest.mark.parametrize("dtype, eps, grad", [
    (np.float64, 1e-25, 1e-18),   # v = 1e-39: below float32's tiny, a normal float64
    (np.float64, 1e-16, 1e-18),
    (np.float32, 1e-20, 1e-19),   # v = 1e-41: subnormal in float32, sqrt(v) ~ eps
    (np.float32, 1e-12, 1e-20),
])
def test_adam_with_a_tiny_eps_and_tiny_gradients_follows_the_formula(backend, dtype, eps, grad):
    # Flushing v here would turn m / (sqrt(v_hat) + eps) into m / eps: a step
    # orders of magnitude too large (found by a comparison with torch.optim.Adam).
    w = np.zeros(3, dtype)
    params = [Parameter("w", w, np.zeros_like(w))]
    opt = Adam(params, lr=1e-3, eps=eps)
    grads = [np.array([grad, -grad, 2 * grad])] * 3
    for t, g in enumerate(grads, start=1):
        params[0].grad[...] = g
        opt.step()
        expected, _, _ = adam_closed_form(np.zeros(3), grads[:t], [1e-3] * t, (0.9, 0.999), eps, 0.0)
        # float32 v is subnormal here and keeps only ~14 significant bits.
        np.testing.assert_allclose(w, expected, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=0)


def test_zero_gradient_for_many_steps_never_leaves_subnormal_moments(backend):
    w = np.ones((2, 3), np.float32)
    params = [Parameter("w", w, np.zeros_like(w))]
    opt = Adam(params, lr=1e-3, betas=(0.9, 0.99))
    params[0].grad[...] = [[1.0, -2.0, 0.5], [1e-3, -1e-6, 3.0]]
    opt.step()
    params[0].grad[...] = 0.0
    m, v = opt.m["w"], opt.v["w"]
    # v decays by 0.99 per step: from ~1e-2 it would cross 1e-38 after ~8700 steps.
    for step in range(10000):
        opt.step()
        for arr in (m, v):
            if np.any((arr != 0) & (np.abs(arr) < TINY32)):
                pytest.fail(f"subnormal moment after {step + 1} zero-gradient steps: {arr}")
    assert not np.any(m) and not np.any(v)
    assert np.isfinite(w).all()


# ---- learning-rate schedules ------------------------------------------------------

def test_warmup_cosine_values_at_start_warmup_end_middle_and_end():
    s = WarmupCosine(base_lr=0.1, total_steps=110, warmup_steps=10)
    assert s(1) == pytest.approx(0.01, rel=1e-12)
    assert s(5) == pytest.approx(0.05, rel=1e-12)
    assert s(10) == pytest.approx(0.1, rel=1e-12)
    assert s(60) == pytest.approx(0.05, rel=1e-12)          # half-way through the cosine
    assert s(35) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12)
    assert s(110) == pytest.approx(0.0, abs=1e-15)
    assert s(500) == pytest.approx(0.0, abs=1e-15)          # clipped after the end


def test_warmup_cosine_with_min_lr_and_no_warmup():
    s = WarmupCosine(base_lr=1.0, total_steps=100, warmup_steps=0, min_lr=0.1)
    assert s(1) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 100)) / 2, rel=1e-12)
    assert s(50) == pytest.approx(0.55, rel=1e-12)
    assert s(100) == pytest.approx(0.1, rel=1e-12)
    values = [s(t) for t in range(1, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # non-increasing


@pytest.mark.parametrize("total, warmup", [(0, 0), (10, 11), (10, -1)])
def test_warmup_cosine_rejects_bad_step_counts(total, warmup):
    with pytest.raises(ValueError):
        WarmupCosine(0.1, total, warmup)


def test_constant_schedule_and_config_round_trip():
    assert Constant(0.3)(1) == Constant(0.3)(10**6) == 0.3
    for s in (Constant(0.3), WarmupCosine(0.1, 50, 5, 0.01)):
        assert schedule_from_config(s.config()) == s
    with pytest.raises(ValueError):
        schedule_from_config({"name": "step"})
