"""Tests for nnscratch.datasets.

Most tests use tiny synthetic IDX files and patch the expected-hash table to
match them; the last few load the real Fashion-MNIST from the Debian package
and must fail (not skip) when it is missing.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import struct
import threading
import tracemalloc
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

from nnscratch import datasets
from nnscratch.datasets import (
    CLASS_NAMES,
    IMAGE_MAGIC,
    LABEL_MAGIC,
    DataError,
    load_fashion_mnist,
    load_fashion_mnist_split,
    parse_idx,
    read_idx_file,
)

TRAIN_IMAGES, TRAIN_LABELS = datasets.SPLITS[0]
TEST_IMAGES, TEST_LABELS = datasets.SPLITS[1]


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array as IDX; the magic defaults to 'ubyte, array.ndim dims'."""
    if magic is None:
        magic = 0x0800 | array.ndim
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        TRAIN_IMAGES: rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, 12, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, 5, dtype=np.uint8),
    }


def write_dataset(
    directory: Path,
    arrays: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    *,
    compress: bool = True,
) -> dict[str, Path]:
    """Write the four files and make their hashes the expected ones."""
    directory.mkdir(parents=True, exist_ok=True)
    paths, hashes = {}, dict(datasets.SHA256)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        hashes[name] = hashlib.sha256(raw).hexdigest()
        path = directory / (f"{name}.gz" if compress else name)
        path.write_bytes(gzip.compress(raw) if compress else raw)
        paths[name] = path
    monkeypatch.setattr(datasets, "SHA256", hashes)
    return paths


def assert_arrays_equal(result, arrays: dict[str, np.ndarray]) -> None:
    (x_train, y_train), (x_test, y_test) = result
    np.testing.assert_array_equal(x_train, arrays[TRAIN_IMAGES])
    np.testing.assert_array_equal(y_train, arrays[TRAIN_LABELS])
    np.testing.assert_array_equal(x_test, arrays[TEST_IMAGES])
    np.testing.assert_array_equal(y_test, arrays[TEST_LABELS])
    for array in (x_train, y_train, x_test, y_test):
        assert array.dtype == np.uint8


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep synthetic tests away from the real cache, Debian files and network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("NNSCRATCH_DATA", raising=False)
    monkeypatch.setattr(datasets, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(datasets, "BASE_URL", "http://127.0.0.1:9/")
    return tmp_path


def user_cache(tmp_path: Path) -> Path:
    return tmp_path / "xdg-cache" / "nnscratch" / "fashion-mnist"


# --- parse_idx ----------------------------------------------------------------


def test_parse_idx_reads_images_and_labels():
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    labels = np.array([3, 9], dtype=np.uint8)

    parsed_images = parse_idx(idx_bytes(images), name="img", expect_magic=IMAGE_MAGIC)
    parsed_labels = parse_idx(idx_bytes(labels), name="lbl", expect_magic=LABEL_MAGIC)

    assert parsed_images.shape == (2, 28, 28) and parsed_images.dtype == np.uint8
    np.testing.assert_array_equal(parsed_images, images)
    np.testing.assert_array_equal(parsed_labels, labels)


def test_parse_idx_rejects_wrong_magic_number():
    labels_file = idx_bytes(np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match=r"some-file.*expected IDX magic number 2051.*found 2049"):
        parse_idx(labels_file, name="some-file", expect_magic=IMAGE_MAGIC)


def test_parse_idx_points_out_still_compressed_data():
    compressed = gzip.compress(idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(DataError, match="gzip"):
        parse_idx(compressed, name="labels", expect_magic=LABEL_MAGIC)


def test_parse_idx_rejects_truncated_header():
    data = idx_bytes(np.zeros((1, 28, 28), np.uint8))[:10]
    with pytest.raises(DataError, match="16-byte IDX header.*truncated"):
        parse_idx(data, name="img", expect_magic=IMAGE_MAGIC)


def test_parse_idx_rejects_truncated_payload():
    data = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))[:-1]
    expected = r"img: .*2352 data bytes, but found 2351 \(the file is truncated\)"
    with pytest.raises(DataError, match=expected):
        parse_idx(data, name="img", expect_magic=IMAGE_MAGIC)


def test_parse_idx_rejects_trailing_bytes():
    data = idx_bytes(np.zeros(5, dtype=np.uint8)) + b"\x00\x00"
    with pytest.raises(DataError, match="2 unexpected trailing bytes"):
        parse_idx(data, name="lbl", expect_magic=LABEL_MAGIC)


