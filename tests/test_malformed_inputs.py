"""A corpus of malformed inputs, all built here: model files, data files,
command lines and image batches. Each must fail with the exact error type and
a message that names the problem (and the file, for files)."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nnscratch import Dense, Flatten, Sequential, cli, datasets
from nnscratch.checkpoint import load_checkpoint
from nnscratch.datasets import DataError, load_fashion_mnist
from nnscratch.images import ImageError, load_image
from nnscratch.io import ModelFileError, load, save

try:
    from . import helpers  # when tests/ is a package
except ImportError:
    import helpers


# ---- model files ---------------------------------------------------------------------
def base_model():
    """Flatten, Dense(16, 8), ReLU, Dropout(0.25), Dense(8, 3): arrays layers.1.* and layers.4.*"""
    return helpers.small_model(seed=1)


def parts():
    return helpers.model_parts(base_model())


def valid_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "valid.npz"
    save(base_model(), path)
    return path.read_bytes()


def with_meta(**changes) -> Callable[[Path], Path]:
    """A file whose metadata has ``changes`` applied (arrays and hashes consistent)."""
    def build(path: Path) -> Path:
        meta, arrays = parts()
        meta.update(changes)
        return helpers.write_model_file(path, meta, arrays)
    return build


def with_architecture(edit: Callable[[list], None]) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        meta, arrays = parts()
        edit(meta["architecture"])
        return helpers.write_model_file(path, meta, arrays)
    return build


def with_arrays(edit: Callable[[dict], None], *, table_from_original: bool = False
                ) -> Callable[[Path], Path]:
    """A file whose arrays are edited; the hash table describes the edited arrays,
    or the original ones with ``table_from_original``."""
    def build(path: Path) -> Path:
        meta, arrays = parts()
        table = helpers.arrays_table(arrays) if table_from_original else None
        edit(arrays)
        return helpers.write_model_file(path, meta, arrays, table=table)
    return build


def truncated(fraction: float | None = None, keep: int | None = None) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        data = valid_bytes(path.parent)
        n = keep if keep is not None else int(len(data) * fraction)
        path.write_bytes(data[:n] if n >= 0 else data[:len(data) + n])
        return path
    return build


def flipped_at(find: bytes, offset: int = 0) -> Callable[[Path], Path]:
    """Change one byte at ``offset`` after the first occurrence of ``find``."""
    def build(path: Path) -> Path:
        data = bytearray(valid_bytes(path.parent))
        pos = data.index(find) + offset
        data[pos] ^= 0x5A
        path.write_bytes(bytes(data))
        return path
    return build


def write_bytes(content: bytes) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        path.write_bytes(content)
        return path
    return build


def raw_members(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
    """A well-formed zip (valid CRCs) with hand-made .npy members."""
    def build(path: Path) -> Path:
        meta, arrays = parts()
        meta["arrays"] = helpers.arrays_table(arrays)
        members = {f"{k}.npy": helpers.npy_bytes(v) for k, v in arrays.items()}
        members["__meta__.npy"] = helpers.npy_bytes(np.array(json.dumps(meta)))
        edit(members)
        return helpers.write_zip(path, members)
    return build


def make_directory(path: Path) -> Path:
    path.mkdir()
    return path


def no_file(path: Path) -> Path:
    return path


def huge_meta(path: Path) -> Path:
    meta, arrays = parts()
    meta["comment"] = "x" * (1 << 20)
    return helpers.write_model_file(path, meta, arrays)


def deeply_nested_meta(path: Path) -> Path:
    _, arrays = parts()
    return helpers.write_model_file(path, "[" * 100_000 + "]" * 100_000, arrays)


def _del(name):
    def edit(arrays):
        del arrays[name]
    return edit


def _set(name, value):
    def edit(arrays):
        arrays[name] = value(arrays[name]) if callable(value) else value
    return edit


def _broken_header(members):
    data = members["layers.1.weight.npy"]
    members["layers.1.weight.npy"] = data.replace(b"'shape': (16, 8)", b"'shape': (16, 8,", 1)


def _short_data(members):
    # header declares (16, 8) float32 = 512 bytes, only 12 follow
    members["layers.1.weight.npy"] = helpers.npy_header_only((16, 8), "<f4", b"\0" * 12)


def _npy_version_9(members):
    data = bytearray(members["layers.1.bias.npy"])
    data[6] = 9  # .npy format major version
    members["layers.1.bias.npy"] = bytes(data)


def _not_npy(members):
    members["layers.4.bias.npy"] = b"this is not a .npy member at all"


def _arch_set(i, entry):
    def edit(arch):
        arch[i] = entry
    return edit


CASES: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    # not a zip at all
    "empty file": (write_bytes(b""), ["not a readable nnscratch .npz file"]),
    "text file": (write_bytes(b"layers.1.weight = [[0.1, 0.2]]\nthis is not a model\n"),
                  ["not a readable nnscratch .npz file"]),
    "npy instead of npz": (write_bytes(helpers.npy_bytes(np.zeros(3))),
                           ["not a readable nnscratch .npz file"]),
    "gzip instead of zip": (write_bytes(gzip.compress(b"PK" * 100)), ["not a readable"]),
    # damaged archives
    "truncated to 10 bytes": (truncated(keep=10), ["not a readable"]),
    "truncated to a quarter": (truncated(0.25), ["not a readable"]),
    "truncated to a half": (truncated(0.5), ["not a readable"]),
    "truncated by one byte": (truncated(keep=-1), ["not a readable"]),
    "truncated before the end record": (truncated(keep=-22), ["not a readable"]),
    "flipped byte in weight data": (flipped_at(b"layers.1.weight.npy", 200), ["CRC"]),
    "flipped byte in metadata": (flipped_at("architecture".encode("utf-32-le"), 4), ["CRC"]),
    "flipped byte in the central directory": (flipped_at(b"PK\x01\x02", 2), ["not a readable"]),
    # __meta__ itself
    "missing __meta__": (lambda p: helpers.write_model_file(p, None, parts()[1]),
                         ["no __meta__ entry"]),
    "__meta__ not JSON": (lambda p: helpers.write_model_file(p, "{'format': nnscratch", parts()[1]),
                          ["__meta__ is not valid JSON"]),
    "__meta__ a JSON list": (lambda p: helpers.write_model_file(p, json.dumps([1, 2]), parts()[1]),
                             ["__meta__ must be a JSON object"]),
    "__meta__ a JSON string": (lambda p: helpers.write_model_file(p, json.dumps("model"), parts()[1]),
                               ["__meta__ must be a JSON object"]),
    "__meta__ an int array": (lambda p: helpers.write_model_file(p, np.arange(3), parts()[1]),
                              ["__meta__ must be a JSON string", "int64"]),
    "__meta__ bytes": (lambda p: helpers.write_model_file(p, np.array(b"{}"), parts()[1]),
                       ["__meta__ must be a JSON string"]),
    "__meta__ over 1 MiB": (huge_meta, ["__meta__ is", "more than the 1048576 allowed"]),
    "__meta__ nested 100000 deep": (deeply_nested_meta, ["JSON"]),
    "wrong format name": (with_meta(format="keras.model"),
                          ["format is 'keras.model', expected 'nnscratch.model'"]),
    "checkpoint format": (with_meta(format="nnscratch.checkpoint"), ["expected 'nnscratch.model'"]),
    "wrong version": (with_meta(version=2), ["format version 2 is not supported"]),
    "version as string": (with_meta(version="1"), ["format version '1' is not supported"]),
    "version as true": (with_meta(version=True), ["format version True is not supported"]),
    "version as float": (with_meta(version=1.0), ["format version 1.0 is not supported"]),
    "dtype float16": (with_meta(dtype="float16"), ["dtype must be one of", "'float16'"]),
    "class_names not strings": (with_meta(class_names=[1, 2, 3]),
                                ["class names must be strings, got 1"]),
    "class_names not a list": (with_meta(class_names="abc"),
                               ["class_names must be a list of strings"]),
    "class name with a terminal escape code": (with_meta(class_names=["a", "\x1b[31mred", "c"]),
                                               ["printable characters", "red"]),
    "class name with a newline": (with_meta(class_names=["a", "b\nc", "d"]),
                                  ["printable characters"]),
    "empty class name": (with_meta(class_names=["a", "", "c"]), ["1 to 100 printable"]),
    "class name of 10000 characters": (with_meta(class_names=["a", "b" * 10000, "c"]),
                                       ["1 to 100 printable"]),
    "NaN weight under a correct hash": (with_arrays(lambda a: a["layers.1.weight"].__setitem__(
        (0, 0), np.nan)), ["'layers.1.weight' contains NaN or infinite values"]),
    "infinite bias under a correct hash": (with_arrays(lambda a: a["layers.1.bias"].__setitem__(
        0, -np.inf)), ["'layers.1.bias' contains NaN or infinite values"]),
    "class_names count mismatch": (with_meta(class_names=["a", "b"]), ["2 class names for 3 outputs"]),
    "no arrays table": (lambda p: helpers.write_model_file(p, dict(parts()[0], arrays=None),
                                                            parts()[1]),
                        ["no 'arrays' table"]),
    "hash missing from table": (lambda p: helpers.write_model_file(
        p, parts()[0], parts()[1], table={}), ["'layers.1.weight' has no recorded SHA-256"]),
    # architecture
    "architecture not a list": (with_meta(architecture={"type": "Dense"}),
                                ["architecture must be a list"]),
    "architecture empty": (with_meta(architecture=[]), ["architecture must be a list of 1 to"]),
    "architecture of 1001 layers": (with_meta(architecture=[{"type": "ReLU"}] * 1001),
                                    ["architecture must be a list of 1 to 1000 layers"]),
    "layer type os.system": (with_architecture(_arch_set(2, {"type": "os.system"})),
                             ["architecture[2]: unknown layer type 'os.system'"]),
    "layer type Lambda": (with_architecture(_arch_set(2, {"type": "Lambda", "function": "print"})),
                          ["unknown layer type 'Lambda'"]),
    "layer without type": (with_architecture(_arch_set(2, {"name": "relu"})),
                           ["unknown layer type None"]),
    "layer not an object": (with_architecture(_arch_set(2, "ReLU")), ["unknown layer type None"]),
    "Dense with string size": (with_architecture(_arch_set(1, {"type": "Dense", "in_features": "16",
                                                               "out_features": 8})),
                               ["architecture[1]: Dense needs positive integers"]),
    "Dense with negative size": (with_architecture(_arch_set(1, {"type": "Dense", "in_features": 16,
                                                                 "out_features": -8})),
                                 ["Dense needs positive integers", "-8"]),
    "Dense with float size": (with_architecture(_arch_set(1, {"type": "Dense", "in_features": 16.0,
                                                              "out_features": 8})),
                              ["Dense needs positive integers"]),
    "Dense with boolean size": (with_architecture(_arch_set(4, {"type": "Dense", "in_features": 8,
                                                                "out_features": True})),
                                ["Dense needs positive integers"]),
    "Dense with extra argument": (with_architecture(_arch_set(1, {"type": "Dense", "in_features": 16,
                                                                  "out_features": 8, "init": "x"})),
                                  ["Dense needs positive integers"]),
    "Dropout p=1.5": (with_architecture(_arch_set(3, {"type": "Dropout", "p": 1.5})),
                      ["architecture[3]: Dropout needs p in [0, 1)"]),
    "Dropout p NaN": (with_architecture(_arch_set(3, {"type": "Dropout", "p": float("nan")})),
                      ["Dropout needs p in [0, 1)"]),
    "Dropout p string": (with_architecture(_arch_set(3, {"type": "Dropout", "p": "0.5"})),
                         ["Dropout needs p in [0, 1)"]),
    "ReLU with arguments": (with_architecture(_arch_set(2, {"type": "ReLU", "inplace": True})),
                            ["ReLU takes no arguments"]),
    "no Dense layer": (with_meta(architecture=[{"type": "Flatten"}, {"type": "ReLU"}]),
                       ["architecture has no valid Dense layer"]),
    "mismatched Dense chain": (with_architecture(_arch_set(4, {"type": "Dense", "in_features": 9,
                                                               "out_features": 3})),
                               ["outputs 8 features but the next expects 9"]),
    "huge declared Dense": (with_architecture(_arch_set(1, {"type": "Dense", "in_features": 10**9,
                                                            "out_features": 8})),
                            ["parameters, more than the 268435456 allowed"]),
    # arrays
    "missing array": (with_arrays(_del("layers.4.bias")), ["missing array 'layers.4.bias'"]),
    "extra array": (with_arrays(_set("extra", np.zeros(3, np.float32))), ["unexpected entry 'extra'"]),
    "wrong shape": (with_arrays(_set("layers.1.weight", lambda a: np.ascontiguousarray(a.T))),
                    ["'layers.1.weight' has shape (8, 16), expected (16, 8)"]),
    "wrong dtype int64": (with_arrays(_set("layers.1.bias", lambda a: a.astype(np.int64))),
                          ["'layers.1.bias' has dtype int64, expected float32"]),
    "wrong dtype float16": (with_arrays(_set("layers.4.weight", lambda a: a.astype(np.float16))),
                            ["'layers.4.weight' has dtype float16, expected float32"]),
    "wrong dtype float64": (with_arrays(_set("layers.4.weight", lambda a: a.astype(np.float64))),
                            ["has dtype float64, expected float32"]),
    "Fortran-order array": (with_arrays(_set("layers.1.weight", np.asfortranarray)),
                            ["'layers.1.weight' is stored in Fortran order"]),
    "hash mismatch": (with_arrays(_set("layers.4.bias", lambda a: a + np.float32(1e-3)),
                                  table_from_original=True),
                      ["'layers.4.bias' does not match its recorded SHA-256"]),
    "array data shorter than its header": (raw_members(_short_data),
                                           ["'layers.1.weight' has", "data bytes, expected 512"]),
    "malformed .npy header": (raw_members(_broken_header), ["not a readable nnscratch .npz file"]),
    "unsupported .npy version": (raw_members(_npy_version_9), ["not a readable nnscratch .npz file"]),
    "member that is not .npy": (raw_members(_not_npy), ["not a readable nnscratch .npz file"]),
    # the path itself
    "directory instead of file": (make_directory, ["is a directory"]),
    "missing path": (no_file, ["no such file"]),
}


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_model_file_raises_model_file_error(tmp_path: Path, case: str) -> None:
    build, fragments = CASES[case]
    path = build(tmp_path / "model.npz")
    with pytest.raises(ModelFileError) as info:
        load(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(path) in message, f"message does not name the file: {message}"
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message


def test_special_file_is_not_called_a_directory() -> None:
    """/dev/null exists and is not a directory; the message must not say it is."""
    with pytest.raises(ModelFileError) as info:
        load("/dev/null")
    message = str(info.value)
    assert message.startswith("/dev/null: ")
    assert "directory" not in message, message


@pytest.mark.parametrize("case", ["hash mismatch", "wrong dtype int64", "flipped byte in weight data",
                                  "truncated to a half", "layer type os.system", "missing path"])
def test_checkpoint_loader_rejects_the_same_damage(tmp_path: Path, case: str) -> None:
    build, _ = CASES[case]
    path = build(tmp_path / "checkpoint.npz")
    with pytest.raises(ModelFileError, match="checkpoint.npz"):
        load_checkpoint(path)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    def edit(arrays):
        del arrays["layers.4.bias"]
        arrays["layers.1.bias"] = arrays["layers.1.bias"].astype(np.int64)
        arrays["surprise"] = np.zeros(2, np.float32)
    path = with_arrays(edit)(tmp_path / "m.npz")
    with pytest.raises(ModelFileError) as info:
        load(path)
    assert len(info.value.problems) == 3
    for fragment in ("missing array 'layers.4.bias'", "unexpected entry 'surprise'",
                     "'layers.1.bias' has dtype int64"):
        assert fragment in str(info.value)


# ---- hostile files: no large allocations, no code execution ----------------------------
def _load_measured(path: Path) -> tuple[Exception, int]:
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError) as info:
            load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return info.value, peak


@pytest.mark.parametrize("in_features,out_features", [(10**9, 8), (16, 10**12), (10**100, 10**100)])
def test_huge_declared_architecture_fails_without_allocating(
        tmp_path: Path, in_features: int, out_features: int) -> None:
    meta, arrays = parts()
    meta["architecture"][1] = {"type": "Dense", "in_features": in_features,
                               "out_features": out_features}
    path = helpers.write_model_file(tmp_path / "huge.npz", meta, arrays)
    error, peak = _load_measured(path)
    assert "more than the 268435456 allowed" in str(error)
    assert peak < 50 * 2**20


def test_huge_array_declared_consistently_but_without_data_fails_without_allocating(tmp_path: Path) -> None:
    """Architecture and .npy header agree on a 16000x16000 float32 weight (1 GB)
    but the member holds a few bytes: rejected from the sizes alone."""
    arch = [{"type": "Dense", "in_features": 16000, "out_features": 16000},
            {"type": "Dense", "in_features": 16000, "out_features": 1}]
    meta = {"format": "nnscratch.model", "version": 1, "architecture": arch, "dtype": "float32",
            "input": {"shape": [16000]}, "class_names": ["only"],
            "arrays": {n: {"shape": s, "dtype": "float32", "sha256": "0" * 64} for n, s in
                       (("layers.0.weight", [16000, 16000]), ("layers.0.bias", [16000]),
                        ("layers.1.weight", [16000, 1]), ("layers.1.bias", [1]))}}
    members = {"__meta__.npy": helpers.npy_bytes(np.array(json.dumps(meta)))}
    for name, entry in meta["arrays"].items():
        members[f"{name}.npy"] = helpers.npy_header_only(tuple(entry["shape"]), "<f4", b"\0" * 64)
    path = helpers.write_zip(tmp_path / "huge.npz", members)
    error, peak = _load_measured(path)
    assert "'layers.0.weight' has 64 data bytes, expected 1024000000" in str(error)
    assert peak < 50 * 2**20


def test_a_compressed_model_file_is_refused_before_anything_is_inflated(tmp_path: Path) -> None:
    """A DEFLATE-compressed .npz of a 4096 x 4096 model of zeros is ~70 KB on disk
    and 64 MB inflated: nnscratch writes stored entries only, and refuses any
    other kind before reading one (peak memory stays small)."""
    model = Sequential(Dense(4096, 4096, rng=0), Dense(4096, 2, rng=0))
    for p in model.parameters():
        p.value[...] = 0
    plain = tmp_path / "plain.npz"
    save(model, plain)
    packed = tmp_path / "packed.npz"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert packed.stat().st_size < plain.stat().st_size // 100
    error, peak = _load_measured(packed)
    assert "is compressed" in str(error) and str(packed) in str(error)
    assert peak < 10 * 2**20
    assert load(plain).layers[0].params["weight"].shape == (4096, 4096)  # stored: fine


def test_a_stored_entry_claiming_more_bytes_than_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    save(Sequential(Dense(3, 2, rng=0)), path)
    data = bytearray(path.read_bytes())
    # The central directory's uncompressed size of the first entry (offset 24 in
    # its record), set far beyond the file's size.
    cd = data.rfind(b"PK\x01\x02")
    while data.rfind(b"PK\x01\x02", 0, cd) != -1:
        cd = data.rfind(b"PK\x01\x02", 0, cd)
    data[cd + 24:cd + 28] = struct.pack("<I", 2**31)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="more than the whole file's"):
        load(path)


def test_huge_meta_is_rejected_before_it_is_read(tmp_path: Path) -> None:
    meta, arrays = parts()
    meta["comment"] = "x" * (4 << 20)   # 16 MB of UCS-4 text
    path = helpers.write_model_file(tmp_path / "m.npz", meta, arrays)
    error, peak = _load_measured(path)
    assert "__meta__ is" in str(error) and "more than the 1048576 allowed" in str(error)
    assert peak < 10 * 2**20


class PickleTrap:
    """Unpickling this creates (truncates) a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _object_array(marker: Path, shape=()) -> np.ndarray:
    array = np.empty(shape, dtype=object)
    array[...] = PickleTrap(str(marker))
    return array


