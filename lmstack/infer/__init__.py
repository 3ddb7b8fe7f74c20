"""Inference: the generation engine, its settings, logits processors, search and scoring.

    from lmstack.infer import Engine
    engine = Engine.load("runs/quickstart")
    engine.generate("def main(", temperature=0.7, top_p=0.9).text
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it, imported on first use (PEP 562): `lmstack X --help`
# imports a package's commands.py, which must not pull in torch through this file.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["GenerationConfig"], "config"),
    **dict.fromkeys(["Engine", "sample_text"], "engine"),
    **dict.fromkeys(["Completion"], "step"),
    **dict.fromkeys(["Score"], "scoring"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmstack.infer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lmstack.infer.{_EXPORTS[name]}"), name)
    globals()[name] = value  # Later lookups skip this function.
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
