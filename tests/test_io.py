"""Model files: exact round trips, a NumPy-only readable layout, atomic saves."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import nnscratch.io as nnio
from nnscratch import Dense, Dropout, Flatten, ReLU, Sequential
from nnscratch.io import ModelFileError, load, save

try:
    from . import helpers  # when tests/ is a package
except ImportError:
    import helpers

VARIANTS = [
    pytest.param({"dropout": True, "flatten": True}, id="flatten-dropout"),
    pytest.param({"dropout": False, "flatten": True}, id="flatten"),
    pytest.param({"dropout": True, "flatten": False}, id="dropout"),
    pytest.param({"dropout": False, "flatten": False}, id="plain"),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_predicts_bit_identically(tmp_path: Path, dtype: str, variant: dict) -> None:
    model, probe = helpers.trained_small_model(dtype, **variant)
    path = tmp_path / "model.npz"
    save(model, path)
    loaded = load(path)

    assert loaded.dtype == np.dtype(dtype)
    assert loaded.config() == model.config()
    helpers.assert_same_arrays(loaded.state_dict(), model.state_dict(), "weights")
    # float input, uint8 input and small batches all give identical outputs
    assert np.array_equal(loaded.predict(probe), model.predict(probe))
    pixels = np.random.default_rng(5).integers(0, 256, probe.shape, dtype=np.uint8)
    assert np.array_equal(loaded.predict(pixels), model.predict(pixels))
    small = loaded.predict(probe, batch_size=3)
    assert np.array_equal(small, model.predict(probe, batch_size=3))
    # Across batch sizes only close: BLAS may pick other kernels for 3 rows than for
    # 20, which round differently on some CPUs (AVX2 OpenBLAS does, AVX-512 did not).
    np.testing.assert_allclose(small, model.predict(probe), rtol=0,
                               atol=10 * np.finfo(dtype).eps)
    assert loaded.predict(probe).dtype == np.dtype(dtype)


def test_loaded_model_is_in_eval_mode_and_keeps_class_names(tmp_path: Path) -> None:
    model, probe = helpers.trained_small_model()
    names = ["cat", "dog", "émoji ☂"]
    save(model, tmp_path / "m.npz", class_names=names)
    loaded = load(tmp_path / "m.npz")
    assert loaded.class_names == names
    assert not loaded.training
    # dropout is inactive in eval mode: the forward pass is deterministic
    assert np.array_equal(loaded.forward(probe), loaded.forward(probe))
    assert np.array_equal(loaded.forward(probe), model.eval().forward(probe))


def test_saving_does_not_change_the_model(tmp_path: Path) -> None:
    model, probe = helpers.trained_small_model()
    before, out = model.state_dict(), model.predict(probe)
    save(model, tmp_path / "m.npz")
    helpers.assert_same_arrays(model.state_dict(), before, "after save")
    assert np.array_equal(model.predict(probe), out)


def test_class_names_count_must_match_outputs_when_saving(tmp_path: Path) -> None:
    model = helpers.small_model()
    with pytest.raises(ValueError, match="2 class names"):
        save(model, tmp_path / "m.npz", class_names=["a", "b"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("names", [list(range(10)), [None] * 10, "abcdefghij"],
                         ids=["ints", "None", "one string"])
def test_class_names_must_be_strings_when_saving_so_load_never_rejects_them(
        tmp_path: Path, names) -> None:
    model = Sequential(Dense(4, 10), seed=0)
    with pytest.raises(TypeError, match="class_names must be a list of strings"):
        save(model, tmp_path / "m.npz", class_names=names)
    assert list(tmp_path.iterdir()) == []


def test_save_of_a_lone_layer_says_to_wrap_it(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"Sequential\(layer\)"):
        save(Dense(3, 2), tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing/sub/m.npz", "a_file/m.npz", ""])
def test_save_errors_name_the_target_not_a_temporary_file(tmp_path: Path, where: str) -> None:
    (tmp_path / "a_file").write_text("not a directory")
    target = str(tmp_path / where) if where else ""
    with pytest.raises(OSError) as info:
        save(helpers.small_model(), target)
    assert info.value.filename == target, info.value
    assert ".tmp" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_file_is_readable_with_numpy_alone(tmp_path: Path) -> None:
    model, _ = helpers.trained_small_model("float32")
    path = tmp_path / "model.npz"
    save(model, path, class_names=["x", "y", "z"])

    with np.load(path) as f:  # allow_pickle=False is NumPy's default
        names = set(f.files)
        meta = json.loads(str(f["__meta__"]))
        arrays = {k: f[k] for k in f.files if k != "__meta__"}
    assert names == {"__meta__", *model.state_dict()}
    for key in ("format", "version", "architecture", "dtype", "input", "class_names", "arrays"):
        assert key in meta, f"metadata lacks {key!r}"
    assert meta["format"] == "nnscratch.model"
    assert meta["version"] == 1
    assert meta["architecture"] == model.config()
    assert meta["architecture"][0] == {"type": "Flatten"}
    assert {"type": "Dropout", "p": 0.25} in meta["architecture"]
    assert meta["dtype"] == "float32"
    assert meta["input"]["shape"] == [4, 4] and meta["input"]["dtype"] == "uint8"
    assert meta["class_names"] == ["x", "y", "z"]
    assert set(meta["arrays"]) == set(arrays)
    state = model.state_dict()
    for name, array in arrays.items():
        entry = meta["arrays"][name]
        assert entry["shape"] == list(array.shape)
        assert entry["dtype"] == str(array.dtype) == "float32"
        assert entry["sha256"] == hashlib.sha256(array.tobytes()).hexdigest()
        assert np.array_equal(array, state[name])


def test_float64_file_records_float64(tmp_path: Path) -> None:
    model, _ = helpers.trained_small_model("float64")
    save(model, tmp_path / "m.npz")
    meta, arrays = helpers.read_npz_plain(tmp_path / "m.npz")
    assert meta["dtype"] == "float64"
    assert all(a.dtype == np.float64 for a in arrays.values())


# ---- atomic saves --------------------------------------------------------------------
def _save_original(tmp_path: Path):
    original, probe = helpers.trained_small_model()
    path = tmp_path / "model.npz"
    save(original, path)
    return path, path.read_bytes(), original.predict(probe), probe


def _assert_previous_file_intact(path: Path, data: bytes, expected: np.ndarray,
                                 probe: np.ndarray) -> None:
    assert path.read_bytes() == data
    assert np.array_equal(load(path).predict(probe), expected)
    assert helpers.temp_files(path.parent) == []
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_failure_inside_savez_leaves_previous_file_and_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data, expected, probe = _save_original(tmp_path)
    real_savez = np.savez

    def savez_then_fail(file, *args, **kwargs):
        real_savez(file, *args, **kwargs)       # half of the work is on disk ...
        file.write(b"garbage")
        raise OSError(28, "No space left on device")  # ... then the disk fills up

    monkeypatch.setattr(np, "savez", savez_then_fail)
    other = helpers.small_model(seed=99)
    with pytest.raises(OSError, match="No space left"):
        save(other, path)
    monkeypatch.undo()
    _assert_previous_file_intact(path, data, expected, probe)


def test_failure_of_the_rename_leaves_previous_file_and_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data, expected, probe = _save_original(tmp_path)

    def failing_replace(src, dst):
        raise PermissionError(13, "Permission denied", src, None, dst)  # as os.replace does

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PermissionError) as info:
        save(helpers.small_model(seed=99), path)
    assert info.value.filename == str(path)
    monkeypatch.undo()
    _assert_previous_file_intact(path, data, expected, probe)


def test_keyboard_interrupt_during_save_leaves_previous_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data, expected, probe = _save_original(tmp_path)

    def interrupted(file, *args, **kwargs):
        file.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(helpers.small_model(seed=99), path)
    monkeypatch.undo()
    _assert_previous_file_intact(path, data, expected, probe)


def test_failed_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(file, *args, **kwargs):
        raise OSError("disk error")

    monkeypatch.setattr(np, "savez", failing)
    with pytest.raises(OSError):
        save(helpers.small_model(), tmp_path / "model.npz")
    assert list(tmp_path.iterdir()) == []


def test_save_overwrites_an_existing_file(tmp_path: Path) -> None:
    path, _, _, probe = _save_original(tmp_path)
    other = helpers.small_model(seed=42)
    save(other, path)
    assert np.array_equal(load(path).predict(probe), other.predict(probe))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


# ---- where and how the file is written -------------------------------------------
@pytest.mark.parametrize("name", ["model", "model.bin", "weights.v2", "model.npz"])
def test_save_writes_exactly_the_given_path(tmp_path: Path, name: str) -> None:
    model, probe = helpers.trained_small_model()
    save(model, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert np.array_equal(load(tmp_path / name).predict(probe), model.predict(probe))


def test_save_accepts_a_str_path_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model, probe = helpers.trained_small_model()
    save(model, "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert np.array_equal(load("model").predict(probe), model.predict(probe))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_file_mode_follows_the_umask_not_0600(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        save(helpers.small_model(), tmp_path / "model.npz")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "model.npz").stat().st_mode)
    assert mode == 0o666 & ~umask
    if umask != 0o077:
        assert mode != 0o600


def test_load_accepts_str_paths_and_reports_the_path(tmp_path: Path) -> None:
    save(helpers.small_model(), tmp_path / "m.npz")
    assert isinstance(load(str(tmp_path / "m.npz")), Sequential)
    with pytest.raises(ModelFileError) as info:
        load(str(tmp_path / "absent.npz"))
    assert isinstance(info.value, ValueError)
    assert info.value.path == str(tmp_path / "absent.npz")
    assert str(tmp_path / "absent.npz") in str(info.value)


def test_hand_built_file_following_the_documented_layout_loads(tmp_path: Path) -> None:
    """The layout in the docs is the whole contract: a file written with NumPy
    alone from it loads and predicts like the model it was made from."""
    model = Sequential(Flatten(), Dense(9, 5), ReLU(), Dropout(0.1), Dense(5, 2), seed=3)
    meta, arrays = helpers.model_parts(model, ["no", "yes"])
    helpers.write_model_file(tmp_path / "hand.npz", meta, arrays)
    loaded = load(tmp_path / "hand.npz")
    x = np.random.default_rng(0).random((4, 3, 3))
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert loaded.class_names == ["no", "yes"]


def test_model_meta_is_what_save_writes(tmp_path: Path) -> None:
    model = helpers.small_model()
    save(model, tmp_path / "m.npz")
    meta, _ = helpers.read_npz_plain(tmp_path / "m.npz")
    expected = nnio.model_meta(model)
    assert {k: v for k, v in meta.items() if k != "arrays"} == json.loads(json.dumps(expected))


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(12, dtype=np.float64).reshape(3, 4).T,          # not C-contiguous
    np.arange(6, dtype=">f4").reshape(2, 3),                  # big-endian
    np.zeros((0, 5), np.float32),
    np.array(2.5, np.float32),                                # 0-d
    np.array("layers", dtype="U"),
], ids=["float32", "transposed", "big-endian", "empty", "0-d", "str"])
def test_sha256_of_hashes_the_c_order_bytes(array: np.ndarray) -> None:
    assert nnio.sha256_of(array) == hashlib.sha256(array.tobytes(order="C")).hexdigest()


def test_save_refuses_a_model_with_nan_weights_and_writes_nothing(tmp_path):
    model = Sequential(Flatten(), Dense(4, 3), seed=0)
    model.layers[1].params["weight"][1, 2] = np.nan
    with pytest.raises(ValueError, match=r"layers\.1\.weight contain NaN"):
        save(model, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("name", ["\x1b[2J", "two\nlines", "", "x" * 101])
def test_save_refuses_class_names_load_would_refuse(tmp_path, name):
    model = Sequential(Flatten(), Dense(4, 2), seed=0)
    with pytest.raises(ValueError, match="printable characters"):
        save(model, tmp_path / "m.npz", class_names=["ok", name])
    assert not (tmp_path / "m.npz").exists()


def test_class_names_may_use_any_printable_unicode(tmp_path):
    model = Sequential(Flatten(), Dense(4, 3), seed=0)
    names = ["T-shirt\u00a0top", "Kleid", "\u978b"]  # a no-break space, German, Chinese
    save(model, tmp_path / "m.npz", class_names=names)
    assert load(tmp_path / "m.npz").class_names == names
    with pytest.raises(ValueError, match="no control characters"):
        save(model, tmp_path / "m.npz", class_names=["a", "b\tc", "\u202eevil"])
