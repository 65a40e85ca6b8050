"""Keras-style progress output: a live line within the epoch on a terminal,
one summary line per epoch everywhere."""

from __future__ import annotations

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

    def start_epoch(self, epoch: int) -> None:
        if self.verbose:
            print(f"Epoch {epoch + 1}/{self.epochs}", file=self.stream, flush=True)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.1 and step < self.steps:
            return
        self._last_draw = now
        width = 30
        done = width * step // self.steps
        bar = "=" * max(done - 1, 0) + (">" if done < width else "=") + "." * (width - done)
        self.stream.write(f"\r{step:>{len(str(self.steps))}}/{self.steps} [{bar}] - "
                          f"{_format_metrics(metrics)}")
        self.stream.flush()

    def end_epoch(self, seconds: float, metrics: dict[str, float]) -> None:
        if not self.verbose:
            return
        if self.live:
            self.stream.write("\r\033[K")
        print(f"{self.steps}/{self.steps} - {seconds:.1f}s - {_format_metrics(metrics)}",
              file=self.stream, flush=True)
