"""``nnscratch train`` on a Numba cache without its kernels compiles them first, in
a process image of its own that then starts the command again
(nnscratch.precompile): the training process never holds a compile's memory."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_command, cli_env, require_real_data

from nnscratch import cli, kernels, precompile, threaded

RUN = ["--epochs", "1", "--hidden", "48", "24", "--val-size", "2000", "--quiet"]
EXPECTED = threaded.expected
needs_numba = pytest.mark.skipif(kernels.BACKEND != "numba",
                                 reason="the NumPy backend compiles nothing")


def run(command: list[str], cache: Path, **kwargs) -> subprocess.CompletedProcess:
    # NUMBA_DEBUG_CACHE: Numba prints "[cache] data saved" for each kernel it
    # compiles into the cache, "[cache] data loaded" for each it loads. Standard
    # error joins standard output (unbuffered: cli_env), in the order written.
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900, env=cli_env(NUMBA_CACHE_DIR=str(cache),
                                                   NUMBA_DEBUG_CACHE="1"), **kwargs)


def step_cached(cache: Path, *depths: int) -> str:
    code = f"from nnscratch import precompile; print(*map(precompile.step_cached, {depths}))"
    return run([sys.executable, "-c", code], cache).stdout.strip().splitlines()[-1]


@needs_numba
def test_a_cold_run_compiles_first_and_trains_as_if_it_compiled_itself(tmp_path: Path):
    require_real_data()
    cache = tmp_path / "cache"
    assert step_cached(cache, 3) == "False"
    cold = run(cli_command("train", *RUN, "--out", tmp_path / "cold"), cache)
    assert cold.returncode == 0, cold.stdout
    assert "warning" not in cold.stdout, cold.stdout
    # Compiled in the image in between, then started again, once, compiling nothing.
    first, _, again = cold.stdout.partition("Compiling the kernels for this model first")
    assert "[cache] data loaded" not in first
    compiling, _, restarted = again.partition("Compiled in")
    assert "[cache] data saved" in compiling
    assert "[cache] data saved" not in restarted and "[cache] data loaded" in restarted
    assert cold.stdout.count("Training ") == 1
    # The step for this depth only.
    assert step_cached(cache, 3, 4) == "True False"

    warm = run(cli_command("train", *RUN, "--out", tmp_path / "warm"), cache)
    assert warm.returncode == 0, warm.stdout
    assert "Compiling" not in warm.stdout and "[cache] data saved" not in warm.stdout

    # Called from Python on an empty cache of its own: this process compiles them.
    code = "import sys; from nnscratch import cli; sys.exit(cli.main(sys.argv[1:]))"
    itself = run([sys.executable, "-c", code, "train", *RUN, "--out", str(tmp_path / "itself")],
                 tmp_path / "cache2")
    assert itself.returncode == 0, itself.stdout
    assert "Compiling" not in itself.stdout and "[cache] data saved" in itself.stdout

    runs = {}
    for name in ("cold", "warm", "itself"):
        with np.load(tmp_path / name / "model.npz", allow_pickle=False) as f:
            runs[name] = {k: f[k] for k in f.files}
    for name in ("warm", "itself"):
        assert runs[name].keys() == runs["cold"].keys()
        for key, value in runs["cold"].items():
            np.testing.assert_array_equal(runs[name][key], value, err_msg=f"{name}: {key}")


@pytest.fixture
def cold_cache(monkeypatch):
    """As if Numba's cache lacked the kernels, with a pool that wakes fast; an exec fails the test."""
    monkeypatch.setattr(precompile, "step_cached", lambda layers: False)
    monkeypatch.setattr(threaded, "expected", lambda augment: not augment)
    monkeypatch.setattr(threaded, "pool_wakes_fast", lambda: True)
    monkeypatch.setattr(precompile, "compile_then_restart",
                        lambda *a: pytest.fail("the process would have been replaced"))


@pytest.mark.parametrize("how", ["main()", "main(argv)"])
def test_python_calling_main_is_never_restarted(cold_cache, monkeypatch, tmp_path: Path, how: str):
    # A script that sets sys.argv and calls main() (or passes argv) must go on
    # after it: replacing its process would run the script again from the top.
    require_real_data()
    args = ["train", "--epochs", "1", "--hidden", "16", "--val-size", "59000", "--quiet",
            "--out", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["my_script.py", *args])
    assert (cli.main() if how == "main()" else cli.main(args)) == 0
    assert (tmp_path / "run" / "model.npz").is_file()


@pytest.mark.parametrize("why", ["started again", "augment", "layer path", "cached", "unknown",
                                 "slow pool"])
