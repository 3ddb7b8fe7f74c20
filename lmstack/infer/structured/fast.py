"""The fast engine: constraints compiled to token masks by llguidance, over our vocabulary.

llguidance (https://github.com/guidance-ai/llguidance, Rust, MIT) is an Earley parser over a lazy
derivative-based lexer, walked over a trie of the vocabulary's byte strings; it follows the JSON
Schema spec (draft 2020-12) and, unlike xgrammar, refuses the keywords it cannot enforce
(docs/structured.md has the measurements behind the choice). We hand it our `TokenVocab`, not a
Hugging Face tokenizer: every id's bytes, the ids no constraint may produce marked special, and
the end ids as its EOS, which it allows exactly when the text is complete.

Two settings differ from llguidance's defaults, both so that the mask is the exact set "a token
is allowed iff the text plus its bytes is a prefix of some string in the language", the same
mask as the reference engine's:

- `no_forcing`: by default llguidance tokenizes text the grammar forces (`{"name":`) canonically
  and allows only that tokenization's first token; we let the model pick any tokenization.
- Whitespace between JSON tokens is bounded: at most `max_whitespace` spaces or newlines
  (default 1, so `{"a": 1, "b": 2}` and `{"a":1}` pass but a model cannot loop on
  spaces or newlines), none before or after the value. `max_whitespace=None` allows any run, 0
  none. A schema's own `"x-guidance"` options (llguidance's JSON options) override this.

And so that both engines generate the same language, a JSON Schema is rewritten first
(fast_schema.py: allOf merged, objects closed, types made explicit, formats and patterns as the
reference reads them, integers without -0) and a regex constraint is handed over as the
reference parses it (rust_regex.py); tests/infer/structured/test_engines_agree.py holds the two
engines' masks equal. What is left is in docs/structured.md ("Known differences").

    >>> from lmstack.tokenizer import Tokenizer
    >>> tok = Tokenizer("gpt2", [(97, 98, 256)], {"<|endoftext|>": 257})
    >>> vocab = TokenVocab.from_tokenizer(tok)
    >>> m = compile_fast(Constraint("choices", ["ab", "b"]), vocab).matcher()
    >>> [vocab.token_bytes[i] for i in m.allowed().nonzero()[0]]
    [b'a', b'b', b'ab']
    >>> m.advance(256); m.is_accepting(), m.is_terminated(), m.allowed()[257]
    (True, True, np.True_)

Run: .venv/bin/python -m pytest -q tests/infer/structured/test_fast.py
"""

from __future__ import annotations

import json
import re
import weakref
from collections import OrderedDict
from typing import Any

import llguidance
import numpy as np
from llguidance.gbnf_to_lark import any_to_lark

from lmstack.errors import ConfigError
from lmstack.infer.structured.constraint import Constraint
from lmstack.infer.structured.fast_schema import for_llguidance
from lmstack.infer.structured.rust_regex import rust_regex
from lmstack.infer.structured.vocab import TokenVocab

DEFAULT_MAX_WHITESPACE = 1
CACHE_SIZE = 256
_HEADER = '%llguidance {"no_forcing": true}\n'  # exact masks: see the module docstring
_WS = r"[\x20\x0A]"  # space and newline, as the reference engine's JsonOptions


