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
    # compiles into the cache, "[cache] data loaded" for each it loads.
    return subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env=cli_env(NUMBA_CACHE_DIR=str(cache), NUMBA_DEBUG_CACHE="1"), **kwargs)


def step_cached(cache: Path, *depths: int) -> str:
    code = f"from nnscratch import precompile; print(*map(precompile.step_cached, {depths}))"
    return run([sys.executable, "-c", code], cache).stdout.strip().splitlines()[-1]


@needs_numba
def test_a_cold_run_compiles_first_and_trains_as_if_it_compiled_itself(tmp_path: Path):
    require_real_data()
    cache = tmp_path / "cache"
    assert step_cached(cache, 3) == "False"
    cold = run(cli_command("train", *RUN, "--out", tmp_path / "cold"), cache)
    assert cold.returncode == 0, cold.stdout + cold.stderr
    assert "warning" not in cold.stderr, cold.stderr
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
    assert warm.returncode == 0, warm.stderr
    assert "Compiling" not in warm.stdout and "[cache] data saved" not in warm.stdout

    # Called from Python on an empty cache of its own: this process compiles them.
    code = "import sys; from nnscratch import cli; sys.exit(cli.main(sys.argv[1:]))"
    itself = run([sys.executable, "-c", code, "train", *RUN, "--out", str(tmp_path / "itself")],
                 tmp_path / "cache2")
    assert itself.returncode == 0, itself.stderr
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
                                 "slow pool", "no data"])
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
    cli._compile_first(dict(cli.DEFAULTS, augment=why == "augment"), out,
                       tmp_path / "nothing" if why == "no data" else None)
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
    assert out.startswith("Compiling the kernels for this model first")
    if failure is None:
        assert "Compiled in" in out and err == ""
    else:
        assert err == ("nnscratch train: warning: compiling the kernels first failed "
                       "(RuntimeError: boom); the run compiles them itself\n")


def test_ctrl_c_while_compiling_first_stops_there(execs, monkeypatch, capsys):
    rehearsal(monkeypatch, KeyboardInterrupt())
    assert precompile.main([json.dumps(cli.DEFAULTS), "/bin/prog"]) == 130
    assert capsys.readouterr().err == "nnscratch train: interrupted\n"
    assert execs == []


class ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_gone_before_compiling_stops_it_as_the_run_would(execs, monkeypatch, capsys):
    rehearsal(monkeypatch, AssertionError("compiled anyway"))
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert precompile.main([json.dumps(cli.DEFAULTS), "/bin/prog"]) == 1
    assert capsys.readouterr().err == "nnscratch train: stopped: standard output was closed\n"
    assert execs == []


def test_no_standard_output_at_all_is_fine(execs, monkeypatch):
    rehearsal(monkeypatch, None)
    monkeypatch.setattr(sys, "stdout", None)  # as with `nnscratch train >&-`
    with pytest.raises(Executed):
        precompile.main([json.dumps(cli.DEFAULTS), "/bin/prog"])


def image(tmp_path: Path, here: str, started: str) -> list[str]:
    """The compiling image's command line, which starts ``started`` (Python code) again."""
    config = dict(cli.DEFAULTS, hidden=[16])
    return [sys.executable, "-c", precompile._PROGRAM, here, json.dumps(config),
            sys.executable, "-c", started]


STARTED = "import os; print('started again', os.environ.get('NNSCRATCH_COMPILED_AHEAD'))"


@needs_numba
def test_sigterm_while_compiling_first_stops_there(tmp_path: Path):
    here = str(Path(precompile.__file__).resolve().parents[1])
    proc = subprocess.Popen(image(tmp_path, here, STARTED), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=cli_env(NUMBA_CACHE_DIR=str(tmp_path / "cache")))
    assert proc.stdout.readline().startswith("Compiling the kernels")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err == "nnscratch train: interrupted\n" and "started again" not in out


def test_a_compiling_image_that_cannot_even_import_starts_the_command(tmp_path: Path):
    fake = tmp_path / "fake" / "nnscratch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "precompile.py").write_text("raise ImportError('a broken install')\n")
    result = subprocess.run(image(tmp_path, str(tmp_path / "fake"), STARTED),
                            capture_output=True, text=True, timeout=120, env=cli_env())
    assert result.returncode == 0
    assert result.stdout == "started again 1\n"
    assert result.stderr == ("nnscratch train: warning: could not compile the kernels first "
                             "(ImportError('a broken install')); the run compiles them itself\n")


def test_the_compiling_image_checks_its_arguments():
    result = subprocess.run([sys.executable, "-m", "nnscratch.precompile"], capture_output=True,
                            text=True, env=cli_env(), timeout=300)
    assert result.returncode == 2 and "usage:" in result.stderr
