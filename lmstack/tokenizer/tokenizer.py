"""The `Tokenizer`: a byte-level BPE vocabulary that encodes, decodes, saves and loads.

A tokenizer is three things: how text is cut into pieces (a split pattern, or for imported
vocabularies a normalizer and split steps: pretokenize.py), the merges (each joins two tokens
into a new id) and the special tokens. Its merge rule is "id" for the tokenizers lmstack trains
and "rank" for Hugging Face and GGUF vocabularies (bpe.py). Two encoders give the same ids:

- `engine="reference"`: pure Python — pre-tokenize with `regex`, then the merge rule on each
  piece. Read this one to learn BPE.
- `engine="fast"` (default): OpenAI's `tiktoken` (Rust), ~100x faster, wherever it gives the
  same ids; otherwise the reference with a cache of pieces (engines.py; `tok.fast_engine.name`).

    >>> from lmstack.tokenizer import train_bpe
    >>> tok = train_bpe(["low lower lowest"] * 4, vocab_size=266, progress=False)
    >>> ids = tok.encode("lower lowest")
    >>> ids == tok.encode("lower lowest", engine="reference")
    True
    >>> tok.decode(ids)
    'lower lowest'

Text with lone surrogates (which UTF-8 cannot hold) is first repaired the way tiktoken does it:
surrogate pairs are joined, lone ones become U+FFFD. A byte the vocabulary has no token for
(SmolLM2 lacks 21, such as 0x04) is dropped, as `tokenizers` does; its neighbours may merge.

Files: `save` writes our JSON; `Tokenizer.load` reads ours or a Hugging Face `tokenizer.json`;
`save_hf` / `load_hf` write and read Hugging Face's explicitly (the format is in hf.py); a GGUF
file's metadata becomes a tokenizer in gguf_vocab.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Mapping
from functools import cached_property
from pathlib import Path

from lmstack.atomic import atomic_write_text
from lmstack.errors import TokenizerError
from lmstack.tokenizer.bpe import bpe_merge, rank_merge
from lmstack.tokenizer.decoder import IncrementalDecoder, decode_bytes
from lmstack.tokenizer.engines import PieceEngine, TiktokenEngine, fast_engine, repair
from lmstack.tokenizer.hf import from_hf_dict, is_hf_dict, to_hf_dict
from lmstack.tokenizer.pretokenize import Pretokenizer
from lmstack.tokenizer.special import ENDOFTEXT, check_special, split_on_specials

FORMAT = "lmstack-bpe"
VERSION = 2  # 1: the id rule and one split pattern; 2 adds the fields of imported vocabularies
RULES = ("id", "rank")
ROLES = ("bos", "eos", "pad", "unk")


def text_to_bytes(text: str) -> bytes:
    """UTF-8 bytes of text, repairing surrogates as tiktoken does.

    >>> text_to_bytes("a\\ud800b")
    b'a\\xef\\xbf\\xbdb'
    >>> text_to_bytes("\\ud83d\\ude00") == "😀".encode()
    True
    """
    return repair(text).encode("utf-8")


def fix_surrogates(text: str) -> str:
    """Join surrogate pairs and replace lone surrogates with U+FFFD (tiktoken's rule)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
    """Byte-level BPE tokenizer: pre-tokenizer + merges + special tokens.

    Trained tokenizers give `pattern`, `merges` and `special_tokens` (and maybe `byte_ids`):
    the vocabulary follows from the merges, merged by the id rule. Imported ones (hf.py,
    gguf_vocab.py) give `rule="rank"` and the whole `vocab` (id -> bytes; a byte may lack a
    token), with their `pretokenizer`, `ignore_merges` (a piece that is a token is taken whole
    before merging), `added_tokens` (always matched in text, unlike specials), `roles` (which
    ids are bos/eos/pad/unk) and whether `encode(..., add_special_tokens=True)` adds bos/eos.
    """

    def __init__(
        self,
        pattern: str,
        merges: Iterable[tuple[int, int, int]],
        special_tokens: dict[str, int],
        byte_ids: list[int] | None = None,
        *,
        rule: str = "id",
        vocab: Mapping[int, bytes] | None = None,
        ignore_merges: bool = False,
        pretokenizer: Pretokenizer | None = None,
        added_tokens: Mapping[str, int] | None = None,
        roles: Mapping[str, int] | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
    ) -> None:
        if rule not in RULES:
            raise TokenizerError(f"merge rule {rule!r} is not one of {RULES}")
        self.pattern, self.rule, self.ignore_merges = pattern, rule, bool(ignore_merges)
        self.pretokenizer = pretokenizer or Pretokenizer.from_pattern(pattern)
        self.merges = [tuple(int(x) for x in m) for m in merges]
        self.special_tokens = dict(special_tokens)
        self.added_tokens = dict(added_tokens or {})
        self.roles = {k: int(v) for k, v in (roles or {}).items()}
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        if rule == "id":
            if vocab is not None:
                raise TokenizerError("the id rule builds its vocabulary from the merges; "
                                     "pass vocab only with rule='rank'")
            self.byte_ids = list(range(256)) if byte_ids is None else list(byte_ids)
            self.vocab = self._build_vocab()
        else:
            self.vocab, self.byte_ids, self.pairs = _rank_vocab(vocab or {}, self.merges)
        self.ranks = {b: i for i, b in self.vocab.items()}
        if len(self.ranks) != len(self.vocab):
            raise TokenizerError("two ids map to the same bytes; the tokenizer file is corrupt")
        self.specials_by_id = {i: s for s, i in self.special_tokens.items()}
        self.added_by_id = {i: s for s, i in self.added_tokens.items()}
        self._check_ids()

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
        return vocab

    def _check_ids(self) -> None:
        specials, added = set(self.special_tokens.values()), set(self.added_tokens.values())
        clash = (specials | added) & self.vocab.keys() | specials & added
        if clash or len(specials) != len(self.special_tokens) \
                or len(added) != len(self.added_tokens):
            raise TokenizerError(f"special token ids collide with other ids: {sorted(clash)}")
        for role, i in self.roles.items():
            if role not in ROLES or not (i in self.vocab or i in specials or i in added):
                raise TokenizerError(f"role {role}={i} is not one of {ROLES} naming a known id")
        for flag, role in ((self.add_bos, "bos"), (self.add_eos, "eos")):
            if flag and role not in self.roles:
                raise TokenizerError(f"add_{role} is set but the tokenizer names no {role} id")

    # ---- properties -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids the model's embedding needs (max id + 1)."""
        return 1 + max(max(self.vocab), max(self.special_tokens.values(), default=0),
                       max(self.added_tokens.values(), default=0))

    @property
    def eot_id(self) -> int:
        """Id of `<|endoftext|>`, the document separator."""
        try:
            return self.special_tokens[ENDOFTEXT]
        except KeyError:
            raise TokenizerError(
                f"this tokenizer has no {ENDOFTEXT} token; retrain it with that special token"
            ) from None

    @property
    def bos_id(self) -> int | None:
        """The beginning-of-sequence id the file names, if any."""
        return self.roles.get("bos")

    @property
    def eos_id(self) -> int | None:
        """The end-of-sequence id the file names, if any."""
        return self.roles.get("eos")

    @cached_property
    def fingerprint(self) -> str:
        """A hex digest that changes whenever any id would encode or decode differently."""
        h = hashlib.sha256()
        h.update(self.pattern.encode())
        for i in sorted(self.vocab):
            h.update(b"%d:%s;" % (i, self.vocab[i].hex().encode()))
        h.update(json.dumps(sorted(self.special_tokens.items())).encode())
        extra = self._v2_fields()
        if extra:  # the merge order, pipeline and roles of an imported vocabulary
            extra.pop("vocab", None)
            h.update(json.dumps([self.merges, extra], sort_keys=True).encode())
        return h.hexdigest()[:16]

    # ---- encoding ---------------------------------------------------------------------
    @cached_property
    def fast_engine(self) -> PieceEngine | TiktokenEngine:
        """The engine `engine="fast"` uses: tiktoken where exact, else cached Python."""
        return fast_engine(self)

    def encode_piece(self, piece: bytes) -> list[int]:
        """BPE of one pre-tokenized piece, by this tokenizer's merge rule."""
        if self.rule == "id":
            return bpe_merge(piece, self.ranks)
        if self.ignore_merges and piece in self.ranks:
            return [self.ranks[piece]]
        return self.merge_ids([self.byte_ids[b] for b in piece])

    def merge_ids(self, ids: list[int | None]) -> list[int]:
        """The rank rule on byte ids; a byte without a token (None) is dropped first."""
        return rank_merge([i for i in ids if i is not None], self.pairs)

    def _encode_text(self, text: str, engine: str) -> list[int]:
        if engine == "fast":
            return self.fast_engine.encode(text)
        if engine != "reference":
            raise TokenizerError(f"unknown engine {engine!r}; use 'fast' or 'reference'")
        ids: list[int] = []
        for piece in self.pretokenizer.pieces(fix_surrogates(text)):
            ids.extend(self.encode_piece(piece.encode("utf-8")))
        return ids

    def encode_ordinary(self, text: str, engine: str = "fast") -> list[int]:
        """Encode text, treating special-token strings as plain text (added tokens still
        match: they are ordinary vocabulary)."""
        if not self.added_tokens:
            return self._encode_text(text, engine)
        return self._encode_parts(text, set(), engine)

    def encode(
        self,
        text: str,
        allowed_special: Collection[str] | str = (),
        disallowed_special: Collection[str] | str = "all",
        engine: str = "fast",
        add_special_tokens: bool = False,
    ) -> list[int]:
        """Encode text; special-token strings raise unless allowed (tiktoken's policy).
        `add_special_tokens` adds the bos/eos the file asks for (transformers' flag)."""
        allowed = check_special(text, self.special_tokens, allowed_special, disallowed_special)
        if allowed or self.added_tokens:
            ids = self._encode_parts(text, allowed, engine)
        else:
            ids = self._encode_text(text, engine)
        if add_special_tokens:
            ids = ([self.roles["bos"]] if self.add_bos else []) + ids + \
                ([self.roles["eos"]] if self.add_eos else [])
        return ids

    def _encode_parts(self, text: str, allowed: set[str], engine: str) -> list[int]:
        """Text cut around allowed specials and added tokens (leftmost, longest first)."""
        ids: list[int] = []
        for part in split_on_specials(text, allowed | self.added_tokens.keys()):
            if part in allowed:
                ids.append(self.special_tokens[part])
            elif part in self.added_tokens:
                ids.append(self.added_tokens[part])
            else:
                ids.extend(self._encode_text(part, engine))
        return ids

    def encode_ordinary_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        """Encode many texts with the fast engine (in threads where it is tiktoken alone)."""
        if self.added_tokens:
            return [self.encode_ordinary(t) for t in texts]
        return self.fast_engine.encode_batch(texts, num_threads)

    # ---- decoding ---------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (a special or added token's UTF-8 string for those)."""
        if token_id in self.vocab:
            return self.vocab[token_id]
        name = self.specials_by_id.get(token_id) or self.added_by_id.get(token_id)
        if name is not None:
            return name.encode()
        raise TokenizerError(
            f"token id {token_id} is not in this tokenizer (vocab_size {self.vocab_size})"
        )

    def byte_lengths(self) -> list[int]:
        """UTF-8 bytes of every id 0..vocab_size-1, special tokens 0 (markup, not text): what
        bits per byte divides by.

        >>> Tokenizer("gpt2", [(104, 105, 256)], {"<|endoftext|>": 257}).byte_lengths()[254:]
        [1, 1, 2, 0]
        """
        lengths = [len(self.vocab.get(i, b"")) for i in range(self.vocab_size)]
        for name, i in self.added_tokens.items():
            lengths[i] = len(name.encode())
        return lengths

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
    def _v2_fields(self) -> dict:
        """What a version-2 file adds (empty for a tokenizer version 1 describes)."""
        d: dict = {}
        if self.rule != "id":
            d["rule"] = self.rule
            d["vocab"] = {str(i): b.hex() for i, b in sorted(self.vocab.items())}
        if self.ignore_merges:
            d["ignore_merges"] = True
        if self.pretokenizer != Pretokenizer.from_pattern(self.pattern):
            d["pretokenizer"] = self.pretokenizer.to_dict()
        for key in ("added_tokens", "roles"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        for key in ("add_bos", "add_eos"):
            if getattr(self, key):
                d[key] = True
        return d

    def to_dict(self) -> dict:
        """The JSON-ready form saved by `save` (version 1 when it says all there is)."""
        extra = self._v2_fields()
        d = {
            "format": FORMAT,
            "version": 2 if extra else 1,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "merges": [list(m) for m in self.merges],
        }
        if self.rule == "id" and self.byte_ids != list(range(256)):
            d["byte_ids"] = self.byte_ids
        return {**d, **extra}

    @classmethod
    def from_dict(cls, d: dict, source: str = "tokenizer") -> Tokenizer:
        """Build from the `to_dict` form, with errors that name `source`."""
        if d.get("format") != FORMAT:
            raise TokenizerError(
                f"{source} is not an lmstack tokenizer (no \"format\": \"{FORMAT}\"); "
                "train one with `lmstack tokenizer train` or pass a Hugging Face tokenizer.json"
            )
        if d.get("version") not in (1, VERSION):
            raise TokenizerError(
                f"{source} has format version {d.get('version')!r}; this lmstack reads "
                f"versions 1 and {VERSION} — upgrade lmstack or retrain the tokenizer"
            )
        try:
            return cls(d["pattern"], d["merges"], d["special_tokens"], **_options(d))
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
            return _from_hf(d, source)
        return cls.from_dict(d, source=source)

    def __getstate__(self) -> dict:
        return self.to_dict()

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["pattern"], state["merges"], state["special_tokens"],
                      **_options(state))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"rule={self.rule}, specials={list(self.special_tokens)[:8]}, "
                f"fingerprint={self.fingerprint})")


