"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD).

Warmup (Goyal et al. 2017) keeps Adam's early, badly estimated second moments from blowing up
the first steps. Cosine decay (Loshchilov & Hutter 2017) is the GPT-2/3 default. WSD (Hu et al.
2024, MiniCPM; Hägele et al. 2024) holds the peak rate and decays only in the last fraction of
training, so a run can be extended or branched before its decay.

    >>> cfg = ScheduleConfig(lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    >>> [round(lr_at(s, cfg), 3) for s in (0, 5, 10, 60, 110, 500)]
    [0.1, 0.55, 1.0, 0.55, 0.1, 0.1]
    >>> wsd = ScheduleConfig(lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=100,
    ...                      kind="wsd", decay_fraction=0.2)
    >>> [round(lr_at(s, wsd), 2) for s in (0, 50, 80, 90, 100)]
    [1.0, 1.0, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from lmstack.errors import ConfigError


@dataclass
class ScheduleConfig:
    """Shape of the learning rate over training."""

    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    total_steps: int | None = None  # None: the run's `steps` (TrainConfig.check fills it in)
    kind: str = "cosine"  # cosine | wsd | constant | linear
    decay_fraction: float = 0.2  # WSD: the last fraction of steps that decays

    def check(self) -> ScheduleConfig:
        """Return self, or raise ConfigError naming the bad field."""
        if self.kind not in DECAYS:
            raise ConfigError(f"schedule kind {self.kind!r} is unknown; use one of {list(DECAYS)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, "
                              f"min_lr={self.min_lr}")
        if self.warmup_steps < 0 or (self.total_steps is not None and self.total_steps <= 0):
            raise ConfigError(f"warmup_steps must be >= 0 and total_steps > 0, got "
                              f"{self.warmup_steps} and {self.total_steps}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"decay_fraction {self.decay_fraction} must be in (0, 1]")
        return self


def _cosine(progress: float, cfg: ScheduleConfig) -> float:
    return 0.5 * (1 + math.cos(math.pi * progress))


def _linear(progress: float, cfg: ScheduleConfig) -> float:
    return 1 - progress


def _wsd(progress: float, cfg: ScheduleConfig) -> float:
    stable = 1 - cfg.decay_fraction
    return 1.0 if progress <= stable else 1 - (progress - stable) / cfg.decay_fraction


def _constant(progress: float, cfg: ScheduleConfig) -> float:
    return 1.0


# Each maps progress through the post-warmup phase (0..1) to a weight between min_lr and lr.
DECAYS: dict[str, Callable[[float, ScheduleConfig], float]] = {
    "cosine": _cosine, "linear": _linear, "wsd": _wsd, "constant": _constant,
}


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """Learning rate at optimizer step `step` (0-based)."""
    if cfg.total_steps is None:
        raise ConfigError("schedule.total_steps is not set; give it, or let TrainConfig.check() "
                          "set it to the run's steps")
    if step < cfg.warmup_steps:
        # Start from min_lr rather than 0 so step 0 still moves the weights.
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * step / cfg.warmup_steps
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * DECAYS[cfg.kind](progress, cfg)
