"""NumPy's own OpenBLAS, reached directly: ``sgemm`` and its thread count.

The threaded training step (``kernels.fused.train_steps``) splits each matrix product
between the threads of Numba's pool, and each thread calls single-threaded
``sgemm`` on its share; OpenBLAS's own threads must then stay out of the way.
So this module finds the library NumPy links (the wheels' ``scipy_openblas64_``,
64-bit integers) and its ``cblas_sgemm`` and ``openblas_set_num_threads``. It
loads nothing new (``RTLD_NOLOAD``: only a library already in the process), so
the thread count set here is the one NumPy's products see.

Anything else (a NumPy built on MKL or Accelerate, a 32-bit-integer OpenBLAS)
leaves ``SGEMM`` at 0 and training takes the layer-by-layer step.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

SGEMM = 0          # address of cblas_sgemm with 64-bit integers, or 0 when not found
_set_threads = None
_get_threads = None
_stop_workers = None
_lock = threading.Lock()
_open: set = set()   # one token per one_thread block open, in any thread
_ours = False        # whether OpenBLAS's count is ours (1) and _before the user's
_before = 0          # OpenBLAS's thread count before the first open block set it to 1


def _find() -> None:
    global SGEMM, _set_threads, _get_threads, _stop_workers
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas64_*.so*"))):
        try:  # only a library NumPy has loaded already (a stray copy would be a second one)
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
        except OSError:
            continue
        for prefix in ("scipy_", ""):
            try:
                sgemm = getattr(lib, f"{prefix}cblas_sgemm64_")
                setter = getattr(lib, f"{prefix}openblas_set_num_threads64_")
                getter = getattr(lib, f"{prefix}openblas_get_num_threads64_")
            except AttributeError:
                continue
            setter.argtypes, setter.restype = [ctypes.c_int], None
            getter.argtypes, getter.restype = [], ctypes.c_int
            SGEMM = ctypes.cast(sgemm, ctypes.c_void_p).value or 0
            _set_threads, _get_threads = setter, getter
            # The function OpenBLAS's own fork handler calls; see one_thread.
            _stop_workers = getattr(lib, "blas_thread_shutdown_", None)
            if _stop_workers is not None:
                _stop_workers.argtypes, _stop_workers.restype = [], ctypes.c_int
            return


_find()


def available() -> bool:
    """Whether single-threaded ``sgemm`` calls from our own threads are possible."""
    return SGEMM != 0


def thread_count() -> int:
    """How many threads OpenBLAS may use now (0 when it was not found)."""
    return _get_threads() if _get_threads is not None else 0


def allowed_threads() -> int:
    """How many threads the user lets OpenBLAS use: its count outside our
    ``one_thread`` blocks, even while one is open in another thread."""
    with _lock:
        return _before if _ours else thread_count()


@contextmanager
def one_thread() -> Iterator[None]:
    """OpenBLAS runs every product on the calling thread inside this block
    (its own workers would otherwise compete with ours for the cores); the
    thread count it had is put back on the way out, whatever happens.

    After a product on several threads, OpenBLAS's idle workers keep spinning
    for ~0.1 s (2^28 cycles) in case more work comes. On 2 cores that spinning
    took a core from our threads: 100 threaded steps of the reference model
    right after 100 steps on two-thread OpenBLAS took 1.86 ms each instead of
    0.99 ms (measured; 0.94 ms with the workers stopped). So the workers are
    stopped here, with the function OpenBLAS's own fork handler uses; its next
    multi-threaded product starts them again (~0.1 ms). That is done only while the process runs no other
    Python thread, since stopping a worker in the middle of another thread's
    product would hang it. The thread count is the whole process's: another
    thread's products run on one thread too while any such block is open (blocks
    may overlap across threads; the last one to close restores the count)."""
    global _ours, _before
    if _get_threads is None or _set_threads is None:
        yield
        return
    token = object()
    try:
        # Every step below may be cut short by Ctrl-C; whatever has happened,
        # the finally clause leaves the count right (``_ours`` is set before the
        # count is changed and cleared only after it is put back).
        with _lock:  # several threads may train at once: the first in sets, the last out restores
            if not _open:
                if not _ours:
                    _before = _get_threads()
                    _ours = True
                _set_threads(1)
            _open.add(token)
            # Stopping them is safe only while no other thread may be inside a product.
            stop = _stop_workers is not None and threading.active_count() == 1
        if stop:
            _stop_workers()
        yield
    finally:
        with _lock:
            _open.discard(token)
            if not _open and _ours:
                _set_threads(_before)
                _ours = False


def _after_fork_in_child() -> None:
    # A fork while another thread was inside one_thread: that thread does not exist
    # in the child, so nothing would ever close its block.
    global _lock, _ours
    _lock = threading.Lock()
    _open.clear()
    if _ours and _set_threads is not None:
        _set_threads(_before)
    _ours = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
