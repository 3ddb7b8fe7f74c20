"""WordPiece, BERT's subword tokenizer: greedy longest-match-first over each word.

Word pieces come from Schuster & Nakajima 2012 (Japanese and Korean voice search) and Wu et al.
2016 (GNMT); BERT (Devlin et al. 2019) fixed the form used here. A word's first piece is spelled
as is and every later piece carries the continuation prefix `##` ("unaffable" -> "un", "##aff",
"##able"). Encoding is greedy: take the longest vocabulary entry the word starts with, then
the longest `##` entry the rest starts with, and so on. A word with no way through, or longer
than 100 characters, becomes one `[UNK]`.

How it differs from our byte-level BPE (bpe.py): the text is first normalized and cut into
words by BERT's basic tokenizer (bert_pretokenize.py: clean-up, CJK, accents, lowercase,
punctuation); pieces are characters, not bytes, so there is no byte fallback (an emoji the
vocabulary lacks is `[UNK]`); spaces are not tokens, so decoding cannot give the text back
exactly. Ids equal Hugging Face `tokenizers`' (tests/tokenizer/test_wordpiece.py).

    >>> tok = WordPieceTokenizer.from_tokens(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "!", "hi"])
    >>> enc = tok.encode("Unaffable!", "hi")
    >>> enc.tokens
    ['[CLS]', 'un', '##aff', '##able', '!', '[SEP]', 'hi', '[SEP]']
    >>> enc.token_type_ids
    [0, 0, 0, 0, 0, 0, 1, 1]
    >>> tok.decode(enc.ids, skip_special_tokens=True)
    'unaffable! hi'

Load a model directory (tokenizer.json, else vocab.txt with its tokenizer_config.json), or
either file: `WordPieceTokenizer.load("path/to/model")`; docs/tokenizer.md, "WordPiece".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Container, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lmstack.errors import ConfigError, TokenizerError
from lmstack.tokenizer.bert_pretokenize import BertNormalizer, pre_tokenize
from lmstack.tokenizer.special import check_special, split_on_specials
from lmstack.tokenizer.wordpiece_encoding import Batch, Encoding, Template, pad, truncate_pair
from lmstack.tokenizer.wordpiece_files import (
    AddedToken, read_tokenizer_config, read_tokenizer_json, read_vocab_txt,
)

# The decoder's clean-up of spaces BERT's splitting put before punctuation and clitics,
# applied to each token with its leading space (as `tokenizers` does).
CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
           (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
WORDPIECE_DECODER = MappingProxyType({"cleanup": True})  # tokenizers' WordPiece decoder
CACHE_SIZE = 65536  # words whose pieces are remembered (text repeats its words)


def wordpiece(word: str, vocab: Container[str], unk: str = "[UNK]", prefix: str = "##",
              max_chars: int = 100) -> list[str]:
    """Greedy longest-match-first pieces of one word; `[unk]` if any part has no match.

    >>> vocab = {"un", "##aff", "##able", "a", "##b"}
    >>> wordpiece("unaffable", vocab)
    ['un', '##aff', '##able']
    >>> wordpiece("unaffablex", vocab), wordpiece("ab" * 60, vocab)
    (['[UNK]'], ['[UNK]'])
    """
    if len(word) > max_chars:
        return [unk]
    pieces: list[str] = []
    start = 0
    while start < len(word):
        for end in range(len(word), start, -1):  # longest first
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                break
        else:  # no vocabulary entry starts this part: the whole word is unknown
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


def join_pieces(tokens: Sequence[str], prefix: str = "##", cleanup: bool = True) -> str:
    """Text from tokens: `##` pieces glued to the token before, the rest after a space.

    As in `tokenizers`, a leading `##` on the first token stays, and the clean-up sees one
    token at a time (so "it ' s" stays apart).

    >>> join_pieces(["hello", "wor", "##ld", "!", "it", "'", "s"])
    "hello world! it ' s"
    """
    out = []
    for i, token in enumerate(tokens):
        if i:
            token = token[len(prefix):] if token.startswith(prefix) else " " + token
        if cleanup:
            for dirty, clean in CLEANUP:
                token = token.replace(dirty, clean)
        out.append(token)
    return "".join(out)


@dataclass(frozen=True)
class WordPieceConfig:
    """How text becomes words and pieces; transformers' `BertTokenizer` names and defaults."""

    do_lower_case: bool = True
    strip_accents: bool | None = None  # None: strip exactly when lowercasing
    tokenize_chinese_chars: bool = True
    clean_text: bool = True
    unk_token: str = "[UNK]"
    cls_token: str = "[CLS]"
    sep_token: str = "[SEP]"
    pad_token: str = "[PAD]"
    mask_token: str = "[MASK]"
    continuing_subword_prefix: str = "##"
    max_input_chars_per_word: int = 100
    model_max_length: int | None = None  # encode's max_length when the caller gives none

    def __post_init__(self) -> None:
        if self.max_input_chars_per_word < 1:
            raise ConfigError(f"max_input_chars_per_word={self.max_input_chars_per_word} must "
                              "be at least 1 (BERT uses 100)")
        if self.model_max_length is not None and self.model_max_length < 1:
            raise ConfigError(f"model_max_length={self.model_max_length} must be positive, or "
                              "None for no limit")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WordPieceConfig:
        """A config from its fields; an error naming any unknown one."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown WordPiece option(s) {unknown}; the options are "
                              f"{sorted(known)}")
        return cls(**d)

    def normalizer(self) -> BertNormalizer:
        """BERT's normalization with these options."""
        return BertNormalizer(clean_text=self.clean_text,
                              handle_chinese_chars=self.tokenize_chinese_chars,
                              strip_accents=self.strip_accents, lowercase=self.do_lower_case)