def test_no_compiling_first_when_the_run_needs_none(cold_cache, monkeypatch, capsys,
                                                    tmp_path: Path, why: str):
    if why in ("cached", "unknown"):
        monkeypatch.setattr(precompile, "step_cached", lambda layers: why == "cached" or None)
    if why == "layer path":
        monkeypatch.setenv("NNSCRATCH_THREADED_STEP", "0")
        monkeypatch.setattr(threaded, "expected", EXPECTED)  # the real one reads it
    if why == "slow pool":
        monkeypatch.setattr(threaded, "pool_wakes_fast", lambda: False)
    if why == "started again":
        monkeypatch.setenv(precompile.STARTED_AGAIN, "1")
    out = tmp_path / "a" / "run"
    cli._compile_first(dict(cli.DEFAULTS, augment=why == "augment"), out, None)
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "a").exists()  # probed, if at all, and left as it was
    # The mark is for one start only: a process this run starts does not inherit it.
    assert precompile.STARTED_AGAIN not in os.environ


def test_an_unusable_out_fails_before_compiling(cold_cache, tmp_path: Path):
    (tmp_path / "file").write_text("")
    with pytest.raises(cli.CLIError, match="cannot write there"):
        cli._compile_first(dict(cli.DEFAULTS), tmp_path / "file" / "run", None)


def test_a_failed_exec_is_a_warning_and_the_run_compiles_itself(cold_cache, monkeypatch,
                                                                tmp_path: Path):
    require_real_data()
    monkeypatch.setattr(precompile, "compile_then_restart",
                        lambda *a: PermissionError(13, "Permission denied"))
    with pytest.warns(UserWarning, match=r"could not compile the kernels first \(\[Errno 13\] "
                                         r"Permission denied\); compiling them in this run"):
        cli._compile_first(dict(cli.DEFAULTS), tmp_path / "run", None)
    assert not (tmp_path / "run").exists()


class Executed(Exception):
    pass


@pytest.fixture
def execs(monkeypatch) -> list:
    calls: list = []

    def execve(path, argv, env):
        calls.append((path, argv, env))
        raise Executed
    monkeypatch.setattr(precompile.os, "execve", execve)
    monkeypatch.setattr(precompile, "step_cached", lambda layers: True)
    return calls


def rehearsal(monkeypatch, failure: BaseException | None) -> None:
    def rehearse(config):
        if failure is not None:
            raise failure
    monkeypatch.setattr(cli, "rehearse", rehearse)


@pytest.mark.parametrize("failure", [RuntimeError("boom"), None])
def test_the_compiling_image_always_starts_the_command_again(execs, monkeypatch, capsys, failure):
    rehearsal(monkeypatch, failure)
    with pytest.raises(Executed):
        precompile.main([json.dumps(cli.DEFAULTS), "/bin/prog", "train", "--epochs", "3"])
    (path, argv, env), = execs
    assert (path, argv) == ("/bin/prog", ["/bin/prog", "train", "--epochs", "3"])
    assert env[precompile.STARTED_AGAIN] == "1"
    out, err = capsys.readouterr()
    assert out == ""  # standard output is the run's alone, cold or warm
    first, last = err.splitlines()
    assert first == "Compiling the kernels for this model first (once: Numba caches them)..."
    if failure is None:
        assert last.startswith("Compiled in ")
    else:
        assert last == ("nnscratch train: warning: compiling the kernels first failed "
                        "(RuntimeError: boom); the run compiles them itself")


def test_a_step_numba_did_not_cache_is_a_warning_and_the_command_starts(execs, monkeypatch,
                                                                         capsys):
    rehearsal(monkeypatch, None)
    monkeypatch.setattr(precompile, "step_cached", lambda layers: False)
    with pytest.raises(Executed):
        precompile.main([json.dumps(cli.DEFAULTS), "/bin/prog"])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "nnscratch train: warning: compiling the kernels first failed (Numba did not cache "
        "the training step); the run compiles them itself")


