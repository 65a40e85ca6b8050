"""The model file: a pickle-free ``.npz`` with one JSON entry, loaded strictly.

Layout (readable with NumPy alone)::

    layers.{i}.weight   float array (in_features, out_features)   for each Dense layer i
    layers.{i}.bias     float array (out_features,)
    __meta__            0-d unicode array holding a JSON document:
        {"format": "nnscratch.model", "version": 1,
         "architecture": [{"type": "Flatten"}, {"type": "Dense", "in_features": 784,
                           "out_features": 256}, {"type": "ReLU"}, {"type": "Dropout", "p": 0.2}, ...],
         "dtype": "float32",
         "input": {"shape": [28, 28], "dtype": "uint8", "scale": 0.00392156862745098},
         "class_names": [...],
         "arrays": {"layers.1.weight": {"shape": [...], "dtype": "float32", "sha256": "..."}, ...}}

    meta = json.loads(str(np.load(path)["__meta__"]))   # allow_pickle=False is NumPy's default

``sha256`` is the hash of the array's bytes in C order. ``load`` reads the zip
directory and each ``.npy`` header itself, so it checks names, dtypes, shapes and
sizes before reading any data: a malformed or hostile file costs no large
allocation and never runs code (``allow_pickle=False`` always, object arrays are
rejected by their header). Every problem found is reported in one
``ModelFileError``.

Saving is atomic: the archive is written to a temporary file in the target's
directory, flushed and fsynced, then renamed over the target, so an interrupted
save leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .layers import LAYER_TYPES
from .model import Sequential

MODEL_FORMAT = "nnscratch.model"
FORMAT_VERSION = 1
META_KEY = "__meta__"
MAX_META_BYTES = 1 << 20        # the JSON entry of any real file is a few KB
MAX_LAYERS = 1000
MAX_PARAMETERS = 1 << 28        # 1 GiB of float32: refuse to build anything larger
MAX_CLASS_NAME = 100            # characters; names are printed in reports and plots
FLOAT_DTYPES = ("float32", "float64")


class ModelFileError(ValueError):
    """A model or checkpoint file is missing, unreadable, malformed or does not
    match its own metadata. The message names the file and every problem."""

    def __init__(self, path: str | os.PathLike, problems: list[str] | str) -> None:
        self.path = str(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(f"{self.path}: " + "; ".join(self.problems))


def sha256_of(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes in C order (what the metadata records)."""
    # Hashed through the buffer protocol: no copy of the bytes (tobytes() would add
    # one array's worth of memory at the moment a checkpoint is written).
    return hashlib.sha256(np.ascontiguousarray(array)).hexdigest()


# ---- writing -----------------------------------------------------------------------
def atomic_write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                     meta: dict[str, Any]) -> None:
    """Write ``arrays`` plus ``meta`` (with an ``arrays`` table of shapes,
    dtypes and hashes added) to ``path`` atomically."""
    meta = dict(meta, arrays={name: {"shape": list(a.shape), "dtype": str(a.dtype),
                                     "sha256": sha256_of(a)} for name, a in arrays.items()})
    entries = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    entries[META_KEY] = np.array(json.dumps(meta))
    # Writing through an open handle stops NumPy from appending ".npz".
    atomic_write(path, lambda handle: np.savez(handle, **entries), durable=True)


# ---- reading -----------------------------------------------------------------------
def _read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple, np.dtype, bool, int]:
    """Shape, dtype, Fortran order and header length of one ``.npy`` member,
    without reading its data."""
    with archive.open(info) as f:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif major in (2, 3):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {major}")
        return shape, dtype, fortran, f.tell()


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def read_npz(path: str | os.PathLike, format_name: str,
             expected: Callable[[dict[str, Any], list[str]], dict[str, tuple[tuple[int, ...], str]]]
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a file written by ``atomic_write_npz``.

    ``expected(meta, problems)`` validates the metadata (appending to
    ``problems``) and returns the exact arrays the file must hold, as
    name -> (shape, dtype). Returns (meta, arrays) or raises ModelFileError.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "no such file")
    if path.is_dir():
        raise ModelFileError(path, "is a directory, not a file")
    if not path.is_file():
        raise ModelFileError(path, "is not a regular file")
    try:
        with zipfile.ZipFile(path) as archive:
            return _read_archive(path, archive, format_name, expected)
    except ModelFileError:
        raise
    except Exception as exc:
        # Truncated, flipped or foreign bytes surface in many forms (zipfile,
        # zlib, the .npy header parser's SyntaxError, ...): all mean the same.
        raise ModelFileError(path, f"not a readable nnscratch .npz file ({type(exc).__name__}: "
                                   f"{exc})") from None


