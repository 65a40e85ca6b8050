"""Fashion-MNIST as verified NumPy arrays.

``load_fashion_mnist()`` finds the four original IDX files (gzip-compressed or
raw), checks them byte for byte against known SHA-256 hashes, and returns them
like ``keras.datasets.fashion_mnist.load_data()``; ``load_fashion_mnist_split()``
does the same for one split's two files.  Every problem with the data
raises :class:`DataError` with a message that says which file is wrong and how
to fix it.

Verifying means decompressing and hashing ~47 MB (about half a second), so the
decoded arrays are also cached as ``.npy`` files next to a small manifest; later
calls memory-map them and hash them again as the IDX files they came from
(~0.04 s), as long as the source files are unchanged.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import json
import math
import os
import stat
import struct
import sys
import time
import urllib.request
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .atomic import atomic_write

__all__ = [
    "CLASS_NAMES",
    "DataError",
    "load_fashion_mnist",
    "load_fashion_mnist_split",
    "parse_idx",
    "read_idx_file",
]

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

IMAGE_MAGIC = 2051  # IDX: unsigned bytes, 3 dims (count, rows, cols)
LABEL_MAGIC = 2049  # IDX: unsigned bytes, 1 dim (count)
IMAGE_SIDE = 28

# (images, labels) file names per split, in the order the arrays are returned.
SPLITS: tuple[tuple[str, str], ...] = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
SPLIT_NAMES: dict[str, tuple[str, str]] = {"train": SPLITS[0], "test": SPLITS[1]}
FILE_NAMES: tuple[str, ...] = tuple(name for pair in SPLITS for name in pair)
_MAGIC = {name: IMAGE_MAGIC if "images" in name else LABEL_MAGIC for name in FILE_NAMES}

# SHA-256 of the *decompressed* files: Debian recompresses the .gz files, so
# hashes of the compressed bytes differ between sources while these do not.
SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# Decompressed sizes: a file larger than this is not the one wanted, and is never read
# further (a small .gz can inflate to gigabytes).
MAX_SIZE: dict[str, int] = {
    "train-images-idx3-ubyte": 16 + 60000 * IMAGE_SIDE * IMAGE_SIDE,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * IMAGE_SIDE * IMAGE_SIDE,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}

# Module-level so tests (and unusual setups) can redirect them.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # package dataset-fashion-mnist
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DOWNLOAD_TIMEOUT = 10.0  # seconds per socket operation
ENV_VAR = "NNSCRATCH_DATA"
ARRAY_CACHE_SUBDIR = "arrays-v1"  # bump when the cache layout changes
MANIFEST_NAME = "manifest.json"

_REPLACE_HINT = (
    "Delete or replace this file (a good copy comes with "
    "`sudo apt-get install dataset-fashion-mnist`), or point the data directory "
    f"(--data-dir, data_dir in Python) or {ENV_VAR} at a directory holding the real "
    "Fashion-MNIST files."
)


class DataError(ValueError):
    """The Fashion-MNIST data is missing, damaged, or not the expected file.

    The message names the file, what was expected, what was found, and how to
    fix it.
    """


Log = Callable[[str], None]
Fingerprint = dict[str, dict[str, object]]  # file name -> path, size, mtime, hash


def parse_idx(data: bytes, *, name: str, expect_magic: int) -> np.ndarray:
    """Parse one decompressed IDX file of unsigned bytes.

    ``name`` is only used in error messages.  For images (magic 2051) the
    result has shape ``(count, 28, 28)``; for labels (magic 2049) ``(count,)``.
    The returned array is a read-only view of ``data``.

    Raises:
        DataError: wrong magic number, truncated header, a payload that is
            shorter or longer than the declared shape, or images not 28x28.
    """
    if len(data) < 4:
        raise DataError(
            f"{name}: expected an IDX file, found only {len(data)} bytes "
            f"(the file is empty or truncated). {_REPLACE_HINT}"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != expect_magic:
        kind = {IMAGE_MAGIC: "images", LABEL_MAGIC: "labels"}.get(expect_magic, "IDX")
        found = {IMAGE_MAGIC: " (an images file)", LABEL_MAGIC: " (a labels file)"}.get(magic, "")
        if data[:2] == b"\x1f\x8b":
            found = " (gzip-compressed data: give the file a .gz suffix)"
        raise DataError(
            f"{name}: expected IDX magic number {expect_magic} ({kind}), "
            f"found {magic}{found}. {_REPLACE_HINT}"
        )

    ndim = magic & 0xFF  # the last magic byte is the number of dimensions
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{name}: expected a {header_len}-byte IDX header, found only "
            f"{len(data)} bytes (the file is truncated). {_REPLACE_HINT}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    if expect_magic == IMAGE_MAGIC and dims[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{name}: expected {IMAGE_SIDE}x{IMAGE_SIDE} images, found "
            f"{dims[1]}x{dims[2]}; this is not Fashion-MNIST. {_REPLACE_HINT}"
        )

    # Compare with the real byte count using Python ints *before* touching
    # NumPy, so a corrupt header declaring a huge shape cannot allocate.
    expected = math.prod(dims)
    found_len = len(data) - header_len
    if found_len != expected:
        problem = (
            "the file is truncated" if found_len < expected
            else f"{found_len - expected} unexpected trailing bytes"
        )
        raise DataError(
            f"{name}: the header declares shape {dims}, i.e. {expected} data "
            f"bytes, but found {found_len} ({problem}). {_REPLACE_HINT}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx_file(
    path: str | os.PathLike[str], *, expect_magic: int, sha256: str | None = None,
    max_size: int | None = None,
) -> np.ndarray:
    """Read and parse an IDX file, gzip-compressed if its name ends in ``.gz``.

    If ``sha256`` is given it must match the hash of the *decompressed* bytes.
    If ``max_size`` is given, a file holding more (decompressed) bytes is refused
    after reading ``max_size + 1`` of them, however large it is.

    Raises:
        DataError: the file cannot be read, is not valid gzip, is larger than
            ``max_size``, fails :func:`parse_idx`, or has a different hash.
    """
    path = Path(path)
    limit = -1 if max_size is None else max_size + 1
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: could not read the file ({exc}). {_REPLACE_HINT}") from None
    with handle:
        if path.suffix == ".gz":
            try:
                with gzip.GzipFile(fileobj=handle) as unzipped:
                    data = unzipped.read(limit)
            except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
                raise DataError(
                    f"{path}: expected valid gzip data, found a corrupt or truncated "
                    f"file ({type(exc).__name__}: {exc}). {_REPLACE_HINT}"
                ) from None
        else:
            try:
                data = handle.read(limit)
            except OSError as exc:
                raise DataError(
                    f"{path}: could not read the file ({exc}). {_REPLACE_HINT}") from None
    if max_size is not None and len(data) > max_size:
        raise DataError(
            f"{path}: this is not the expected Fashion-MNIST file: it holds more than "
            f"the file's {max_size} bytes{' (decompressed)' if path.suffix == '.gz' else ''}. "
            f"{_REPLACE_HINT}"
        )

    array = parse_idx(data, name=str(path), expect_magic=expect_magic)
    # Hash after parsing: a truncated file gets the more precise message above.
    if sha256 is not None:
        found = hashlib.sha256(data).hexdigest()
        if found != sha256.lower():
            raise DataError(
                f"{path}: this is not the expected Fashion-MNIST file: SHA-256 of "
                f"the decompressed data is {found[:16]}..., expected {sha256[:16]}... "
                "(for example, the MNIST digits file has the same format but a "
                f"different hash). {_REPLACE_HINT}"
            )
    return array


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    verbose: bool = False,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Return ``(x_train, y_train), (x_test, y_test)`` as verified uint8 arrays.

    Shapes are (60000, 28, 28), (60000,), (10000, 28, 28) and (10000,); labels
    index :data:`CLASS_NAMES`.  The arrays are **read-only** (memory-mapped from
    the cache, or views of the decompressed files): use ``.astype(...)`` or
    ``.copy()`` before modifying them in place.

    Each of the four files may be ``NAME.gz`` or raw ``NAME``.  The first
    directory holding all four is used, searched in this order:

    1. ``data_dir`` if given (then nothing else is searched);
    2. ``$NNSCRATCH_DATA``;
    3. the user cache: ``$XDG_CACHE_HOME/nnscratch/fashion-mnist`` or
       ``~/.cache/nnscratch/fashion-mnist``;
    4. :data:`DEBIAN_DIR` (Debian package ``dataset-fashion-mnist``);
    5. if ``download`` is true, download from :data:`BASE_URL` into the cache.

    A directory that holds the files but fails verification raises rather
    than being skipped, so a bad copy is never silently shadowed.

    Raises:
        DataError: the data is missing, damaged or not Fashion-MNIST.
    """
    arrays = _load(FILE_NAMES, data_dir, download, verbose)
    (train_x, train_y), (test_x, test_y) = SPLITS
    return (arrays[train_x], arrays[train_y]), (arrays[test_x], arrays[test_y])


