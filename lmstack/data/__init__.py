"""Layer 2: the data pipeline - corpora, cleaning, dedup, synthetic data and token shards.

Depends on numpy, regex, tqdm, the standard library and `lmstack.tokenizer`; never on torch.
`prepare(PrepareConfig(...))` runs the whole pipeline; `TokenLoader` reads its output. See
docs/data.md.

Names are imported on first use (PEP 562), so `import lmstack.data` stays cheap and
`python -m lmstack.data.<module>` does not find its module already imported.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["DedupConfig", "ExactDeduper", "MinHasher", "NearDeduper", "shingle_hashes"], "dedup"),
    **dict.fromkeys(["FilterConfig", "failed_rule"], "filters"),
    **dict.fromkeys(["TokenLoader"], "loader"),
    **dict.fromkeys(["normalize_text"], "normalize"),
    **dict.fromkeys(["scrub"], "pii"),
    **dict.fromkeys(["PrepareConfig", "PrepareReport", "clean_documents", "format_report", "prepare"], "prepare"),
    **dict.fromkeys(["ShardConfig", "ShardManifest", "open_shards", "read_tokens", "write_shards"], "shards"),
    **dict.fromkeys(["CORPORA", "STDLIB", "Document", "SourceStats", "iter_documents"], "sources"),
    **dict.fromkeys(["ArithmeticConfig", "evaluate", "generate", "render", "write_examples"], "synthetic"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmstack.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lmstack.data.{_EXPORTS[name]}"), name)
    globals()[name] = value  # Later lookups skip this function.
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
