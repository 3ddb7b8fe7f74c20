"""Layer 2: the data pipeline - corpora, cleaning, dedup, synthetic data and token shards.

Depends on numpy, regex, tqdm, the standard library and `lmstack.tokenizer`; never on torch.
`prepare(PrepareConfig(...))` runs the whole pipeline; `TokenLoader` reads its output. See
docs/data.md.

Names are imported on first use (PEP 562), so `import lmstack.data` stays cheap and
`python -m lmstack.data.<module>` does not find its module already imported.
"""

from __future__ import annotations

from lmstack import lazy_exports

# Module -> the public names it defines, each imported on first use.
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "dedup": ["DedupConfig", "ExactDeduper", "MinHasher", "NearDeduper", "shingle_hashes"],
    "filters": ["FilterConfig", "failed_rule"],
    "loader": ["TokenLoader"],
    "normalize": ["normalize_text"],
    "pii": ["scrub"],
    "prepare": ["PrepareConfig", "PrepareReport", "clean_documents", "format_report", "prepare"],
    "shards": ["ShardConfig", "ShardManifest", "open_shards", "read_tokens", "write_shards"],
    "sources": ["CORPORA", "STDLIB", "Document", "SourceStats", "iter_documents"],
    "synthetic": ["ArithmeticConfig", "evaluate", "generate", "render", "write_examples"],
})