def test_parse_idx_checks_length_before_trusting_a_huge_declared_shape():
    # Declares 4e9 * 28 * 28 bytes (~3 TB) but holds 10: must be a clean
    # DataError, not a MemoryError or a slow allocation.
    data = struct.pack(">IIII", IMAGE_MAGIC, 4_000_000_000, 28, 28) + bytes(10)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="truncated"):
            parse_idx(data, name="img", expect_magic=IMAGE_MAGIC)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # nothing of the declared size was allocated


def test_parse_idx_rejects_images_that_are_not_28x28():
    data = idx_bytes(np.zeros((2, 27, 27), dtype=np.uint8))
    with pytest.raises(DataError, match="expected 28x28 images, found 27x27"):
        parse_idx(data, name="img", expect_magic=IMAGE_MAGIC)


# --- read_idx_file ------------------------------------------------------------


def test_read_idx_file_reads_gzip_and_raw_files(tmp_path: Path):
    labels = np.array([1, 2, 3], dtype=np.uint8)
    (tmp_path / "l.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    (tmp_path / "l").write_bytes(idx_bytes(labels))
    for name in ("l.gz", "l"):
        parsed = read_idx_file(tmp_path / name, expect_magic=LABEL_MAGIC)
        np.testing.assert_array_equal(parsed, labels)


def test_substituted_file_with_wrong_hash_is_rejected(tmp_path: Path):
    # Same format and shape (like MNIST digits standing in for Fashion-MNIST),
    # different content.
    genuine = idx_bytes(np.array([1, 2, 3], dtype=np.uint8))
    impostor = idx_bytes(np.array([3, 2, 1], dtype=np.uint8))
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(impostor))
    expected = hashlib.sha256(genuine).hexdigest()
    found = hashlib.sha256(impostor).hexdigest()

    with pytest.raises(DataError) as info:
        read_idx_file(path, expect_magic=LABEL_MAGIC, sha256=expected)
    message = str(info.value)
    assert str(path) in message
    assert "not the expected Fashion-MNIST file" in message
    assert expected[:16] in message and found[:16] in message


def test_hash_is_checked_on_decompressed_bytes(tmp_path: Path):
    raw = idx_bytes(np.array([1, 2, 3], dtype=np.uint8))
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    parsed = read_idx_file(path, expect_magic=LABEL_MAGIC, sha256=hashlib.sha256(raw).hexdigest())
    np.testing.assert_array_equal(parsed, [1, 2, 3])
    # Debian recompresses the .gz files, so the hash of the compressed bytes is no proof.
    with pytest.raises(DataError, match="not the expected Fashion-MNIST file"):
        read_idx_file(path, expect_magic=LABEL_MAGIC,
                      sha256=hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.mark.parametrize("where", [0, 31, 63])
def test_a_hash_off_by_one_hex_digit_is_refused(tmp_path: Path, where: int):
    raw = idx_bytes(np.array([1, 2, 3], dtype=np.uint8))
    path = tmp_path / "labels"
    path.write_bytes(raw)
    digest = hashlib.sha256(raw).hexdigest()
    almost = digest[:where] + ("0" if digest[where] != "0" else "1") + digest[where + 1:]
    with pytest.raises(DataError, match="not the expected Fashion-MNIST file"):
        read_idx_file(path, expect_magic=LABEL_MAGIC, sha256=almost)


def test_corrupt_gzip_is_reported_with_the_file_name(tmp_path: Path):
    raw = idx_bytes(np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8))
    compressed = bytearray(gzip.compress(raw))
    middle = len(compressed) // 2
    compressed[middle:middle + 16] = bytes(16)
    path = tmp_path / "images.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(DataError, match=r"images\.gz: expected valid gzip data"):
        read_idx_file(path, expect_magic=IMAGE_MAGIC)


def test_non_gzip_file_with_gz_name_is_rejected(tmp_path: Path):
    path = tmp_path / "labels.gz"
    path.write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"labels\.gz: expected valid gzip data"):
        read_idx_file(path, expect_magic=LABEL_MAGIC)


def test_truncated_gzip_is_reported_with_the_file_name(tmp_path: Path):
    compressed = gzip.compress(idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8)))
    path = tmp_path / "images.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=r"images\.gz: expected valid gzip data.*EOFError"):
        read_idx_file(path, expect_magic=IMAGE_MAGIC)


