"""Regular expressions (the subset JSON Schema patterns and users write) into the grammar IR.

A recursive-descent parser for: literals; escapes (\\d \\w \\s \\D \\W \\S, \\n \\t \\r \\f \\v,
\\xHH \\uHHHH \\UHHHHHHHH, an escaped punctuation character); classes [...] with ranges and
negation; `.`; groups (capturing, (?:...), (?P<name>...), (?<name>...)); alternation; the
quantifiers * + ? {m} {m,} {m,n} {,n}, each optionally lazy (a trailing ?, the same language);
and the anchors ^ and $ at the start and end of a top-level alternative. Backreferences,
lookaround, word boundaries, inline flags, possessive quantifiers and Unicode properties are
refused by name (ConfigError). `{` that does not start a quantifier is a literal, as in Python.

The result is an expression of code-point classes compiled to UTF-8 bytes (`grammar.chars`, or
a caller's `encode`: json_strings.py writes each character as it appears inside a JSON string),
which nfa.py turns into an automaton and grammars embed as a rule. Semantics is full match: the
whole output matches. `search=True` (JSON Schema's `pattern`) matches anywhere: an alternative
not anchored with ^ or $ gets any text before or after it.

Classes are chosen so that every output matches under both Python's `re` (what the `jsonschema`
package checks with) and ECMA-262 (what JSON Schema names): in a positive position \\d, \\w, \\s
are ASCII ([0-9], [A-Za-z0-9_], [ \\t\\n\\r\\f\\v]) and `.` is any character but the line
terminators \\n \\r U+2028 U+2029; a negated class (\\D, [^\\d], ...) excludes the Unicode
digits, word characters or spaces of either semantics.

    >>> from lmstack.infer.structured.nfa import NfaRecognizer
    >>> from lmstack.infer.structured.recognizer import matches
    >>> r = NfaRecognizer(regex_expr(r"^(?:[a-c]\\d{2,3}|x+)$"))
    >>> [matches(r, s) for s in (b"a12", b"b1234", b"xxx", b"")]
    [True, False, True, False]
    >>> regex_expr(r"(a)\\1")
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: regex '(a)\\\\1' at 3: backreferences (\\1) are not supported

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/regex.py
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from lmstack.errors import ConfigError
from lmstack.infer.structured.grammar import Expr, alt, chars, repeat, seq
from lmstack.infer.structured.utf8 import MAX_CODE_POINT, complement, normalize

Ranges = list[tuple[int, int]]
Encode = Callable[[Ranges], Expr]

_ASCII = {"d": [(0x30, 0x39)], "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
          "s": [(0x09, 0x0D), (0x20, 0x20)]}
_ECMA_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
               (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
               (0xFEFF, 0xFEFF)]
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_REFUSED_ESCAPES = {"b": "word boundaries (\\b)", "B": "word boundaries (\\B)",
                    "A": "the anchor \\A (use ^)", "Z": "the anchor \\Z (use $)",
                    "z": "the anchor \\z (use $)", "p": "Unicode properties (\\p{...})",
                    "P": "Unicode properties (\\P{...})", "k": "backreferences (\\k<name>)",
                    "G": "\\G", "c": "control escapes (\\c)"}
DOT = [(0, 0x09), (0x0B, 0x0C), (0x0E, 0x2027), (0x202A, MAX_CODE_POINT)]


@cache
def _unicode_class(letter: str) -> tuple[tuple[int, int], ...]:
    """Code points in \\d, \\w or \\s under Python's re or ECMA-262, whichever is larger."""
    test = {"d": lambda c: c.isdecimal(), "w": lambda c: c.isalnum() or c == "_",
            "s": lambda c: c.isspace()}[letter]
    found = [(c, c) for c in range(MAX_CODE_POINT + 1) if not 0xD800 <= c <= 0xDFFF
             and test(chr(c))]
    return tuple(normalize(found + (_ECMA_SPACE if letter == "s" else [])))


