"""The regex front-end (regex.py) and its automaton (nfa.py) against Python's re and regex.

    .venv/bin/python -m pytest -q tests/infer/structured/test_regex.py
"""

import re

import pytest
import regex as regex_module
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.infer.structured.nfa import NfaRecognizer
from lmstack.infer.structured.recognizer import feed, matches
from lmstack.infer.structured.regex import regex_expr

ALPHABET = "ab-é€😀"
ASCII_ALPHABET = "ab-0_ 9"
LEAVES = ["a", "b", "é", "😀", r"\-", "[a-c]", "[^a]", "[é-😀]", "[ab€]", "."]
SHORTHANDS = [r"\d", r"\w", r"\s", r"\D", r"\W", r"\S", r"[\d_]", r"[^\s]"]


def _patterns(leaves):
    def extend(inner):
        return st.one_of(
            st.tuples(inner, inner).map("".join),
            st.tuples(inner, inner).map(lambda t: f"(?:{t[0]}|{t[1]})"),
            inner.map(lambda p: f"({p})"),
            st.tuples(inner, st.sampled_from(["*", "+", "?", "{2}", "{0,2}", "{1,}", "*?"]))
            .map(lambda t: f"(?:{t[0]}){t[1]}"),
        )
    return st.recursive(st.sampled_from(leaves), extend, max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(_patterns(LEAVES), st.lists(st.text(ALPHABET, max_size=6), min_size=1, max_size=8))
def test_automaton_agrees_with_re_fullmatch(pattern, texts):
    r = NfaRecognizer(regex_expr(pattern))
    for t in texts:
        assert matches(r, t.encode()) == (re.fullmatch(pattern, t) is not None), (pattern, t)


@settings(max_examples=200, deadline=None)
@given(_patterns(LEAVES[:5] + SHORTHANDS), st.lists(st.text(ASCII_ALPHABET, max_size=6),
                                                    min_size=1, max_size=8))
def test_shorthands_agree_with_re_on_ascii(pattern, texts):
    r = NfaRecognizer(regex_expr(pattern))
    for t in texts:
        assert matches(r, t.encode()) == (re.fullmatch(pattern, t) is not None), (pattern, t)


def _viable_chars(pattern, data: bytes) -> bool:
    """Oracle: some completion of the bytes matches (regex's partial matching over characters;
    a dangling partial character must be finished by a character of ALPHABET)."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            head = data[:cut].decode()
        except UnicodeDecodeError:
            continue
        tail = data[cut:]
        cands = [head] if not tail else [head + c for c in ALPHABET if c.encode().startswith(tail)
                                         and c.encode() != tail]
        return any(regex_module.fullmatch(pattern, c, partial=True) for c in cands)
    return False


@settings(max_examples=200, deadline=None)
@given(_patterns([p for p in LEAVES if p not in ("[^a]", ".")]), st.text(ALPHABET, max_size=5),
       st.integers(0, 3))
def test_prefix_states_are_exactly_the_viable_prefixes(pattern, t, chop):
    """A byte prefix (possibly ending inside a character) has a state iff it can be completed."""
    data = t.encode()
    data = data[:max(len(data) - chop, 0)]
    r = NfaRecognizer(regex_expr(pattern))
    assert (feed(r, r.start, data) is not None) == _viable_chars(pattern, data), (pattern, data)


def test_search_semantics_for_json_schema_patterns():
    r = NfaRecognizer(regex_expr("b+c|^x", search=True))
    assert [matches(r, s) for s in (b"abbc!", b"xyz", b"yx", b"ac")] == [True, True, False, False]


def test_escapes_and_classes():
    r = NfaRecognizer(regex_expr(r"\x41\u00e9[\]\-a]\.\\\{x{"))
    assert matches(r, "Aé-.\\{x{".encode()) and matches(r, "Aé].\\{x{".encode())
    assert not matches(r, "Aé-x\\{x{".encode())


def test_negated_classes_exclude_unicode_digits_and_spaces():
    r = NfaRecognizer(regex_expr(r"\D\S"))
    assert matches(r, b"ab") and not matches(r, "٣b".encode()) and not matches(r, "a\u3000".encode())


@pytest.mark.parametrize("pattern, words", [
    (r"(a)\1", "backreferences"), (r"(?=a)a", "lookaround"), (r"(?<!a)b", "lookaround"),
    (r"\bword", "word boundaries"), (r"(?i)abc", "group syntax"), (r"a++", "possessive"),
    (r"a**", "multiple repeat"), (r"(ab", "missing ')'"), (r"ab)", "unbalanced"),
    (r"[abc", "unterminated character class"), (r"a^b", "anchor"), (r"*a", "nothing to repeat"),
    (r"a{3,1}", "min repeat greater"), (r"[z-a]", "bad character range"), ("ab\\", "lone backslash"),
    (r"\p{L}", "Unicode properties"), (r"\q", "unknown escape"), (r"a{1,100000}", "10000"),
])
def test_unsupported_or_bad_regex_is_a_config_error(pattern, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        regex_expr(pattern)


def test_empty_language_is_refused():
    with pytest.raises(ConfigError, match="empty"):
        NfaRecognizer(regex_expr("[^\\x00-\\U0010ffff]"))
