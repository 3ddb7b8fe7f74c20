"""The `Tokenizer`: a trained byte-level BPE vocabulary that encodes, decodes, saves and loads.

A tokenizer is three things: the split pattern, the merges (each joins two tokens into a new
id) and the special tokens. Two encoders give the same ids:

- `engine="reference"`: pure Python — split with `regex`, then `bpe.bpe_merge` on each piece.
  Read this one to learn BPE.
- `engine="fast"` (default): the same ranks handed to OpenAI's `tiktoken` (Rust), ~100x faster.

    >>> from lmstack.tokenizer import train_bpe
    >>> tok = train_bpe(["low lower lowest"] * 4, vocab_size=266, progress=False)
    >>> ids = tok.encode("lower lowest")
    >>> ids == tok.encode("lower lowest", engine="reference")
    True
    >>> tok.decode(ids)
    'lower lowest'

Text with lone surrogates (which UTF-8 cannot hold) is first repaired the way tiktoken does it:
surrogate pairs are joined, lone ones become U+FFFD.

Files: `save` writes our JSON; `Tokenizer.load` reads ours or a Hugging Face `tokenizer.json`;
`save_hf` / `load_hf` write and read Hugging Face's explicitly (the format is in hf.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable
from functools import cached_property
from pathlib import Path

import tiktoken

from lmstack.atomic import atomic_write_text
from lmstack.errors import TokenizerError
from lmstack.tokenizer.bpe import bpe_merge
from lmstack.tokenizer.decoder import IncrementalDecoder, decode_bytes
from lmstack.tokenizer.hf import from_hf_dict, is_hf_dict, to_hf_dict
from lmstack.tokenizer.patterns import compile_pattern
from lmstack.tokenizer.special import ENDOFTEXT, check_special, split_on_specials

FORMAT = "lmstack-bpe"
VERSION = 1


def text_to_bytes(text: str) -> bytes:
    """UTF-8 bytes of text, repairing surrogates as tiktoken does.

    >>> text_to_bytes("a\\ud800b")
    b'a\\xef\\xbf\\xbdb'
    >>> text_to_bytes("\\ud83d\\ude00") == "😀".encode()
    True
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return fix_surrogates(text).encode("utf-8")


