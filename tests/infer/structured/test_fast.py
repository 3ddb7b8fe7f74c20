"""The fast engine (llguidance behind our Matcher) against a brute-force oracle on a small
vocabulary: a token is allowed iff the text so far plus its bytes is a prefix of some string of
the (finite, enumerated) language, an end id iff the text is in the language."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.infer.structured.constraint import Constraint
from lmstack.infer.structured.fast import compile_fast
from lmstack.infer.structured.vocab import TokenVocab

# single bytes, some multi-byte tokens, the two halves of "é" (0xC3 0xA9) and "é" whole, a
# special (None) and the end id (None, listed in end_ids)
PIECES = [b"a", b"b", b"c", b"x", b",", b"(", b")", b"0", b"1", b"2", b"12", b"ab", b"abc", b"bc",
          b"{", b"}", b'"', b":", b" ", b"\n", b"\t", b'{"', b'":', b"true", b"tr", b"ue",
          b"false", b"null", b"\xc3", b"\xa9", "é".encode(), b"\xc3\xa9a", b"a b"]
SPECIAL, END = len(PIECES), len(PIECES) + 1
VOCAB = TokenVocab(tuple(PIECES) + (None, None), (END,))


def oracle(language: set[bytes], text: bytes) -> np.ndarray:
    """The exact mask after `text`, by enumeration."""
    mask = np.zeros(VOCAB.size, dtype=bool)
    for i, piece in enumerate(VOCAB.token_bytes):
        if piece is not None:
            mask[i] = any(s.startswith(text + piece) for s in language)
    mask[END] = text in language
    return mask


def random_walks(compiled, language: set[bytes], walks: int = 20, seed: int = 0) -> int:
    """Walk `walks` random paths through the allowed tokens, checking every mask against the
    oracle and is_accepting/is_terminated; returns how many masks were checked."""
    rng, checked = random.Random(seed), 0
    for _ in range(walks):
        m, text = compiled.matcher(), b""
        while True:
            mask = m.allowed()
            want = oracle(language, text)
            assert np.array_equal(mask, want), (text, np.flatnonzero(mask != want))
            checked += 1
            assert m.is_accepting() == (text in language)
            assert m.is_terminated() == (want.sum() == 1 and bool(want[END]))
            token = rng.choice(np.flatnonzero(mask).tolist())
            m.advance(token)
            if token == END:
                break
            text += VOCAB.token_bytes[token]
        assert text in language
    return checked


def ws_variants(parts: list[str], gaps: str = " \n") -> set[bytes]:
    """Every way to put at most one whitespace character between consecutive parts."""
    out = set()
    for fill in itertools.product([""] + list(gaps), repeat=len(parts) - 1):
        out.add("".join(p + f for p, f in zip(parts, (*fill, ""))).encode())
    return out


CASES = [
    (Constraint("choices", ["a", "ab", "abc", "b,c", "é", "éa"]),
     {b"a", b"ab", b"abc", b"b,c", "é".encode(), "éa".encode()}, {}),
    (Constraint("regex", r"(ab|c)[0-2]{1,2}"),
     {(p + "".join(d)).encode() for p in ("ab", "c") for n in (1, 2)
      for d in itertools.product("012", repeat=n)}, {}),
    (Constraint("regex", r"x(,x){0,3}"), {b"x" + b",x" * k for k in range(4)}, {}),
    (Constraint("json_schema", {"enum": ["x", 1, None, True]}),
     {b'"x"', b"1", b"null", b"true"}, {}),
    (Constraint("json_schema", {"type": "object", "properties": {"a": {"type": "boolean"}},
                                "required": ["a"], "additionalProperties": False}),
     {b'{"a":true}', b'{"a":false}'}, {"max_whitespace": 0}),
    (Constraint("json_schema", {"type": "object", "properties": {"a": {"type": "boolean"}},
                                "required": ["a"], "additionalProperties": False}),
     ws_variants(["{", '"a"', ":", "true", "}"]) | ws_variants(["{", '"a"', ":", "false", "}"]),
     {}),
    (Constraint("lark", 'start: "x" | "(" inner ")"\ninner: "a" | "b" "c"'),
     {b"x", b"(a)", b"(bc)"}, {}),
    (Constraint("gbnf", 'root ::= "a" ("b" | "c" "0") | "x"'), {b"ab", b"ac0", b"x"}, {}),
]


@pytest.mark.parametrize("constraint,language,options", CASES,
                         ids=[f"{c.kind}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_masks_equal_the_oracle_on_random_walks(constraint, language, options):
    compiled = compile_fast(constraint, VOCAB, **options)
    assert random_walks(compiled, language) > 20


def test_the_oracle_check_can_fail():
    """Negative control: the same walk against a neighbouring language is caught."""
    compiled = compile_fast(Constraint("choices", ["a", "ab"]), VOCAB)
    with pytest.raises(AssertionError):
        random_walks(compiled, {b"a", b"ab", b"b"}, walks=3)
    with pytest.raises(AssertionError):  # whitespace is bounded: two spaces are not allowed
        constraint, language, _ = CASES[5]
        random_walks(compile_fast(constraint, VOCAB), language | {b'{"a":  true}'}, walks=60)


@settings(max_examples=25, deadline=None)
@given(st.sets(st.text(alphabet="abcé,", min_size=1, max_size=4), min_size=1, max_size=5),
       st.integers(0, 1000))
def test_choices_property(words, seed):
    compiled = compile_fast(Constraint("choices", sorted(words)), VOCAB)
    random_walks(compiled, {w.encode() for w in words}, walks=4, seed=seed)


def test_specials_never_allowed_and_end_only_when_complete():
    m = compile_fast(Constraint("json"), VOCAB).matcher()
    assert not m.allowed()[SPECIAL] and not m.allowed()[END]
    for piece in (b"[", ):  # "[" is not a token: arrays cannot start
        assert piece not in VOCAB.token_bytes
    m.advance(VOCAB.token_bytes.index(b"true"))
    assert m.allowed()[END] and m.is_accepting() and m.is_terminated()


def test_rollback_restores_the_masks():
    compiled = compile_fast(Constraint("regex", r"(ab|c)[0-2]{1,2}"), VOCAB)
    m = compiled.matcher()
    path = [VOCAB.token_bytes.index(b) for b in (b"a", b"b", b"1", b"2")]
    masks = []
    for t in path:
        masks.append(m.allowed().copy())
        m.advance(t)
    assert m.is_terminated()
    m.rollback(3)
    assert np.array_equal(m.allowed(), masks[1])
    m.advance(path[1])
    m.rollback(2)
    assert np.array_equal(m.allowed(), masks[0])
    with pytest.raises(ConfigError, match="roll back 1 tokens: the row has taken 0"):
        m.rollback(1)


def test_fork_is_independent():
    m = compile_fast(Constraint("choices", ["ab", "abc", "c"]), VOCAB).matcher()
    m.advance(VOCAB.token_bytes.index(b"ab"))
    other = m.fork()
    other.advance(VOCAB.token_bytes.index(b"c"))
    assert other.is_terminated() and not m.is_terminated() and m.is_accepting()
    assert m.allowed()[VOCAB.token_bytes.index(b"c")]
    other.rollback(2)
    assert other.allowed()[VOCAB.token_bytes.index(b"ab")] and not m.allowed()[
        VOCAB.token_bytes.index(b"ab")]


def test_advance_refuses_a_token_the_mask_forbids_and_keeps_the_state():
    m = compile_fast(Constraint("choices", ["ab"]), VOCAB).matcher()
    for check_mask_first in (True, False):
        if check_mask_first:
            m.allowed()
        with pytest.raises(ConfigError, match="not allowed"):
            m.advance(VOCAB.token_bytes.index(b"c"))
        with pytest.raises(ConfigError, match="not allowed"):
            m.advance(END)
    m.advance(VOCAB.token_bytes.index(b"ab"))
    assert m.is_terminated()


def test_compiled_constraints_are_cached_by_key_options_and_vocab():
    c = Constraint("json_schema", {"type": "integer", "minimum": 0})
    a = compile_fast(c, VOCAB)
    assert compile_fast(Constraint("json_schema", {"minimum": 0, "type": "integer"}), VOCAB) is a
    assert compile_fast(c, VOCAB, max_whitespace=0) is not a
    other = TokenVocab(VOCAB.token_bytes, VOCAB.end_ids)
    assert compile_fast(c, other) is not a
    assert compile_fast(c, VOCAB, cache=False) is not a


@pytest.mark.parametrize("constraint,message", [
    (Constraint("json_schema", {"type": "strin"}), "Invalid type: strin"),
    (Constraint("json_schema", "{not json"), "not valid JSON"),
    (Constraint("json_schema", {"type": "array", "uniqueItems": True}), "uniqueItems"),
    (Constraint("json_schema", {"not": {"type": "string"}}), "cannot enforce"),
    (Constraint("json_schema", {"$ref": "#/$defs/missing"}), "missing"),
    (Constraint("json_schema", False), "no value satisfies"),
    (Constraint("regex", "(ab"), "unclosed group"),
    (Constraint("lark", 'start: a\na: "x" b'), 'unknown name: "b"'),
    (Constraint("gbnf", 'root ::= a\na ::= "x" b'), "Rule 'b' not found"),
    (Constraint("choices", []), "non-empty list"),
    (Constraint("lark", " "), "needs its text"),
    (Constraint("regex", 5), "is a string"),
], ids=lambda x: x if isinstance(x, str) else x.kind)
def test_bad_input_is_a_config_error_at_compile_time(constraint, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("$", r"\$")):
        compile_fast(constraint, VOCAB)


@pytest.mark.parametrize("constraint", [
    Constraint("json_schema", {"type": "integer", "minimum": 5, "maximum": 3}),
    Constraint("json_schema", {"enum": []}),
    Constraint("regex", r"[^\s\S]"),
    Constraint("choices", ["zzz"]),  # no token of VOCAB writes a "z"
])
def test_empty_language_is_refused(constraint):
    with pytest.raises(ConfigError, match="no output|nsatisfiable|anyOf is empty"):
        compile_fast(constraint, VOCAB)


def test_whitespace_options():
    schema = {"type": "array", "items": {"const": 1}, "maxItems": 2}
    for bound, good, bad in [(0, "[1,1]", "[1, 1]"), (1, "[1, 1]", "[1,  1]"),
                             (2, "[1,  1]", "[1,   1]"), (None, "[1,      1]", "[1, 1, 1]")]:
        compiled = compile_fast(Constraint("json_schema", schema), _ascii(), max_whitespace=bound)
        assert _accepts(compiled, good) and not _accepts(compiled, bad), bound
    with pytest.raises(ConfigError, match="max_whitespace"):
        compile_fast(Constraint("json"), VOCAB, max_whitespace=-1)


def _ascii() -> TokenVocab:
    return _ASCII


_ASCII = TokenVocab(tuple(bytes([b]) for b in range(128)) + (None,), (128,))


def _accepts(compiled, text: str) -> bool:
    m = compiled.matcher()
    for b in text.encode():
        if not m.allowed()[b]:
            return False
        m.advance(b)
    return bool(m.allowed()[128])


def test_json_any_value_over_bytes():
    compiled = compile_fast(Constraint("json"), _ascii())
    for text in ['{"a": [1, 2.5e3, null, "x\\n"]}', "true", '"s"', "-0.5"]:
        assert _accepts(compiled, text), text
    for text in ["{'a': 1}", "[1,]", "01", " true"]:
        assert not _accepts(compiled, text), text
    assert json.loads('{"a": [1, 2.5e3, null, "x\\n"]}')


def test_the_empty_regex_is_the_empty_string():
    m = compile_fast(Constraint("regex", ""), VOCAB).matcher()
    assert np.flatnonzero(m.allowed()).tolist() == [END] and m.is_terminated()


def test_objects_with_properties_are_closed_unless_the_schema_opens_them():
    props = {"type": "object", "properties": {"a": {"const": 1}}}
    closed = compile_fast(Constraint("json_schema", props), _ascii())
    opened = compile_fast(Constraint("json_schema", {**props, "additionalProperties": True}),
                          _ascii())
    free = compile_fast(Constraint("json_schema", {"type": "object"}), _ascii())
    assert _accepts(closed, '{"a": 1}') and not _accepts(closed, '{"a": 1, "b": 2}')
    assert _accepts(opened, '{"a": 1, "b": 2}') and _accepts(free, '{"b": 2}')


def test_unicode_escapes_in_strings():
    compiled = compile_fast(Constraint("json_schema", {"type": "string"}), _ascii())
    assert _accepts(compiled, '"caf\\u00e9 \\u2603"') and not _accepts(compiled, '"\\x41"')
