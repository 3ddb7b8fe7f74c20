"""Layer 4: evaluation — perplexity and bits per byte on held-out text (sliding window).

Written against the model protocol only, so it scores every model (GPT, LSTM/GRU, n-gram);
loads models from model directories (lmstack.models.directory). See perplexity.py.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it, imported on first use (PEP 562): `lmstack X --help`
# imports a package's commands.py, which must not pull in torch through this file.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["evaluate_model_dir", "evaluate_text", "sliding_windows"], "perplexity"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmstack.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lmstack.eval.{_EXPORTS[name]}"), name)
    globals()[name] = value  # Later lookups skip this function.
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