def fix_surrogates(text: str) -> str:
    """Join surrogate pairs and replace lone surrogates with U+FFFD (tiktoken's rule)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
    """Byte-level BPE tokenizer: pattern + merges + special tokens."""

    def __init__(
        self,
        pattern: str,
        merges: Iterable[tuple[int, int, int]],
        special_tokens: dict[str, int],
        byte_ids: list[int] | None = None,
    ) -> None:
        self.pattern = pattern
        self.merges = [tuple(int(x) for x in m) for m in merges]
        self.special_tokens = dict(special_tokens)
        self.byte_ids = list(range(256)) if byte_ids is None else list(byte_ids)
        self.vocab = self._build_vocab()
        self.ranks = {b: i for i, b in self.vocab.items()}
        self.specials_by_id = {i: s for s, i in self.special_tokens.items()}
        compile_pattern(pattern)

    def _build_vocab(self) -> dict[int, bytes]:
        if len(self.byte_ids) != 256 or len(set(self.byte_ids)) != 256:
            raise TokenizerError("byte_ids must list 256 distinct ids, one per byte value")
        vocab = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for k, merge in enumerate(self.merges):
            if len(merge) != 3:
                raise TokenizerError(f"merge {k} is {merge!r}; each merge is [left, right, new]")
            left, right, new = merge
            if left not in vocab or right not in vocab:
                raise TokenizerError(
                    f"merge {k} ({left}, {right}) -> {new} uses an id that no earlier token "
                    "defines; the merges are out of order or the file is corrupt"
                )
            if new in vocab:
                raise TokenizerError(f"merge {k} reuses id {new}; the tokenizer file is corrupt")
            vocab[new] = vocab[left] + vocab[right]
        if len(set(vocab.values())) != len(vocab):
            raise TokenizerError("two ids map to the same bytes; the tokenizer file is corrupt")
        clash = set(self.special_tokens.values()) & vocab.keys()
        if clash or len(set(self.special_tokens.values())) != len(self.special_tokens):
            raise TokenizerError(f"special token ids collide with other ids: {sorted(clash)}")
        return vocab

    # ---- properties -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids the model's embedding needs (max id + 1)."""
        return 1 + max(max(self.vocab), max(self.special_tokens.values(), default=0))

    @property
    def eot_id(self) -> int:
        """Id of `<|endoftext|>`, the document separator."""
        try:
            return self.special_tokens[ENDOFTEXT]
        except KeyError:
            raise TokenizerError(
                f"this tokenizer has no {ENDOFTEXT} token; retrain it with that special token"
            ) from None

    @cached_property
    def fingerprint(self) -> str:
        """A hex digest that changes whenever any id would encode or decode differently."""
        h = hashlib.sha256()
        h.update(self.pattern.encode())
        for i in sorted(self.vocab):
            h.update(b"%d:%s;" % (i, self.vocab[i].hex().encode()))
        h.update(json.dumps(sorted(self.special_tokens.items())).encode())
        return h.hexdigest()[:16]

    # ---- encoding ---------------------------------------------------------------------
    @cached_property
    def _tiktoken(self) -> tiktoken.Encoding:
        return tiktoken.Encoding(
            name=f"lmstack-{self.fingerprint}",
            pat_str=self.pattern,
            mergeable_ranks=self.ranks,
            special_tokens=self.special_tokens,
        )

    def encode_ordinary(self, text: str, engine: str = "fast") -> list[int]:
        """Encode text, treating special-token strings as plain text."""
        if engine == "fast":
            return self._tiktoken.encode_ordinary(text)
        if engine != "reference":
            raise TokenizerError(f"unknown engine {engine!r}; use 'fast' or 'reference'")
        ids: list[int] = []
        for piece in compile_pattern(self.pattern).findall(fix_surrogates(text)):
            ids.extend(bpe_merge(piece.encode("utf-8"), self.ranks))
        return ids

    def encode(
        self,
        text: str,
        allowed_special: Collection[str] | str = (),
        disallowed_special: Collection[str] | str = "all",
        engine: str = "fast",
    ) -> list[int]:
        """Encode text; special-token strings raise unless allowed (tiktoken's policy)."""
        allowed = check_special(text, self.special_tokens, allowed_special, disallowed_special)
        if not allowed:
            return self.encode_ordinary(text, engine)
        ids: list[int] = []
        for part in split_on_specials(text, allowed):
            if part in allowed:
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self.encode_ordinary(part, engine))
        return ids

    def encode_ordinary_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        """Encode many texts with the fast engine, in threads."""
        return self._tiktoken.encode_ordinary_batch(texts, num_threads=num_threads)

    # ---- decoding ---------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (a special token's UTF-8 string for specials)."""
        if token_id in self.vocab:
            return self.vocab[token_id]
        if token_id in self.specials_by_id:
            return self.specials_by_id[token_id].encode()
        raise TokenizerError(
            f"token id {token_id} is not in this tokenizer (vocab_size {self.vocab_size})"
        )

    def byte_lengths(self) -> list[int]:
        """UTF-8 bytes of every id 0..vocab_size-1, special tokens 0 (markup, not text): what
        bits per byte divides by.

        >>> Tokenizer("gpt2", [(104, 105, 256)], {"<|endoftext|>": 257}).byte_lengths()[254:]
        [1, 1, 2, 0]
        """
        return [len(self.vocab.get(i, b"")) for i in range(self.vocab_size)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenate the bytes of ids."""
        return b"".join(self.token_bytes(i) for i in ids)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decode ids to text; `errors="strict"` raises on bytes that are not valid UTF-8."""
        return decode_bytes(self.decode_bytes(ids), errors)

    def decoder(self, errors: str = "replace") -> IncrementalDecoder:
        """A streaming decoder that never emits half a UTF-8 character."""
        return IncrementalDecoder(self.token_bytes, errors)

    # ---- files ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON-ready form saved by `save`."""
        d = {
            "format": FORMAT,
            "version": VERSION,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "merges": [list(m) for m in self.merges],
        }
        if self.byte_ids != list(range(256)):
            d["byte_ids"] = self.byte_ids
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "tokenizer") -> Tokenizer:
        """Build from the `to_dict` form, with errors that name `source`."""
        if d.get("format") != FORMAT:
            raise TokenizerError(
                f"{source} is not an lmstack tokenizer (no \"format\": \"{FORMAT}\"); "
                "train one with `lmstack tokenizer train` or pass a Hugging Face tokenizer.json"
            )
        if d.get("version") != VERSION:
            raise TokenizerError(
                f"{source} has format version {d.get('version')!r}; this lmstack reads "
                f"version {VERSION} — upgrade lmstack or retrain the tokenizer"
            )
        try:
            return cls(d["pattern"], d["merges"], d["special_tokens"], d.get("byte_ids"))
        except KeyError as e:
            raise TokenizerError(f"{source} lacks the field {e}; the file is corrupt") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, TokenizerError):
                raise TokenizerError(f"{source}: {e}") from None
            raise TokenizerError(f"{source} is malformed ({e}); the file is corrupt") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as JSON, atomically (temp file + rename)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a tokenizer file (or DIR/tokenizer.json) in either format it may be in: ours,
        or a Hugging Face byte-level BPE `tokenizer.json` (hf.py; `load_hf` insists on it)."""
        d, source = _read_json(path)
        if is_hf_dict(d):
            return cls(*from_hf_dict(d, source=source))
        return cls.from_dict(d, source=source)

    def __getstate__(self) -> dict:
        return self.to_dict()

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["pattern"], state["merges"], state["special_tokens"],
                      state.get("byte_ids"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"specials={list(self.special_tokens)}, fingerprint={self.fingerprint})")


def _read_json(path: str | os.PathLike) -> tuple[dict, str]:
    """The JSON object of a tokenizer file (a directory means DIR/tokenizer.json), and its path."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path} is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(d, dict):
        raise TokenizerError(f"{path} holds a JSON {type(d).__name__}, not a tokenizer")
    return d, str(path)


def load_hf(path: str | os.PathLike) -> Tokenizer:
    """Import a Hugging Face byte-level BPE `tokenizer.json` (or DIR/tokenizer.json)."""
    d, source = _read_json(path)
    if not is_hf_dict(d):
        raise TokenizerError(f"{source} is not a Hugging Face tokenizer.json (it has no \"model\"); "
                             "load an lmstack tokenizer with Tokenizer.load")
    return Tokenizer(*from_hf_dict(d, source=source))


def save_hf(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Export as a Hugging Face `tokenizer.json` (a directory gets `tokenizer.json` inside)
    that `tokenizers.Tokenizer.from_file` encodes to the same ids."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / "tokenizer.json"
    hf = to_hf_dict(tok.pattern, tok.vocab, tok.special_tokens)
    return atomic_write_text(path, json.dumps(hf, ensure_ascii=False))
