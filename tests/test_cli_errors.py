"""Failures of the command line that need no training: usage errors before any
long work, one-line messages, exit statuses, and nothing left behind.

Runs ``nnscratch.cli.main`` in-process, with the data loader replaced where a
test must prove it was never reached (or to trigger a failure inside it)."""

from __future__ import annotations

import io
import json
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
    assert "already holds a finished run" in capsys.readouterr().err
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
    assert "already holds a finished run" in capsys.readouterr().err


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


class _ClosesAfter:
    """A stdout whose reader goes away after ``writes`` writes (`| head`)."""

    def __init__(self, writes: int) -> None:
        self.writes = writes

    def write(self, text: str) -> int:
        self.writes -= 1
        if self.writes < 0:
            raise BrokenPipeError(32, "Broken pipe")
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")


def test_closing_stdout_during_training_says_how_to_resume(tmp_path, monkeypatch, capsys):
    helpers.require_real_data()
    out = tmp_path / "run"
    # "Training ...", "Epoch 1/3" and epoch 1's summary (print writes text, then end):
    # the reader leaves before "Epoch 2/3", after epoch 1's checkpoint.
    monkeypatch.setattr(sys, "stdout", _ClosesAfter(6))
    assert exit_status(["train", "--epochs", "3", "--hidden", "8", "--val-size", "55000",
                        "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "stopped: standard output was closed; the checkpoint of the last finished epoch " \
        f"is {out / 'checkpoint.npz'}" in err and f"nnscratch train --resume {out}" in err
    assert (out / "checkpoint.npz").exists() and not (out / "model.npz").exists()


def test_a_second_signal_while_the_checkpoint_is_saved_says_what_is_kept(
        tmp_path, monkeypatch, capsys):
    helpers.require_real_data()
    out = tmp_path / "run"
    calls = []
    real_save = cli.save_checkpoint

    def save_then_stop(path, trainer, config):
        calls.append(trainer.epoch)
        if len(calls) == 1:  # epoch 1's checkpoint, then Ctrl-C during the next step
            real_save(path, trainer, config)
            trainer.stop_requested = True
            return
        raise KeyboardInterrupt  # the second Ctrl-C, while the interrupted step is saved

    monkeypatch.setattr(cli, "save_checkpoint", save_then_stop)
    assert exit_status(["train", "--epochs", "3", "--hidden", "8", "--val-size", "55000",
                        "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert f"Stopped at once; the checkpoint of the last finished epoch is {out / 'checkpoint.npz'}" \
        in err and f"Resume with: nnscratch train --resume {out}" in err
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


# ---- from a new user's review: names, folders, options that could not work -------------
@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "3", "--schedule", "cosine", "--warmup-epochs", "3"],
     "--warmup-epochs 3 is not less than --epochs 3"),
    (["train", "--batch-size", "60000"], "--batch-size 60000 is more than the 55000 training"),
    (["train", "--batch-size", "20000", "--val-size", "50000"], "more than the 10000 training"),
    (["evaluate", "{model}", "--confusion-matrix", "cm.txt"],
     "must be a file name ending in .png, got 'cm.txt'"),
])
def test_options_that_could_not_work_are_usage_errors(argv, message, model_file, monkeypatch,
                                                       capsys):
    _patch_data(monkeypatch, must_not_load_data)
    assert exit_status([a.replace("{model}", str(model_file)) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_an_unfinished_run_in_out_is_offered_for_resuming(tmp_path, monkeypatch, capsys):
    _patch_data(monkeypatch, must_not_load_data)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "checkpoint.npz").write_bytes(b"an unfinished run")
    assert exit_status(["train", "--out", str(tmp_path / "half")]) == 2
    err = capsys.readouterr().err
    assert f"already holds an unfinished run; continue it with --resume {tmp_path / 'half'}" in err


def test_default_run_folders_of_the_same_second_get_their_own_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20261125-120341")
    assert cli._default_out() == Path("runs/20261125-120341")
    (tmp_path / "runs" / "20261125-120341").mkdir(parents=True)
    assert cli._default_out() == Path("runs/20261125-120341_2")
    (tmp_path / "runs" / "20261125-120341_2").mkdir()
    assert cli._default_out() == Path("runs/20261125-120341_3")
    assert cli._default_out(taken=Path("runs/20261125-120341_2")) == Path("runs/20261125-120341_3")


def test_a_run_that_loses_the_race_for_the_default_folder_takes_the_next(tmp_path, monkeypatch,
                                                                          capsys):
    # Another run created runs/<second> between this run's check and its mkdir.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20261125-120341")
    other = tmp_path / "runs" / "20261125-120341"
    real = cli._default_out

    def racing(taken=None):
        if taken is None:
            other.mkdir(parents=True, exist_ok=True)  # the other run got there first
            return Path("runs/20261125-120341")
        return real(taken)

    monkeypatch.setattr(cli, "_default_out", racing)
    seen = []

    def no_data_here(*args, **kwargs):
        seen.append(sorted(p.name for p in (tmp_path / "runs").iterdir()))
        raise DataError("no data here")

    _patch_data(monkeypatch, no_data_here)
    monkeypatch.setattr(cli, "_compile_first", lambda *args: None)
    assert exit_status(["train"]) == 1
    assert seen == [["20261125-120341", "20261125-120341_2"]]  # it made its own folder
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["20261125-120341"]


def test_predict_and_evaluate_take_a_run_folder(model_file, tmp_path, monkeypatch, capsys):
    image = tmp_path / "item.png"
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(image)
    assert exit_status(["predict", str(tmp_path), str(image)]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert exit_status(["predict", str(empty), str(image)]) == 2
    assert "is a folder without a model.npz" in capsys.readouterr().err
    _patch_data(monkeypatch, lambda *a, **k: (np.zeros((5, 28, 28), np.uint8), np.arange(5)))
    assert exit_status(["evaluate", str(tmp_path)]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_predict_takes_folders_and_images_after_options(model_file, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name in ("b.png", "a.jpg", ".hidden.png", "notes.txt"):
        (pictures / name).write_bytes(b"")
    Image.fromarray(np.full((40, 30), 30, np.uint8)).save(pictures / "b.png")
    Image.fromarray(np.full((40, 30), 30, np.uint8)).save(pictures / "a.jpg")
    (pictures / "nothing").mkdir()
    single = tmp_path / "single.png"
    Image.fromarray(np.full((28, 28), 10, np.uint8)).save(single)
    assert exit_status(["predict", str(model_file), str(pictures), "--top", "1", str(single),
                        str(pictures / "nothing")]) == 1
    captured = capsys.readouterr()
    files = [line.split(": ")[0] for line in captured.out.splitlines()]
    assert files == [str(pictures / "a.jpg"), str(pictures / "b.png"), str(single)]
    assert f"{pictures / 'nothing'}: a folder with no image files in it" in captured.err
    assert all(len(line.split(", ")) == 1 for line in captured.out.splitlines())  # --top 1


def test_predict_save_inputs_writes_what_the_model_saw(model_file, tmp_path, capsys):
    from nnscratch.images import load_image
    photo = tmp_path / "my photo.png"
    gray = np.full((80, 60), 230, np.uint8)
    gray[20:70, 15:45] = 40
    Image.fromarray(gray).save(photo)
    seen = tmp_path / "seen" / "deeper"
    assert exit_status(["predict", str(model_file), str(photo), "--save-inputs", str(seen)]) == 0
    assert sorted(p.name for p in seen.iterdir()) == ["1-my photo.png"]
    saved = np.asarray(Image.open(seen / "1-my photo.png"))
    assert np.array_equal(saved, load_image(photo))


def test_predict_names_classes_of_a_model_saved_without_names(tmp_path, capsys):
    model = tmp_path / "m.npz"
    save(Sequential(Flatten(), Dense(784, 4), seed=0), model)
    image = tmp_path / "i.png"
    Image.fromarray(np.full((28, 28), 99, np.uint8)).save(image)
    assert exit_status(["predict", str(model), str(image)]) == 0
    assert capsys.readouterr().out.count("class ") == 3


def test_predict_says_what_a_checkpoint_and_an_empty_file_are(tmp_path, capsys):
    image = tmp_path / "empty.png"
    image.write_bytes(b"")
    model = tmp_path / "m.npz"
    save(Sequential(Flatten(), Dense(784, 10), seed=0), model)
    assert exit_status(["predict", str(model), str(image)]) == 1
    assert f"{image}: empty file (0 bytes)" in capsys.readouterr().err
    helpers.require_real_data()
    run = tmp_path / "run"
    assert exit_status(["train", "--epochs", "1", "--hidden", "8", "--val-size", "55000",
                        "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    assert exit_status(["predict", str(run / "checkpoint.npz"), str(image)]) == 1
    assert "it is a training checkpoint: use the run's model.npz" in capsys.readouterr().err


def test_a_broken_link_named_runs_is_an_error_not_a_hang(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").symlink_to(tmp_path / "nowhere")
    _patch_data(monkeypatch, must_not_load_data)
    monkeypatch.setattr(cli, "_compile_first", lambda *args: None)
    assert exit_status(["train"]) == 1
    assert "cannot write there (runs is a symbolic link to nothing)" in capsys.readouterr().err


def test_a_broken_link_takes_a_default_name_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20261125-120341")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "20261125-120341").symlink_to(tmp_path / "nowhere")
    assert cli._default_out() == Path("runs/20261125-120341_2")


def test_predict_reads_every_word_after_a_double_dash_as_an_image(model_file, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((28, 28), 10, np.uint8)).save(tmp_path / "a.png")
    for name in ("-x.png", "--json"):  # images with names like options
        (tmp_path / name).write_bytes((tmp_path / "a.png").read_bytes())
    assert exit_status(["predict", str(model_file), "a.png", "--top", "1", "--", "-x.png",
                        "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in out] == ["a.png", "-x.png", "--json"]


def test_a_folder_is_searched_for_picture_formats_only(model_file, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.fromarray(np.full((28, 28), 10, np.uint8)).save(pictures / "item.png")
    (pictures / "notes.pdf").write_bytes(b"%PDF-1.4")
    (pictures / "scan.eps").write_bytes(b"%!PS")
    (pictures / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert exit_status(["predict", str(model_file), str(pictures)]) == 1
    captured = capsys.readouterr()
    assert [line.split(": ")[0] for line in captured.out.splitlines()] == [str(pictures / "item.png")]
    assert f"{pictures / 'gone.png'}: a symbolic link to nothing" in captured.err  # said, not skipped
    assert "notes.pdf" not in captured.err and "scan.eps" not in captured.err


def test_save_inputs_wants_a_new_or_empty_folder_and_leaves_none_empty(model_file, tmp_path,
                                                                      capsys):
    image = tmp_path / "item.png"
    Image.fromarray(np.full((28, 28), 10, np.uint8)).save(image)
    used = tmp_path / "used"
    used.mkdir()
    (used / "1-item.png").write_bytes(b"an earlier run's")
    assert exit_status(["predict", str(model_file), str(image), "--save-inputs", str(used)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (used / "1-item.png").read_bytes() == b"an earlier run's"
    fresh = tmp_path / "fresh"
    assert exit_status(["predict", str(model_file), str(tmp_path / "missing.png"),
                        "--save-inputs", str(fresh)]) == 1
    assert not fresh.exists()  # nothing was saved: the folder made for it is gone
    capsys.readouterr()
    assert exit_status(["predict", str(model_file), str(image), "--save-inputs", str(fresh),
                        "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["input_image"] == str(fresh / "1-item.png")
