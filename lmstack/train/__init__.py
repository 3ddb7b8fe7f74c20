"""Layer 4: training — the teacher-forcing loop, AdamW and schedules, AMP, DDP/FSDP, checkpoints.

Written against the model protocol only (lmstack.models.protocol), so it trains every model.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it, imported on first use (PEP 562): `lmstack X --help`
# imports a package's commands.py, which must not pull in torch through this file.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["TrainConfig", "apply_overrides", "load_config"], "config"),
    **dict.fromkeys(["TrainResult", "train"], "loop"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmstack.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lmstack.train.{_EXPORTS[name]}"), name)
    globals()[name] = value  # Later lookups skip this function.
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
