"""Interop with Hugging Face: import GPT-2 / Llama / Mistral / Qwen2 checkpoints, export ours.

    from lmstack.interop import load_hf_model, export_hf, convert
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it, imported on first use (PEP 562): `lmstack X --help`
# imports a package's commands.py, which must not pull in torch through this file.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["chat_template", "convert", "eos_token_ids", "export_hf", "is_hf_dir", "load_hf_model"], "hf"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmstack.interop' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lmstack.interop.{_EXPORTS[name]}"), name)
    globals()[name] = value  # Later lookups skip this function.
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