def _rank_vocab(vocab: Mapping[int, bytes], merges: list[tuple]) -> tuple[dict, list, dict]:
    """(vocab, byte ids with None for a byte that has no token, pair -> (rank, new id)) of a
    rank-rule vocabulary, checking each merge joins its parts into its new token."""
    vocab = {int(i): bytes(b) for i, b in vocab.items()}
    byte_ids: list[int | None] = [None] * 256
    for i, b in vocab.items():
        if len(b) == 1:
            byte_ids[b[0]] = i
    pairs = {}
    for k, merge in enumerate(merges):
        if len(merge) != 3:
            raise TokenizerError(f"merge {k} is {merge!r}; each merge is [left, right, new]")
        left, right, new = merge
        if any(i not in vocab for i in merge) or vocab[left] + vocab[right] != vocab[new]:
            raise TokenizerError(f"merge {k} ({left}, {right}) -> {new} does not join its two "
                                 "tokens into the third; the tokenizer file is corrupt")
        pairs[(left, right)] = (k, new)  # a pair listed twice keeps its last place, as in HF
    return vocab, byte_ids, pairs


def _options(d: dict) -> dict:
    """The keyword arguments of `Tokenizer` that a file or pickled state holds."""
    opts: dict = {"byte_ids": d.get("byte_ids"), "rule": d.get("rule", "id"),
                  "ignore_merges": d.get("ignore_merges", False),
                  "added_tokens": d.get("added_tokens"), "roles": d.get("roles"),
                  "add_bos": d.get("add_bos", False), "add_eos": d.get("add_eos", False)}
    if "vocab" in d:
        opts["vocab"] = {int(i): bytes.fromhex(h) for i, h in d["vocab"].items()}
    if "pretokenizer" in d:
        opts["pretokenizer"] = Pretokenizer.from_dict(d["pretokenizer"])
    return opts


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


def _from_hf(d: dict, source: str) -> Tokenizer:
    parts = from_hf_dict(d, source=source)
    try:
        return Tokenizer(**parts)
    except TokenizerError as e:
        raise TokenizerError(f"{source}: {e}") from None


def load_hf(path: str | os.PathLike) -> Tokenizer:
    """Import a Hugging Face byte-level BPE `tokenizer.json` (or DIR/tokenizer.json)."""
    d, source = _read_json(path)
    if not is_hf_dict(d):
        raise TokenizerError(f"{source} is not a Hugging Face tokenizer.json (it has no "
                             "\"model\"); load an lmstack tokenizer with Tokenizer.load")
    return _from_hf(d, source)


def save_hf(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Export as a Hugging Face `tokenizer.json` (a directory gets `tokenizer.json` inside)
    that `tokenizers.Tokenizer.from_file` encodes to the same ids."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / "tokenizer.json"
    return atomic_write_text(path, json.dumps(to_hf_dict(tok), ensure_ascii=False))
