"""Tokenized shards: documents encoded in parallel into flat token files plus a manifest.

Layout of a shard directory (the nanoGPT convention, Karpathy 2022, plus a manifest):

* ``train.bin`` / ``val.bin``: every document's token ids followed by ``<|endoftext|>``, back
  to back, as raw little-endian ``uint16`` (vocab <= 65,536) or ``uint32``; ``np.memmap``
  reads them without loading them.
* ``manifest.json``: format version, tokenizer fingerprint, vocab size, EOT id, dtype, token
  and document counts per split, the sources and the lmstack version.

A document goes to ``val`` when a seeded hash of its text falls below ``val_fraction``, so the
split depends on neither document order nor worker count, and equal texts can never straddle
the split. If the hash leaves a split empty, the last document of the other moves over.
Encoding runs in ``workers`` spawned processes (each unpickles the tokenizer once, in the pool
initializer); batches are submitted with a bounded window, so memory stays flat.

Every file is written to a temporary name and renamed when complete; the manifest is written
last, so a directory with a manifest always holds complete shards.

Run it: ``python -m lmstack.data.shards DIR`` prints a shard directory's manifest.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lmstack import __version__
from lmstack.atomic import atomic_write_json, output_dir, temp_path
from lmstack.data.sources import Document
from lmstack.errors import ConfigError, DataError
from lmstack.tokenizer import Tokenizer

FORMAT = "lmstack-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


@dataclass
class ShardConfig:
    """How documents are split and encoded."""

    val_fraction: float = 0.05
    seed: int = 0
    workers: int | None = None  # None: os.cpu_count(); 1: encode in this process.
    batch_chars: int = 1 << 20  # Text per worker task: large enough to amortize pickling.
    progress: bool = True

    def check(self) -> ShardConfig:
        """Return self if the settings are usable, else raise ConfigError."""
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in [0, 1): e.g. 0.05 for 5% validation")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers={self.workers} must be at least 1 (or None for one per CPU)")
        return self


@dataclass
class SplitInfo:
    """One split's file and sizes."""

    file: str
    tokens: int = 0
    documents: int = 0


@dataclass
class ShardManifest:
    """Everything needed to read a shard directory and to check it fits a tokenizer."""

    tokenizer_fingerprint: str
    vocab_size: int
    eot_id: int
    dtype: str
    splits: dict[str, SplitInfo]
    sources: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    seed: int = 0
    lmstack_version: str = __version__
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def documents(self) -> int:
        """Documents over all splits."""
        return sum(s.documents for s in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form written to manifest.json."""
        return {**asdict(self), "documents": self.documents}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST) -> ShardManifest:
        """Parse manifest.json's content, raising DataError if it is not a shard manifest."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DataError(f"{where} is not an lmstack shard manifest; re-run `lmstack data prepare`")
        if d.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{where} has shard format version {d.get('format_version')}, this lmstack reads "
                f"version {FORMAT_VERSION}; re-run `lmstack data prepare` to rebuild the shards"
            )
        try:
            fields_ = {k: v for k, v in d.items() if k != "documents"}
            fields_["splits"] = {k: SplitInfo(**v) for k, v in d["splits"].items()}
            return cls(**fields_)
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{where} is malformed ({e}); re-run `lmstack data prepare`") from None


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below `vocab_size`.

    >>> token_dtype(50257).name, token_dtype(65536).name, token_dtype(65537).name
    ('uint16', 'uint16', 'uint32')
    """
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def assign_split(text: str, val_fraction: float, seed: int = 0) -> str:
    """'val' if a seeded hash of `text` lands below `val_fraction`, else 'train'.

    >>> assign_split("doc", 0.0), assign_split("doc", 0.999999)
    ('train', 'val')
    >>> assign_split("doc", 0.5, seed=1) == assign_split("doc", 0.5, seed=1)
    True
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return "val" if int.from_bytes(digest, "little") / 2**64 < val_fraction else "train"


