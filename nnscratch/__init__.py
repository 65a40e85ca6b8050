"""nnscratch: a small, fast, readable neural-network framework in NumPy."""

import os as _os
import signal as _signal
import sys as _sys


def _interrupted() -> int:
    """Say so, and let a second Ctrl-C end the process at once."""
    _quiet_shutdown()
    print("nnscratch: interrupted", file=_sys.stderr)
    return 130


def _quiet_shutdown() -> None:
    # While Python shuts down, a Ctrl-C would print "Exception ignored ...
    # KeyboardInterrupt" noise; the default action just ends the process, as the
    # shell expects. An ignored SIGINT (nohup, background jobs) stays ignored.
    if _signal.getsignal(_signal.SIGINT) is not _signal.SIG_IGN:
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)


def _running_the_command() -> bool:
    """Whether this process is the `nnscratch` command: its console script, or
    `python -m nnscratch...` (whose argv[0] is "-m" while Python imports this
    package to find the module; the module's name is in ``sys.orig_argv``)."""
    if not _sys.argv:
        return False
    if _os.path.basename(_sys.argv[0]) in ("nnscratch", "nnscratch.exe"):
        return True
    if _sys.argv[0] != "-m":
        return False
    argv = list(getattr(_sys, "orig_argv", []))
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    return module == "nnscratch" or module.startswith("nnscratch.")


try:
    from .datasets import CLASS_NAMES, DataError, load_fashion_mnist, load_fashion_mnist_split
    from .gradcheck import GradcheckResult, gradcheck
    from .io import ModelFileError, load, save
    from .layers import Dense, Dropout, Flatten, Layer, ReLU
    from .losses import SoftmaxCrossEntropy, softmax
    from .model import Sequential
    from .optim import Adam, Parameter
    from .training import Trainer, TrainingDiverged, TrainingInterrupted
except KeyboardInterrupt:
    # Importing NumPy and Numba takes about half a second, before the `nnscratch`
    # command can handle Ctrl-C itself: stop it as it would, without a traceback.
    # A program that imports nnscratch gets its KeyboardInterrupt as usual.
    if _running_the_command():
        raise SystemExit(_interrupted()) from None
    raise
except ImportError as _error:
    # A bad NNSCRATCH_BACKEND is a setting, not a bug: the command (the console
    # script, or `python -m nnscratch.cli`) says so in one line. Programs get the
    # error. (By name: the module that defines it failed to import.)
    if type(_error).__qualname__ == "BackendError" and _running_the_command():
        print(f"nnscratch: error: {_error}", file=_sys.stderr)
        raise SystemExit(2) from None
    raise

__version__ = "0.1.0"


def _command() -> int:
    """The `nnscratch` console script: the command line, with Ctrl-C handled from
    the first moment (importing the command's own module included)."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        return _interrupted()
    try:
        return main(program=True)
    finally:
        _quiet_shutdown()

__all__ = [
    "CLASS_NAMES", "DataError", "ModelFileError", "load", "load_fashion_mnist",
    "load_fashion_mnist_split", "save",
    "Adam", "Dense", "Dropout", "Flatten", "GradcheckResult", "Layer", "Parameter", "ReLU",
    "Sequential", "SoftmaxCrossEntropy", "Trainer", "TrainingDiverged", "TrainingInterrupted",
    "gradcheck", "softmax",
]
