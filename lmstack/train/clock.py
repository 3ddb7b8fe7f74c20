"""The training clock: tokens/s and model FLOPs utilization (MFU) over training time only.

MFU is the model's FLOPs per token (lmstack/models/counting.py, the PaLM paper's 6N + attention
count) times tokens/s, over the device's measured matmul peak in the precision trained in
(lmstack/models/metrics.py); validation, samples and checkpoints are paused out of the time.
The loop (loop.py) starts one per run and reads it after every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Clock:
    """Tokens/s and MFU over training time only: validation, samples and checkpoints are
    paused out, so they do not count against the step's speed."""

    tokens_per_step: int
    flops_per_step: float
    peak_flops: float  # all devices together
    first_step: int
    deadline_s: float | None  # cfg.max_minutes, in seconds
    start: float = field(default_factory=time.perf_counter)
    paused: float = 0.0

    def __post_init__(self) -> None:
        self.last, self.last_step = self.start, self.first_step  # of the last reading
        if self.deadline_s is not None:
            self.deadline_s += self.start

    def reading(self, step: int, now: float) -> dict:
        """tokens_per_s and mfu since the last reading."""
        tok_s = self.tokens_per_step * (step - self.last_step) / max(now - self.last, 1e-9)
        self.last, self.last_step = now, step
        return {"tokens_per_s": tok_s,
                "mfu": self.flops_per_step * tok_s / self.tokens_per_step / self.peak_flops}

    def pause(self, since: float) -> None:
        """Leave the time from `since` to now out of training time."""
        spent = time.perf_counter() - since
        self.last += spent
        self.paused += spent

    def tokens_per_second(self, step: int) -> float:
        train_seconds = time.perf_counter() - self.start - self.paused
        return (self.tokens_per_step * (step - self.first_step) / train_seconds
                if train_seconds > 0 else 0.0)