def _read_archive(path: Path, archive: zipfile.ZipFile, format_name: str,
                  expected: Callable) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    members = {}
    on_disk = path.stat().st_size
    for info in archive.infolist():
        # ``atomic_write_npz`` stores entries uncompressed, so every entry's bytes
        # are in the file: a small file cannot make this read gigabytes (a
        # compressed entry can inflate 1000-fold).
        if info.compress_type != zipfile.ZIP_STORED:
            raise ModelFileError(path, f"entry {info.filename!r} is compressed; nnscratch writes "
                                       "(and reads) only uncompressed .npz files")
        if info.file_size > on_disk:
            raise ModelFileError(path, f"entry {info.filename!r} claims {info.file_size} bytes, "
                                       f"more than the whole file's {on_disk}")
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        members[name] = info
    meta_info = members.pop(META_KEY, None)
    if meta_info is None:
        raise ModelFileError(path, f"no {META_KEY} entry: not a file written by nnscratch")
    if meta_info.file_size > MAX_META_BYTES:
        raise ModelFileError(path, f"{META_KEY} is {meta_info.file_size} bytes, more than "
                                   f"the {MAX_META_BYTES} allowed")
    shape, dtype, _, _ = _read_header(archive, meta_info)
    if shape != () or dtype.kind != "U":
        raise ModelFileError(path, f"{META_KEY} must be a JSON string, found dtype {dtype} shape {shape}")
    try:
        meta = json.loads(str(_read_member(archive, meta_info)))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(path, f"{META_KEY} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(path, f"{META_KEY} must be a JSON object")
    if meta.get("format") != format_name:
        hint = ("; it is a training checkpoint: use the run's model.npz (written when its "
                "training finishes), or continue it with nnscratch train --resume"
                if meta.get("format") == "nnscratch.checkpoint" else "")
        raise ModelFileError(path, f"format is {meta.get('format')!r}, expected "
                                   f"{format_name!r}{hint}")
    if type(meta.get("version")) is not int or meta["version"] != FORMAT_VERSION:
        raise ModelFileError(path, f"format version {meta.get('version')!r} is not supported "
                                   f"(this nnscratch reads version {FORMAT_VERSION})")
    problems: list[str] = []
    wanted = expected(meta, problems)
    if problems:
        raise ModelFileError(path, problems)
    recorded = meta.get("arrays")
    if not isinstance(recorded, dict):
        raise ModelFileError(path, "metadata has no 'arrays' table of hashes")
    problems += [f"missing array {n!r}" for n in wanted if n not in members]
    problems += [f"unexpected entry {n!r}" for n in members if n not in wanted]
    for name in sorted(wanted.keys() & members.keys()):
        want_shape, want_dtype = wanted[name]
        shape, dtype, fortran, header_len = _read_header(archive, members[name])
        if dtype.hasobject or dtype != np.dtype(want_dtype):
            problems.append(f"{name!r} has dtype {dtype}, expected {want_dtype}")
        elif tuple(shape) != tuple(want_shape):
            problems.append(f"{name!r} has shape {tuple(shape)}, expected {tuple(want_shape)}")
        elif fortran:
            problems.append(f"{name!r} is stored in Fortran order")
        elif members[name].file_size != header_len + int(np.prod(shape)) * dtype.itemsize:
            problems.append(f"{name!r} has {members[name].file_size - header_len} data bytes, "
                            f"expected {int(np.prod(shape)) * dtype.itemsize}")
        elif not isinstance(recorded.get(name), dict):
            problems.append(f"{name!r} has no recorded SHA-256")
    if problems:
        raise ModelFileError(path, problems)
    arrays = {}
    for name in wanted:
        array = _read_member(archive, members[name])
        if sha256_of(array) != recorded[name].get("sha256"):
            problems.append(f"{name!r} does not match its recorded SHA-256 (the file is corrupt)")
        arrays[name] = array
    if problems:
        raise ModelFileError(path, problems)
    return meta, arrays


# ---- the model file ----------------------------------------------------------------
def class_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a class name, or None. Names reach terminals and
    plots, so control characters (escape codes, newlines) are not allowed."""
    if not isinstance(name, str):
        return f"class names must be strings, got {name!r}"
    # Control, format (e.g. bidirectional overrides), private-use and unassigned
    # characters, and line breaks; ordinary Unicode text, spaces included, is fine.
    hidden = any(unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")
                 for c in name)
    if not 1 <= len(name) <= MAX_CLASS_NAME or hidden:
        return (f"class name {name[:40]!r} must be 1 to {MAX_CLASS_NAME} printable characters "
                f"(no control characters or line breaks)")
    return None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate_architecture(architecture: Any, problems: list[str]) -> None:
    """Check a list of ``layer.config()`` dicts against the closed set of layer
    types in ``LAYER_TYPES`` and their argument types; append what is wrong."""
    if not isinstance(architecture, list) or not 1 <= len(architecture) <= MAX_LAYERS:
        problems.append(f"architecture must be a list of 1 to {MAX_LAYERS} layers")
        return
    total = 0
    dense = []
    for i, entry in enumerate(architecture):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind not in LAYER_TYPES:
            problems.append(f"architecture[{i}]: unknown layer type {kind!r} "
                            f"(allowed: {', '.join(LAYER_TYPES)})")
            continue
        args = {k: v for k, v in entry.items() if k != "type"}
        if kind == "Dense":
            if set(args) != {"in_features", "out_features"} or not all(
                    _positive_int(v) for v in args.values()):
                problems.append(f"architecture[{i}]: Dense needs positive integers "
                                f"in_features and out_features, got {args}")
                continue
            total += (args["in_features"] + 1) * args["out_features"]
            dense.append(args)
        elif kind == "Dropout":
            p = args.get("p")
            if set(args) != {"p"} or isinstance(p, bool) or not isinstance(p, (int, float)) \
                    or not 0 <= p < 1:
                problems.append(f"architecture[{i}]: Dropout needs p in [0, 1), got {args}")
        elif args:
            problems.append(f"architecture[{i}]: {kind} takes no arguments, got {args}")
    if total > MAX_PARAMETERS:
        problems.append(f"architecture declares {total} parameters, more than the "
                        f"{MAX_PARAMETERS} allowed")
    if not dense:
        problems.append("architecture has no valid Dense layer")
    for lower, upper in zip(dense, dense[1:]):
        if lower["out_features"] != upper["in_features"]:
            problems.append(f"architecture: a Dense layer outputs {lower['out_features']} "
                            f"features but the next expects {upper['in_features']}")


def architecture_arrays(architecture: list[dict[str, Any]], dtype: str, prefix: str = ""
                        ) -> dict[str, tuple[tuple[int, ...], str]]:
    """The parameter arrays a valid architecture implies: name -> (shape, dtype)."""
    wanted = {}
    for i, entry in enumerate(architecture):
        if entry["type"] == "Dense":
            wanted[f"{prefix}layers.{i}.weight"] = ((entry["in_features"], entry["out_features"]), dtype)
            wanted[f"{prefix}layers.{i}.bias"] = ((entry["out_features"],), dtype)
    return wanted


def build_model(architecture: list[dict[str, Any]], dtype: str) -> Sequential:
    """A Sequential for a valid architecture (weights still to be loaded)."""
    layers = [LAYER_TYPES[e["type"]](**{k: v for k, v in e.items() if k != "type"})
              for e in architecture]
    return Sequential(*layers, seed=0, dtype=dtype)


def _expected_model_arrays(meta: dict[str, Any], problems: list[str]
                           ) -> dict[str, tuple[tuple[int, ...], str]]:
    dtype = meta.get("dtype")
    if dtype not in FLOAT_DTYPES:
        problems.append(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
    names = meta.get("class_names")
    if not isinstance(names, list):
        problems.append("class_names must be a list of strings")
    else:
        problems += sorted({p for p in map(class_name_problem, names) if p is not None})
    before = len(problems)
    validate_architecture(meta.get("architecture"), problems)
    if len(problems) > before:
        return {}
    dense = [e for e in meta["architecture"] if e["type"] == "Dense"]
    if isinstance(names, list) and len(names) != dense[-1]["out_features"]:
        problems.append(f"{len(names)} class names for {dense[-1]['out_features']} outputs")
    return architecture_arrays(meta["architecture"], dtype)


def _input_spec(model: Sequential) -> dict[str, Any]:
    side = int(round(np.sqrt(model.in_features)))
    shape = [side, side] if side * side == model.in_features else [model.in_features]
    return {"shape": shape, "dtype": "uint8", "scale": 1 / 255,
            "note": "uint8 pixels are multiplied by scale; float input is used as given"}


def class_names_of(model: Sequential) -> list[str]:
    """The model's class names, or "class 0", "class 1", ... when it has none."""
    return getattr(model, "class_names", None) or [f"class {i}" for i in range(model.num_classes)]


def model_meta(model: Sequential, class_names: list[str] | None = None) -> dict[str, Any]:
    """The JSON metadata of a model file (without the hash table)."""
    if class_names is None:
        class_names = class_names_of(model)
    # Checked here, so that save never writes a file that load would reject.
    for i, layer in enumerate(model.layers):
        # load rebuilds layers by type name, so a subclass or custom layer would come
        # back as something else (or not at all).
        if type(layer) is not LAYER_TYPES.get(type(layer).__name__):
            raise TypeError(f"save: layers.{i} is a {type(layer).__name__}; a model file holds "
                            f"only {', '.join(LAYER_TYPES)}. Keep a model with custom layers as "
                            "its weights: np.savez(path, **model.state_dict())")
    if isinstance(class_names, (str, bytes)) or not all(
            isinstance(name, str) for name in class_names):
        raise TypeError(f"class_names must be a list of strings, got {class_names!r}")
    for name in class_names:
        problem = class_name_problem(name)
        if problem is not None:
            raise ValueError(problem)
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with "
                         f"{model.num_classes} outputs")
    from . import __version__
    return {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "architecture": model.config(),
            "dtype": str(model.dtype), "input": _input_spec(model),
            "class_names": list(class_names), "created_by": f"nnscratch {__version__}"}


