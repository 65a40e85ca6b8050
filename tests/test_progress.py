"""The live progress line: it fits the terminal and says how long the epoch has left."""

from __future__ import annotations

import io
import os
import shutil

import pytest

from nnscratch.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("columns", [40, 60, 80, 200])
def test_the_live_line_fits_the_terminal(columns, monkeypatch):
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a: os.terminal_size((columns, 24)))
    stream = Terminal()
    progress = Progress(epochs=2, steps=430, stream=stream)
    progress.start_epoch(0)
    for step in (1, 200, 430):
        progress._last_draw = 0.0  # draw every update
        progress.update(step, {"loss": 0.61234, "accuracy": 0.78125})
    lines = stream.getvalue().split("\r")[1:]
    assert len(lines) == 3
    assert all(line.endswith("\033[K") for line in lines)  # each clears the last one's end
    lines = [line.removesuffix("\033[K") for line in lines]
    for line in lines:
        # Longer than the terminal, a line wraps and "\r" redraws only its last row.
        assert len(line) <= columns - 1, line
    if columns >= 80:
        assert "[" in lines[1] and "ETA" in lines[1] and "loss: 0.6123" in lines[1]
    assert lines[2].startswith("430/430")


def test_the_eta_counts_from_where_a_resumed_epoch_started(monkeypatch):
    clock = iter([0.0, 100.0, 110.0])  # made, the epoch starts, a draw 10 s later
    monkeypatch.setattr("nnscratch.progress.time.perf_counter", lambda: next(clock))
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a: os.terminal_size((120, 24)))
    stream = Terminal()
    progress = Progress(epochs=1, steps=300, stream=stream)
    progress.start_epoch(0, step=100)  # resumed after 100 steps
    progress.update(200, {"loss": 0.5})
    # 100 steps in 10 s, 100 to go: 10 s left (not 5, as counting from step 0 would say).
    assert "ETA 10s" in stream.getvalue()