def encode_documents(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> list[np.ndarray]:
    """Each text's ids followed by the EOT id, as arrays of `dtype`."""
    eot = tok.eot_id
    return [np.array([*tok.encode_ordinary(t), eot], dtype=dtype) for t in texts]


# Per-worker state, set once by the pool initializer so tasks carry only text.
_WORKER: dict[str, Any] = {}


def _init_worker(tok: Tokenizer, dtype: str) -> None:
    _WORKER["tok"], _WORKER["dtype"] = tok, np.dtype(dtype)


def _encode_in_worker(texts: list[str]) -> list[np.ndarray]:
    return encode_documents(_WORKER["tok"], texts, _WORKER["dtype"])


def _batches(documents: Iterable[Document], cfg: ShardConfig) -> Iterator[tuple[list[str], list[str]]]:
    """Group documents into (texts, splits) batches of about cfg.batch_chars characters."""
    texts: list[str] = []
    splits: list[str] = []
    size = 0
    for doc in documents:
        texts.append(doc.text)
        splits.append(assign_split(doc.text, cfg.val_fraction, cfg.seed))
        size += len(doc.text)
        if size >= cfg.batch_chars:
            yield texts, splits
            texts, splits, size = [], [], 0
    if texts:
        yield texts, splits


def _encoded(
    documents: Iterable[Document], tok: Tokenizer, dtype: np.dtype, cfg: ShardConfig
) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """Yield (splits, token arrays) per batch, in document order, encoding in a process pool."""
    workers = cfg.workers or os.cpu_count() or 1
    if workers == 1:
        for texts, splits in _batches(documents, cfg):
            yield splits, encode_documents(tok, texts, dtype)
        return
    # spawn, not fork: the parent may hold threads (tiktoken's, torch's) that fork would copy.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tok, dtype.name)) as pool:
        pending: deque = deque()
        for texts, splits in _batches(documents, cfg):
            pending.append((splits, pool.apply_async(_encode_in_worker, (texts,))))
            if len(pending) >= 2 * workers:  # Bounded window: never queue the whole corpus.
                splits_done, result = pending.popleft()
                yield splits_done, result.get()
        while pending:
            splits_done, result = pending.popleft()
            yield splits_done, result.get()


def _move_last_document(src: Path, dst: Path, n_tokens: int, itemsize: int) -> None:
    """Cut the last `n_tokens` tokens off file `src` and append them to file `dst`."""
    with open(src, "r+b") as f:
        f.seek(-n_tokens * itemsize, os.SEEK_END)
        tail = f.read()
        f.seek(-n_tokens * itemsize, os.SEEK_END)
        f.truncate()
    with open(dst, "ab") as f:
        f.write(tail)


def write_shards(
    documents: Iterable[Document],
    tokenizer: Tokenizer | str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: ShardConfig | None = None,
    sources: list[str] | None = None,
) -> ShardManifest:
    """Encode `documents` into out_dir/{train,val}.bin plus manifest.json; return the manifest."""
    cfg = (cfg or ShardConfig()).check()
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    with output_dir(out_dir) as out:
        return _write_shards(documents, tok, dtype, out, cfg, sources)


def _write_shards(documents: Iterable[Document], tok: Tokenizer, dtype: np.dtype, out: Path,
                  cfg: ShardConfig, sources: list[str] | None) -> ShardManifest:
    """write_shards' body, in a directory that already exists."""
    info = {s: SplitInfo(f"{s}.bin") for s in SPLITS}
    tmp = {s: temp_path(out / info[s].file) for s in SPLITS}
    last_len = {s: 0 for s in SPLITS}  # Tokens of each split's last document, to move it.
    files = {s: open(tmp[s], "wb") for s in SPLITS}
    try:
        with tqdm(desc="encode", unit="doc", disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True) as bar:
            for splits, arrays in _encoded(documents, tok, dtype, cfg):
                for split, ids in zip(splits, arrays):
                    files[split].write(ids.tobytes())
                    info[split].tokens += ids.size
                    info[split].documents += 1
                    last_len[split] = ids.size
                bar.update(len(arrays))
                bar.set_postfix(tokens=f"{sum(i.tokens for i in info.values()):,}", refresh=False)
        for f in files.values():
            f.close()
        if not info["train"].documents and not info["val"].documents:
            raise DataError("no documents to encode: every document was filtered out; relax the filters or add data")
        # A split left empty by the hash borrows one document, if the other can spare it.
        for src, dst in (("train", "val"), ("val", "train")):
            want = cfg.val_fraction > 0 if dst == "val" else True
            if want and info[dst].documents == 0 and info[src].documents >= 2:
                _move_last_document(tmp[src], tmp[dst], last_len[src], dtype.itemsize)
                for split, sign in ((src, -1), (dst, 1)):
                    info[split].tokens += sign * last_len[src]
                    info[split].documents += sign
        # Remove the old manifest first: a crash between the renames must not leave an old
        # manifest describing new token files.
        (out / MANIFEST).unlink(missing_ok=True)
        for s in SPLITS:
            os.replace(tmp[s], out / info[s].file)
    finally:
        for s in SPLITS:
            files[s].close()
            tmp[s].unlink(missing_ok=True)
    manifest = ShardManifest(
        tokenizer_fingerprint=tok.fingerprint,
        vocab_size=tok.vocab_size,
        eot_id=tok.eot_id,
        dtype=dtype.name,
        splits=info,
        sources=list(sources or []),
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
    )
    atomic_write_json(out / MANIFEST, manifest.to_dict())
    return manifest


def check_tokenizer(manifest: ShardManifest, tokenizer: Tokenizer | str, where: str = "the shards") -> None:
    """Raise DataError if `tokenizer` (or a fingerprint string) is not the one the shards used."""
    fingerprint = tokenizer.fingerprint if isinstance(tokenizer, Tokenizer) else str(tokenizer)
    if fingerprint != manifest.tokenizer_fingerprint:
        raise DataError(
            f"{where} were made with tokenizer {manifest.tokenizer_fingerprint}, but the given tokenizer is "
            f"{fingerprint}; re-run `lmstack data prepare` with this tokenizer, or train with the "
            "tokenizer the shards were made with"
        )


def open_shards(data_dir: str | os.PathLike, tokenizer: Tokenizer | str | None = None) -> ShardManifest:
    """Read and validate data_dir's manifest and files; check the tokenizer if one is given."""
    d = Path(data_dir)
    path = d / MANIFEST
    if not path.is_file():
        raise DataError(
            f"no token shards in '{d}': {MANIFEST} is missing; run `lmstack data prepare --out {d}` first"
        )
    try:
        manifest = ShardManifest.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); re-run `lmstack data prepare`") from None
    itemsize = np.dtype(manifest.dtype).itemsize
    for name, split in manifest.splits.items():
        file = d / split.file
        size = file.stat().st_size if file.is_file() else -1
        if size != split.tokens * itemsize:
            raise DataError(
                f"{file} should hold {split.tokens} {manifest.dtype} tokens ({split.tokens * itemsize} bytes) but "
                f"{'is missing' if size < 0 else f'has {size} bytes'}; the shards are incomplete, "
                "re-run `lmstack data prepare`"
            )
    if tokenizer is not None:
        check_tokenizer(manifest, tokenizer, where=f"the shards in '{d}'")
    return manifest


def read_tokens(data_dir: str | os.PathLike, split: str, manifest: ShardManifest | None = None) -> np.ndarray:
    """A read-only memory map (or empty array) of one split's tokens."""
    manifest = manifest or open_shards(data_dir)
    if split not in manifest.splits:
        raise DataError(f"no split {split!r} in '{data_dir}'; choose one of {sorted(manifest.splits)}")
    info = manifest.splits[split]
    if info.tokens == 0:  # np.memmap cannot map an empty file.
        return np.zeros(0, dtype=manifest.dtype)
    return np.memmap(Path(data_dir) / info.file, dtype=manifest.dtype, mode="r", shape=(info.tokens,))


def main(argv: list[str] | None = None) -> None:
    """Print the manifest of a shard directory."""
    args = argv if argv is not None else sys.argv[1:]
    print(json.dumps(open_shards(args[0] if args else ".").to_dict(), indent=2))


if __name__ == "__main__":
    main()
