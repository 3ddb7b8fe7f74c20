"""The data pipeline: sources -> normalize -> filter -> scrub -> dedup -> token shards.

The stage order follows the usual pretraining-data recipe (e.g. Penedo et al. 2024, "The
FineWeb Datasets", section 3; Rae et al. 2021, appendix A): cheap per-document work first,
so the expensive corpus-wide dedup sees only documents that survived the filters, and PII is
scrubbed before dedup so two documents differing only in an email address count as equal.

``clean_documents(cfg)`` streams the cleaned documents (the tokenizer trainer uses it to learn
from exactly the text the model will see); ``prepare(cfg)`` also encodes them into shards and
writes ``report.json`` next to them: what was seen, what each rule removed, what PII was
replaced, the token counts and the bytes per token. ``format_report`` renders it as a table.
The tokenizer is saved there too (``tokenizer.json``; the manifest holds its fingerprint), so a
shard directory is all that `lmstack train --set data=DIR` needs.

Run it: ``lmstack data prepare --tokenizer tok.json --out data/stdlib``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmstack.atomic import atomic_write_json
from lmstack.data.dedup import DedupConfig, ExactDeduper, NearDeduper
from lmstack.data.filters import RULES as FILTER_RULES
from lmstack.data.filters import FilterConfig, failed_rule
from lmstack.data.normalize import check_form, normalize_text
from lmstack.data.outputs import check_out_dir
from lmstack.data.pii import scrub
from lmstack.data.shards import MANIFEST, ShardConfig, write_shards
from lmstack.data.sources import STDLIB, Document, SourceStats, iter_documents
from lmstack.errors import ConfigError
from lmstack.tokenizer import Tokenizer

REPORT = "report.json"
TOKENIZER = "tokenizer.json"  # The shards' own tokenizer; the manifest holds its fingerprint.


@dataclass
class PrepareConfig:
    """Everything `prepare` needs; the defaults turn the stdlib corpus into shards."""

    sources: list[str] = field(default_factory=lambda: [STDLIB])
    out_dir: str = "data/stdlib"
    tokenizer: str | None = None  # Path of a tokenizer JSON file; required by prepare().
    glob: str = "*"  # Which files of a directory source are read.
    text_field: str = "text"  # The JSON field holding the text in .jsonl sources.
    normalization: str = "NFC"
    filters: FilterConfig = field(default_factory=FilterConfig)
    pii: bool = True
    dedup: DedupConfig = field(default_factory=DedupConfig)
    val_fraction: float = 0.05
    workers: int | None = None  # Encoding processes; None means one per CPU.
    seed: int = 0
    progress: bool = True

    def check(self) -> PrepareConfig:
        """Return self if every setting is usable, else raise ConfigError naming the fix."""
        if isinstance(self.sources, str):
            self.sources = [self.sources]
        if not self.sources:
            raise ConfigError("no sources given: pass --source PATH (a file, directory or glob) or 'stdlib'")
        check_form(self.normalization)
        self.dedup.rows()
        ShardConfig(val_fraction=self.val_fraction, workers=self.workers).check()
        return self

    def check_output(self) -> None:
        """ConfigError, before any work, if out_dir is a file or a non-empty directory that
        holds no shards of an earlier prepare (the tokenizer and sources may sit inside it)."""
        inputs = [s for s in (self.tokenizer, *self.sources) if s and s != STDLIB]
        check_out_dir(self.out_dir, "--out", "a shard directory", [MANIFEST, REPORT], inputs)


@dataclass
class Removed:
    """Documents and source bytes one rule removed."""

    documents: int = 0
    bytes: int = 0


@dataclass
class PrepareReport:
    """What the pipeline saw, removed, replaced and wrote; saved as report.json."""

    sources: list[str] = field(default_factory=list)
    out_dir: str = ""
    documents_seen: int = 0
    bytes_seen: int = 0  # UTF-8 bytes as read, before any cleaning.
    documents_kept: int = 0
    bytes_kept: int = 0  # Source bytes of the kept documents: seen = kept + sum(removed).
    removed: dict[str, Removed] = field(default_factory=dict)
    pii_replacements: dict[str, int] = field(default_factory=dict)
    documents_scrubbed: int = 0
    non_utf8_files: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    documents_per_split: dict[str, int] = field(default_factory=dict)
    bytes_tokenized: int = 0  # UTF-8 bytes of the cleaned text that was encoded.
    bytes_per_token: float = 0.0  # bytes_tokenized / tokens, not counting the EOT separators.
    tokenizer_fingerprint: str = ""
    seconds: float = 0.0

    def remove(self, rule: str, nbytes: int) -> None:
        """Count one document of `nbytes` source bytes removed by `rule`."""
        r = self.removed.setdefault(rule, Removed())
        r.documents += 1
        r.bytes += nbytes

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form."""
        return asdict(self)


