"""The first ``nnscratch train`` compiles its kernels in a process image of its own.

Numba keeps the memory a compile used for the rest of the process: about 60 MB
for the kernels of one run, most of it for the parallel training step. A process
that only loads compiled kernels from Numba's on-disk cache never holds it. So
when the cache lacks the run's training step, the ``nnscratch train`` program
replaces itself (``os.execv``, same process, nothing else running) with
``main`` below, which rehearses the run (``cli.rehearse``: a few steps of the
same model on blank images, through the same calls), so that every kernel the run
calls is compiled into the cache, and then replaces itself again with the
original command, which now only loads them. The process is never larger than a
warm run, and there is never a second one. The results are the same either way;
only where the compile happens changes.

Only the program does this, before it writes anything; ``cli.main([...])``
called from Python, and a resumed run, compile in their own process as before.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

# Set in the environment of the command started again, so that it never
# compiles ahead twice (even when Numba could not cache the kernels).
STARTED_AGAIN = "NNSCRATCH_COMPILED_AHEAD"

# The image that compiles: this package, imported from where this one was found.
_PROGRAM = """import sys
sys.path.insert(0, sys.argv[1])
try:
    from nnscratch.precompile import main
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(main(sys.argv[2:]))
"""


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
        step = kernels.train_step
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
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, "-c", _PROGRAM, here, json.dumps(config),
                                  *command])
    except OSError as exc:
        return exc
    raise AssertionError("unreachable")  # pragma: no cover


def main(argv: list[str]) -> int:
    """CONFIG_JSON COMMAND...: compile, then execute COMMAND with STARTED_AGAIN set."""
    if len(argv) < 2:
        print("usage: python -m nnscratch.precompile CONFIG_JSON COMMAND...", file=sys.stderr)
        return 2
    config, command = json.loads(argv[0]), argv[1:]
    print("Compiling the kernels for this model first (once: Numba caches them)...", flush=True)
    started = time.perf_counter()
    try:
        from .cli import rehearse
        rehearse(config)
        problem = None if step_cached(len(config["hidden"]) + 1) is not False \
            else "Numba did not cache the training step"
    except KeyboardInterrupt:
        print("nnscratch train: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the run itself then compiles, and says why not here
        problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        print(f"Compiled in {time.perf_counter() - started:.1f} s", flush=True)
    else:
        print(f"nnscratch train: warning: compiling the kernels first failed ({problem}); the "
              "run compiles them itself", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(command[0], command, dict(os.environ, **{STARTED_AGAIN: "1"}))
    except OSError as exc:
        print(f"nnscratch train: error: could not start {command[0]} again ({exc})",
              file=sys.stderr)
        return 1
    return 1  # pragma: no cover - execve does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
