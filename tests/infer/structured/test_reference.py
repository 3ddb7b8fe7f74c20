"""The reference engine's masks (trie.py, reference.py) against a brute-force oracle, and the
Matcher protocol.

The oracle feeds every token's bytes from the start of the output, with no trie and no cache: a
token is allowed iff the recognizer still has a state after text + token (each recognizer state
is viable: tests/infer/structured/test_regex.py and test_grammar.py check that against
independent membership), and an end id iff the text is complete.

    .venv/bin/python -m pytest -q tests/infer/structured/test_reference.py
"""

import random

import numpy as np
import pytest

from lmstack.errors import ConfigError
from lmstack.infer.structured.constraint import Constraint
from lmstack.infer.structured.reference import compile_reference
from lmstack.infer.structured.vocab import TokenVocab

from .sentences import brute_force_mask, viable

_PIECES = [
    '{"', '":', '","', '"}', ", ", ": ", "true", "null", "false", "[1", "2]", "12", "-3", "ab",
    "abc", ' "', '"a', "é", "€", "😀", "\n", " \n", "  ", "\\n", "\\u00", "e9", "2023-", "01-",
    '"2023', "-0", ".5", "e+", "}]", '"}]', '{"name', 'name":', '":"', '":1', "age", '"age":',
    "yes", "no", "ye", "x+", "+x", "(x", "x)", ")*", "root", "[]", "{}", "0,", ",\n",
]
_PARTIAL = [b"\xc3", b"\xa9", b"\xe2\x82", b"\xac", b"\xf0\x9f", b"\x98\x80", b"\xf0\x9f\x98",
            b"\x80", b"a\xc3", b"\xa9b"]
TOKENS = [bytes([b]) for b in range(0x20, 0x7F)] + [p.encode() for p in _PIECES] + _PARTIAL
VOCAB = TokenVocab(tuple(TOKENS) + (None, None), end_ids=(len(TOKENS) + 1,))

CONSTRAINTS = [
    Constraint("regex", r"(?:ab|é|€)+[0-9]{1,3}"),
    Constraint("regex", r"[^a]*\d😀?"),
    Constraint("choices", ["yes", "no", "yesterday", "é€"]),
    Constraint("json"),
    Constraint("json_schema", {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 4}, "age": {"type": "integer", "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "é"]}}}, "required": ["name"]}),
    Constraint("json_schema", {"type": "string", "format": "date"}),
    Constraint("lark", 'start: e\ne: e ("+" | "*") t | t\nt: "x" | "(" e ")" | /[0-9]+/'),
    Constraint("gbnf", 'root ::= ("é" | [a-c])+ "€"? [\\n ]?'),
]


def _walk(constraint, seed: int, steps: int):
    """A random walk of allowed tokens; the mask checked against the oracle at every step."""
    compiled = compile_reference(constraint, VOCAB)
    m = compiled.matcher()
    rng = random.Random(seed)
    text = b""
    for _ in range(steps):
        mask = m.allowed()
        oracle = brute_force_mask(compiled.recognizer, VOCAB.token_bytes, VOCAB.end_ids, text)
        assert mask.nonzero()[0].tolist() == oracle, (constraint, text)
        choices = [i for i in oracle if i not in VOCAB.end_ids]
        if not choices or m.is_terminated():
            assert m.is_accepting()
            return
        token = rng.choice(choices)
        m.advance(token)
        text += VOCAB.token_bytes[token]


@pytest.mark.parametrize("constraint", CONSTRAINTS, ids=[c.kind + str(i) for i, c in
                                                         enumerate(CONSTRAINTS)])
def test_masks_equal_the_brute_force_oracle_on_random_walks(constraint):
    for seed in range(6):
        _walk(constraint, seed, steps=25)


def test_the_oracle_test_can_fail():
    """Negative control: a mask computed by a buggy walk (first byte only) disagrees."""
    compiled = compile_reference(CONSTRAINTS[0], VOCAB)
    state = compiled.recognizer.start
    sloppy = [i for i, t in enumerate(TOKENS) if compiled.recognizer.step(state, t[0]) is not None]
    assert sloppy != brute_force_mask(compiled.recognizer, VOCAB.token_bytes, VOCAB.end_ids, b"")


def test_partial_utf8_tokens_are_exact():
    m = compile_reference(Constraint("regex", "é€"), VOCAB).matcher()
    allowed = {TOKENS[i] for i in m.allowed().nonzero()[0]}
    assert allowed == {"é".encode(), b"\xc3"}
    m.advance(TOKENS.index(b"\xc3"))
    assert {TOKENS[i] for i in m.allowed().nonzero()[0]} == {b"\xa9"}  # not b"\xa9b"


def test_states_are_viable_on_a_schema_walk():
    compiled = compile_reference(CONSTRAINTS[4], VOCAB)
    m = compiled.matcher()
    rng = random.Random(5)
    for _ in range(20):
        state = m._stack[-1]
        assert viable(compiled.recognizer, state, depth=16)
        ids = [i for i in m.allowed().nonzero()[0] if i not in VOCAB.end_ids]
        if not ids:
            break
        m.advance(rng.choice(ids))


def test_matcher_protocol_end_rollback_fork():
    compiled = compile_reference(Constraint("choices", ["ab", "abc"]), VOCAB)
    m = compiled.matcher()
    end = VOCAB.end_ids[0]
    a, b, c = (TOKENS.index(x) for x in (b"a", b"b", b"c"))
    m.advance(a)
    with pytest.raises(ConfigError, match="end token"):
        m.advance(end)
    m.advance(b)
    fork = m.fork()
    assert m.is_accepting() and not m.is_terminated() and m.allowed()[end] and m.allowed()[c]
    m.advance(c)
    assert m.is_terminated() and m.allowed().nonzero()[0].tolist() == [end]
    m.advance(end)
    assert not m.allowed().any() and m.is_terminated()
    with pytest.raises(ConfigError, match="after the end"):
        m.advance(a)
    m.rollback(2)
    assert np.array_equal(m.allowed(), fork.allowed())
    fork.advance(end)
    assert m.allowed()[c] and not fork.allowed().any()
    with pytest.raises(ConfigError, match="not allowed"):
        m.advance(a)
    with pytest.raises(ConfigError, match="cannot roll back 3"):
        m.rollback(3)
    m.allowed()[c] = False  # the mask handed out is the caller's copy
    assert m.allowed()[c]


def test_compiled_constraints_are_cached_by_key_and_vocab():
    c1 = compile_reference(Constraint("json_schema", {"type": "integer"}), VOCAB)
    c2 = compile_reference(Constraint("json_schema", {"type": "integer"}), VOCAB)
    other = TokenVocab(VOCAB.token_bytes, VOCAB.end_ids)
    assert c1 is c2 and compile_reference(Constraint("json_schema", {"type": "integer"}),
                                          other) is not c1


@pytest.mark.parametrize("constraint, words", [
    (Constraint("choices", []), "empty"),
    (Constraint("choices", "yes"), "list of strings"),
    (Constraint("regex", "(?<=x)"), "lookaround"),
    (Constraint("regex", 5), "takes text"),
    (Constraint("json_schema", "{not json"), "not valid JSON"),
    (Constraint("gbnf", "root ::= undefined"), "'undefined'"),
])
def test_bad_constraints(constraint, words):
    with pytest.raises(ConfigError, match=words):
        compile_reference(constraint, VOCAB)
