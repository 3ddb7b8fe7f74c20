"""lmstack: the whole language-model stack in readable, tested PyTorch.

Layers (each imports only those below it): tokenizer, data, models, train/eval, infer,
posttrain/interop, serve/apps, cli. See ARCHITECTURE in the docs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"

# The --model help of every command that takes any model (here: --help must not import torch).
MODEL_HELP = ("model: a directory (lmstack, quantized, Hugging Face), a .gguf file, or a short "
              "name (`lmstack models`)")


def lazy_exports(package: str,
                 exports: dict[str, list[str]]) -> tuple[list[str], Callable, Callable]:
    """(`__all__`, `__getattr__`, `__dir__`) for a package whose public names are imported on
    first use (PEP 562), so `lmstack X --help` and `import lmstack.data` stay cheap (no torch
    pulled in through a package's `__init__`). `exports` maps each module to the names it defines.

    >>> all_, getattr_, _ = lazy_exports("lmstack.tokenizer", {"bpe": ["bpe_merge"]})
    >>> all_, getattr_("bpe_merge").__module__
    (['bpe_merge'], 'lmstack.tokenizer.bpe')
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(importlib.import_module(package), name, value)  # later lookups skip this
        return value

    def __dir__() -> list[str]:
        return sorted([*vars(importlib.import_module(package)), *where])

    return sorted(where), __getattr__, __dir__
