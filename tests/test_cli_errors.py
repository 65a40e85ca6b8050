"""Failures of the command line that need no training: usage errors before any
long work, one-line messages, exit statuses, and nothing left behind.

Runs ``nnscratch.cli.main`` in-process, with the data loader replaced where a
test must prove it was never reached (or to trigger a failure inside it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnscratch import Dense, Flatten, Sequential, cli, save
from nnscratch.datasets import DataError

try:
    from . import helpers  # when tests/ is a package
except ImportError:
    import helpers


def exit_status(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


def must_not_load_data(*args, **kwargs):
    raise AssertionError("the data was loaded although the command had to fail first")


def _patch_data(monkeypatch: pytest.MonkeyPatch, loader: object) -> None:
    """Replace both of the CLI's data loaders: train's (all four files) and
    evaluate's (the test pair only)."""
    monkeypatch.setattr(cli, "load_fashion_mnist", loader)
    monkeypatch.setattr(cli, "load_fashion_mnist_split", loader)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.npz"
    save(Sequential(Flatten(), Dense(784, 10), seed=0), path)
    return path


@pytest.mark.parametrize("argv, message", [
    (["train", "--out", ""], "invalid non-empty path value"),
    (["train", "--data-dir", " "], "invalid non-empty path value"),
    (["evaluate", "{model}", "--data-dir", ""], "invalid non-empty path value"),
    (["train", "--hidden", "100000", "100000"], "parameters; a model file holds at most"),
    (["evaluate", "{model}", "--confusion-matrix", "cm.jpg"], "file name ending in .png"),
    (["evaluate", "{model}", "--confusion-matrix", "pp/.png"], "file name ending in .png"),
    (["evaluate", "{model}", "--confusion-matrix", "out.png/"], "file name ending in .png"),
    (["evaluate", "{model}", "--confusion-matrix", "{dir}/taken.png"], "is a directory, expected a file"),
    (["train", "--schedule", "constant", "--warmup-epochs", "2"],
     "--warmup-epochs shapes the cosine schedule"),
    (["train", "--resume", "{model}"], "that is a trained model, not a checkpoint"),
    (["predict", "{model}", "any.png", "--top", "11"], "knows only 10 classes"),
])
def test_usage_errors_come_before_any_work(argv, message, model_file, tmp_path, monkeypatch, capsys):
    _patch_data(monkeypatch, must_not_load_data)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.png").mkdir()
    argv = [a.format(model=model_file, dir=tmp_path) for a in argv]
    assert exit_status(argv) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "taken.png"]  # nothing new


@pytest.mark.parametrize("name", ["metrics.json", "confusion_matrix.png", "training_curves.png",
                                  "misclassified.png"])
def test_an_out_folder_with_a_file_a_run_would_overwrite_is_refused(name, tmp_path, monkeypatch,
                                                                    capsys):
    _patch_data(monkeypatch, must_not_load_data)
    mine = tmp_path / "out" / name
    mine.parent.mkdir()
    mine.write_text("mine")
    assert exit_status(["train", "--out", str(mine.parent)]) == 2
    assert f"already has {name}, which a run would overwrite" in capsys.readouterr().err
    assert mine.read_text() == "mine" and list(mine.parent.iterdir()) == [mine]


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_an_unknown_backend_is_a_one_line_error_for_the_command(how):
    env = dict(os.environ, NNSCRATCH_BACKEND="fast")
    argv = ([sys.executable, "-c", "import sys; sys.argv[0] = '/usr/bin/nnscratch'; import nnscratch"]
            if how == "console script" else [sys.executable, "-m", "nnscratch.cli", "--help"])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == ("nnscratch: error: NNSCRATCH_BACKEND='fast' is not a backend; use "
                           "'numba' (default) or 'numpy'.\n")


@pytest.mark.parametrize("how", ["python -c", "python -m"])
def test_a_program_importing_nnscratch_gets_the_backend_error(how, tmp_path):
    # Also a program run with -m whose package imports nnscratch: argv[0] is "-m"
    # then too, but the module run is not nnscratch's.
    env = dict(os.environ, NNSCRATCH_BACKEND="fast", PYTHONPATH=str(tmp_path))
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text(
        "try:\n    import nnscratch\nexcept ImportError as e:\n"
        "    print(type(e).__name__, isinstance(e, ImportError))\n")
    (tmp_path / "app" / "main.py").write_text("print('main ran')\n")
    argv = ([sys.executable, "-c", "import app.main"] if how == "python -c"
            else [sys.executable, "-m", "app.main"])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "BackendError True\nmain ran\n", proc.stderr


def test_an_output_file_name_taken_by_a_directory_is_a_usage_error(tmp_path, monkeypatch, capsys):
    _patch_data(monkeypatch, must_not_load_data)
    (tmp_path / "run" / "metrics.json").mkdir(parents=True)
    assert exit_status(["train", "--out", str(tmp_path / "run")]) == 2
    assert "metrics.json would be written there but is a directory" in capsys.readouterr().err


