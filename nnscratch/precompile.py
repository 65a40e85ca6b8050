"""The first ``nnscratch train`` compiles its kernels in a process image of its own.

Numba keeps the memory a compile used for the rest of the process: about 60 MB
for the kernels of one run, most of it for the parallel training step. A process
that only loads compiled kernels from Numba's on-disk cache never holds it. So
when the cache lacks the run's training step, the ``nnscratch train`` program
replaces itself (``os.execv``, same process, nothing else running) with
``main`` below, which rehearses the run (``cli.rehearse``: a few steps of the
same model on blank images, through the same calls), so that every kernel the run
calls is compiled into the cache, and then replaces itself again with the
original command, which now only loads them. There is never a second process,
and its peak is the larger of the compiling image's and a warm run's (the two
are about equal for the default model; a deep model's compile can need more,
still less than compiling in the training process). The results are the same
either way; only where the compile happens changes.

Only the program does this (``cli.main(program=True)``), before it writes
anything; ``cli.main()`` called from Python, a resumed run, and runs that never
take the threaded step compile in their own process as before. Whatever goes
wrong in the compiling image (other than Ctrl-C or SIGTERM, which stop there
with exit status 130) only means the restarted run compiles its kernels itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

# Set in the environment of the command started again, so that it never
# compiles ahead twice (even when Numba could not cache the kernels).
STARTED_AGAIN = "NNSCRATCH_COMPILED_AHEAD"

# The image that compiles: this package, imported from where this one was found
# (not from the working directory, which ``-c`` puts first on the path: a user's
# signal.py there must not run), with SIGTERM stopping it like Ctrl-C. Arguments:
# that folder, the configuration, the command to start again. If even the
# import fails, it starts the command.
_PROGRAM = """import sys
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
import os
try:
    import signal
    def stop(signum, frame):
        raise KeyboardInterrupt
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, stop)
    sys.path.insert(0, sys.argv[1])
    from nnscratch.precompile import main
except KeyboardInterrupt:
    print("nnscratch train: interrupted", file=sys.stderr)
    sys.exit(130)
except Exception as exc:
    print(f"nnscratch train: warning: could not compile the kernels first ({exc!r}); the run "
          "compiles them itself", file=sys.stderr, flush=True)
    os.execve(sys.argv[3], sys.argv[3:], dict(os.environ, MARK="1"))
sys.exit(main(sys.argv[2:]))
""".replace("MARK", STARTED_AGAIN)


def _flush() -> None:
    """Flush what was printed before an exec discards the buffers (stdout may be
    closed, or a pipe whose reader has gone)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _say(text: str) -> None:
    """A line about the compile, on standard error: standard output stays the
    run's own, the same whether it compiled first or not (``| head -1`` ...)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):  # stderr closed or full: say nothing
        pass


def step_cached(layers: int) -> bool | None:
    """Whether Numba's on-disk cache holds, for this CPU and the current source,
    a threaded training step for ``layers`` Dense layers; None when this cannot
    be told (the NumPy backend, or a Numba whose cache this does not know how to
    read). A model of that depth compiled for other inputs also counts, so the
    answer can be yes while a kernel is still missing: that run then compiles
    it itself, as it would without this module."""
    from . import kernels
    if kernels.BACKEND != "numba":
        return None
    try:  # Numba's cache index: {(signature, target, code hash): file}, {} if stale
        step = kernels.train_steps
        index = step._cache._cache_file._load_index()
        target = step.targetctx.codegen().magic_tuple()
        # The weights are the step's 7th argument: a tuple of one array per layer.
        return any(key[1] == target and getattr(key[0][6], "count", None) == layers
                   for key in index)
    except Exception:  # noqa: BLE001 - Numba's internals moved: compile in-process, as before
        return None


def compile_then_restart(config: dict[str, Any], command: list[str]) -> OSError:
    """Replace this process with the image that compiles ``config``'s kernels and
    then executes ``command``. Returns only if that failed, with the error."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The interpreter's own options (-E, -I, -s, -X ..., -W ...), so that the image
    # imports what the run imports.
    flags = getattr(subprocess, "_args_from_interpreter_flags", list)()
    _flush()
    try:
        os.execv(sys.executable, [sys.executable, *flags, "-c", _PROGRAM, here,
                                  json.dumps(config), *command])
    except OSError as exc:
        return exc
    raise AssertionError("unreachable")  # pragma: no cover


def main(argv: list[str]) -> int:
    """CONFIG_JSON COMMAND...: compile, then execute COMMAND with STARTED_AGAIN set."""
    if len(argv) < 2:
        print("usage: python -m nnscratch.precompile CONFIG_JSON COMMAND...", file=sys.stderr)
        return 2
    config, command = json.loads(argv[0]), argv[1:]
    _say("Compiling the kernels for this model first (once: Numba caches them)...")
    started = time.perf_counter()
    # Ctrl-C and SIGTERM raise KeyboardInterrupt, but the compile runs Python in
    # ctypes callbacks (llvmlite's), which swallow it ("Exception ignored ..."):
    # so a stop is also remembered, and checked before the command starts.
    stops: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        if stops:  # the second one: at once (Numba writes its cache files atomically)
            _say("nnscratch train: interrupted")
            os._exit(130)
        stops.append(signum)
        raise KeyboardInterrupt

    def quiet(unraisable: Any) -> None:
        # Python would print the swallowed KeyboardInterrupt as "Exception ignored
        # ... Traceback"; the stop is remembered, and said once below.
        if not (stops and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            unraisable_hook(unraisable)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    unraisable_hook, sys.unraisablehook = sys.unraisablehook, quiet
    try:
        from .cli import rehearse
        rehearse(config)
        problem = None if step_cached(len(config["hidden"]) + 1) is not False \
            else "Numba did not cache the training step"
    except KeyboardInterrupt:
        stops.append(signal.SIGINT)
    except Exception as exc:  # noqa: BLE001 - the run itself then compiles, and says why not here
        problem = f"{type(exc).__name__}: {exc}"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = unraisable_hook
    if stops:
        _say("nnscratch train: interrupted")
        return 130
    if problem is None:
        _say(f"Compiled in {time.perf_counter() - started:.1f} s")
    else:
        _say(f"nnscratch train: warning: compiling the kernels first failed ({problem}); the run "
             "compiles them itself")
    _flush()
    try:
        os.execve(command[0], command, dict(os.environ, **{STARTED_AGAIN: "1"}))
    except OSError as exc:
        _say(f"nnscratch train: error: could not start {command[0]} again ({exc})")
        return 1
    return 1  # pragma: no cover - execve does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