def clean_documents(
    cfg: PrepareConfig, report: PrepareReport | None = None, progress: bool | None = None
) -> Iterator[Document]:
    """Stream the documents of cfg.sources that survive normalization, filters, PII and dedup."""
    cfg.check()
    show = cfg.progress if progress is None else progress
    report = report if report is not None else PrepareReport(sources=list(cfg.sources))
    stats = SourceStats()
    exact = ExactDeduper() if cfg.dedup.exact else None
    near = NearDeduper(cfg.dedup) if cfg.dedup.near else None
    bar = tqdm(desc="clean", unit="doc", disable=not show, file=sys.stderr, dynamic_ncols=True)
    try:
        for doc in iter_documents(cfg.sources, stats, glob=cfg.glob, text_field=cfg.text_field):
            bar.update()
            nbytes = len(doc.text.encode("utf-8"))
            report.documents_seen += 1
            report.bytes_seen += nbytes
            text = normalize_text(doc.text, cfg.normalization)
            rule = failed_rule(text, cfg.filters)
            if rule is not None:
                report.remove(rule, nbytes)
                continue
            if cfg.pii:
                text, counts = scrub(text)
                for name, n in counts.items():
                    report.pii_replacements[name] = report.pii_replacements.get(name, 0) + n
                report.documents_scrubbed += bool(counts)
            if exact is not None and exact.is_duplicate(text):
                report.remove("exact_duplicate", nbytes)
                continue
            if near is not None and near.is_duplicate(text):
                report.remove("near_duplicate", nbytes)
                continue
            report.documents_kept += 1
            report.bytes_kept += nbytes
            report.bytes_tokenized += len(text.encode("utf-8"))
            yield Document(text, doc.source)
    finally:
        bar.close()
        report.non_utf8_files = list(stats.non_utf8_files)


def prepare(cfg: PrepareConfig) -> PrepareReport:
    """Clean cfg.sources, encode them into shards in cfg.out_dir and write report.json there."""
    cfg.check()
    cfg.check_output()
    if not cfg.tokenizer:
        raise ConfigError(
            "no tokenizer given: pass --tokenizer PATH to a tokenizer JSON file "
            "(train one with `lmstack tokenizer train`)"
        )
    start = time.perf_counter()
    tok = Tokenizer.load(cfg.tokenizer)  # Load before reading the corpus: fail fast.
    report = PrepareReport(sources=list(cfg.sources), out_dir=str(cfg.out_dir))
    shard_cfg = ShardConfig(val_fraction=cfg.val_fraction, seed=cfg.seed, workers=cfg.workers, progress=cfg.progress)
    # One progress bar (the encoder's) is enough: cleaning feeds it document by document.
    documents = clean_documents(cfg, report, progress=False)
    manifest = write_shards(documents, tok, cfg.out_dir, shard_cfg, sources=list(cfg.sources))
    report.tokens = {name: s.tokens for name, s in manifest.splits.items()}
    report.documents_per_split = {name: s.documents for name, s in manifest.splits.items()}
    content_tokens = sum(report.tokens.values()) - manifest.documents  # Minus one EOT per document.
    report.bytes_per_token = report.bytes_tokenized / content_tokens if content_tokens else 0.0
    report.tokenizer_fingerprint = tok.fingerprint
    report.seconds = round(time.perf_counter() - start, 3)
    tok.save(Path(cfg.out_dir) / TOKENIZER)  # The trainer finds it here when no tokenizer= is given.
    atomic_write_json(Path(cfg.out_dir) / REPORT, report.to_dict())
    return report


def _row(label: str, docs: int, nbytes: int) -> str:
    return f"  {label:<40}{docs:>12,}{nbytes:>16,}"


def format_report(report: PrepareReport) -> str:
    """A terminal table of a PrepareReport."""
    lines = [
        f"data prepare -> {report.out_dir or '(no output)'}   sources: {', '.join(report.sources)}",
        f"  {'':<40}{'documents':>12}{'bytes':>16}",
        _row("seen", report.documents_seen, report.bytes_seen),
    ]
    # Filter rules in their registry order, then the dedup passes.
    order = [*FILTER_RULES, "exact_duplicate", "near_duplicate"]
    for rule in sorted(report.removed, key=lambda r: order.index(r) if r in order else len(order)):
        lines.append(_row(f"removed: {rule}", report.removed[rule].documents, report.removed[rule].bytes))
    lines.append(_row("kept", report.documents_kept, report.bytes_kept))
    if report.pii_replacements:
        pii = ", ".join(f"{k} {v:,}" for k, v in sorted(report.pii_replacements.items()))
        lines.append(f"  PII replaced: {pii} (in {report.documents_scrubbed:,} documents)")
    if report.non_utf8_files:
        lines.append(f"  non-UTF-8 files skipped: {len(report.non_utf8_files)} (e.g. {report.non_utf8_files[0]})")
    if report.tokens:
        splits = ", ".join(
            f"{name} {n:,} tokens / {report.documents_per_split.get(name, 0):,} docs"
            for name, n in report.tokens.items()
        )
        lines.append(f"  shards: {splits}")
        lines.append(f"  bytes per token: {report.bytes_per_token:.2f}   tokenizer: {report.tokenizer_fingerprint}")
    lines.append(f"  took {report.seconds:.1f} s")
    return "\n".join(lines)