def test_an_out_directory_that_cannot_be_created_fails_before_loading_data(monkeypatch, capsys):
    _patch_data(monkeypatch, must_not_load_data)
    assert exit_status(["train", "--out", "/proc/nnscratch-test/run"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nnscratch train: error: --out /proc/nnscratch-test/run: "
                                               "cannot write there")


def test_a_failed_run_leaves_no_empty_directories_behind(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert exit_status(["train", "--out", str(out), "--data-dir", str(tmp_path / "no-data")]) == 1
    assert "the data directory does not exist" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_an_existing_out_directory_survives_a_failed_run(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    assert exit_status(["train", "--out", str(out), "--data-dir", str(tmp_path / "no-data")]) == 1
    assert out.is_dir()  # it was there before: not ours to remove


def test_sigterm_outside_training_exits_130_with_one_line(model_file, monkeypatch, capsys):
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM did not interrupt the command")

    _patch_data(monkeypatch, terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert exit_status(["evaluate", str(model_file)]) == 130
    assert capsys.readouterr().err == "nnscratch evaluate: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) == before  # restored for the caller


def test_warnings_are_one_line_without_source_locations(model_file, monkeypatch, capsys):
    def warn_then_fail(*args, **kwargs):
        warnings.warn("nnscratch: NNSCRATCH_DATA=x holds 0 of the 4 files", RuntimeWarning,
                      stacklevel=2)
        raise DataError("no data")

    _patch_data(monkeypatch, warn_then_fail)
    assert exit_status(["evaluate", str(model_file)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "nnscratch evaluate: warning: NNSCRATCH_DATA=x holds 0 of the 4 files",  # one prefix
        "nnscratch evaluate: error: no data",
    ]


@pytest.mark.parametrize("error, shown", [(MemoryError("Unable to allocate 29.2 GiB"),
                                             "Unable to allocate 29.2 GiB"),
                                            (MemoryError(), "allocation failed")])
def test_out_of_memory_is_a_one_line_error(monkeypatch, tmp_path, capsys, error, shown):
    def too_big(*args, **kwargs):
        raise error

    _patch_data(monkeypatch, too_big)
    assert exit_status(["train", "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == (f"nnscratch train: error: not enough memory ({shown}); "
                                       "try a smaller --hidden or --batch-size\n")


def test_an_out_path_with_dotdot_is_checked_as_the_place_it_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert exit_status(["train", "--out", "q/../r", "--data-dir", "no-data"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither q nor r left behind
    capsys.readouterr()
    _patch_data(monkeypatch, must_not_load_data)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "model.npz").write_bytes(b"a finished run")
    assert exit_status(["train", "--out", "done/new/.."]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "done" / "model.npz").read_bytes() == b"a finished run"
    assert not (tmp_path / "done" / "new").exists()


@pytest.mark.parametrize("target", ["new/deeper/cm.png", "n1/../new/deeper/cm.png"])
def test_a_confusion_matrix_folder_made_for_a_failed_evaluate_is_removed(
        target, model_file, tmp_path, monkeypatch, capsys):
    _patch_data(monkeypatch, no_data)
    monkeypatch.chdir(tmp_path)
    assert exit_status(["evaluate", str(model_file), "--confusion-matrix", target]) == 1
    assert "no data here" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # no n1, no new


def test_paths_with_dotdot_through_a_symlink_name_the_place_the_system_does(
        model_file, tmp_path, monkeypatch, capsys):
    # "link/.." is the parent of where the link points, not the folder holding the link.
    (tmp_path / "elsewhere" / "sub").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "link").symlink_to(tmp_path / "elsewhere" / "sub")
    monkeypatch.chdir(tmp_path / "work")
    _patch_data(monkeypatch, no_data)
    assert exit_status(["evaluate", str(model_file), "--confusion-matrix",
                        "link/../plots/cm.png"]) == 1
    assert not (tmp_path / "elsewhere" / "plots").exists()  # created, then removed again
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["link"]
    capsys.readouterr()
    _patch_data(monkeypatch, must_not_load_data)
    (tmp_path / "elsewhere" / "done").mkdir()
    (tmp_path / "elsewhere" / "done" / "model.npz").write_bytes(b"a finished run")
    assert exit_status(["train", "--out", "link/../done"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_an_unwritable_confusion_matrix_place_fails_before_evaluating(model_file, monkeypatch, capsys):
    _patch_data(monkeypatch, must_not_load_data)
    assert exit_status(["evaluate", str(model_file), "--confusion-matrix", "/proc/nnscratch/cm.png"]) == 1
    assert "--confusion-matrix /proc/nnscratch: cannot write there" in capsys.readouterr().err


def test_predict_into_a_closed_pipe_stops_quietly(model_file, tmp_path):
    image = tmp_path / "item.png"
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(image)
    proc = subprocess.Popen(helpers.cli_command("predict", model_file, *[image] * 200, "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=helpers.cli_env())
    proc.stdout.close()  # like `| head` exiting before the output comes
    _, stderr = proc.communicate(timeout=120)
    assert b"Traceback" not in stderr and b"Broken pipe" not in stderr, stderr.decode()
    assert proc.returncode == 1


def no_data(*args, **kwargs):
    raise DataError("no data here")


def test_a_second_train_into_the_same_folder_is_refused_while_the_first_runs(tmp_path, monkeypatch, capsys):
    import fcntl

    _patch_data(monkeypatch, must_not_load_data)
    out = tmp_path / "busy"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # what the first run holds for its whole life
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert exit_status(["train", "--out", str(out)]) == 1
        assert "another nnscratch train is writing there" in capsys.readouterr().err
    finally:
        os.close(fd)


def test_temporaries_left_by_a_killed_run_are_removed(tmp_path, monkeypatch, capsys):
    _patch_data(monkeypatch, no_data)
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.npz.12345.0badf00d.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = [out / "notes.txt", out / ".model.npz.notes.tmp.txt", out / ".checkpoint.npz.backup.tmp"]
    for path in mine:
        path.write_text("not ours")
    assert exit_status(["train", "--out", str(out)]) == 1
    assert not stale.exists()
    assert all(path.read_text() == "not ours" for path in mine)


def test_a_folder_that_cannot_be_locked_still_trains(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # as on some NFS mounts

    monkeypatch.setattr(fcntl, "flock", no_locks)
    _patch_data(monkeypatch, no_data)
    out = tmp_path / "run"
    out.mkdir()
    # Unlocked, another run could be writing this very file: it must be left alone.
    busy = out / ".checkpoint.npz.12345.0badf00d.tmp"
    busy.write_bytes(b"being written")
    assert exit_status(["train", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no data here" in err and "another nnscratch train" not in err
    assert busy.exists()


def test_closing_stdout_after_training_is_not_reported_as_a_failed_write(tmp_path):
    helpers.require_real_data()
    out = tmp_path / "run"
    command = " ".join(helpers.cli_command("train", "--epochs", "1", "--hidden", "8", "--val-size",
                                           "55000", "--quiet", "--out", out))
    result = subprocess.run(f"{command} | head -1", shell=True, capture_output=True, text=True,
                            env=helpers.cli_env(), timeout=300)
    assert "Training" in result.stdout
    assert "make room" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "standard output was closed" in result.stderr
    assert (out / "checkpoint.npz").exists()


def test_an_ignored_sigint_stays_ignored_during_training():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a background job
    try:
        with cli._StopOnSignal(trainer=None):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_full_disk_while_writing_names_the_file(tmp_path):
    import errno

    from nnscratch.atomic import atomic_write

    def fill(handle):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "model.npz", fill)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "model.npz")
    assert list(tmp_path.iterdir()) == []


def test_an_ignored_sigterm_stays_ignored(model_file, monkeypatch):
    seen = []

    def look(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGTERM))
        raise DataError("no data")

    _patch_data(monkeypatch, look)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert exit_status(["evaluate", str(model_file)]) == 1
        assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


# What the `nnscratch` console script runs, with Ctrl-C simulated at the moment one
# module is imported: the ~0.5 s of importing NumPy and Numba come before the
# command can install its own handling.
CTRL_C_DURING_IMPORT = r"""
import sys
module = sys.argv.pop(1)
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == module:
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
sys.argv[0] = "/usr/bin/nnscratch"   # as the installed script's path
from nnscratch import _command
sys.exit(_command())
"""


@pytest.mark.parametrize("module", ["numpy", "numba", "nnscratch.model", "nnscratch.cli",
                                    "matplotlib"])
def test_ctrl_c_while_the_command_starts_exits_130_without_a_traceback(module):
    proc = subprocess.run([sys.executable, "-c", CTRL_C_DURING_IMPORT, module, "--help"],
                          capture_output=True, text=True, timeout=120)
    if module == "matplotlib":  # not imported for --help: runs normally
        assert proc.returncode == 0 and "usage: nnscratch" in proc.stdout
        return
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "nnscratch: interrupted\n"


def test_a_program_importing_nnscratch_still_gets_its_keyboard_interrupt():
    code = CTRL_C_DURING_IMPORT.replace('"/usr/bin/nnscratch"', '"my_program.py"')
    proc = subprocess.run([sys.executable, "-c", code, "numba"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 130 and "KeyboardInterrupt" in proc.stderr


def test_the_console_script_is_the_ctrl_c_safe_entry_point():
    from importlib.metadata import entry_points
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["nnscratch"] == "nnscratch:_command"