def _peak_bytes(action) -> int:
    import tracemalloc
    tracemalloc.start()
    try:
        action()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_a_gzip_inflating_past_the_expected_size_is_refused_without_inflating_it(
        isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    paths = write_dataset(isolated / "data", arrays, monkeypatch)
    monkeypatch.setitem(datasets.MAX_SIZE, TEST_IMAGES, 16 + 5 * 28 * 28)
    # A valid header for 5 images, then 64 MB of zeros: a ~64 KB file.
    bomb = gzip.compress(idx_bytes(arrays[TEST_IMAGES]) + bytes(64 << 20), compresslevel=9)
    paths[TEST_IMAGES].write_bytes(bomb)
    assert len(bomb) < 1 << 20

    def load():
        with pytest.raises(DataError, match=r"holds more than the file's 3936 bytes "
                                            r"\(decompressed\)"):
            load_fashion_mnist_split("test", isolated / "data")

    assert _peak_bytes(load) < 4 << 20


def test_a_raw_file_larger_than_expected_is_refused_without_reading_it_all(
        isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    paths = write_dataset(isolated / "data", arrays, monkeypatch, compress=False)
    monkeypatch.setitem(datasets.MAX_SIZE, TEST_IMAGES, 16 + 5 * 28 * 28)
    with open(paths[TEST_IMAGES], "r+b") as handle:
        handle.truncate(1 << 30)  # sparse: 1 GB that takes no disk
    def load():
        with pytest.raises(DataError, match=r"holds more than the file's 3936 bytes\. "):
            load_fashion_mnist_split("test", isolated / "data")

    assert _peak_bytes(load) < 4 << 20


def test_the_expected_sizes_are_the_real_files(real_data_env):
    for name in datasets.FILE_NAMES:
        path = next(p for p in (datasets.DEBIAN_DIR / f"{name}.gz", datasets.DEBIAN_DIR / name)
                    if p.is_file())
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            assert len(handle.read()) == datasets.MAX_SIZE[name], name


def test_unreadable_file_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="could not read"):
        read_idx_file(tmp_path / "missing.gz", expect_magic=LABEL_MAGIC)


# --- load_fashion_mnist with synthetic files -----------------------------------


def test_load_from_data_dir_returns_keras_layout(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch)
    assert_arrays_equal(load_fashion_mnist(isolated / "data"), arrays)


def test_raw_uncompressed_files_are_accepted(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch, compress=False)
    assert_arrays_equal(load_fashion_mnist(str(isolated / "data")), arrays)


def test_image_and_label_count_mismatch_is_rejected(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    arrays[TRAIN_LABELS] = arrays[TRAIN_LABELS][:-1]
    write_dataset(isolated / "data", arrays, monkeypatch)
    with pytest.raises(DataError, match=r"holds 12 images but .*train-labels.* holds 11 labels"):
        load_fashion_mnist(isolated / "data")


def test_label_out_of_range_is_rejected(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    arrays[TEST_LABELS][3] = 10
    write_dataset(isolated / "data", arrays, monkeypatch)
    expected = r"t10k-labels.*expected labels 0\.\.9, found 10 at index 3"
    with pytest.raises(DataError, match=expected):
        load_fashion_mnist(isolated / "data")


def test_directory_missing_a_file_lists_what_was_looked_for(isolated: Path, monkeypatch):
    paths = write_dataset(isolated / "data", synthetic_arrays(), monkeypatch)
    paths[TEST_LABELS].unlink()
    with pytest.raises(DataError) as info:
        load_fashion_mnist(isolated / "data")
    message = str(info.value)
    assert str(isolated / "data") in message
    assert f"{TEST_LABELS}[.gz]" in message
    assert TRAIN_IMAGES not in message  # only the missing file is listed


def test_data_dir_is_the_only_place_searched_when_given(isolated: Path, monkeypatch):
    write_dataset(isolated / "good", synthetic_arrays(), monkeypatch)
    monkeypatch.setenv("NNSCRATCH_DATA", str(isolated / "good"))
    with pytest.raises(DataError, match="empty: the data directory does not exist"):
        load_fashion_mnist(isolated / "empty")
    (isolated / "empty").mkdir()
    with pytest.raises(DataError, match="did not find"):
        load_fashion_mnist(isolated / "empty")


def test_env_var_directory_is_preferred_over_debian_dir(isolated: Path, monkeypatch):
    env_arrays, debian_arrays = synthetic_arrays(1), synthetic_arrays(2)
    write_dataset(isolated / "debian", debian_arrays, monkeypatch)
    hashes = dict(datasets.SHA256)
    write_dataset(isolated / "env", env_arrays, monkeypatch)
    monkeypatch.setattr(datasets, "DEBIAN_DIR", isolated / "debian")
    monkeypatch.setenv("NNSCRATCH_DATA", str(isolated / "env"))

    assert_arrays_equal(load_fashion_mnist(), env_arrays)
    monkeypatch.delenv("NNSCRATCH_DATA")
    monkeypatch.setattr(datasets, "SHA256", hashes)
    assert_arrays_equal(load_fashion_mnist(), debian_arrays)


def test_incomplete_env_directory_falls_through_to_debian_dir(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "debian", arrays, monkeypatch)
    (isolated / "partial").mkdir()
    monkeypatch.setattr(datasets, "DEBIAN_DIR", isolated / "debian")
    monkeypatch.setenv("NNSCRATCH_DATA", str(isolated / "partial"))
    with pytest.warns(RuntimeWarning, match="holds 0 of the 4 Fashion-MNIST files"):
        assert_arrays_equal(load_fashion_mnist(download=False), arrays)
    monkeypatch.setenv("NNSCRATCH_DATA", str(isolated / "nowhere"))
    with pytest.warns(RuntimeWarning, match="nowhere does not exist; looking in the other places"):
        assert_arrays_equal(load_fashion_mnist(download=False), arrays)


def test_data_dir_that_is_a_file_or_unsearchable_is_a_data_error(isolated: Path, monkeypatch):
    (isolated / "file").write_text("not a directory")
    with pytest.raises(DataError, match="is a file; the data directory must be the directory"):
        load_fashion_mnist(isolated / "file")

    real_stat = os.stat

    def refuse(path, *args, **kwargs):  # a folder without the x bit (we are root)
        if Path(path).parent == isolated:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(datasets.os, "stat", refuse)
    with pytest.raises(DataError, match="cannot look for the Fashion-MNIST files there"):
        load_fashion_mnist(isolated)


def test_a_data_directory_that_cannot_be_searched_is_a_data_error(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "debian", arrays, monkeypatch)
    monkeypatch.setattr(datasets, "DEBIAN_DIR", isolated / "debian")
    too_long = isolated / ("a" * 5000)  # checking it fails: ENAMETOOLONG
    with pytest.raises(DataError, match=r"the data directory cannot be searched \(File name"):
        load_fashion_mnist_split("test", too_long)
    # From NNSCRATCH_DATA it is a warning, and the search goes on (as README says).
    monkeypatch.setenv("NNSCRATCH_DATA", str(too_long))
    with pytest.warns(RuntimeWarning, match=r"cannot be searched \(File name too long\); "
                                            "looking in the other places"):
        x, _ = load_fashion_mnist_split("test")
    np.testing.assert_array_equal(x, arrays[TEST_IMAGES])


def test_an_unsearchable_env_directory_warns_with_the_reason(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "env", arrays, monkeypatch)
    write_dataset(isolated / "debian", arrays, monkeypatch)
    monkeypatch.setattr(datasets, "DEBIAN_DIR", isolated / "debian")
    monkeypatch.setenv("NNSCRATCH_DATA", str(isolated / "env"))
    real_stat = os.stat

    def no_search(path, *args, **kwargs):  # what a folder without the x bit gives (we are root)
        if Path(path).parent == isolated / "env":
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(datasets.os, "stat", no_search)
    with pytest.warns(RuntimeWarning, match=r"env cannot be searched \(Permission denied\); "
                                            "looking in the other places"):
        x, _ = load_fashion_mnist_split("test")
    np.testing.assert_array_equal(x, arrays[TEST_IMAGES])
    with pytest.raises(DataError, match=r"env: cannot look for the Fashion-MNIST files there "
                                        r"\(Permission denied\)"):
        load_fashion_mnist_split("test", isolated / "env")


def test_complete_but_bad_directory_is_an_error_not_skipped(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "debian", arrays, monkeypatch)
    hashes = dict(datasets.SHA256)
    paths = write_dataset(isolated / "env", synthetic_arrays(7), monkeypatch)
    monkeypatch.setattr(datasets, "SHA256", hashes)  # env files now have wrong hashes
    monkeypatch.setattr(datasets, "DEBIAN_DIR", isolated / "debian")
    monkeypatch.setenv("NNSCRATCH_DATA", str(isolated / "env"))
    with pytest.raises(DataError, match="not the expected Fashion-MNIST file") as info:
        load_fashion_mnist()
    assert str(paths[TRAIN_IMAGES]) in str(info.value)


def test_offline_download_fails_with_instructions(isolated: Path):
    with pytest.raises(DataError) as info:
        load_fashion_mnist()  # nothing anywhere; BASE_URL is a closed local port
    message = str(info.value)
    assert "NNSCRATCH_DATA=" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "internet" in message
    assert "127.0.0.1:9" in message
    cache = user_cache(isolated)
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_a_failed_download_is_tried_once_with_a_short_timeout(isolated: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    # Fails fast by construction: one attempt, no retries, a bounded socket timeout.
    calls = []

    def unreachable(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(DataError, match="no route to host"):
        load_fashion_mnist()
    assert len(calls) == 1 and calls[0][0].endswith(".gz")
    assert calls[0][1] is not None and 0 < calls[0][1] <= 10



def test_download_false_never_touches_the_network(isolated: Path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network used despite download=False")

    monkeypatch.setattr(datasets.urllib.request, "urlopen", no_network)
    with pytest.raises(DataError, match="download=False"):
        load_fashion_mnist(download=False)


@pytest.fixture
def http_server(tmp_path: Path):
    """Serve tmp_path/served over HTTP on a free local port; yields the base URL."""
    root = tmp_path / "served"
    root.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_fetches_verifies_and_stores_files_in_the_cache(
    isolated: Path, http_server, monkeypatch
):
    arrays = synthetic_arrays()
    write_dataset(isolated / "served", arrays, monkeypatch)
    monkeypatch.setattr(datasets, "BASE_URL", http_server)

    assert_arrays_equal(load_fashion_mnist(), arrays)
    cache = user_cache(isolated)
    assert sorted(p.name for p in cache.iterdir() if p.is_file()) == sorted(
        f"{name}.gz" for name in datasets.FILE_NAMES
    )


def test_download_of_wrong_file_leaves_no_partial_file(isolated: Path, http_server, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "served", arrays, monkeypatch)
    wrong_hashes = dict(datasets.SHA256, **{TRAIN_IMAGES: "0" * 64})
    monkeypatch.setattr(datasets, "SHA256", wrong_hashes)
    monkeypatch.setattr(datasets, "BASE_URL", http_server)

    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: the downloaded file failed"):
        load_fashion_mnist()
    assert [p.name for p in user_cache(isolated).iterdir() if p.is_file()] == []


def test_a_download_larger_than_the_real_file_is_cut_off_and_discarded(
        isolated: Path, http_server, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "served", arrays, monkeypatch)
    (isolated / "served" / f"{TEST_LABELS}.gz").write_bytes(os.urandom(3 << 20))
    monkeypatch.setattr(datasets, "BASE_URL", http_server)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: the downloaded file failed "
                                        r"verification .*the server sent more than 14204 bytes"):
        load_fashion_mnist_split("test")
    assert sorted(p.name for p in user_cache(isolated).iterdir() if p.is_file()) == [
        f"{TEST_IMAGES}.gz"]  # the good one is kept, nothing of the other


def test_download_only_fetches_files_missing_from_the_cache(
    isolated: Path, http_server, monkeypatch
):
    arrays = synthetic_arrays()
    cached = write_dataset(user_cache(isolated), arrays, monkeypatch)
    cached[TEST_LABELS].rename(isolated / "served" / f"{TEST_LABELS}.gz")  # only this one is served
    monkeypatch.setattr(datasets, "BASE_URL", http_server)

    assert_arrays_equal(load_fashion_mnist(), arrays)
    assert (user_cache(isolated) / f"{TEST_LABELS}.gz").is_file()


def test_missing_file_on_server_is_a_data_error(isolated: Path, http_server, monkeypatch):
    write_dataset(isolated / "served", synthetic_arrays(), monkeypatch)
    (isolated / "served" / f"{TEST_LABELS}.gz").unlink()
    monkeypatch.setattr(datasets, "BASE_URL", http_server)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz failed \(HTTP Error 404"):
        load_fashion_mnist()
    assert not (user_cache(isolated) / f"{TEST_LABELS}.gz").exists()


# --- one split (load_fashion_mnist_split) -------------------------------------


def test_one_split_needs_only_its_own_two_files(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    paths = write_dataset(isolated / "data", arrays, monkeypatch)
    for name in (TRAIN_IMAGES, TRAIN_LABELS):
        paths[name].unlink()
    x, y = load_fashion_mnist_split("test", isolated / "data")
    np.testing.assert_array_equal(x, arrays[TEST_IMAGES])
    np.testing.assert_array_equal(y, arrays[TEST_LABELS])
    assert x.dtype == y.dtype == np.uint8 and not x.flags.writeable
    # The other split, and the whole set, still say exactly what is missing.
    for load in (lambda: load_fashion_mnist_split("train", isolated / "data"),
                 lambda: load_fashion_mnist(isolated / "data")):
        with pytest.raises(DataError) as info:
            load()
        message = str(info.value)
        assert f"{TRAIN_IMAGES}[.gz], {TRAIN_LABELS}[.gz]" in message
        assert f"{TEST_IMAGES}[.gz]" not in message
    with pytest.raises(DataError, match="expected the two Fashion-MNIST train files"):
        load_fashion_mnist_split("train", isolated / "data")


def test_one_split_returns_what_the_whole_set_does(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(isolated / "data")
    for split, (x, y) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
        xs, ys = load_fashion_mnist_split(split, isolated / "data")
        np.testing.assert_array_equal(xs, x)
        np.testing.assert_array_equal(ys, y)


def test_an_unknown_split_is_a_value_error(isolated: Path):
    for split in ("validation", "TEST", "", None, ["test"]):
        with pytest.raises(ValueError, match="expected 'train' or 'test'"):
            load_fashion_mnist_split(split, isolated)


def test_one_split_is_verified_like_the_whole_set(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    arrays[TEST_LABELS][3] = 10
    write_dataset(isolated / "data", arrays, monkeypatch)
    with pytest.raises(DataError, match=r"t10k-labels.*expected labels 0\.\.9, found 10"):
        load_fashion_mnist_split("test", isolated / "data")
    arrays = synthetic_arrays()
    arrays[TEST_LABELS] = arrays[TEST_LABELS][:-1]
    write_dataset(isolated / "data", arrays, monkeypatch)
    with pytest.raises(DataError, match=r"holds 5 images but .*t10k-labels.* holds 4 labels"):
        load_fashion_mnist_split("test", isolated / "data")


def test_the_search_takes_the_first_place_holding_the_split(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    paths = write_dataset(isolated / "env", arrays, monkeypatch)
    for name in (TRAIN_IMAGES, TRAIN_LABELS):
        paths[name].unlink()
    monkeypatch.setenv("NNSCRATCH_DATA", str(isolated / "env"))
    monkeypatch.setattr(datasets, "DEBIAN_DIR", isolated / "debian")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the env directory, with no warning
        x, _ = load_fashion_mnist_split("test", download=False)
    np.testing.assert_array_equal(x, arrays[TEST_IMAGES])
    with pytest.warns(RuntimeWarning, match="holds 2 of the 4 Fashion-MNIST files"):
        with pytest.raises(DataError, match="download=False"):
            load_fashion_mnist(download=False)
    with pytest.warns(RuntimeWarning, match="holds 0 of the 2 Fashion-MNIST train files"):
        with pytest.raises(DataError, match=f"{TRAIN_LABELS}, each .gz or raw"):
            load_fashion_mnist_split("train", download=False)


def test_a_split_download_fetches_only_that_split(isolated: Path, http_server, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "served", arrays, monkeypatch)
    monkeypatch.setattr(datasets, "BASE_URL", http_server)
    x, y = load_fashion_mnist_split("test")
    np.testing.assert_array_equal(y, arrays[TEST_LABELS])
    assert sorted(p.name for p in user_cache(isolated).glob("*.gz")) == [
        f"{TEST_IMAGES}.gz", f"{TEST_LABELS}.gz"]


def test_loading_one_split_keeps_the_other_in_the_array_cache(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch)
    load_fashion_mnist_split("test", isolated / "data")
    load_fashion_mnist_split("train", isolated / "data")  # adds to the cache, not replaces

    def must_not_verify(*args, **kwargs):
        raise AssertionError("source files were re-verified despite a valid cache")

    monkeypatch.setattr(datasets, "read_idx_file", must_not_verify)
    assert_arrays_equal(load_fashion_mnist(isolated / "data"), arrays)
    x, _ = load_fashion_mnist_split("test", isolated / "data")
    np.testing.assert_array_equal(x, arrays[TEST_IMAGES])


def test_a_split_from_other_files_is_reverified_and_the_rest_kept(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch)
    load_fashion_mnist(isolated / "data")
    # The same test files in another directory: the cache's test entries are for the
    # first place, so those two are verified again, and the train entries stay.
    other = isolated / "other"
    other.mkdir()
    for name in (TEST_IMAGES, TEST_LABELS):
        (other / f"{name}.gz").write_bytes((isolated / "data" / f"{name}.gz").read_bytes())
    verified = []
    real_read = datasets.read_idx_file

    def counting(path, **kwargs):
        verified.append(Path(path).name)
        return real_read(path, **kwargs)

    monkeypatch.setattr(datasets, "read_idx_file", counting)
    x, _ = load_fashion_mnist_split("test", other)
    np.testing.assert_array_equal(x, arrays[TEST_IMAGES])
    assert sorted(verified) == sorted([f"{TEST_IMAGES}.gz", f"{TEST_LABELS}.gz"])
    verified.clear()
    load_fashion_mnist_split("train", isolated / "data")
    assert verified == []  # still cached


# --- decoded-array cache ------------------------------------------------------


def test_cache_hit_returns_identical_arrays_without_reverifying(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch)
    first = load_fashion_mnist(isolated / "data")

    def must_not_verify(*args, **kwargs):
        raise AssertionError("source files were re-verified despite a valid cache")

    monkeypatch.setattr(datasets, "read_idx_file", must_not_verify)
    second = load_fashion_mnist(isolated / "data")
    assert_arrays_equal(second, arrays)
    for a, b in zip((*first[0], *first[1]), (*second[0], *second[1])):
        np.testing.assert_array_equal(a, b)
    assert not second[0][0].flags.writeable  # documented: read-only arrays


def test_cache_does_not_mask_a_source_file_replaced_in_place(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    paths = write_dataset(isolated / "data", arrays, monkeypatch, compress=False)
    load_fashion_mnist(isolated / "data")

    # Same size, different content, expected hashes unchanged: only the
    # mtime tells the cache that the file must be re-verified.
    path = paths[TRAIN_LABELS]
    before = path.stat()
    path.write_bytes(idx_bytes((arrays[TRAIN_LABELS] + 1) % 10))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_size == before.st_size
    with pytest.raises(DataError, match="train-labels.*not the expected Fashion-MNIST file"):
        load_fashion_mnist(isolated / "data")


def test_cache_is_invalidated_when_the_expected_hashes_change(isolated: Path, monkeypatch):
    paths = write_dataset(isolated / "data", synthetic_arrays(1), monkeypatch, compress=False)
    stats = {name: path.stat() for name, path in paths.items()}
    load_fashion_mnist(isolated / "data")

    # New content with identical sizes and mtimes: only the hash table differs.
    new_arrays = synthetic_arrays(2)
    write_dataset(isolated / "data", new_arrays, monkeypatch, compress=False)
    for name, path in paths.items():
        os.utime(path, ns=(stats[name].st_atime_ns, stats[name].st_mtime_ns))
    assert_arrays_equal(load_fashion_mnist(isolated / "data"), new_arrays)


def test_cache_does_not_mask_a_different_source_directory(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    good = write_dataset(isolated / "good", arrays, monkeypatch, compress=False)
    load_fashion_mnist(isolated / "good")

    # A bad copy elsewhere with the same sizes and mtimes must still be checked.
    hashes = dict(datasets.SHA256)
    bad = write_dataset(isolated / "bad", synthetic_arrays(9), monkeypatch, compress=False)
    monkeypatch.setattr(datasets, "SHA256", hashes)
    for name, path in bad.items():
        stat = good[name].stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DataError, match="not the expected Fashion-MNIST file"):
        load_fashion_mnist(isolated / "bad")


def test_damaged_array_cache_falls_back_to_verification(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch)
    load_fashion_mnist(isolated / "data")
    cache = user_cache(isolated) / datasets.ARRAY_CACHE_SUBDIR
    (cache / f"{TRAIN_IMAGES}.npy").write_bytes(b"garbage")

    assert_arrays_equal(load_fashion_mnist(isolated / "data"), arrays)
    # ...and the cache was rewritten.
    assert np.load(cache / f"{TRAIN_IMAGES}.npy").shape == (12, 28, 28)


@pytest.mark.parametrize("damage", [
    pytest.param(("manifest", b'{"sources": [], "shapes": {}}'), id="sources-a-list"),
    pytest.param(("manifest", b'{"sources": "abc", "shapes": {}}'), id="sources-a-string"),
    pytest.param(("manifest", b'{"sources": null}'), id="sources-null"),
    pytest.param(("manifest", b'[1, 2]'), id="manifest-a-list"),
    pytest.param(("npy", b""), id="npy-empty"),
    pytest.param(("npy", b"PK\x03\x04" + bytes(60)), id="npy-a-zip"),
])
def test_any_damage_to_the_cache_is_rebuilt_not_raised(isolated: Path, monkeypatch, damage):
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch)
    load_fashion_mnist(isolated / "data")
    cache = user_cache(isolated) / datasets.ARRAY_CACHE_SUBDIR
    what, data = damage
    (cache / (datasets.MANIFEST_NAME if what == "manifest" else f"{TEST_LABELS}.npy")
     ).write_bytes(data)
    for _ in range(2):  # rebuilt the first time, and used the second
        x, y = load_fashion_mnist_split("test", isolated / "data")
        np.testing.assert_array_equal(y, arrays[TEST_LABELS])
    assert_arrays_equal(load_fashion_mnist(isolated / "data"), arrays)
    assert np.load(cache / f"{TEST_LABELS}.npy").shape == (5,)


def test_cached_labels_out_of_range_fall_back_to_verification(isolated: Path, monkeypatch):
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch)
    load_fashion_mnist(isolated / "data")
    cached = user_cache(isolated) / datasets.ARRAY_CACHE_SUBDIR / f"{TRAIN_LABELS}.npy"
    data = bytearray(cached.read_bytes())
    data[-1] = 200  # the last label, edited in place: same size, same manifest
    cached.write_bytes(bytes(data))
    (_, y_train), _ = load_fashion_mnist(isolated / "data")
    assert y_train.max() <= 9
    assert_arrays_equal(load_fashion_mnist(isolated / "data"), arrays)


@pytest.mark.parametrize("name", [TRAIN_IMAGES, TRAIN_LABELS])
def test_a_cache_edited_with_plausible_values_is_rebuilt_not_used(isolated: Path, monkeypatch, name):
    # Same shapes, dtypes and label range, same manifest: only the hash can tell.
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch)
    load_fashion_mnist(isolated / "data")
    cached = user_cache(isolated) / datasets.ARRAY_CACHE_SUBDIR / f"{name}.npy"
    edited = np.load(cached).copy()
    edited[...] = 0  # every label "T-shirt/top", or every image black
    np.save(cached, edited)
    assert_arrays_equal(load_fashion_mnist(isolated / "data"), arrays)
    np.testing.assert_array_equal(np.load(cached), arrays[name])  # rewritten from the sources


def test_unwritable_cache_dir_still_loads_with_a_warning(isolated: Path, monkeypatch):
    # We run as root, where chmod cannot make a directory read-only, so put
    # the cache under a regular file: every mkdir there fails.
    blocker = isolated / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    arrays = synthetic_arrays()
    write_dataset(isolated / "data", arrays, monkeypatch)

    with pytest.warns(RuntimeWarning, match="could not write the Fashion-MNIST array cache"):
        result = load_fashion_mnist(isolated / "data")
    assert_arrays_equal(result, arrays)


def test_no_temp_files_are_left_in_the_cache(isolated: Path, monkeypatch):
    write_dataset(isolated / "data", synthetic_arrays(), monkeypatch)
    load_fashion_mnist(isolated / "data")
    cache = user_cache(isolated) / datasets.ARRAY_CACHE_SUBDIR
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [datasets.MANIFEST_NAME] + [f"{name}.npy" for name in datasets.FILE_NAMES]
    )


# --- the real data (Debian package dataset-fashion-mnist) -------------------------
# These deliberately fail rather than skip when the data is missing.


@pytest.fixture
def real_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("NNSCRATCH_DATA", raising=False)


def test_real_fashion_mnist_has_keras_shapes_and_balanced_classes(real_data_env):
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(download=False)
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert y_train.shape == (60000,) and y_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28) and x_test.dtype == np.uint8
    assert y_test.shape == (10000,) and y_test.dtype == np.uint8
    assert len(CLASS_NAMES) == 10
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), [1000] * 10)
    assert x_train.max() == 255 and x_train.min() == 0


def test_real_fashion_mnist_second_load_comes_from_the_cache_and_is_equal(
        real_data_env, monkeypatch):
    first = load_fashion_mnist(download=False)

    def must_not_verify(*args, **kwargs):  # what a load without the cache would call
        raise AssertionError("the real files were decompressed and verified again")

    monkeypatch.setattr(datasets, "read_idx_file", must_not_verify)
    second = load_fashion_mnist(download=False)
    for a, b in zip((*first[0], *first[1]), (*second[0], *second[1])):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