def _non_finite(arrays: dict[str, np.ndarray]) -> list[str]:
    """Names of the arrays holding NaN or an infinity (save and load refuse them)."""
    return [name for name, value in arrays.items() if not np.isfinite(value).all()]


def save(model: Sequential, path: str | os.PathLike, *, class_names: list[str] | None = None) -> None:
    """Save ``model`` to ``path`` (written exactly there, atomically)."""
    if not isinstance(model, Sequential):
        raise TypeError(f"save takes a Sequential, got {type(model).__name__}; "
                        f"wrap a single layer as Sequential(layer)")
    state = model.state_dict(copy=False)
    bad = _non_finite(state)
    if bad:  # such a model predicts NaN; load would refuse the file
        raise ValueError(f"save: {', '.join(bad)} contain NaN or infinite values; "
                         f"the model has diverged and is not worth keeping")
    atomic_write_npz(path, state, model_meta(model, class_names))


def load(path: str | os.PathLike) -> Sequential:
    """Load a model saved by ``save``; raises ``ModelFileError`` (a ValueError)
    naming the file and every problem if it does not verify."""
    meta, arrays = read_npz(path, MODEL_FORMAT, _expected_model_arrays)
    # The hashes only say the file is as written; a model with NaN or infinite
    # weights (written by other means) would predict NaN for every image.
    bad = _non_finite(arrays)
    if bad:
        raise ModelFileError(path, [f"{name!r} contains NaN or infinite values" for name in bad])
    model = build_model(meta["architecture"], meta["dtype"])
    model.load_state_dict(arrays)
    model.class_names = list(meta["class_names"])
    return model.eval()
