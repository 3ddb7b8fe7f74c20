"""The grammar IR (grammar.py, utf8.py), the Earley recognizer (earley.py) and the Lark and
GBNF front-ends.

    .venv/bin/python -m pytest -q tests/infer/structured/test_grammar.py
"""

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.infer.structured.earley import EarleyRecognizer
from lmstack.infer.structured.gbnf import parse_gbnf
from lmstack.infer.structured.grammar import (
    EMPTY,
    Alt,
    Grammar,
    Ref,
    Repeat,
    Seq,
    chars,
    literal,
    text,
)
from lmstack.infer.structured.lark_grammar import parse_lark
from lmstack.infer.structured.nfa import NfaRecognizer
from lmstack.infer.structured.recognizer import feed, matches
from lmstack.infer.structured.regex import regex_expr
from lmstack.infer.structured.utf8 import utf8_sequences

from .sentences import sentence, viable
from .test_regex import ALPHABET, LEAVES, _patterns


def _in(seqs, data: bytes) -> bool:
    return any(len(s) == len(data) and all(lo <= b <= hi for (lo, hi), b in zip(s, data))
               for s in seqs)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0x10FFFF), st.integers(0, 0x10FFFF), st.lists(st.integers(0, 0x10FFFF),
                                                                      max_size=30))
def test_utf8_sequences_match_exactly_the_code_points(a, b, probes):
    lo, hi = min(a, b), max(a, b)
    seqs = utf8_sequences([(lo, hi)])
    for c in probes + [lo, hi, lo - 1, hi + 1]:
        if 0 <= c <= 0x10FFFF and not 0xD800 <= c <= 0xDFFF:
            assert _in(seqs, chr(c).encode()) == (lo <= c <= hi)
    assert not _in(seqs, b"\xed\xa0\x80")  # an encoded surrogate is never a character


@settings(max_examples=200, deadline=None)
@given(_patterns(LEAVES), st.lists(st.text(ALPHABET, max_size=6), min_size=1, max_size=6))
def test_earley_agrees_with_the_automaton_on_regular_languages(pattern, texts):
    """Two independent recognizers of one expression: same membership, same viable prefixes."""
    e = regex_expr(pattern)
    nfa, earley = NfaRecognizer(e), EarleyRecognizer(Grammar({"start": e}).lower())
    for t in texts:
        data = t.encode()
        for cut in range(len(data) + 1):
            a, b = feed(nfa, nfa.start, data[:cut]), feed(earley, earley.start, data[:cut])
            assert (a is None) == (b is None), (pattern, data[:cut])
            assert a is None or a.accepting == b.accepting


# left recursion, right recursion, ambiguity and nullable rules in one grammar
TRICKY = Grammar({
    "start": Alt((Seq((Ref("start"), Ref("op"), Ref("start"))), Ref("atom"))),  # ambiguous
    "op": Alt((text("+"), text("*"))),
    "atom": Alt((Seq((Ref("n"), Ref("atom"))), Seq((text("("), Ref("start"), text(")"))),
                 text("x"))),
    "n": Alt((EMPTY, Seq((Ref("n"), text("-"))))),  # nullable, left recursive
})


def _tricky_re():
    return re.compile(r"-*(?:x|\(.*\))(?:[+*]-*(?:x|\(.*\)))*")


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            return False
    return depth == 0


def _tricky_member(s: str) -> bool:
    """Membership by a hand recursive descent: start = term (op term)*, term = -* (x | (start))."""
    def term(i):
        while i < len(s) and s[i] == "-":
            i += 1
        if i < len(s) and s[i] == "x":
            return i + 1
        if i < len(s) and s[i] == "(":
            j = expr(i + 1)
            return j + 1 if j is not None and j < len(s) and s[j] == ")" else None
        return None

    def expr(i):
        i = term(i)
        while i is not None and i < len(s) and s[i] in "+*":
            i = term(i + 1)
        return i
    return expr(0) == len(s)


@settings(max_examples=300, deadline=None)
@given(st.text("x+*-()", max_size=10))
def test_earley_on_an_ambiguous_left_recursive_nullable_grammar(s):
    r = EarleyRecognizer(TRICKY.lower())
    assert matches(r, s.encode()) == _tricky_member(s)


def test_random_sentences_are_members_and_every_prefix_is_viable():
    bnf = TRICKY.lower()
    r = EarleyRecognizer(bnf)
    rng = random.Random(0)
    for _ in range(50):
        s = sentence(bnf, rng, budget=12)
        assert _tricky_member(s.decode()), s
        for cut in range(len(s)):
            open_parens = s[:cut].count(b"(") - s[:cut].count(b")")
            assert viable(r, feed(r, r.start, s[:cut]), depth=open_parens + 2)