def shorthand(letter: str, negated_context: bool) -> Ranges:
    """The code points of \\d \\w \\s \\D \\W \\S: the safe set for where it stands (module doc)."""
    small = _ASCII[letter.lower()]
    if letter.islower() != negated_context:  # \d outside a negation, \D inside one: ASCII
        return small if letter.islower() else complement(small)
    big = list(_unicode_class(letter.lower()))  # built once, ~0.15 s: only where needed
    return big if letter.islower() else complement(big)


def regex_expr(pattern: str, *, search: bool = False, encode: Encode = chars) -> Expr:
    """The expression of `pattern` (full match; `search`: anywhere, see the module doc)."""
    return _Parser(pattern, encode).parse(search)


class _Parser:
    """Recursive descent over the pattern; `pos` indexes the next character."""

    def __init__(self, pattern: str, encode: Encode) -> None:
        self.p, self.pos, self.encode = pattern, 0, encode

    def error(self, what: str, at: int | None = None) -> ConfigError:
        return ConfigError(f"regex {self.p!r} at {self.pos if at is None else at}: {what}")

    def peek(self, n: int = 1) -> str:
        return self.p[self.pos:self.pos + n]

    def parse(self, search: bool) -> Expr:
        """Top level: alternatives, each with its own anchors."""
        branches = []
        while True:
            start = self.peek() == "^"
            self.pos += start
            body = self.sequence(top=True)
            end = self.peek() == "$"
            self.pos += end
            if search:
                anything = repeat(self.encode([(0, MAX_CODE_POINT)]), 0, None)
                body = seq(*([] if start else [anything]), body, *([] if end else [anything]))
            branches.append(body)
            if self.peek() != "|":
                break
            self.pos += 1
        if self.pos < len(self.p):
            raise self.error("unbalanced ')'" if self.peek() == ")" else
                             f"anchor {self.peek()!r} is only supported at the start or end")
        return alt(*branches)

    def alternation(self) -> Expr:
        """a|b|c inside a group."""
        branches = [self.sequence(top=False)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence(top=False))
        return alt(*branches)

    def sequence(self, top: bool) -> Expr:
        """Quantified atoms up to |, ) or the end (or a final $ at the top level)."""
        items = []
        while self.pos < len(self.p) and self.peek() not in "|)":
            if self.peek() in "^$":
                if top and self.peek() == "$" and self.peek(2)[1:] in ("", "|"):
                    break  # the anchor at the end of a top-level alternative
                raise self.error(f"anchor {self.peek()!r} is only supported at the start or end")
            items.append(self.quantified(self.atom()))
        return seq(*items)

    def atom(self) -> Expr:
        c = self.peek()
        if c in "*+?":
            raise self.error(f"nothing to repeat before {c!r}")
        if c == "{" and self._quantifier_at(self.pos):
            raise self.error("nothing to repeat before '{'")
        self.pos += 1
        if c == "(":
            return self.group()
        if c == "[":
            return self.encode(self.char_class())
        if c == ".":
            return self.encode(DOT)
        code = self.escape(negated_context=False) if c == "\\" else ord(c)
        return self.encode([(code, code)] if isinstance(code, int) else code)

    def group(self) -> Expr:
        """After '(': the group's kind, its alternation, and ')'."""
        start = self.pos - 1
        if self.peek() == "?":
            kind = self.p[self.pos:self.pos + 3]
            if kind.startswith("?:"):
                self.pos += 2
            elif kind in ("?P<", "?<") or kind.startswith("?<") and kind[2:3] not in "=!":
                close = self.p.find(">", self.pos)
                if close < 0:
                    raise self.error("unterminated group name")
                self.pos = close + 1
            else:
                raise self.error(self._refused_group(kind), start)
        inner = self.alternation()
        if self.peek() != ")":
            raise self.error("missing ')'", start)
        self.pos += 1
        return inner

    @staticmethod
    def _refused_group(kind: str) -> str:
        if kind[:2] in ("?=", "?!") or kind in ("?<=", "?<!"):
            return "lookaround assertions are not supported"
        if kind.startswith("?P="):
            return "backreferences ((?P=name)) are not supported"
        return f"the group syntax '({kind}' (inline flags, comments, ...) is not supported"

    def quantified(self, item: Expr) -> Expr:
        """item followed by any quantifiers."""
        c = self.peek()
        if c in ("*", "+", "?"):
            self.pos += 1
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        elif c == "{" and self._quantifier_at(self.pos):
            lo, hi = self._braces()
        else:
            return item
        if self.peek() == "?":  # lazy: the same set of full matches
            self.pos += 1
        if self.peek() == "+":
            raise self.error("possessive quantifiers are not supported")
        if self.peek() in ("*", "?") or self.peek() == "{" and self._quantifier_at(self.pos):
            raise self.error("multiple repeat")
        return repeat(item, lo, hi)

    def _quantifier_at(self, i: int) -> bool:
        close = self.p.find("}", i)
        if close < 0:
            return False
        body = self.p[i + 1:close]
        lo, comma, hi = body.partition(",")
        return (lo.isdigit() or (comma and lo == "" and hi.isdigit())) and (hi == "" or hi.isdigit())

    def _braces(self) -> tuple[int, int | None]:
        close = self.p.find("}", self.pos)
        lo, comma, hi = self.p[self.pos + 1:close].partition(",")
        self.pos = close + 1
        low = int(lo) if lo else 0
        high = (int(hi) if hi else None) if comma else low
        if high is not None and high < low:
            raise self.error(f"min repeat greater than max repeat in {{{lo},{hi}}}")
        return low, high

    def char_class(self) -> Ranges:
        """After '[': ranges up to the closing ']' (a ']' first is a literal)."""
        start = self.pos - 1
        negate = self.peek() == "^"
        self.pos += negate
        ranges: Ranges = []
        first = True
        while first or self.peek() != "]":
            if self.pos >= len(self.p):
                raise self.error("unterminated character class", start)
            first = False
            lo = self.class_atom(negate)
            if isinstance(lo, list):  # a shorthand such as \\d
                ranges += lo
                continue
            if self.peek() == "-" and self.peek(2)[1:] not in ("", "]"):
                self.pos += 1
                hi = self.class_atom(negate)
                if isinstance(hi, list) or hi < lo:
                    raise self.error("bad character range")
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        self.pos += 1
        return complement(ranges) if negate else normalize(ranges)

    def class_atom(self, negated: bool) -> int | Ranges:
        """One class member: a code point, or the ranges of a shorthand escape."""
        c = self.peek()
        self.pos += 1
        return self.escape(negated, in_class=True) if c == "\\" else ord(c)

    def escape(self, negated_context: bool, in_class: bool = False) -> int | Ranges:
        """After '\\': the code point it stands for, or a shorthand's ranges."""
        at = self.pos - 1
        if self.pos >= len(self.p):
            raise self.error("the pattern ends with a lone backslash", at)
        c = self.peek()
        self.pos += 1
        if c in "dwsDWS":
            return shorthand(c, negated_context)
        if c in _SIMPLE_ESCAPES:
            return ord(_SIMPLE_ESCAPES[c])
        if c == "b" and in_class:
            return 8  # backspace
        if c in "xuU":
            return self._hex({"x": 2, "u": 4, "U": 8}[c], at)
        if c.isdigit():
            raise self.error(f"backreferences (\\{c}) are not supported", at)
        if c in _REFUSED_ESCAPES:
            raise self.error(f"{_REFUSED_ESCAPES[c]} are not supported" if c in "bBpPk"
                             else f"{_REFUSED_ESCAPES[c]} is not supported", at)
        if c.isascii() and c.isalpha():
            raise self.error(f"unknown escape \\{c}", at)
        return ord(c)

    def _hex(self, n: int, at: int) -> int:
        digits = self.p[self.pos:self.pos + n]
        if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise self.error(f"bad escape: expected {n} hex digits", at)
        self.pos += n
        code = int(digits, 16)
        if code > MAX_CODE_POINT or 0xD800 <= code <= 0xDFFF:
            raise self.error(f"escape \\u{digits} is not a Unicode scalar value", at)
        return code
