"""Layer 4: training — the teacher-forcing loop, AdamW and schedules, AMP, DDP/FSDP, checkpoints.

Written against the model protocol only (lmstack.models.protocol), so it trains every model.
"""

from __future__ import annotations

from lmstack import lazy_exports

# Module -> the public names it defines, each imported on first use.
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "config": ["TrainConfig", "apply_overrides", "load_config"],
    "loop": ["TrainResult", "train"],
})