def load_fashion_mnist_split(
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    verbose: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` of one split, ``"train"`` or ``"test"``, as
    :func:`load_fashion_mnist` does, but needing only that split's two files:
    evaluating a model takes only the test pair.

    The search is the same, for a directory holding the split's two files.

    Raises:
        ValueError: ``split`` is neither "train" nor "test".
        DataError: the data is missing, damaged or not Fashion-MNIST.
    """
    if not isinstance(split, str) or split not in SPLIT_NAMES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    images, labels = SPLIT_NAMES[split]
    arrays = _load((images, labels), data_dir, download, verbose)
    return arrays[images], arrays[labels]


def _load(names: tuple[str, ...], data_dir: str | os.PathLike[str] | None, download: bool,
          verbose: bool) -> dict[str, np.ndarray]:
    """The verified arrays of the files ``names`` (whole splits), cached or decoded."""
    def log(message: str) -> None:
        if verbose:
            print(f"[nnscratch] {message}", file=sys.stderr)

    sources = _find_sources(data_dir, download, log, names)
    fingerprint = _fingerprint(sources)
    arrays = _load_array_cache(fingerprint, log)
    if arrays is None:
        arrays = _verify_sources(sources, log)
        _write_array_cache(fingerprint, arrays, log)
    return arrays


def _kind(names: tuple[str, ...]) -> str:
    """'Fashion-MNIST files', or 'Fashion-MNIST test files' for one split's pair."""
    split = next((s for s, pair in SPLIT_NAMES.items() if pair == tuple(names)), None)
    return f"Fashion-MNIST {split} files" if split else "Fashion-MNIST files"


def _describe(names: tuple[str, ...]) -> str:
    """'the four Fashion-MNIST files' or 'the two Fashion-MNIST test files'."""
    return f"the {('two', 'four')[len(names) == len(FILE_NAMES)]} {_kind(names)}"


# --- locating the files -------------------------------------------------------


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nnscratch" / "fashion-mnist"


def _locate(directory: Path, names: tuple[str, ...] = FILE_NAMES) -> dict[str, Path]:
    """Map each of ``names`` to ``NAME.gz`` or ``NAME`` in ``directory``, if present."""
    try:
        return _files_in(directory, names)
    except OSError as exc:  # e.g. a directory we may not search
        raise _cannot_search(directory, exc) from None


def _files_in(directory: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """``_locate``, raising the OSError of a directory that cannot be searched."""
    found = {}
    for name in names:
        for candidate in (directory / f"{name}.gz", directory / name):
            mode = _mode(candidate)
            if mode is not None and stat.S_ISREG(mode):
                found[name] = candidate
                break
    return found


def _mode(path: Path) -> int | None:
    """``path``'s st_mode, or None if nothing is there (or a dangling or looping
    link); any other OSError (no search permission, a name too long) is raised.
    os.stat, not Path.is_file/exists: since Python 3.14 those return False on any
    OSError, which would make an unsearchable directory look empty."""
    try:
        return os.stat(path).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def _cannot_search(directory: Path, exc: OSError) -> DataError:
    return DataError(f"{directory}: cannot look for the Fashion-MNIST files there "
                     f"({exc.strerror or exc})")


def _find_sources(
    data_dir: str | os.PathLike[str] | None, download: bool, log: Log,
    names: tuple[str, ...] = FILE_NAMES,
) -> dict[str, Path]:
    what = _describe(names)
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        default_places = ("or leave the data directory out (no --data-dir, no data_dir in "
                          "Python) to use the default locations.")
        state = _state(directory)
        if state == "does not exist":
            raise DataError(f"{directory}: the data directory does not exist. Create it with "
                            f"{what}, {default_places}")
        if state == "is not a directory":
            raise DataError(f"{directory}: is a file; the data directory must be the directory "
                            f"holding {what}")
        if state != "is a directory":
            raise DataError(f"{directory}: the data directory {state}")
        found = _locate(directory, names)
        missing = [name for name in names if name not in found]
        if missing:
            wanted = ", ".join(f"{name}[.gz]" for name in missing)
            raise DataError(
                f"{directory}: expected {what}, but did not "
                f"find {wanted}. Put them there (as NAME.gz or raw NAME), {default_places}"
            )
        return found

    env_dir = os.environ.get(ENV_VAR)
    searched = [Path(env_dir).expanduser()] if env_dir else []
    searched += [_user_cache_dir(), Path(DEBIAN_DIR)]
    for directory in searched:
        chosen = env_dir and directory == searched[0]
        blocked = None
        try:
            found = _files_in(directory, names)
        except OSError as exc:
            if not chosen:
                raise _cannot_search(directory, exc) from None
            found, blocked = {}, exc  # the warning below says why
        if len(found) == len(names):
            log(f"using Fashion-MNIST files in {directory}")
            return found
        log(f"{directory}: {len(found)} of {len(names)} files present, skipping")
        if chosen:
            # The user pointed us there on purpose: say why it was not used.
            state = (f"cannot be searched ({blocked.strerror or blocked})" if blocked
                     else _state(directory))
            if state == "is a directory":
                state = f"holds {len(found)} of the {len(names)} {_kind(names)}"
            warnings.warn(f"nnscratch: {ENV_VAR}={env_dir} {state}; looking in the other "
                          "places instead", RuntimeWarning, stacklevel=4)

    if not download:
        raise _not_found_error(searched, "download=False, so nothing was downloaded", names)
    return _download(_user_cache_dir(), searched, log, names)


def _state(directory: Path) -> str:
    """'is a directory', 'does not exist', 'is not a directory', or 'cannot be
    searched (why)' for a path whose checking itself fails (a name too long, a
    parent we may not enter)."""
    try:
        mode = _mode(directory)
    except OSError as exc:
        return f"cannot be searched ({exc.strerror or exc})"
    if mode is None:
        return "does not exist"
    return "is a directory" if stat.S_ISDIR(mode) else "is not a directory"


def _not_found_error(searched: list[Path], reason: str,
                     names: tuple[str, ...] = FILE_NAMES) -> DataError:
    where = ", ".join(str(d) for d in searched)
    return DataError(
        f"Fashion-MNIST files ({', '.join(names)}, each .gz or raw) not "
        f"found in: {where}; {reason}. To fix: set {ENV_VAR}=/path/to/dir holding "
        f"{_describe(names)}, or run `sudo apt-get install dataset-fashion-mnist`, "
        "or connect to the internet and let the loader (download=True) "
        f"fetch them from {BASE_URL}."
    )


def _download(cache_dir: Path, searched: list[Path], log: Log,
              names: tuple[str, ...] = FILE_NAMES) -> dict[str, Path]:
    """Fetch missing ``.gz`` files into ``cache_dir``; each is verified before it lands."""
    url = BASE_URL
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        present = _locate(cache_dir, names)
        for name in names:
            if name in present:
                continue
            url = f"{BASE_URL.rstrip('/')}/{name}.gz"
            log(f"downloading {url}")
            atomic_write(
                cache_dir / f"{name}.gz",
                # (deflate adds at most 5 bytes per 64 KB block, gzip ~20 of header)
                lambda f, url=url, name=name: _fetch(url, f, MAX_SIZE[name] * 101 // 100 + 4096),
                check=lambda tmp, name=name: read_idx_file(
                    tmp, expect_magic=_MAGIC[name], sha256=SHA256[name], max_size=MAX_SIZE[name]
                ),
                keep_suffix=True,  # read_idx_file tells .gz by the name
            )
    except DataError as exc:
        raise DataError(
            f"{url}: the downloaded file failed verification and was discarded "
            f"({exc}). The server may be serving a different file; set {ENV_VAR} "
            "or install dataset-fashion-mnist instead."
        ) from None
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise _not_found_error(searched, f"downloading {url} failed ({exc})", names) from None
    return _locate(cache_dir, names)


def _fetch(url: str, out: BinaryIO, max_size: int) -> None:
    """Copy ``url`` into ``out``, refusing more than ``max_size`` bytes."""
    written = 0
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
        while chunk := response.read(1 << 20):
            written += len(chunk)
            if written > max_size:
                raise DataError(f"the server sent more than {max_size} bytes, more than the "
                                "real file's gzip can hold")
            out.write(chunk)


# --- verification -------------------------------------------------------------


def _verify_sources(sources: dict[str, Path], log: Log) -> dict[str, np.ndarray]:
    start = time.perf_counter()
    arrays = {
        name: read_idx_file(sources[name], expect_magic=_MAGIC[name], sha256=SHA256[name],
                            max_size=MAX_SIZE[name])
        for name in FILE_NAMES if name in sources
    }
    # Redundant for the real files (the hashes pin them down), but they keep
    # the messages precise if the hash table is ever changed or relaxed.
    for images_name, labels_name in SPLITS:
        if images_name not in arrays:
            continue
        images, labels = arrays[images_name], arrays[labels_name]
        if len(images) != len(labels):
            raise DataError(
                f"{sources[images_name]} holds {len(images)} images but "
                f"{sources[labels_name]} holds {len(labels)} labels; expected equal "
                "counts from the same split. Replace both with matching Fashion-MNIST files."
            )
        bad = np.flatnonzero(labels >= len(CLASS_NAMES))
        if bad.size:
            raise DataError(
                f"{sources[labels_name]}: expected labels 0..{len(CLASS_NAMES) - 1}, "
                f"found {labels[bad[0]]} at index {bad[0]} ({bad.size} bad labels). "
                f"{_REPLACE_HINT}"
            )
    log(f"verified {len(sources)} files in {time.perf_counter() - start:.2f} s")
    return arrays


# --- decoded-array cache ------------------------------------------------------


def _fingerprint(sources: dict[str, Path]) -> Fingerprint:
    """What the cached arrays were decoded from; any change invalidates them.

    The expected hash is included so that changing :data:`SHA256` invalidates
    the cache too.
    """
    result = {}
    for name, path in sources.items():
        try:
            st = path.stat()
        except OSError as exc:
            raise DataError(f"{path}: could not read the file ({exc}). {_REPLACE_HINT}") from None
        result[name] = {
            "path": str(path.resolve()),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": SHA256[name],
        }
    return result


def _load_array_cache(fingerprint: Fingerprint, log: Log) -> dict[str, np.ndarray] | None:
    """Memory-map the cached arrays of the files in ``fingerprint``, or return None
    if the cache is stale or unusable for any of them."""
    cache_dir = _user_cache_dir() / ARRAY_CACHE_SUBDIR
    try:
        manifest = json.loads((cache_dir / MANIFEST_NAME).read_text())
        if any(manifest["sources"].get(name) != fp for name, fp in fingerprint.items()):
            log("array cache is for other source files; re-verifying")
            return None
        arrays = {}
        for name in fingerprint:
            array = np.load(cache_dir / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if array.dtype != np.uint8 or list(array.shape) != manifest["shapes"][name]:
                log(f"cached {name}.npy has an unexpected shape or dtype; re-verifying")
                return None
            # The cache is a file anyone can change: hash what it holds as the IDX
            # file it came from (header + pixels) on every load, ~0.04 s for all four.
            if _idx_sha256(cache_dir / f"{name}.npy", array, _MAGIC[name]) != SHA256[name]:
                log(f"cached {name}.npy does not match the real file's SHA-256; re-verifying")
                return None
            arrays[name] = np.asarray(array)  # plain ndarray view, not np.memmap
    except FileNotFoundError:
        log(f"no array cache in {cache_dir}")
        return None
    except Exception as exc:  # noqa: BLE001 - a cache damaged in any way is rebuilt, never fatal
        log(f"array cache in {cache_dir} is unusable ({type(exc).__name__}: {exc}); re-verifying")
        return None
    log(f"loaded arrays from cache {cache_dir}")
    return arrays


def _idx_sha256(path: Path, array: np.memmap, magic: int) -> str:
    """SHA-256 of the decompressed IDX file that decodes to ``array``, the
    C-ordered memory map of the .npy file ``path``."""
    digest = hashlib.sha256(struct.pack(f">I{array.ndim}I", magic, *array.shape))
    # Read through a small buffer rather than the memory map: touching every mapped
    # page would count the whole dataset in this process's memory from the start.
    buffer = memoryview(bytearray(1 << 20))
    remaining = array.nbytes if array.flags.c_contiguous else -1
    with open(path, "rb") as handle:
        handle.seek(array.offset)
        while remaining > 0:
            n = handle.readinto(buffer[:min(len(buffer), remaining)])
            if not n:
                break
            digest.update(buffer[:n])
            remaining -= n
    return digest.hexdigest() if remaining == 0 else ""


def _write_array_cache(fingerprint: Fingerprint, arrays: dict[str, np.ndarray], log: Log) -> None:
    """Best effort: an unwritable or full cache only costs speed next time."""
    cache_dir = _user_cache_dir() / ARRAY_CACHE_SUBDIR
    manifest = {
        "sources": dict(fingerprint),
        "shapes": {name: list(array.shape) for name, array in arrays.items()},
    }
    try:
        # Loading one split keeps the other split's entries: their .npy files are not
        # touched here, and every load hashes what it maps anyway.
        old = json.loads((cache_dir / MANIFEST_NAME).read_text())
        for name in FILE_NAMES:
            if name not in arrays and name in old["sources"] and name in old["shapes"]:
                manifest["sources"][name] = old["sources"][name]
                manifest["shapes"][name] = old["shapes"][name]
    except Exception:  # noqa: BLE001 - none yet, or damaged in any way: start anew
        pass
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Invalidate first, publish last: the manifest only ever describes
        # a complete set of .npy files.
        (cache_dir / MANIFEST_NAME).unlink(missing_ok=True)
        for name, array in arrays.items():
            atomic_write(
                cache_dir / f"{name}.npy", lambda f, a=array: np.save(f, a, allow_pickle=False)
            )
        atomic_write(
            cache_dir / MANIFEST_NAME, lambda f: f.write(json.dumps(manifest, indent=1).encode())
        )
    except OSError as exc:
        warnings.warn(
            f"nnscratch: could not write the Fashion-MNIST array cache in {cache_dir} "
            f"({exc}); continuing without it, so the next load re-verifies the files.",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    log(f"wrote array cache to {cache_dir}")
