"""`lmstack.program`: the public name of prompt programs, a lazy re-export of
lmstack/infer/program/ (where they live: layer 5, inference). docs/programs.md.

    from lmstack.program import gen, select, fork, join, program, run
"""

from __future__ import annotations

import importlib
from typing import Any

from lmstack.infer import program as _program

__all__ = list(_program.__all__)


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module("lmstack.infer.program"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