class FastMatcher:
    """One row's state: an llguidance LLMatcher and the buffer its bitmask is written into."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int,
                 end_ids: tuple[int, ...]) -> None:
        self._m, self._size, self._end_ids = matcher, vocab_size, list(end_ids)
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)  # bit i of word i//32
        self._ptr = self._bits.ctypes.data  # the buffer's address, for llguidance to write into
        self._mask: np.ndarray | None = None  # the mask of the current state, once computed
        self._taken = 0

    def allowed(self) -> np.ndarray:
        """Bool mask (vocab_size,) of the ids that may come next (read-only)."""
        if self._mask is None:
            self._m.unsafe_compute_mask_ptr(self._ptr, self._bits.nbytes)
            bits = np.unpackbits(self._bits.view(np.uint8), count=self._size, bitorder="little")
            self._mask = bits.view(bool)
            self._mask.flags.writeable = False  # shared with forks and callers, never copied
        return self._mask

    def advance(self, token_id: int) -> None:
        """Take one token; ConfigError if the mask did not allow it (the state is kept)."""
        ok = self._mask[token_id] if self._mask is not None else (
            0 <= token_id < self._size and self._m.validate_tokens([token_id]) == 1)
        if not ok or not self._m.consume_token(token_id):
            raise ConfigError(f"token {token_id} is not allowed by the constraint here")
        self._mask, self._taken = None, self._taken + 1

    def rollback(self, n: int) -> None:
        """Undo the last `n` tokens taken."""
        if not 0 <= n <= self._taken or not self._m.rollback(n):
            raise ConfigError(f"cannot roll back {n} tokens: the row has taken {self._taken}")
        self._mask, self._taken = None, self._taken - n

    def fork(self) -> FastMatcher:
        """An independent copy of this state."""
        other = FastMatcher(self._m.deep_copy(), self._size, tuple(self._end_ids))
        other._mask, other._taken = self._mask, self._taken  # the mask is never written to
        return other

    def is_accepting(self) -> bool:
        """The text so far is a complete member of the language."""
        return self._m.is_accepting()

    def is_terminated(self) -> bool:
        """Accepting, and no token but an end id may follow: the row is done."""
        if self._m.is_error() or not self._m.is_accepting():
            return False
        if self._m.is_stopped():
            return True
        mask = self.allowed()  # llguidance says "stopped" only once it has seen the end
        return int(mask.sum()) == int(mask[self._end_ids].sum())


class FastConstraint:
    """A constraint compiled by llguidance against one vocabulary; rows start from a copy."""

    def __init__(self, template: llguidance.LLMatcher, vocab: TokenVocab, grammar: str) -> None:
        self._template, self.grammar = template, grammar
        self.vocab_size, self.end_ids = vocab.size, vocab.end_ids
        self.vocab_ref = weakref.ref(vocab)

    def matcher(self) -> FastMatcher:
        """A fresh state at the start of the output."""
        return FastMatcher(self._template.deep_copy(), self.vocab_size, self.end_ids)


def compile_fast(constraint: Constraint, vocab: TokenVocab, *,
                 max_whitespace: int | None = DEFAULT_MAX_WHITESPACE,
                 cache: bool = True) -> FastConstraint:
    """Compile `constraint` against `vocab` (cached by its key, the options and the vocab);
    ConfigError, before any decoding, if it is invalid, unsupported or allows no output."""
    key = (constraint.key(), max_whitespace, id(vocab))
    hit = _CACHE.get(key) if cache else None
    if hit is not None and hit.vocab_ref() is vocab:
        _CACHE.move_to_end(key)
        return hit
    grammar = to_lark(constraint, max_whitespace)
    template = llguidance.LLMatcher(lltokenizer(vocab), grammar, log_level=0)
    if template.is_error():
        raise ConfigError(f"{constraint.kind} constraint rejected: {_message(template)}")
    compiled = FastConstraint(template, vocab, grammar)
    probe = compiled.matcher()
    if not probe.allowed().any() or probe._m.is_error():  # llguidance: a dead end, only EOS
        raise ConfigError(f"the {constraint.kind} constraint allows no output: no token of the "
                          "vocabulary can start a string of its language")
    if cache:
        _CACHE[key] = compiled
        if len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return compiled


_CACHE: OrderedDict[tuple, FastConstraint] = OrderedDict()


def to_lark(constraint: Constraint, max_whitespace: int | None = DEFAULT_MAX_WHITESPACE) -> str:
    """The llguidance Lark grammar of a constraint (JSON Schemas embedded with %json)."""
    kind, value = constraint.kind, constraint.value
    if kind == "json":
        return _HEADER + "start: %json " + json.dumps(_with_whitespace({}, max_whitespace))
    if kind == "json_schema":
        schema = _parse_schema(value)
        options = schema.pop("x-guidance", {})
        schema = for_llguidance(schema)
        if schema is False:
            raise ConfigError("the json_schema's allOf admits no value (its parts conflict)")
        schema = _with_whitespace({**schema, "x-guidance": options}, max_whitespace)
        return _HEADER + "start: %json " + json.dumps(schema)
    if kind == "regex":
        if not isinstance(value, str):
            raise ConfigError(f"a regex constraint is a string, not {type(value).__name__}")
        try:  # the reference's reading of the pattern (rust_regex.py), else Rust's own
            return _HEADER + "start: /" + rust_regex(value) + "/"
        except ConfigError:
            return _HEADER + "start: /" + _lark_regex(value) + "/"
    if kind == "lark":
        return _HEADER + _text(kind, value)
    if kind == "gbnf":
        try:
            return _HEADER + any_to_lark(_text(kind, value))
        except Exception as e:  # noqa: BLE001 — llguidance's converter raises bare Exceptions
            raise ConfigError(f"gbnf constraint rejected: {e}") from None
    return _HEADER + "start: " + " | ".join(_lark_string(s) for s in _choices(value))


def json_options(max_whitespace: int | None) -> dict[str, Any]:
    """llguidance's JSON options: a bound on whitespace between tokens (None: unbounded), and
    any \\u escape (four hex digits) in strings (llguidance alone allows only \\u00 and two)."""
    if max_whitespace is not None and max_whitespace < 0:
        raise ConfigError(f"max_whitespace is {max_whitespace}; use None, 0 or a positive bound")
    options: dict[str, Any] = {"json_allow_general_unicode_escapes": True}
    if max_whitespace == 0:
        return {**options, "whitespace_flexible": False, "item_separator": ",",
                "key_separator": ":"}
    bound = "+" if max_whitespace is None else "" if max_whitespace == 1 \
        else f"{{1,{max_whitespace}}}"
    return {**options, "whitespace_pattern": _WS + bound}


def _with_whitespace(schema: dict, max_whitespace: int | None) -> dict:
    options = {**json_options(max_whitespace), **schema.get("x-guidance", {})}
    return {**schema, "x-guidance": options}


def _parse_schema(value: Any) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"json_schema is not valid JSON: {e}") from None
    if value is True:
        return {}
    if isinstance(value, dict):
        value = dict(value)  # for_llguidance and the x-guidance options work on a copy
    if value is False:
        raise ConfigError("the json_schema is `false`, which no value satisfies")
    if not isinstance(value, dict):
        raise ConfigError(f"a JSON Schema is an object (or true), not {type(value).__name__}")
    return value


def _text(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"a {kind} constraint needs its text (a non-empty string)")
    return value


def _choices(value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value \
            or not all(isinstance(s, str) for s in value):
        raise ConfigError("choices must be a non-empty list of strings")
    return list(value)


def _lark_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # Lark string literals take JSON's escapes


def _lark_regex(pattern: str) -> str:
    """The pattern inside /.../: an unescaped '/' becomes '\\/'; escapes are copied as they are."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(pattern[i:i + 2])
            i += 2
            continue
        out.append("\\/" if c == "/" else "\\n" if c == "\n" else c)
        i += 1
    return "".join(out)


