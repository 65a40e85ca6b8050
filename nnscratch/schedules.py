"""Learning-rate schedules: functions of the optimizer step, 1-based."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Constant:
    """lr(t) = base_lr."""

    base_lr: float

    def __call__(self, step: int) -> float:
        return self.base_lr

    def config(self) -> dict[str, Any]:
        return {"name": "constant", **asdict(self)}


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then a half cosine
    down to ``min_lr`` at ``total_steps``:

        lr(t) = base_lr * t / warmup_steps                          t <= warmup_steps
        lr(t) = min_lr + (base_lr - min_lr) (1 + cos(pi s)) / 2     otherwise,
    with s = (t - warmup_steps) / (total_steps - warmup_steps), clipped to [0, 1].
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"WarmupCosine needs 0 <= warmup_steps ({self.warmup_steps}) "
                             f"<= total_steps ({self.total_steps}) and total_steps >= 1")

    def __call__(self, step: int) -> float:
        if step < 1:
            raise ValueError(f"WarmupCosine: steps are counted from 1, got {step!r}")
        if step <= self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        s = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * s)) / 2

    def config(self) -> dict[str, Any]:
        return {"name": "cosine", **asdict(self)}


def schedule_from_config(config: dict[str, Any]) -> Constant | WarmupCosine:
    """Rebuild a schedule from its ``config()`` (used when resuming training)."""
    kinds = {"constant": Constant, "cosine": WarmupCosine}
    args = dict(config)
    kind = kinds.get(args.pop("name", None))
    if kind is None:
        raise ValueError(f"unknown learning-rate schedule {config!r}")
    return kind(**args)