class WordPieceTokenizer:
    """BERT's tokenizer: encode text (or a pair) to ids, token types and an attention mask."""

    def __init__(self, vocab: dict[str, int], config: WordPieceConfig | None = None,
                 template: Template | None = None,
                 added_tokens: Sequence[AddedToken] | None = None,
                 decoder: Mapping[str, Any] | None = WORDPIECE_DECODER) -> None:
        self.vocab = dict(vocab)
        self.config = config or WordPieceConfig()
        self.normalizer = self.config.normalizer()
        self.decoder = None if decoder is None else dict(decoder)
        if added_tokens is None:  # the config's special tokens, matched whole in raw text
            added_tokens = [AddedToken(t, self.vocab[t]) for t in self._names()
                            if t in self.vocab]
        self.added_tokens = tuple(added_tokens)
        self._added_ids = {t.content: t.id for t in self.added_tokens}
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.id_to_token.update((t.id, t.content) for t in self.added_tokens)
        self._check_required()
        self.template = template or Template.bert(
            {t: self.token_to_id(t) for t in (self.config.cls_token, self.config.sep_token)},
            self.config.cls_token, self.config.sep_token)
        self.special_tokens = frozenset(t.content for t in self.added_tokens if t.special)
        self.special_ids = frozenset(t.id for t in self.added_tokens if t.special)
        normalized = {t: self.normalizer.normalize(t.content) for t in self.added_tokens
                      if t.normalized}  # matched in normalized text, so in normalized form
        self._normalized_added = {text: t for t, text in normalized.items() if text}
        self._cache: dict[str, tuple[list[int], list[str]]] = {}

    def __repr__(self) -> str:
        c = self.config
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, "
                f"do_lower_case={c.do_lower_case}, strip_accents={c.strip_accents})")

    # ---- building ---------------------------------------------------------------------
    @classmethod
    def from_tokens(cls, tokens: Sequence[str], **config: Any) -> WordPieceTokenizer:
        """A tokenizer whose vocabulary is `tokens`, ids in list order (like a vocab.txt)."""
        return cls({t: i for i, t in enumerate(tokens)}, WordPieceConfig.from_dict(config))

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> WordPieceTokenizer:
        """From a model directory, a `tokenizer.json` or a `vocab.txt`; `overrides` are
        WordPieceConfig fields (`do_lower_case=False`, ...) that win over the files'."""
        path = Path(path)
        file = _tokenizer_file(path)
        config_file = file.parent / "tokenizer_config.json"
        fields = read_tokenizer_config(config_file) if config_file.is_file() else {}
        if file.suffix == ".json":  # its normalizer and names win over tokenizer_config.json
            parts = read_tokenizer_json(file)
            fields.update(parts.pop("config"))
        else:
            parts = {"vocab": read_vocab_txt(file)}
        return cls(config=WordPieceConfig.from_dict({**fields, **overrides}), **parts)

    def _names(self) -> tuple[str, ...]:
        c = self.config
        return (c.pad_token, c.unk_token, c.cls_token, c.sep_token, c.mask_token)

    def _check_required(self) -> None:
        c = self.config
        missing = [t for t in (c.unk_token, c.cls_token, c.sep_token, c.mask_token)
                   if self.token_to_id(t) is None]
        if missing:
            raise TokenizerError(
                f"the WordPiece vocabulary lacks {missing}; BERT needs an unknown, a class, a "
                "separator and a mask token: add them to vocab.txt (one a line), or name the "
                "vocabulary's own with unk_token=, cls_token=, sep_token=, mask_token=")
        if c.unk_token not in self.vocab:
            raise TokenizerError(f"the unknown token {c.unk_token!r} must be in the model's "
                                 "vocabulary, not only an added token")

    # ---- lookups ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """One more than the largest id (added tokens included)."""
        return max(self.id_to_token) + 1

    def token_to_id(self, token: str) -> int | None:
        """The id of a token (vocabulary or added), None if it has none."""
        return self._added_ids.get(token, self.vocab.get(token))

    @property
    def pad_id(self) -> int | None:
        """The padding id, None if the vocabulary has no pad token."""
        return self.token_to_id(self.config.pad_token)

    @property
    def mask_id(self) -> int:
        """The [MASK] id (masked language modeling replaces tokens with it)."""
        return self.token_to_id(self.config.mask_token)

    # ---- encoding -----------------------------------------------------------------------
    def tokenize(self, text: str, allowed_special: Collection[str] | str = (),
                 disallowed_special: Collection[str] | str = "all") -> list[str]:
        """The token strings of one text, without [CLS]/[SEP] (special-token rules of `encode`)."""
        return self._encode_text(text, allowed_special, disallowed_special)[1]

    def encode(self, text: str, pair: str | None = None, *, add_special_tokens: bool = True,
               max_length: int | None = None, truncation: bool = False,
               allowed_special: Collection[str] | str = (),
               disallowed_special: Collection[str] | str = "all") -> Encoding:
        """Ids, token type ids and attention mask of a text or a pair (`[CLS] A [SEP] B [SEP]`).

        Text that spells a special token ("[MASK]") raises SpecialTokenError unless allowed
        (`allowed_special="all"` encodes as `tokenizers` does). Longer than `max_length`
        (default: the config's `model_max_length`) is an error unless `truncation=True`.
        """
        a_ids, a_tokens = self._encode_text(text, allowed_special, disallowed_special)
        b_ids = b_tokens = None
        if pair is not None:
            b_ids, b_tokens = self._encode_text(pair, allowed_special, disallowed_special)
        n_a, n_b = self._fit(len(a_ids), None if pair is None else len(b_ids),
                             max_length, truncation, add_special_tokens)
        a_ids, a_tokens = a_ids[:n_a], a_tokens[:n_a]
        if pair is not None:
            b_ids, b_tokens = b_ids[:n_b], b_tokens[:n_b]
        if add_special_tokens:
            ids, tokens, types = self.template.apply(a_ids, a_tokens, b_ids, b_tokens)
        else:
            ids, tokens = a_ids + (b_ids or []), a_tokens + (b_tokens or [])
            types = [0] * len(a_ids) + [1] * len(b_ids or [])
        return Encoding(ids=ids, token_type_ids=types, attention_mask=[1] * len(ids),
                        tokens=tokens)

    def encode_batch(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                     padding: bool = True, **kwargs: Any) -> Batch:
        """Encode several texts (or pairs), right-padded to the longest when `padding`;
        `kwargs` are `encode`'s."""
        if isinstance(texts, str):
            raise TokenizerError("encode_batch takes a list of texts, got one string; pass "
                                 "[text], or call encode(text)")
        if len(texts) == 0:
            raise TokenizerError("encode_batch got an empty list of texts; pass at least one")
        if pairs is not None and len(pairs) != len(texts):
            raise TokenizerError(f"encode_batch got {len(texts)} texts but {len(pairs)} pairs; "
                                 "pass one pair text for each text")
        encodings = [self.encode(t, None if pairs is None else pairs[i], **kwargs)
                     for i, t in enumerate(texts)]
        if not padding or len({len(e) for e in encodings}) == 1:
            return Batch([e.ids for e in encodings], [e.token_type_ids for e in encodings],
                         [e.attention_mask for e in encodings], [e.tokens for e in encodings])
        if self.pad_id is None:
            raise TokenizerError(f"padding needs a pad token, and the vocabulary has no "
                                 f"{self.config.pad_token!r}; name one with pad_token=, or "
                                 "pass padding=False")
        return pad(encodings, self.pad_id, self.config.pad_token)

    def _encode_text(self, text: str, allowed_special: Collection[str] | str,
                     disallowed_special: Collection[str] | str) -> tuple[list[int], list[str]]:
        """(ids, tokens) of one text: added tokens whole, the rest through BERT and WordPiece."""
        if not isinstance(text, str):
            raise TokenizerError(f"expected text as a str, got {type(text).__name__}")
        allowed = check_special(text, self.special_tokens, allowed_special, disallowed_special)
        raw = {t.content: t.id for t in self.added_tokens
               if not t.normalized and (not t.special or t.content in allowed)}
        ids: list[int] = []
        tokens: list[str] = []
        for segment in split_on_specials(text, raw):
            if segment in raw:
                ids.append(raw[segment])
                tokens.append(segment)
                continue
            normalized = self.normalizer.normalize(segment)
            for part in split_on_specials(normalized, self._normalized_added):
                added = self._normalized_added.get(part)
                if added is not None:
                    ids.append(added.id)
                    tokens.append(part)  # the normalized text, as `tokenizers` reports it
                    continue
                for word in pre_tokenize(part):
                    word_ids, word_tokens = self._word(word)
                    ids += word_ids
                    tokens += word_tokens
        return ids, tokens

    def _word(self, word: str) -> tuple[list[int], list[str]]:
        """(ids, pieces) of one pre-tokenized word, remembered for the next time it comes."""
        hit = self._cache.get(word)
        if hit is None:
            c = self.config
            pieces = wordpiece(word, self.vocab, c.unk_token, c.continuing_subword_prefix,
                               c.max_input_chars_per_word)
            hit = ([self.vocab[p] for p in pieces], pieces)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[word] = hit
        return hit

    def _fit(self, n_a: int, n_b: int | None, max_length: int | None, truncation: bool,
             add_special_tokens: bool) -> tuple[int, int]:
        """How many tokens of each sequence to keep under the length limit."""
        limit = max_length if max_length is not None else self.config.model_max_length
        if limit is None:
            if truncation:
                raise TokenizerError("truncation=True needs a length: pass max_length=N")
            return n_a, n_b or 0
        if limit < 1:
            raise TokenizerError(f"max_length={limit} must be positive")
        n_special = self.template.num_added(n_b is not None) if add_special_tokens else 0
        room = limit - n_special
        total = n_a + (n_b or 0)
        if total <= room:
            return n_a, n_b or 0
        what = "text" if n_b is None else "pair"
        if not truncation:
            raise TokenizerError(
                f"the {what} is {total + n_special} tokens ({n_special} of them special), "
                f"longer than max_length={limit}; pass truncation=True to cut it to {limit} "
                "tokens, or a larger max_length if the model has the positions")
        if room < (1 if n_b is None else 2):
            raise TokenizerError(f"max_length={limit} leaves no room for the {what} beside its "
                                 f"{n_special} special tokens; pass a larger max_length")
        return (room, 0) if n_b is None else truncate_pair(n_a, n_b, room)

    # ---- decoding -----------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text from ids: `##` pieces joined to the piece before, special tokens kept unless
        `skip_special_tokens` (case, accents and spacing the encoder dropped stay dropped)."""
        tokens = []
        for i in ids:
            token = self.id_to_token.get(int(i))
            if token is None:
                raise TokenizerError(f"id {i} is not in the vocabulary (size {self.vocab_size})")
            if not (skip_special_tokens and int(i) in self.special_ids):
                tokens.append(token)
        if self.decoder is None:  # a tokenizer.json without a decoder: `tokenizers` joins so
            return " ".join(tokens)
        return join_pieces(tokens, self.config.continuing_subword_prefix,
                           self.decoder.get("cleanup", True))


def _tokenizer_file(path: Path) -> Path:
    """The file to read for `path`: itself, or a directory's tokenizer.json, else vocab.txt."""
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).is_file():
                return path / name
        raise TokenizerError(f"{path}: holds neither tokenizer.json nor vocab.txt; pass a "
                             "WordPiece model directory or one of those files")
    if not path.is_file():
        raise TokenizerError(f"{path}: no such file or directory; pass a vocab.txt, a "
                             "tokenizer.json or a model directory holding one")
    return path
