"""The NNSCRATCH_BACKEND switch, exercised in fresh interpreters (the backend is
chosen once, at import): numba (default) and numpy must train to the same loss
curve, and an unknown value must fail with a clear ImportError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

TRAIN_SCRIPT = r"""
import json
import numpy as np
import nnscratch as nn
from nnscratch import kernels

fused = None
if kernels.BACKEND == "numba":
    from nnscratch.kernels import fused

rng = np.random.default_rng(0)
centers = rng.standard_normal((4, 36)) * 1.5
y = rng.integers(0, 4, 320)
z = centers[y] + rng.standard_normal((320, 36))
x = np.clip(z * 40 + 128, 0, 255).astype(np.uint8).reshape(320, 6, 6)   # uint8 "images"
model = nn.Sequential(nn.Flatten(), nn.Dense(36, 24), nn.ReLU(), nn.Dropout(0.2),
                      nn.Dense(24, 16), nn.ReLU(), nn.Dense(16, 4), seed=0)
opt = nn.Adam(model.parameters(), lr=5e-3, weight_decay=1e-2)
hist = model.fit(x[:256], y[:256], optimizer=opt, epochs=3, batch_size=32,
                 validation_data=(x[256:], y[256:]), verbose=0)
print(json.dumps({
    "backend": kernels.BACKEND,
    "all_reference": all(getattr(kernels, n) is getattr(kernels.reference, n)
                         for n in kernels.KERNEL_NAMES),
    "adam_is_reference": kernels.adam_update is kernels.reference.adam_update,
    "adam_is_fused": fused is not None and kernels.adam_update is fused.adam_update,
    "loss": hist["loss"],
    "val_loss": hist["val_loss"],
    "weight_sum": float(np.sum(model.parameters()[0].value, dtype=np.float64)),
}))
"""


def _run(code: str, backend: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NNSCRATCH_BACKEND", None)
    if backend is not None:
        env["NNSCRATCH_BACKEND"] = backend
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _train(backend: str | None) -> dict:
    proc = _run(TRAIN_SCRIPT, backend)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    return {"numba": _train(None), "numpy": _train("numpy")}


def test_default_backend_is_numba_with_fused_kernels(runs):
    assert runs["numba"]["backend"] == "numba"
    assert runs["numba"]["adam_is_fused"] is True
    assert runs["numba"]["adam_is_reference"] is False


def test_numpy_backend_selects_the_reference_twins(runs):
    assert runs["numpy"]["backend"] == "numpy"
    assert runs["numpy"]["adam_is_reference"] is True
    assert runs["numpy"]["all_reference"] is True


def test_numba_and_numpy_backends_give_the_same_loss_curve(runs):
    a, b = runs["numba"], runs["numpy"]
    assert len(a["loss"]) == len(b["loss"]) == 3
    assert all(np.isfinite(a["loss"])) and a["loss"][-1] < a["loss"][0]  # it trained
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-4)
    assert a["weight_sum"] == pytest.approx(b["weight_sum"], rel=1e-4, abs=1e-4)


def test_backend_value_is_case_and_space_insensitive():
    proc = _run("from nnscratch import kernels; "
                "print(kernels.BACKEND, kernels.adam_update is kernels.reference.adam_update)",
                " NumPy ")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["numpy", "True"]


@pytest.mark.parametrize("value", ["cuda", "numbaa"])
def test_invalid_backend_raises_clear_import_error(value):
    proc = _run("import nnscratch", value)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nnscratch.kernels.BackendError"), proc.stderr  # an ImportError
    assert value in last and "'numba'" in last and "'numpy'" in last, last
