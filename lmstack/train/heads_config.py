"""The settings of `lmstack train-heads` (train/heads.py), apart from the torch code that uses
them, so that the command's flags and --help are read without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmstack.errors import ConfigError


@dataclass
class HeadsTrainConfig:
    """Everything `train_heads` needs."""

    model: str = "runs/quickstart"
    data: list[str] = field(default_factory=list)   # a shard dir, or text files
    out: str | None = None         # default: the model directory
    heads: int = 4                 # K
    layers: int = 1                # residual blocks per head
    steps: int = 300
    batch_size: int = 8
    block_size: int = 128
    lr: float = 1e-3
    loss: str = "distill"          # "distill" (match the base model) or "data"
    max_minutes: float | None = None
    seed: int = 0
    threads: int | None = None
    log_every: int = 20
    progress: bool = True

    def check(self) -> HeadsTrainConfig:
        if not self.data:
            raise ConfigError("train-heads needs --data: a token-shard directory or text files")
        for name in ("heads", "layers", "steps", "batch_size", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"train-heads: {name} must be an integer >= 1, got {value!r}")
        if self.loss not in ("distill", "data"):
            raise ConfigError(f"train-heads: --loss must be 'distill' or 'data', got {self.loss!r}")
        if not self.lr > 0:
            raise ConfigError(f"train-heads: --lr must be positive, got {self.lr}")
        return self