def _message(matcher: llguidance.LLMatcher) -> str:
    """llguidance's error on one line, without the grammar listing it appends."""
    lines = []
    for line in matcher.get_error().strip().splitlines():
        if re.match(r"\s*\d+ \| ", line):  # the listing of our grammar text starts
            break
        lines.append(line.strip())
    first = lines[0].split("failed to compile JSON schema: ", 1)[-1]
    first = re.sub(r"^at \d+\(\d+\): ", "", first)
    detail = [line.removeprefix("error: ") for line in lines[1:] if line.startswith("error:")]
    message = " ".join([first, *detail])
    if "Unimplemented keys" in message:
        message += " (the fast engine cannot enforce these keywords; remove them from the schema)"
    return message


def lltokenizer(vocab: TokenVocab) -> llguidance.LLTokenizer:
    """llguidance's tokenizer of our vocabulary, built once per TokenVocab object (~0.1 s)."""
    hit = _TOKENIZERS.get(id(vocab))
    if hit is not None and hit[0]() is vocab:
        return hit[1]
    if not vocab.end_ids:
        raise ConfigError("the vocabulary has no end id; a constrained row could never stop")
    built = llguidance.LLTokenizer(VocabWrapper(vocab), n_vocab=vocab.size,
                                   eos_token=list(vocab.end_ids))
    key = id(vocab)
    _TOKENIZERS[key] = (weakref.ref(vocab, lambda _: _TOKENIZERS.pop(key, None)), built)
    return built


_TOKENIZERS: dict[int, tuple[weakref.ref, llguidance.LLTokenizer]] = {}


class VocabWrapper:
    """What llguidance.LLTokenizer reads from a tokenizer: the bytes of every id (specials
    start with 0xFF, which no UTF-8 text contains) and an encode function."""

    is_tokenizer_wrapper = True
    bos_token_id = None

    def __init__(self, vocab: TokenVocab) -> None:
        ends = set(vocab.end_ids)
        self.tokens = [b"\xff<[%d]>" % i if b is None or i in ends else b
                       for i, b in enumerate(vocab.token_bytes)]
        self.special_token_ids = [i for i, b in enumerate(vocab.token_bytes)
                                  if b is None or i in ends]
        self.eos_token_id = vocab.end_ids[0]
        self._byte_id = {b: i for i, b in enumerate(vocab.token_bytes)
                         if b is not None and len(b) == 1}

    def __call__(self, text: bytes | str) -> list[int]:
        """Bytes -> ids, one byte at a time (never called with no_forcing)."""
        data = text.encode() if isinstance(text, str) else text
        return [self._byte_id[bytes([c])] for c in data if bytes([c]) in self._byte_id]
