"""Train a tokenizer on a corpus as the data pipeline reads it: `lmstack tokenizer train`.

The trainer itself (`lmstack.tokenizer.train_bpe`) takes plain strings and knows nothing of
files; this module feeds it the documents of the sources — cleaned by the same pipeline that
`lmstack data prepare` runs, so the tokenizer learns from exactly the text the model will see —
and writes the result (and optionally a Hugging Face copy).

    lmstack tokenizer train --source stdlib --vocab-size 8192 --out runs/tok.json
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from lmstack.data.outputs import check_out_file
from lmstack.data.prepare import PrepareConfig, clean_documents
from lmstack.data.sources import STDLIB, SourceStats, iter_documents
from lmstack.errors import LMStackError
from lmstack.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer, save_hf, train_bpe


@dataclass
class TokenizerTrainConfig:
    """What to train on, how big, and where to write it."""

    sources: list[str] = field(default_factory=lambda: [STDLIB])
    vocab_size: int = 8192
    pattern: str = "gpt4"
    special_tokens: list[str] | None = None  # None: <|endoftext|> <|im_start|> <|im_end|>
    out: str = "tokenizer.json"
    hf_out: str | None = None
    clean: bool = True  # normalize, filter, scrub and dedup first, as `data prepare` does
    workers: int | None = None
    progress: bool = True


@dataclass
class TokenizerTrainResult:
    """The trained tokenizer and what it took."""

    tokenizer: Tokenizer
    path: Path
    documents: int
    bytes: int
    seconds: float
    hf_path: Path | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. the corpus gave fewer ids than asked

    def summary(self) -> str:
        """A few lines for the terminal."""
        tok = self.tokenizer
        lines = [
            f"trained {tok!r}",
            f"  on {self.documents:,} documents, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s",
            f"  wrote {self.path}",
        ]
        if self.hf_path:
            lines.append(f"  wrote {self.hf_path} (Hugging Face tokenizer.json)")
        return "\n".join(lines)


def _is_tokenizer(path: Path) -> bool:
    try:
        Tokenizer.load(path)
    except (LMStackError, ValueError, OSError):
        return False
    return True


def check_outputs(cfg: TokenizerTrainConfig) -> None:
    """ConfigError if --out or --hf-out could not take the result: a directory, a file that is
    not a tokenizer (an earlier tokenizer is replaced), a path under a file."""
    check_out_file(cfg.out, "--out", "a tokenizer file", _is_tokenizer)
    if cfg.hf_out:
        check_out_file(cfg.hf_out, "--hf-out", "a tokenizer file", _is_tokenizer)


def train_tokenizer(cfg: TokenizerTrainConfig) -> TokenizerTrainResult:
    """Read (and clean) the sources, train byte-level BPE, save it; see the module docstring."""
    check_outputs(cfg)  # before the work, not after minutes of training
    start = time.perf_counter()
    counted = {"documents": 0, "bytes": 0}
    if cfg.clean:
        docs = clean_documents(PrepareConfig(sources=list(cfg.sources), progress=False))
    else:
        docs = iter_documents(list(cfg.sources), SourceStats())

    def texts():
        for doc in docs:
            counted["documents"] += 1
            counted["bytes"] += len(doc.text.encode("utf-8", "replace"))
            yield doc.text

    specials = DEFAULT_SPECIAL_TOKENS if cfg.special_tokens is None else cfg.special_tokens
    with warnings.catch_warnings(record=True) as caught:  # kept for the caller to report
        warnings.simplefilter("always")
        tok = train_bpe(texts(), cfg.vocab_size, pattern=cfg.pattern, special_tokens=specials,
                        workers=cfg.workers, progress=cfg.progress)
    path = tok.save(cfg.out)
    hf_path = save_hf(tok, cfg.hf_out) if cfg.hf_out else None
    return TokenizerTrainResult(tok, path, counted["documents"], counted["bytes"],
                                time.perf_counter() - start, hf_path,
                                [str(w.message) for w in caught])