def test_ctrl_c_while_compiling_first_stops_there(execs, monkeypatch, capsys):
    rehearsal(monkeypatch, KeyboardInterrupt())
    assert precompile.main([json.dumps(cli.DEFAULTS), "/bin/prog"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "nnscratch train: interrupted"
    assert execs == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_that_a_callback_swallowed_still_stops_there(execs, monkeypatch, capsys, sig):
    # Numba's compile runs Python in ctypes callbacks, which swallow exceptions.
    def rehearse(config):
        try:
            signal.getsignal(sig)(sig, None)
        except KeyboardInterrupt:
            pass  # as a ctypes callback would ("Exception ignored on calling ...")
    monkeypatch.setattr(cli, "rehearse", rehearse)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert precompile.main([json.dumps(cli.DEFAULTS), "/bin/prog"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "nnscratch train: interrupted"
    assert execs == []
    assert {s: signal.getsignal(s) for s in before} == before  # put back


class Unwritable(io.StringIO):
    def write(self, text):
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("stream", ["closed", "full"])
def test_no_usable_standard_streams_are_fine(execs, monkeypatch, stream: str):
    # `nnscratch train >&- 2>&-`, or both on a full disk: the run itself reports that.
    rehearsal(monkeypatch, None)
    for name in ("stdout", "stderr"):
        monkeypatch.setattr(sys, name, None if stream == "closed" else Unwritable())
    with pytest.raises(Executed):
        precompile.main([json.dumps(cli.DEFAULTS), "/bin/prog"])


def test_the_interpreter_flags_reach_the_compiling_image(monkeypatch):
    calls = []

    def execv(path, argv):
        calls.append(argv)
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(precompile.os, "execv", execv)
    monkeypatch.setattr(precompile.subprocess, "_args_from_interpreter_flags",
                        lambda: ["-E", "-X", "dev"])
    error = precompile.compile_then_restart(dict(cli.DEFAULTS), ["/bin/prog", "train"])
    assert isinstance(error, PermissionError)
    argv, = calls
    assert argv[:5] == [sys.executable, "-E", "-X", "dev", "-c"]
    assert argv[-2:] == ["/bin/prog", "train"]


def test_the_console_script_is_the_program(monkeypatch):
    import nnscratch
    seen = []
    monkeypatch.setattr(cli, "main", lambda *a, **k: seen.append((a, k)) or 0)
    assert nnscratch._command() == 0
    assert seen == [((), {"program": True})]


@pytest.mark.parametrize("data", ["missing", "damaged"])
def test_bad_data_fails_before_compiling(cold_cache, tmp_path: Path, data: str):
    folder = tmp_path / "data"
    if data == "damaged":
        folder.mkdir()
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            (folder / name).write_bytes(b"junk")
    with pytest.raises(cli.DataError, match="does not exist" if data == "missing" else "magic"):
        cli._compile_first(dict(cli.DEFAULTS), tmp_path / "run", folder)
    assert not (tmp_path / "run").exists()


@needs_numba
def test_a_workqueue_pool_never_compiles_first(tmp_path: Path):
    # Its runs never take the threaded step, so its step is never cached: compiling
    # first would happen again at every run.
    require_real_data()
    code = ("import sys; from pathlib import Path; from nnscratch import cli, precompile\n"
            "precompile.compile_then_restart = lambda *a: sys.exit('the process was replaced')\n"
            "cli._compile_first(dict(cli.DEFAULTS), Path(sys.argv[1]), None)\n"
            "print('compiles in its own process')")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300,
                            env=cli_env(NUMBA_CACHE_DIR=str(tmp_path / "cache"),
                                        NUMBA_THREADING_LAYER="workqueue"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "compiles in its own process\n"


def image(tmp_path: Path, here: str, started: str) -> list[str]:
    """The compiling image's command line, which starts ``started`` (Python code) again."""
    config = dict(cli.DEFAULTS, hidden=[16])
    return [sys.executable, "-c", precompile._PROGRAM, here, json.dumps(config),
            sys.executable, "-c", started]


STARTED = "import os; print('started again', os.environ.get('NNSCRATCH_COMPILED_AHEAD'))"


@needs_numba
# At several moments of the compile: one that lands in llvmlite's ctypes callback must not
# print Python's "Exception ignored ... Traceback" either (seen about once in 12 before).
@pytest.mark.parametrize("delay", [0.5, 1.45, 2.5])
def test_sigterm_while_compiling_first_stops_there(tmp_path: Path, delay: float):
    here = str(Path(precompile.__file__).resolve().parents[1])
    proc = subprocess.Popen(image(tmp_path, here, STARTED), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=cli_env(NUMBA_CACHE_DIR=str(tmp_path / "cache")))
    assert proc.stderr.readline().startswith("Compiling the kernels")
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err == "nnscratch train: interrupted\n" and "started again" not in out


def test_a_compiling_image_that_cannot_even_import_starts_the_command(tmp_path: Path):
    fake = tmp_path / "fake" / "nnscratch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "precompile.py").write_text("raise ImportError('a broken install')\n")
    # A module of the user's in the working directory is not the image's to import.
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "signal.py").write_text("import sys; print('USER signal.py RAN', file=sys.stderr)\n")
    result = subprocess.run(image(tmp_path, str(tmp_path / "fake"), STARTED), cwd=cwd,
                            capture_output=True, text=True, timeout=120, env=cli_env())
    assert result.returncode == 0
    assert result.stdout == "started again 1\n"
    assert result.stderr == ("nnscratch train: warning: could not compile the kernels first "
                             "(ImportError('a broken install')); the run compiles them itself\n")


def test_the_compiling_image_checks_its_arguments():
    result = subprocess.run([sys.executable, "-m", "nnscratch.precompile"], capture_output=True,
                            text=True, env=cli_env(), timeout=300)
    assert result.returncode == 2 and "usage:" in result.stderr
