"""``nnscratch train`` on a Numba cache without its kernels compiles them first, in
a process image of its own that then starts the command again
(nnscratch.precompile): the training process never holds a compile's memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_env, require_real_data

from nnscratch import cli, kernels, precompile, threaded

# Run in a fresh process: records every function Numba compiles there (a cache
# load is not a compile), then trains through the command line's main(): as the
# program itself (which may compile first in a process image of its own, and then
# starts this very program again), or called from Python.
TRAIN = """
import sys
from numba.core import event
compiled = []

class Listener(event.Listener):
    def on_start(self, ev):
        f = ev.data["dispatcher"].py_func
        compiled.append(f.__module__ + "." + f.__qualname__)

    def on_end(self, ev):
        pass

event.register("numba:compile", Listener())
from nnscratch import cli, precompile
print("cached before:", precompile.step_cached(3), flush=True)
args = ["train", "--epochs", "1", "--hidden", "48", "24", "--val-size", "2000", "--quiet",
        "--out", sys.argv[1]]
if sys.argv[2] == "program":
    sys.argv = ["nnscratch", *args]
    code = cli.main()
else:
    code = cli.main(args)
print("cached after:", precompile.step_cached(3), precompile.step_cached(4))
print("compiled here:", sorted({c for c in compiled if c.startswith("nnscratch")}))
sys.exit(code)
"""


def train(out: Path, cache: Path, how: str) -> str:
    result = subprocess.run([sys.executable, "-c", TRAIN, str(out), how], capture_output=True,
                            text=True, env=cli_env(NUMBA_CACHE_DIR=str(cache)), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr, result.stderr
    return result.stdout


@pytest.mark.skipif(kernels.BACKEND != "numba", reason="the NumPy backend compiles nothing")
def test_a_cold_run_compiles_first_and_trains_as_if_it_compiled_itself(tmp_path: Path):
    require_real_data()
    cold = train(tmp_path / "cold", tmp_path / "cache", "program")
    # Checked, compiled in the image in between, then started again, once.
    first, again = cold.split("Compiling the kernels for this model first")
    assert first == "cached before: False\n"
    assert again.count("cached before: True") == 1 and again.count("Training ") == 1
    # The step for this depth only, and everything else the run calls: nothing compiled here.
    assert "cached after: True False" in again
    assert "compiled here: []" in again

    warm = train(tmp_path / "warm", tmp_path / "cache", "program")
    assert "Compiling" not in warm and "compiled here: []" in warm

    # Called from Python on an empty cache of its own: this process compiles every kernel.
    itself = train(tmp_path / "itself", tmp_path / "cache2", "function")
    assert "Compiling" not in itself and "cached before: False" in itself
    assert "nnscratch.kernels.fused.train_step" in itself.split("compiled here:")[1]

    runs = {}
    for name in ("cold", "warm", "itself"):
        with np.load(tmp_path / name / "model.npz", allow_pickle=False) as f:
            runs[name] = {k: f[k] for k in f.files}
    for name in ("warm", "itself"):
        assert runs[name].keys() == runs["cold"].keys()
        for key, value in runs["cold"].items():
            np.testing.assert_array_equal(runs[name][key], value, err_msg=f"{name}: {key}")


class Executed(Exception):
    pass


def fake_exec(calls: list):
    def execve(path, argv, env):
        calls.append((path, argv, env))
        raise Executed
    return execve


@pytest.mark.parametrize("failure", [RuntimeError("boom"), None])
def test_the_compiling_image_always_starts_the_command_again(monkeypatch, capsys, failure):
    calls: list = []
    monkeypatch.setattr(precompile.os, "execve", fake_exec(calls))
    monkeypatch.setattr(precompile, "step_cached", lambda layers: True)

    def rehearse(config):
        if failure is not None:
            raise failure
    monkeypatch.setattr(cli, "rehearse", rehearse)
    with pytest.raises(Executed):
        precompile.main([json.dumps(cli.DEFAULTS), "/bin/prog", "train", "--epochs", "3"])
    (path, argv, env), = calls
    assert (path, argv) == ("/bin/prog", ["/bin/prog", "train", "--epochs", "3"])
    assert env[precompile.STARTED_AGAIN] == "1"
    out, err = capsys.readouterr()
    assert out.startswith("Compiling the kernels for this model first")
    if failure is None:
        assert "Compiled in" in out and err == ""
    else:
        assert err == ("nnscratch train: warning: compiling the kernels first failed "
                       "(RuntimeError: boom); the run compiles them itself\n")


def test_ctrl_c_while_compiling_first_stops_there(monkeypatch, capsys):
    monkeypatch.setattr(precompile.os, "execve", lambda *a: pytest.fail("started again"))

    def rehearse(config):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "rehearse", rehearse)
    assert precompile.main([json.dumps(cli.DEFAULTS), "/bin/prog"]) == 130
    assert capsys.readouterr().err == "nnscratch train: interrupted\n"


def test_a_failed_exec_is_a_warning_and_the_run_compiles_itself(monkeypatch):
    monkeypatch.setattr(precompile, "step_cached", lambda layers: False)
    monkeypatch.setattr(threaded, "expected", lambda augment: True)
    monkeypatch.setattr(precompile.os, "execv", lambda *a: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied")))
    with pytest.warns(UserWarning, match=r"could not compile the kernels first \(\[Errno 13\] "
                                         r"Permission denied\); compiling them in this run"):
        cli._compile_ahead(dict(cli.DEFAULTS))


@pytest.mark.parametrize("why", ["started again", "augment", "layer path", "cached", "unknown"])
def test_no_compiling_first_when_the_run_needs_none(monkeypatch, capsys, why: str):
    monkeypatch.setattr(precompile, "compile_then_restart", lambda *a: pytest.fail("exec"))
    monkeypatch.setattr(precompile, "step_cached", lambda layers: {"cached": True,
                                                                    "unknown": None}.get(why, False))
    if why != "layer path":
        monkeypatch.setattr(threaded, "expected", lambda augment: not augment)
    else:
        monkeypatch.setenv("NNSCRATCH_THREADED_STEP", "0")
    if why == "started again":
        monkeypatch.setenv(precompile.STARTED_AGAIN, "1")
    cli._compile_ahead(dict(cli.DEFAULTS, augment=why == "augment"))
    assert capsys.readouterr().out == ""
    # The mark is for one start only: a process this run starts does not inherit it.
    assert precompile.STARTED_AGAIN not in os.environ


def test_main_called_from_python_never_replaces_the_process(monkeypatch, tmp_path: Path):
    require_real_data()
    monkeypatch.setattr(precompile, "step_cached", lambda layers: False)
    monkeypatch.setattr(threaded, "expected", lambda augment: True)
    monkeypatch.setattr(precompile, "compile_then_restart", lambda *a: pytest.fail("exec"))
    assert cli.main(["train", "--epochs", "1", "--hidden", "16", "--val-size", "59000",
                     "--quiet", "--out", str(tmp_path / "run")]) == 0


def test_the_compiling_image_checks_its_arguments():
    result = subprocess.run([sys.executable, "-m", "nnscratch.precompile"], capture_output=True,
                            text=True, env=cli_env(), timeout=300)
    assert result.returncode == 2 and "usage:" in result.stderr
