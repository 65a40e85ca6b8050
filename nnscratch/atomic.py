"""Writing a file so that readers never see it half-written.

Everything nnscratch writes (model files, checkpoints, plots, the data cache)
goes through ``atomic_write``: the bytes go to a hidden temporary sibling,
which is renamed over the target only once complete. A crash, a full disk or
Ctrl-C leaves the old file (or none), never a truncated one.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *,
                 check: Callable[[Path], object] | None = None, durable: bool = False,
                 keep_suffix: bool = False) -> Path:
    """Write ``path`` through ``write(handle)``, then rename it into place.

    ``check(temp_path)`` may inspect the finished temporary file and raise to
    discard it. ``durable`` fsyncs the file and its directory (model files and
    checkpoints). ``keep_suffix`` ends the temporary name with the target's
    suffix (``.gz``) for a ``check`` that goes by it. Errors opening or
    renaming name ``path``, not the temporary file; on any error the
    temporary file is removed.
    """
    given = os.fspath(path)
    path = Path(path)
    if not given or not path.name or path.name in (".", ".."):
        raise IsADirectoryError(errno.EISDIR, "a file name is needed", given)
    suffix = path.suffix if keep_suffix else ""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        # O_EXCL: never clobber another file; 0o666 lets the umask decide the
        # mode, as for any file the user writes.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise _naming(exc, tmp, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, tmp, path) from None
        raise
    if durable:
        _fsync_directory(path.parent)
    return path


def _naming(exc: OSError, tmp: Path, path: Path) -> OSError:
    """The same error, about ``path`` if it was about the temporary file or
    about no file at all (a full disk while writing names none)."""
    if (exc.filename is None or Path(exc.filename) == tmp) and exc.errno is not None:
        return OSError(exc.errno, exc.strerror, str(path))  # OSError picks the subclass
    return exc


def remove_stale_temporaries(directory: Path, names: tuple[str, ...]) -> None:
    """Delete temporary files ``atomic_write`` left for ``names`` in ``directory``
    when a process was killed outright (SIGKILL, the OOM killer) mid-write.
    Call only while no other process writes there."""
    # Exactly the names atomic_write gives: .NAME.<pid>.<8 hex digits>.tmp[suffix]
    patterns = [re.compile(rf"\.{re.escape(name)}\.[0-9]+\.[0-9a-f]{{8}}\.tmp"
                           rf"(?:{re.escape(Path(name).suffix)})?") for name in names]
    try:
        entries = list(os.scandir(directory))
    except OSError:  # a folder we may write but not list: nothing to clean that we can see
        return
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and any(p.fullmatch(entry.name) for p in patterns):
            Path(entry.path).unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