def _assert_trap_is_armed(path: Path, marker: Path) -> None:
    """The trap works: loading with pickles allowed does create the marker."""
    with np.load(path, allow_pickle=True) as f:
        for name in f.files:
            if f[name].dtype == object:
                break
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("where", ["layers.1.weight", "layers.4.bias", "__meta__", "extra"])
def test_pickle_trap_is_never_unpickled(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "PWNED"
    meta, arrays = parts()
    table = helpers.arrays_table(arrays)
    shape = () if where == "__meta__" else (2, 2)
    if where == "__meta__":
        path = helpers.write_model_file(tmp_path / "trap.npz", _object_array(marker), arrays)
    else:
        arrays[where] = _object_array(marker, shape)
        path = helpers.write_model_file(tmp_path / "trap.npz", meta, arrays, table=table)
    _assert_trap_is_armed(path, marker)

    with pytest.raises(ModelFileError) as info:
        load(path)
    assert not marker.exists(), "loading the model file executed pickled code"
    assert str(path) in str(info.value)
    assert "object" in str(info.value) or "unexpected entry 'extra'" in str(info.value)

    with pytest.raises(ModelFileError):
        load_checkpoint(path)
    assert not marker.exists()


def test_pickle_trap_in_a_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    meta = {"format": "nnscratch.checkpoint", "version": 1, "config": {}, "dtype": "float32",
            "architecture": [{"type": "Dense", "in_features": 2, "out_features": 2}],
            "epoch": 0, "batch": 0, "n_train": 4, "seen": 0, "correct": 0, "history": {},
            "optimizer": {}, "rng_state": {}, "best": None}
    arrays = {f"{p}layers.0.{k}": np.zeros(s, np.float32) for p in ("model.", "optimizer.m.",
              "optimizer.v.") for k, s in (("weight", (2, 2)), ("bias", (2,)))}
    arrays["perm"] = np.arange(4)
    table = helpers.arrays_table(arrays)
    arrays["perm"] = _object_array(marker, (4,))
    path = helpers.write_model_file(tmp_path / "checkpoint.npz", meta, arrays, table=table)
    with pytest.raises(ModelFileError, match="'perm' has dtype object"):
        load_checkpoint(path)
    assert not marker.exists()


# ---- fuzzing ---------------------------------------------------------------------------
def _structure_positions(data: bytes) -> np.ndarray:
    """Byte positions of the zip headers, the .npy headers and the central directory."""
    positions: list[int] = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            start = info.header_offset
            name_len, extra_len = struct.unpack("<HH", data[start + 26:start + 30])
            positions += range(start, start + 30 + name_len + extra_len + 128)
    positions += range(data.index(b"PK\x01\x02"), len(data))
    return np.array(sorted(set(p for p in positions if p < len(data))))


def test_byte_flip_fuzz_only_raises_model_file_error(tmp_path: Path) -> None:
    # hidden=80: a 16x80 float32 weight is over 4 KiB, like every real weight
    # (zip checks a member's CRC only once it has been read to the end)
    model, probe = helpers.trained_small_model(hidden=80)
    source = tmp_path / "model.npz"
    save(model, source, class_names=["first class", "second class", "third class"])
    data = source.read_bytes()
    expected = model.predict(probe)
    structure = _structure_positions(data)
    rng = np.random.default_rng(2024)
    outcomes = {"rejected": 0, "loaded": 0}
    unexpected = []
    target = tmp_path / "mutant.npz"
    for i in range(400):
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            # half anywhere, half aimed at the structures a parser trusts
            pos = int(rng.integers(len(buf))) if i % 2 == 0 else int(rng.choice(structure))
            buf[pos] ^= int(rng.integers(1, 256))
        target.write_bytes(bytes(buf))
        try:
            loaded = load(target)
        except ModelFileError as exc:
            assert str(target) in str(exc)
            outcomes["rejected"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - any other type is the failure we look for
            unexpected.append(f"mutation {i}: {type(exc).__module__}.{type(exc).__name__}: {exc}")
            continue
        outcomes["loaded"] += 1
        assert np.array_equal(loaded.predict(probe), expected), \
            f"mutation {i} loaded but predicts differently"
    assert not unexpected, f"{len(unexpected)} mutations raised other errors:\n" + "\n".join(unexpected[:10])
    assert outcomes["rejected"] > 300


# ---- data files -------------------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    return struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape) + array.tobytes()


def _write_mnist_like(directory: Path, *, compress: bool = True) -> dict[str, Path]:
    """Four files in the right IDX format and shapes but not Fashion-MNIST's bytes."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 20, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=np.uint8)}
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, array in arrays.items():
        raw = _idx(array)
        paths[name] = directory / (f"{name}.gz" if compress else name)
        paths[name].write_bytes(gzip.compress(raw) if compress else raw)
    return paths


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NNSCRATCH_DATA", raising=False)
    monkeypatch.setattr(datasets, "BASE_URL", "http://127.0.0.1:9/")
    return tmp_path


def test_substituted_mnist_like_file_is_rejected_by_hash(isolated_cache: Path) -> None:
    paths = _write_mnist_like(isolated_cache / "data")
    with pytest.raises(DataError) as info:
        load_fashion_mnist(isolated_cache / "data")
    message = str(info.value)
    assert str(paths["train-images-idx3-ubyte"]) in message
    assert "SHA-256" in message and "not the expected Fashion-MNIST file" in message
    assert not (isolated_cache / "cache").exists() or not any((isolated_cache / "cache").rglob("*.npy"))


@pytest.mark.parametrize("keep", [10, 0.5, -8])
def test_truncated_gzip_data_file_is_rejected(isolated_cache: Path, keep) -> None:
    paths = _write_mnist_like(isolated_cache / "data")
    target = paths["t10k-labels-idx1-ubyte"]
    data = target.read_bytes()
    n = keep if isinstance(keep, int) and keep > 0 else (
        len(data) + keep if isinstance(keep, int) else int(len(data) * keep))
    target.write_bytes(data[:n])
    with pytest.raises(DataError) as info:
        datasets.read_idx_file(target, expect_magic=datasets.LABEL_MAGIC)
    assert str(target) in str(info.value)
    assert "corrupt or truncated" in str(info.value)


def test_labels_file_in_place_of_images_is_rejected(isolated_cache: Path) -> None:
    paths = _write_mnist_like(isolated_cache / "data", compress=False)
    images = paths["train-images-idx3-ubyte"]
    images.write_bytes(paths["train-labels-idx1-ubyte"].read_bytes())
    with pytest.raises(DataError) as info:
        load_fashion_mnist(isolated_cache / "data")
    assert str(images) in str(info.value)
    assert "expected IDX magic number 2051" in str(info.value)


def test_images_that_are_not_28x28_are_rejected(isolated_cache: Path) -> None:
    path = isolated_cache / "t10k-images-idx3-ubyte"
    path.write_bytes(_idx(np.zeros((3, 32, 32), np.uint8)))
    with pytest.raises(DataError, match="expected 28x28 images, found 32x32"):
        datasets.read_idx_file(path, expect_magic=datasets.IMAGE_MAGIC)


def test_bad_data_dir_through_the_cli_is_a_one_line_error(
        isolated_cache: Path, capsys: pytest.CaptureFixture) -> None:
    paths = _write_mnist_like(isolated_cache / "data")
    save(helpers.mnist_like_model(), isolated_cache / "model.npz")
    code = cli.main(["evaluate", str(isolated_cache / "model.npz"),
                     "--data-dir", str(isolated_cache / "data")])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("nnscratch evaluate: error: ")
    assert str(paths["t10k-images-idx3-ubyte"]) in err  # evaluate reads only the test pair


# ---- command lines ----------------------------------------------------------------------
USAGE_ERRORS = {
    "epochs 0": (["train", "--epochs", "0"], ["--epochs", "'0'"]),
    "epochs -3": (["train", "--epochs", "-3"], ["--epochs"]),
    "epochs not a number": (["train", "--epochs", "many"], ["--epochs", "'many'"]),
    "lr -1": (["train", "--lr", "-1"], ["--lr", "'-1'"]),
    "lr 0": (["train", "--lr", "0"], ["--lr", "'0'"]),
    "lr nan": (["train", "--lr", "nan"], ["--lr", "'nan'"]),
    "lr inf": (["train", "--lr", "inf"], ["--lr", "'inf'"]),
    "dropout 1.5": (["train", "--dropout", "1.5"], ["--dropout", "'1.5'"]),
    "dropout 1": (["train", "--dropout", "1"], ["--dropout", "'1'"]),
    "batch size 0": (["train", "--batch-size", "0"], ["--batch-size", "'0'"]),
    "hidden 0": (["train", "--hidden", "64", "0"], ["--hidden", "'0'"]),
    "flip 2": (["train", "--flip", "2"], ["--flip", "'2'"]),
    "shift beyond half the image": (["train", "--augment", "--max-shift", "14"],
                                    ["--max-shift", "invalid pixel shift (0 to 13) value", "'14'"]),
    "shift without augment": (["train", "--max-shift", "1"], ["add --augment"]),
    "flip without augment": (["train", "--flip", "0.3"], ["add --augment"]),
    "val size 60000": (["train", "--val-size", "60000"], ["--val-size", "60000"]),
    "unknown schedule": (["train", "--schedule", "linear"], ["--schedule", "'linear'"]),
    "unknown option": (["train", "--epoch", "3", "--learning-rate", "0.1"], ["unrecognized arguments"]),
    "unknown command": (["fit"], ["invalid choice: 'fit'"]),
    "no command": ([], ["required"]),
    "resume with options": (["train", "--resume", "{tmp}", "--epochs", "3"],
                            ["--resume", "--epochs"]),
    "resume without checkpoint": (["train", "--resume", "{tmp}/nowhere"],
                                  ["--resume", "no checkpoint.npz"]),
    "out is a file": (["train", "--out", "{tmp}/file.txt"], ["--out", "not a directory"]),
    "evaluate missing model": (["evaluate", "{tmp}/absent.npz"], ["absent.npz", "no such file"]),
    "evaluate directory as model": (["evaluate", "{tmp}"], ["is a folder without a model.npz"]),
    "predict missing model": (["predict", "{tmp}/absent.npz", "{tmp}/img.png"],
                              ["absent.npz", "no such file"]),
    "predict directory as model": (["predict", "{tmp}", "{tmp}/img.png"],
                                   ["is a folder without a model.npz"]),
    "predict without images": (["predict", "{tmp}/absent.npz"], ["required: IMAGE"]),
    "predict bad invert": (["predict", "{tmp}/m.npz", "x.png", "--invert", "maybe"], ["--invert"]),
    "predict top 0": (["predict", "{tmp}/m.npz", "x.png", "--top", "0"], ["--top", "'0'"]),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2_with_one_line_and_write_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        case: str) -> None:
    argv, fragments = USAGE_ERRORS[case]
    work = tmp_path / "work"
    work.mkdir()
    (work / "file.txt").write_text("not a directory")
    argv = [a.replace("{tmp}", str(work)) for a in argv]
    out = tmp_path / "run"
    if argv[:1] == ["train"] and "--out" not in argv:
        argv += ["--out", str(out)]
    monkeypatch.chdir(work)
    before = sorted(p.name for p in work.iterdir())

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, captured.err
    assert errors[0] == lines[-1] and errors[0].startswith("nnscratch")
    assert lines[0].startswith("usage: nnscratch")
    if argv and argv[0] in ("train", "evaluate", "predict"):  # the command's own usage
        assert lines[0].startswith(f"usage: nnscratch {argv[0]}"), lines[0]
        assert errors[0].startswith(f"nnscratch {argv[0]}: error:"), errors[0]
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert not out.exists()
    assert sorted(p.name for p in work.iterdir()) == before   # no runs/ directory either


@pytest.mark.parametrize("resume", [False, True], ids=["new run", "resume of another run"])
def test_out_holding_a_run_is_refused_and_left_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture, resume: bool) -> None:
    out = tmp_path / "run"
    out.mkdir()
    save(helpers.mnist_like_model(), out / "model.npz")
    data = (out / "model.npz").read_bytes()
    argv = ["train", "--epochs", "1", "--out", str(out)]
    if resume:  # continuing another run into this directory would overwrite it too
        source = tmp_path / "interrupted"
        source.mkdir()
        (source / "checkpoint.npz").write_bytes(b"never read: --out is checked first")
        argv = ["train", "--resume", str(source), "--out", str(out)]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # A finished run: resuming it would only write the same results again.
    assert f"--out {out} already holds a finished run" in err and "--resume" not in err
    assert sorted(p.name for p in out.iterdir()) == ["model.npz"]
    assert (out / "model.npz").read_bytes() == data


def test_ctrl_c_while_loading_the_data_is_one_line_and_exit_130(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_fashion_mnist", interrupted)
    assert cli.main(["train", "--epochs", "1", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == "nnscratch train: interrupted"
    assert not (tmp_path / "run").exists()


def test_evaluate_with_a_malformed_model_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "model.npz"
    path.write_bytes(b"not a zip")
    assert cli.main(["evaluate", str(path)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"nnscratch evaluate: error: {path}: not a readable")


# ---- image batches given to model.predict -----------------------------------------------
@pytest.fixture(scope="module")
def mnist_model():
    return helpers.mnist_like_model()


def _with(value, index=(0, 3, 4)):
    x = np.zeros((2, 28, 28), np.float32)
    x[index] = value
    return x


PREDICT_ERRORS = {
    "27x27 images": (np.zeros((2, 27, 27), np.uint8), ["expected shape (N, 784) or (N, 28, 28)",
                                                       "(2, 27, 27)"]),
    "a single flat image": (np.zeros(784, np.uint8), ["(784,)", "pass x[None]"]),
    "a single 28x28 image": (np.zeros((28, 28), np.uint8), ["expected shape", "(28, 28)"]),
    "785 values": (np.zeros((3, 785), np.float32), ["(3, 785)"]),
    "NaN pixel": (_with(np.nan), ["NaN or infinite"]),
    "inf pixel": (_with(np.inf), ["NaN or infinite"]),
    "-inf pixel": (_with(-np.inf), ["NaN or infinite"]),
    "object dtype": (np.zeros((2, 28, 28), dtype=object), ["dtype object"]),
    "string dtype": (np.full((1, 784), "0"), ["expected uint8 pixels", "<U1"]),
    "complex dtype": (np.zeros((1, 784), np.complex64), ["complex64"]),
    "bool dtype": (np.zeros((1, 784), bool), ["dtype bool"]),
    "ragged rows": (np.array([np.zeros(784), np.zeros(10)], dtype=object), ["dtype object"]),
}


@pytest.mark.parametrize("case", list(PREDICT_ERRORS))
def test_predict_rejects_bad_batches_with_a_clear_message(mnist_model, case: str) -> None:
    x, fragments = PREDICT_ERRORS[case]
    with pytest.raises(ValueError) as info:
        mnist_model.predict(x)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"
    with pytest.raises(ValueError):
        mnist_model.evaluate(x, np.zeros(len(x) if np.ndim(x) else 1, np.int64))


@pytest.mark.parametrize("x", [np.zeros((0, 28, 28), np.uint8), np.zeros((0, 784), np.float32)],
                         ids=["empty batch", "empty flat batch"])
def test_empty_batches_predict_nothing_and_evaluate_refuses(mnist_model, x) -> None:
    assert mnist_model.predict(x).shape == (0, 10)
    with pytest.raises(ValueError, match=r"empty batch, shape \(0, "):
        mnist_model.evaluate(x, np.zeros(0, np.int64))


def _png(path: Path, side: int = 28) -> Path:
    from PIL import Image
    rng = np.random.default_rng(side)
    Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(path)
    return path


def test_cli_predict_answers_good_images_and_reports_each_bad_one(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_path = tmp_path / "model.npz"
    save(helpers.mnist_like_model(), model_path)
    good = _png(tmp_path / "good.png")
    big = _png(tmp_path / "big.png", 90)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    missing = tmp_path / "missing.png"
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_png(tmp_path / "whole.png", 64).read_bytes()[:300])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    bad = [text, missing, truncated, empty, folder]

    code = cli.main(["predict", str(model_path), str(good), *map(str, bad), str(big)])
    captured = capsys.readouterr()
    assert code == 1
    out_lines = captured.out.strip().splitlines()
    assert [line.split(":")[0] for line in out_lines] == [str(good), str(big)]
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == len(bad), captured.err
    for line, path in zip(err_lines, bad):
        assert line.startswith(f"nnscratch predict: error: {path}: ")
    assert "no such file" in err_lines[1]
    assert "empty file (0 bytes)" in err_lines[3]
    assert "a folder with no image files in it" in err_lines[4]


def test_cli_predict_shows_every_class_of_a_model_with_fewer_than_three(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_path = tmp_path / "two.npz"
    save(Sequential(Flatten(), Dense(784, 2, rng=0)), model_path)
    code = cli.main(["predict", str(model_path), str(_png(tmp_path / "good.png"))])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1 and len(out[0].split(":")[1].split(",")) == 2, out


def test_cli_predict_warns_about_a_blank_image_and_still_answers(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    model_path = tmp_path / "model.npz"
    save(helpers.mnist_like_model(), model_path)
    blank = tmp_path / "white.png"
    Image.fromarray(np.full((40, 30), 255, np.uint8)).save(blank)
    good = _png(tmp_path / "good.png")
    assert cli.main(["predict", str(model_path), str(blank), str(good)]) == 0
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.out.strip().splitlines()] == [str(blank), str(good)]
    assert captured.err.strip() == (f"nnscratch predict: warning: {blank}: the image looks blank "
                                    "(no item stands out from the background)")
    assert cli.main(["predict", str(model_path), str(blank), str(good), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert "blank" in results[0]["warning"] and "warning" not in results[1]


def _decompression_bomb(path: Path, width: int = 20000, height: int = 10000) -> Path:
    """A 24 KB 1-bit PNG declaring 200 million pixels (Pillow refuses to open it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + width // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_an_image_error(tmp_path: Path) -> None:
    bomb = _decompression_bomb(tmp_path / "bomb.png")
    with pytest.raises(ImageError) as info:
        load_image(bomb)
    assert str(bomb) in str(info.value)


def test_cli_predict_reports_a_decompression_bomb_and_answers_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_path = tmp_path / "model.npz"
    save(helpers.mnist_like_model(), model_path)
    bomb = _decompression_bomb(tmp_path / "bomb.png")
    good = _png(tmp_path / "good.png")
    code = cli.main(["predict", str(model_path), str(bomb), str(good)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.startswith(f"{good}: ")
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"nnscratch predict: error: {bomb}: ")


def test_cli_predict_json_includes_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_path = tmp_path / "model.npz"
    save(helpers.mnist_like_model(), model_path)
    good = _png(tmp_path / "good.png")
    code = cli.main(["predict", str(model_path), str(good), str(tmp_path / "nope.png"), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    results = json.loads(captured.out)
    assert [r["file"] for r in results] == [str(good), str(tmp_path / "nope.png")]
    assert len(results[0]["predictions"]) == 3
    assert "no such file" in results[1]["error"]
    assert captured.err == ""
