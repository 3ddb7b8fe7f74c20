"""The two engines give identical masks (issue 15): random walks through JSON Schemas, JSON,
regexes, choices, Lark and GBNF grammars, on a small vocabulary (multi-byte, partial-UTF-8 and
multi-terminal tokens) and on a real BPE vocabulary (the session `tok`, 1024 ids); at every step
fast.allowed() equals reference.allowed() and is_accepting/is_terminated agree. The reference is
itself held to a brute-force oracle (test_reference.py), so this makes the fast engine exact too.

    .venv/bin/python -m pytest -q tests/infer/structured/test_engines_agree.py
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from lmstack.infer.structured.constraint import Constraint
from lmstack.infer.structured.fast import compile_fast
from lmstack.infer.structured.reference import compile_reference
from lmstack.infer.structured.vocab import TokenVocab

_PIECES = ['{"', '":', '","', '"}', ", ", ": ", "true", "null", "false", "[1", "2]", "12", "-3",
           "-0", "0,", ".5", "e+", "ab", "abc", ' "', '"a', "é", "€", "😀", "\n", " \n", "  ",
           "\\n", "\\/", "\\u00", "\\u007", "7f", "7F", "e9", "d83d", "\\ude00", "2023-", "01-",
           "T12:", "00:00", "Z", "z", ":60", "@", "a.b", "[1]", '"}]', "}]", '{"name', 'name":',
           '":"', '":1', "x+", "(x", "x)", "]}", "[]", "{}", ",\n", '"head', '"tail":', "ul"]
_PARTIAL = [b"\xc3", b"\xa9", b"\xe2\x82", b"\xac", b"\xf0\x9f", b"\x98\x80", b"a\xc3", b"\xa9b"]
_TOKENS = [bytes([b]) for b in range(0x20, 0x80)] + [b"\t", b"\r"] \
    + [p.encode() for p in _PIECES] + _PARTIAL
SMALL = TokenVocab(tuple(_TOKENS) + (None, None), end_ids=(len(_TOKENS) + 1,))

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 4}, "age": {"type": "integer", "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "é"]}}}, "required": ["name"]}
CELL = {"$defs": {"cell": {"type": "object", "properties": {
    "head": {"type": "string"}, "tail": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/cell"}]}},
    "required": ["head", "tail"]}}, "$ref": "#/$defs/cell"}
TREE = {"$defs": {"node": {"type": "object", "properties": {
    "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"},
                                       "maxItems": 2}}, "required": ["v"]}},
        "$ref": "#/$defs/node"}
SCHEMAS = {
    "person": PERSON,
    "nested": {"type": "object", "properties": {"p": PERSON, "ok": {"type": "boolean"}},
               "required": ["p"]},
    "array_min_max": {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                      "maxItems": 4},
    "prefix_items": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]},
    "enum": {"enum": ["a", 1, None, True, "é", [1], {"x": "y"}]},
    "const": {"const": "a\nb"},
    "any_of": {"anyOf": [{"type": "string", "maxLength": 2},
                         {"type": "integer", "minimum": -3, "maximum": 12}]},
    "one_of_siblings": {"type": "object", "properties": {"a": {"type": "integer"},
                                                         "b": {"type": "string"}},
                        "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
    "all_of": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}},
                          "required": ["a"]},
                         {"properties": {"b": {"type": "string"}}, "required": ["b"]}]},
    "ref_linked_list": CELL,
    "ref_tree": TREE,
    "pattern_anchored": {"type": "string", "pattern": "^[a-f0-9]{2,4}$"},
    "pattern_search": {"type": "string", "pattern": "ab|é"},
    "pattern_classes": {"type": "string", "pattern": r"^.\d\w\s[^a]$"},
    "format_date": {"type": "string", "format": "date"},
    "format_date_time": {"type": "string", "format": "date-time"},
    "format_time_email": {"type": "array", "prefixItems": [
        {"type": "string", "format": "time"}, {"type": "string", "format": "email"}]},
    "format_uuid": {"type": "string", "format": "uuid"},
    "integers": {"type": "array", "prefixItems": [
        {"type": "integer"}, {"type": "integer", "minimum": -12, "maximum": 317},
        {"type": "integer", "minimum": -5}, {"type": "integer", "exclusiveMaximum": 3},
        {"type": ["integer", "null"], "minimum": -1, "maximum": 1}]},
    "string_lengths": {"type": "array", "items": {"type": "string", "minLength": 2,
                                                  "maxLength": 3}},
    "extra_keys": {"type": "object", "properties": {"ab": {"type": "null"}},
                   "required": ["a"], "additionalProperties": {"type": "integer"}},
    "implied_types": {"properties": {"a": {"minimum": 1}, "b": {"maxLength": 2}}},
    "odd_keys": {"type": "object", "properties": {"a/b": {"const": 1}, "é": {"const": 2},
                                                  'q"': {"const": 3}}},
    "number": {"type": "array", "items": {"type": "number"}},
}
OTHERS = [
    Constraint("json"),
    Constraint("regex", r"(?:ab|é|€)+[0-9]{1,3}"),
    Constraint("regex", r"[^a]*\d😀?"),
    Constraint("regex", r"x.\w\s?"),
    Constraint("choices", ["yes", "no", "yesterday", "é€", "a b"]),
    Constraint("lark", 'start: e\ne: e ("+" | "*") t | t\nt: "x" | "(" e ")" | /[0-9]+/'),
    Constraint("lark", 'start: item ("," item)*\nitem: "true" | "null" | /é+/ | "ab" "c"?'),
    Constraint("gbnf", 'root ::= ("é" | [a-c])+ "€"? [\\n ]?'),
    Constraint("gbnf", 'root ::= "{" pair ("," pair)* "}"\npair ::= [a-z] ":" ("1" | "12")'),
]
CONSTRAINTS = [Constraint("json_schema", s) for s in SCHEMAS.values()] + OTHERS
IDS = list(SCHEMAS) + [f"{c.kind}{i}" for i, c in enumerate(OTHERS)]
_CLOSERS = (b'"', b"}", b"]")


def walk_both(fast, ref, vocab: TokenVocab, seed: int, steps: int) -> int:
    """One random walk through the allowed tokens, checking that both engines agree at every
    step; on even seeds, after 8 tokens, the walk leans toward closing tokens (quotes, brackets)