def test_undefined_rule_is_named():
    with pytest.raises(ConfigError, match="'missing'.*referenced from 'a'"):
        Grammar({"start": Ref("a"), "a": Seq((text("x"), Ref("missing")))}).lower()


def test_empty_language_is_an_error_and_unreachable_rules_are_ignored():
    with pytest.raises(ConfigError, match="empty"):
        Grammar({"start": Seq((text("a"), Ref("loop"))), "loop": Seq((text("b"), Ref("loop")))}).lower()
    g = Grammar({"start": text("ok"), "unused": Ref("undefined_but_unreachable")})
    assert matches(EarleyRecognizer(g.lower()), b"ok")


def test_unproductive_branches_are_pruned_so_every_state_is_viable():
    g = Grammar({"start": Alt((Seq((text("a"), Ref("dead"))), text("ab"))), "dead": Ref("dead")})
    r = EarleyRecognizer(g.lower())
    assert viable(r, feed(r, r.start, b"a"), depth=3) and feed(r, r.start, b"b") is None


def test_bounded_repetition_and_multibyte_classes():
    g = Grammar({"start": Repeat(chars([(0xE9, 0xE9), (0x1F600, 0x1F600)]), 1, 2)})
    r = EarleyRecognizer(g.lower())
    assert matches(r, "é😀".encode()) and not matches(r, "é😀é".encode())
    assert feed(r, r.start, "é".encode()[:1]) is not None and feed(r, r.start, b"\xc3\xaa") is None
    assert literal(b"") == EMPTY


LARK_JSON = r'''
?start: value
?value: object | array | string | SIGNED_NUMBER | "true" | "false" | "null"
array  : "[" [value ("," value)*] "]"
object : "{" [pair ("," pair)*] "}"
pair   : string ":" value
string : ESCAPED_STRING
%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
'''


def test_lark_json_grammar():
    r = EarleyRecognizer(parse_lark(LARK_JSON).lower())
    assert matches(r, b'{"a":[1,-2.5e3,{"b":null}],"c":"x\\"y"}')
    assert not matches(r, b'{"a":}') and not matches(r, b'{"a": 1}')  # no %ignore: no spaces


def test_lark_features():
    g = parse_lark('start: "a".."c" ~ 2 X? ("x" | /y+/)+ -> alias\nX.2: "!"\n')
    r = EarleyRecognizer(g.lower())
    assert matches(r, b"ab!xyy") and matches(r, b"ccx") and not matches(r, b"a!x")


@pytest.mark.parametrize("source, words", [
    ("start: a\n", "rule 'a' but never defines it"),
    ("start: \"a\"\n%ignore \" \"\n", "line 2 column 1: %ignore is not supported"),
    ("start: (\"a\"\n", "line 2 column 1: expected ')'"),
    ("start: \"a\"i\n", "case-insensitive"),
    ("start: /a/i\n", "regex flags"),
    ("start: /(a/\n", "line 1 column 8: regex '(a'"),
    ("start: \"a\"\n%import common.NOPE\n", "NOPE"),
    ("x: \"a\"\n", "no start rule 'start'"),
    ("start: \"a\"\nstart: \"b\"\n", "defined twice"),
    ("start: @\n", "line 1 column 8: unexpected character '@'"),
])
def test_lark_errors(source, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_lark(source).lower()


def test_gbnf_grammar():
    g = parse_gbnf(r'''
# a tiny list language
root   ::= "[" ws (item (ws "," ws item)*)? ws "]"
item   ::= [a-zA-Z_] [a-zA-Z0-9_]{0,3} | "\"" [^"\\]* "\"" | num
num    ::= "-"? ("0" | [1-9] [0-9]*)
ws     ::= [ \t\n]?
''')
    r = EarleyRecognizer(g.lower())
    assert matches(r, b'[ab1, "x y", -10]') and matches(r, b"[]")
    assert not matches(r, b"[abcde]") and not matches(r, b"[01]")
    assert matches(EarleyRecognizer(parse_gbnf("root ::= . .").lower()), "é\n".encode())


@pytest.mark.parametrize("source, words", [
    ("root ::= foo\n", "rule 'foo' but never defines it"),
    ("root ::= \"a\" (\"b\"\n", "line 2 column 1: expected ')'"),
    ("root ::= \"a\"\n  ::= \"b\"", "line 2 column 3: unexpected '::='"),
    ("root ::= [a-\n", "unexpected character '['"),
    ("root ::= \"\\q\"", "unknown escape"),
    ("rot ::= \"a\"", "no start rule 'root'"),
    ("root ::= \"a\"{3,1}", "line 1 column 13"),
    ("root ::= x\nx ::= \"a\" x", "empty"),
])
def test_gbnf_errors(source, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_gbnf(source).lower()
