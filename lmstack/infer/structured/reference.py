"""The readable reference engine: a constraint compiled to a recognizer, walked over a trie.

`compile_reference(constraint, vocab)` picks the recognizer for the constraint's kind: the
lazy-DFA regex automaton (nfa.py) for `regex` and `choices` (alternatives of literals), the
Earley recognizer (earley.py) for grammars (`lark`, `gbnf`) and for JSON and JSON Schema, which
json_schema.py translates to a grammar. The compiled constraint caches the mask of every
recognizer state it has seen (states are interned, recognizer.py), so a state met again, by this
row or another, costs an unpacking of its bits; a new state costs one walk of the vocabulary
trie (trie.py).

An end id is allowed exactly when the text so far is complete (the state is accepting); after an
end id nothing is allowed. A matcher keeps one state per token taken, so rollback pops and fork
copies a list: states are immutable and shared.

    >>> from lmstack.infer.structured.constraint import Constraint
    >>> from lmstack.infer.structured.vocab import TokenVocab
    >>> vocab = TokenVocab((b"ye", b"s", b"no", b"yes", None), end_ids=(4,))
    >>> m = compile_reference(Constraint("choices", ["yes", "no"]), vocab).matcher()
    >>> m.allowed().nonzero()[0].tolist()
    [0, 2, 3]
    >>> m.advance(0); m.allowed().nonzero()[0].tolist()
    [1]
    >>> m.advance(1); m.allowed().nonzero()[0].tolist(), m.is_terminated()
    ([4], True)

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/reference.py
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np

from lmstack.errors import ConfigError
from lmstack.infer.structured.constraint import Constraint
from lmstack.infer.structured.earley import EarleyRecognizer
from lmstack.infer.structured.gbnf import parse_gbnf
from lmstack.infer.structured.grammar import Grammar, alt, text
from lmstack.infer.structured.json_schema import JsonOptions, json_grammar, schema_grammar
from lmstack.infer.structured.lark_grammar import parse_lark
from lmstack.infer.structured.nfa import NfaRecognizer
from lmstack.infer.structured.recognizer import LazyRecognizer, State, feed
from lmstack.infer.structured.regex import regex_expr
from lmstack.infer.structured.trie import VocabTrie
from lmstack.infer.structured.vocab import TokenVocab

_CACHE_SIZE = 64
_compiled: OrderedDict[tuple, ReferenceConstraint] = OrderedDict()
_tries: dict[int, tuple[TokenVocab, VocabTrie]] = {}


def vocab_trie(vocab: TokenVocab) -> VocabTrie:
    """The trie of `vocab`, built once per vocabulary object."""
    hit = _tries.get(id(vocab))
    if hit is None or hit[0] is not vocab:
        hit = _tries[id(vocab)] = (vocab, VocabTrie(vocab.token_bytes))
    return hit[1]


def recognizer_for(constraint: Constraint, options: JsonOptions = JsonOptions()) -> LazyRecognizer:
    """The recognizer of the constraint's language (JSON written as `options` say);
    ConfigError for a bad or empty one."""
    kind, value = constraint.kind, constraint.value
    if kind == "regex":
        return NfaRecognizer(regex_expr(_text(value, kind)))
    if kind == "choices":
        if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
            raise ConfigError("choices must be a list of strings")
        if not value:
            raise ConfigError("choices is empty: no output can satisfy the constraint")
        return NfaRecognizer(alt(*(text(c) for c in value)))
    grammar: Grammar
    if kind == "json":
        grammar = json_grammar(options)
    elif kind == "json_schema":
        grammar = schema_grammar(_schema(value), options)
    elif kind == "lark":
        grammar = parse_lark(_text(value, kind))
    else:
        grammar = parse_gbnf(_text(value, kind))
    return EarleyRecognizer(grammar.lower())


def _text(value, kind: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"a {kind} constraint takes text, not {type(value).__name__}")
    return value


def _schema(value) -> dict | bool:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"the JSON schema is not valid JSON: {e}") from None
    return value


def compile_reference(constraint: Constraint, vocab: TokenVocab, *,
                      max_whitespace: int | None = 1) -> ReferenceConstraint:
    """The constraint compiled against `vocab` (JSON with at most `max_whitespace` spaces or
    newlines between tokens, None: any), cached by its key, the bound and the vocabulary."""
    key = (constraint.key(), max_whitespace, id(vocab))
    hit = _compiled.get(key)
    if hit is not None and hit.vocab is vocab:
        _compiled.move_to_end(key)
        return hit
    recognizer = recognizer_for(constraint, JsonOptions(max_whitespace=max_whitespace))
    compiled = _compiled[key] = ReferenceConstraint(recognizer, vocab)
    if len(_compiled) > _CACHE_SIZE:
        _compiled.popitem(last=False)
    return compiled


class ReferenceConstraint:
    """A recognizer and a vocabulary; the mask of each recognizer state, computed once."""

    def __init__(self, recognizer: LazyRecognizer, vocab: TokenVocab) -> None:
        self.recognizer, self.vocab, self.trie = recognizer, vocab, vocab_trie(vocab)
        self._masks: dict[State, np.ndarray] = {}  # packed bits: 6 KiB a state at 49k ids
        self._ends = np.array(vocab.end_ids, dtype=np.int64)

    def matcher(self) -> ReferenceMatcher:
        """A fresh row at the start of the output."""
        return ReferenceMatcher(self)

    def can_continue(self, state: State) -> bool:
        """Some token other than an end id is allowed in `state`."""
        mask = self.mask(state)
        return int(mask.sum()) > int(mask[self._ends].sum())

    def mask(self, state: State) -> np.ndarray:
        """The mask of `state` (a fresh array; the trie is walked once per state)."""
        packed = self._masks.get(state)
        if packed is None:
            mask = np.zeros(self.vocab.size, dtype=bool)
            ids = self.trie.allowed_ids(self.recognizer, state)
            mask[np.array(ids, dtype=np.int64)] = True
            mask[self._ends] = state.accepting
            packed = self._masks[state] = np.packbits(mask)
        return np.unpackbits(packed, count=self.vocab.size).view(bool)


class ReferenceMatcher:
    """One row: the recognizer state after each token taken (None after an end id)."""

    def __init__(self, compiled: ReferenceConstraint, stack: list[State | None] | None = None):
        self.compiled = compiled
        self._stack: list[State | None] = stack or [compiled.recognizer.start]

    def allowed(self) -> np.ndarray:
        """Bool mask (vocab_size,) of the ids that may come next."""
        state = self._stack[-1]
        if state is None:
            return np.zeros(self.compiled.vocab.size, dtype=bool)
        return self.compiled.mask(state)

    def advance(self, token_id: int) -> None:
        """Take one token; ConfigError if the mask did not allow it."""
        state, vocab = self._stack[-1], self.compiled.vocab
        if state is None:
            raise ConfigError(f"token {token_id} after the end of the output")
        if token_id in vocab.end_ids:
            if not state.accepting:
                raise ConfigError(f"end token {token_id} before the output is complete")
            self._stack.append(None)
            return
        data = vocab.token_bytes[token_id] if 0 <= token_id < vocab.size else None
        nxt = feed(self.compiled.recognizer, state, data) if data else None
        if nxt is None:
            raise ConfigError(f"token {token_id} ({data!r}) is not allowed by the constraint here")
        self._stack.append(nxt)

    def rollback(self, n: int) -> None:
        """Undo the last `n` tokens taken."""
        if not 0 <= n < len(self._stack):
            raise ConfigError(f"cannot roll back {n} tokens: only {len(self._stack) - 1} taken")
        del self._stack[len(self._stack) - n:]

    def fork(self) -> ReferenceMatcher:
        """An independent copy of this state."""
        return ReferenceMatcher(self.compiled, list(self._stack))

    def is_accepting(self) -> bool:
        """The text so far is a complete member of the language."""
        state = self._stack[-1]
        return state is None or state.accepting

    def is_terminated(self) -> bool:
        """Accepting, and no token but an end id may follow: the row is done."""
        state = self._stack[-1]
        if state is None or state.terminated:
            return True
        return state.accepting and not self.compiled.can_continue(state)
