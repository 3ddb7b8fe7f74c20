"""Layer 4: training — the teacher-forcing loop, AdamW and schedules, AMP, DDP/FSDP, checkpoints.

Written against the model protocol only (lmstack.models.protocol), so it trains every model.
"""

from lmstack.train.config import TrainConfig, apply_overrides, load_config
from lmstack.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "apply_overrides", "load_config", "train"]