and the end. Returns the
    number of masks compared."""
    rng, text = random.Random(seed), b""
    f, r = fast.matcher(), ref.matcher()
    for step in range(steps):
        a, b = f.allowed(), r.allowed()
        assert np.array_equal(a, b), _why(vocab, text, a, b)
        assert f.is_accepting() == r.is_accepting(), text
        assert f.is_terminated() == r.is_terminated(), text
        ids = [i for i in np.flatnonzero(a).tolist() if i not in vocab.end_ids]
        lean = seed % 2 == 0 and step >= 8 and rng.random() < 0.6
        if not ids or (lean and r.is_accepting() and rng.random() < 0.5):
            return step + 1
        closing = [i for i in ids if any(c in vocab.token_bytes[i] for c in _CLOSERS)]
        token = rng.choice(closing if lean and closing else ids)
        f.advance(token)
        r.advance(token)
        text += vocab.token_bytes[token]
    return steps


def _why(vocab: TokenVocab, text: bytes, a: np.ndarray, b: np.ndarray) -> str:
    def only(mask: np.ndarray) -> list[bytes | None]:
        return [vocab.token_bytes[i] for i in np.flatnonzero(mask)][:6]
    return f"after {text!r}: fast only {only(a & ~b)}, reference only {only(b & ~a)}"


@pytest.mark.parametrize("constraint", CONSTRAINTS, ids=IDS)
def test_masks_agree_on_a_small_vocabulary(constraint):
    fast, ref = compile_fast(constraint, SMALL), compile_reference(constraint, SMALL)
    assert sum(walk_both(fast, ref, SMALL, seed, steps=60) for seed in range(8)) > 8


@pytest.fixture(scope="module")
def bpe(tok) -> TokenVocab:
    return TokenVocab.from_tokenizer(tok)


@pytest.mark.parametrize("constraint", CONSTRAINTS, ids=IDS)
def test_masks_agree_on_a_bpe_vocabulary(constraint, bpe):
    fast, ref = compile_fast(constraint, bpe), compile_reference(constraint, bpe)
    assert sum(walk_both(fast, ref, bpe, seed, steps=40) for seed in range(4)) > 4


def test_the_comparison_can_fail():
    """Negative control: two whitespace bounds are two languages, and the walk notices."""
    constraint = Constraint("json_schema", PERSON)
    fast = compile_fast(constraint, SMALL, max_whitespace=2)
    ref = compile_reference(constraint, SMALL, max_whitespace=1)
    with pytest.raises(AssertionError, match="fast only"):
        for seed in range(6):
            walk_both(fast, ref, SMALL, seed, steps=40)
