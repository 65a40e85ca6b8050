"""Shared helpers for the model-file, checkpoint, CLI and end-to-end tests.

Everything here builds its files from scratch (no shipped binaries): small
models, hand-written ``.npz`` archives with arbitrary entries, and subprocess
runs of the real command line.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from nnscratch import Dense, Dropout, Flatten, ReLU, Sequential

REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ---- small models ------------------------------------------------------------------
def small_model(dtype: str = "float32", *, dropout: bool = True, flatten: bool = True,
                side: int = 4, hidden: int = 8, classes: int = 3, seed: int = 0) -> Sequential:
    """Flatten? -> Dense(side*side, hidden) -> ReLU -> Dropout? -> Dense(hidden, classes)."""
    layers: list[Any] = [Flatten()] if flatten else []
    layers += [Dense(side * side, hidden), ReLU()]
    if dropout:
        layers.append(Dropout(0.25))
    layers.append(Dense(hidden, classes))
    return Sequential(*layers, seed=seed, dtype=dtype)


def trained_small_model(dtype: str = "float32", **kwargs: Any) -> tuple[Sequential, np.ndarray]:
    """A small model after a few training steps (so weights are not just the
    initialisation) and a float input batch it can predict on."""
    model = small_model(dtype, **kwargs)
    side = kwargs.get("side", 4)
    classes = kwargs.get("classes", 3)
    rng = np.random.default_rng(123)
    x = rng.integers(0, 256, (48, side, side), dtype=np.uint8)
    y = rng.integers(0, classes, 48)
    if not kwargs.get("flatten", True):
        x = x.reshape(len(x), -1)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    probe = rng.standard_normal((20,) + x.shape[1:])
    return model, probe


def mnist_like_model(seed: int = 0) -> Sequential:
    """An untrained 784 -> 16 -> 10 model (what the CLI's predict/evaluate accept)."""
    return Sequential(Flatten(), Dense(784, 16), ReLU(), Dense(16, 10), seed=seed)


# ---- raw archives ------------------------------------------------------------------
def sha256_hex(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def arrays_table(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {name: {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": sha256_hex(a)}
            for name, a in arrays.items()}


def write_npz(path: Path, entries: dict[str, Any]) -> Path:
    """np.savez exactly at ``path`` with arbitrary entries (object arrays are pickled:
    np.savez allows that)."""
    with open(path, "wb") as f:
        np.savez(f, **entries)
    return path


def model_parts(model: Sequential, class_names: list[str] | None = None
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata without the arrays table, arrays) of a valid model file, built by hand
    from the documented layout (not with nnscratch.io)."""
    arrays = model.state_dict()
    meta = {"format": "nnscratch.model", "version": 1, "architecture": model.config(),
            "dtype": str(model.dtype),
            "input": {"shape": [model.in_features], "dtype": "uint8", "scale": 1 / 255},
            "class_names": class_names or [f"class{i}" for i in range(model.num_classes)]}
    return meta, arrays


def write_model_file(path: Path, meta: dict[str, Any] | str | np.ndarray | None,
                     arrays: dict[str, Any], *, table: dict[str, Any] | None = None,
                     rehash: bool = True) -> Path:
    """Write a model-like npz. ``meta`` may be a dict (an arrays table of
    ``arrays`` is added when ``rehash``), a ready string, an array, or None
    (no __meta__ entry at all)."""
    entries: dict[str, Any] = dict(arrays)
    if isinstance(meta, dict):
        meta = dict(meta)
        if rehash and "arrays" not in meta:
            meta["arrays"] = table if table is not None else arrays_table(
                {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)
                 and not v.dtype.hasobject})
        entries["__meta__"] = np.array(json.dumps(meta))
    elif isinstance(meta, str):
        entries["__meta__"] = np.array(meta)
    elif meta is not None:
        entries["__meta__"] = meta
    return write_npz(path, entries)


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A stored (uncompressed) zip with the given raw members."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    buf = _io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_header_only(shape: tuple[int, ...], dtype: str, data: bytes = b"",
                    fortran: bool = False) -> bytes:
    """A .npy member whose header declares ``shape``/``dtype`` followed by ``data``
    (usually far fewer bytes than declared)."""
    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
              "fortran_order": fortran, "shape": shape})
    return buf.getvalue() + data


def read_npz_plain(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, arrays) of a file written by nnscratch, read with NumPy alone."""
    with np.load(path) as f:
        meta = json.loads(str(f["__meta__"]))
        arrays = {k: f[k] for k in f.files if k != "__meta__"}
    return meta, arrays


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str = "") -> None:
    assert sorted(a) == sorted(b), f"{what}: different array names {sorted(a)} vs {sorted(b)}"
    for name in a:
        assert a[name].dtype == b[name].dtype, f"{what}: {name} dtype {a[name].dtype} vs {b[name].dtype}"
        assert np.array_equal(a[name], b[name]), f"{what}: array {name!r} differs"


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ---- the command line in a subprocess ------------------------------------------------
def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def cli_command(*args: Any) -> list[str]:
    return [sys.executable, "-m", "nnscratch.cli", *map(str, args)]


def run_cli(*args: Any, timeout: float = 300, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), capture_output=True, text=True,
                          timeout=timeout, env=cli_env(), cwd=cwd)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def require_real_data() -> None:
    """Fail (never skip) when the Debian Fashion-MNIST files are missing."""
    missing = [n for n in FASHION_FILES if not (FASHION_DIR / f"{n}.gz").is_file()
               and not (FASHION_DIR / n).is_file()]
    assert not missing, (f"the real Fashion-MNIST data is missing from {FASHION_DIR} "
                         f"({', '.join(missing)}): install the dataset-fashion-mnist package")
