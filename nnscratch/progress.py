"""Keras-style progress output: a live line within the epoch on a terminal,
one summary line per epoch everywhere."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


def _format_metrics(metrics: dict[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in metrics.items())


class Progress:
    """Prints ``Epoch i/n``, a redrawn bar on TTYs (at most ~10 times a second,
    so printing costs nothing measurable), and the epoch summary line."""

    def __init__(self, epochs: int, steps: int, verbose: int = 1, stream: TextIO | None = None) -> None:
        self.epochs, self.steps, self.verbose = epochs, steps, verbose
        self.stream = stream if stream is not None else sys.stdout
        self.live = verbose > 0 and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_draw = 0.0
        self._epoch_started = time.perf_counter()
        self._first_step = 0

    def start_epoch(self, epoch: int, step: int = 0) -> None:
        """Epoch ``epoch`` (from 0) begins, or resumes after ``step`` steps."""
        self._epoch_started, self._first_step = time.perf_counter(), step
        if self.verbose:
            print(f"Epoch {epoch + 1}/{self.epochs}", file=self.stream, flush=True)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.1 and step < self.steps:
            return
        self._last_draw = now
        done_steps = step - self._first_step
        eta = ((now - self._epoch_started) / done_steps * (self.steps - step)
               if done_steps > 0 else 0.0)
        count = f"{step:>{len(str(self.steps))}}/{self.steps}"
        tail = f" - ETA {eta:.0f}s - {_format_metrics(metrics)}"
        # The bar shrinks to fit the terminal, and the line is cut to its width:
        # a line longer than the terminal wraps, and \r then redraws only its end.
        columns = shutil.get_terminal_size().columns
        width = max(0, min(30, columns - 1 - len(count) - 3 - len(tail)))
        done = width * step // self.steps
        bar = (" [" + "=" * max(done - 1, 0) + (">" if done < width else "=")
               + "." * (width - done) + "]") if width >= 10 else ""
        # "\033[K" clears what a longer previous line left (the ETA may lose a digit).
        self.stream.write("\r" + (count + bar + tail)[:max(columns - 1, 1)] + "\033[K")
        self.stream.flush()

    def end_epoch(self, seconds: float, metrics: dict[str, float]) -> None:
        if not self.verbose:
            return
        if self.live:
            self.stream.write("\r\033[K")
        print(f"{self.steps}/{self.steps} - {seconds:.1f}s - {_format_metrics(metrics)}",
              file=self.stream, flush=True)
