"""The lexical pieces of JSON (RFC 8259) as grammar expressions: strings, numbers, integer
ranges, string formats, and regular expressions over the characters of a JSON string.

Strings. A character of a plain string is any code point but '"', '\\\\', the controls
U+0000-U+001F and DEL (U+007F) written raw (UTF-8), or an escape: \\" \\\\ \\b \\f \\n \\r \\t or
\\u and four hex digits. RFC 8259 also allows a raw DEL and \\/; we never write them, as the fast engine
(llguidance) does not, so that both engines generate one language. A surrogate escape is allowed
only as a high-low pair, so every unit of the string (a character, an escape, a pair) is exactly
one code point and minLength/maxLength (which count code points) are exact. Where the characters
are constrained (`pattern`, `format`, keys not to clash with declared properties) a character is
written raw if it may be, else, as llguidance writes it: '"' and '\\\\' as \\" and \\\\, a control
or DEL as its short escape (\\b \\f \\n \\r \\t) or as \\u00XX with hex digits of either case.

Numbers: -?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)? (RFC 8259). Integers: 0 or -?[1-9][0-9]*
(no -0).
An integer range [lo, hi] is an exact grammar of its decimal strings, built digit by digit
(the classic range-to-regex construction): 42..317 is 4[2-9] | [5-9][0-9] | [1-2][0-9]{2} |
3(0[0-9] | 1[0-7]).

    >>> from lmstack.infer.structured.nfa import NfaRecognizer
    >>> from lmstack.infer.structured.recognizer import matches
    >>> r = NfaRecognizer(integer_range(-12, 317))
    >>> [n for n in range(-20, 400) if matches(r, str(n).encode())] == list(range(-12, 318))
    True
    >>> matches(NfaRecognizer(string_expr()), '"a\\\\u00e9\\\\n"'.encode())
    True

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/json_lexemes.py
"""

from __future__ import annotations

from lmstack.errors import ConfigError
from lmstack.infer.structured.grammar import (
    EMPTY,
    NOTHING,
    Bytes,
    Expr,
    alt,
    chars,
    literal,
    optional,
    repeat,
    seq,
    text,
)
from lmstack.infer.structured.regex import Ranges, regex_expr
from lmstack.infer.structured.utf8 import complement

_MUST_ESCAPE = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]  # RFC 8259
_NOT_RAW = [*_MUST_ESCAPE, (0x7F, 0x7F)]  # and DEL, which llguidance never writes raw
_SHORT = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r",
          0x09: "\\t"}
_ESCAPED = [*range(0x20), 0x22, 0x5C, 0x7F]
DIGIT = Bytes.range(0x30, 0x39)
NONZERO = Bytes.range(0x31, 0x39)
_HEX = alt(DIGIT, Bytes.range(0x41, 0x46), Bytes.range(0x61, 0x66))
_HEX_NO_D = alt(DIGIT, Bytes.range(0x41, 0x43), Bytes.range(0x61, 0x63), literal(b"E"),
                literal(b"F"), literal(b"e"), literal(b"f"))
_NOT_SURROGATE = alt(seq(_HEX_NO_D, _HEX, _HEX, _HEX),
                     seq(alt(literal(b"d"), literal(b"D")), Bytes.range(0x30, 0x37), _HEX, _HEX))
RAW_CHAR = chars(_NOT_RAW, negate=True)
_D = alt(literal(b"d"), literal(b"D"))
_PAIR = seq(_D, alt(Bytes.range(0x38, 0x39), Bytes.range(0x41, 0x42), Bytes.range(0x61, 0x62)),
            _HEX, _HEX, literal(b"\\u"), _D, alt(Bytes.range(0x43, 0x46), Bytes.range(0x63, 0x66)),
            _HEX, _HEX)  # \uD800-\uDBFF then \uDC00-\uDFFF: one code point above U+FFFF
ESCAPE = seq(literal(b"\\"), alt(*(literal(c.encode()) for c in '"\\bfnrt'),
                                 seq(literal(b"u"), alt(_NOT_SURROGATE, _PAIR))))
STRING_CHAR = alt(RAW_CHAR, ESCAPE)


def string_expr(min_length: int = 0, max_length: int | None = None) -> Expr:
    """A JSON string of min_length..max_length characters."""
    return seq(literal(b'"'), repeat(STRING_CHAR, min_length, max_length), literal(b'"'))


def json_chars(ranges: Ranges) -> Expr:
    """One character of `ranges` as written inside a JSON string (module doc)."""
    raw = complement(complement(ranges) + _NOT_RAW)  # ranges minus what is never raw
    forced = [c for c in _ESCAPED if any(lo <= c <= hi for lo, hi in ranges)]
    return alt(chars(raw), *(_escapes(c) for c in forced))


def _escapes(c: int) -> Expr:
    """The escapes of a character that is never raw: \\" or \\\\, else its short escape if
    it has one or \\u00XX, the hex digits in either case."""
    if c in (0x22, 0x5C):
        return text(_SHORT[c])
    hex_pair = seq(*(alt(*(text(d) for d in sorted({f"{n:x}", f"{n:X}"}))) for n in (c >> 4, c & 15)))
    return alt(*([text(_SHORT[c])] if c in _SHORT else []), seq(text("\\u00"), hex_pair))


def pattern_string(pattern: str) -> Expr:
    """A JSON string whose value contains a match of `pattern` (JSON Schema's `pattern`)."""
    return seq(literal(b'"'), regex_expr(pattern, search=True, encode=json_chars), literal(b'"'))


def number_expr() -> Expr:
    """Any JSON number."""
    fraction = seq(literal(b"."), repeat(DIGIT, 1, None))
    exponent = seq(alt(literal(b"e"), literal(b"E")), optional(alt(literal(b"+"), literal(b"-"))),
                   repeat(DIGIT, 1, None))
    return seq(optional(literal(b"-")), _naturals(0, None), optional(fraction), optional(exponent))


def integer_range(lo: int | None, hi: int | None) -> Expr:
    """The decimal strings of the integers in [lo, hi] (None: unbounded on that side); NOTHING
    when the range is empty (a grammar check reports it if nothing else can be written)."""
    if lo is not None and hi is not None and lo > hi:
        return NOTHING
    parts = []
    if lo is None or lo < 0:  # the negatives: '-' and a magnitude in [-min(hi, -1), -lo]
        top = -1 if hi is None or hi >= 0 else hi
        parts.append(seq(literal(b"-"), _naturals(-top, None if lo is None else -lo)))
    if hi is None or hi >= 0:
        parts.append(_naturals(0 if lo is None else max(lo, 0), hi))
    return alt(*parts)


def _naturals(a: int, b: int | None) -> Expr:
    """Decimal strings (no leading zeros) of a..b, a >= 0 (b None: unbounded)."""
    if b is None:
        k = len(str(a))  # every number with more digits than a is above it
        return alt(_naturals(a, 10 ** k - 1), seq(NONZERO, repeat(DIGIT, k, None)))
    parts = []
    for n in range(len(str(a)), len(str(b)) + 1):
        lo_n, hi_n = max(a, 10 ** (n - 1) if n > 1 else 0), min(b, 10 ** n - 1)
        parts.append(_same_length(str(lo_n), str(hi_n)))
    return alt(*parts)


def _same_length(x: str, y: str) -> Expr:
    """Digit strings from x to y, both of the same length."""
    if not x:
        return EMPTY
    x0, y0, rest = int(x[0]), int(y[0]), len(x) - 1
    if x0 == y0:
        return seq(text(x[0]), _same_length(x[1:], y[1:]))
    if x[1:] == "0" * rest and y[1:] == "9" * rest:
        return seq(Bytes.range(0x30 + x0, 0x30 + y0), repeat(DIGIT, rest, rest))
    parts = [seq(text(x[0]), _same_length(x[1:], "9" * rest))]
    if x0 + 1 <= y0 - 1:
        parts.append(seq(Bytes.range(0x31 + x0, 0x2F + y0), repeat(DIGIT, rest, rest)))
    parts.append(seq(text(y[0]), _same_length("0" * rest, y[1:])))
    return alt(*parts)


# Formats (JSON Schema 2020-12, section 7.3), as our own regular expressions over ASCII.
# date: RFC 3339 full-date, years 0001-9999, days checked against the month, February 29 in
# leap years only (divisible by 4, centuries by 400), so Python's date.fromisoformat takes it.
_YEAR = r"(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = (rf"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
         r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
         rf"|{_LEAP}-02-29)")
# time: RFC 3339 full-time with upper-case T and Z only; seconds up to 59 (no leap second).
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
FORMATS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": _DATE + "T" + _TIME,
    # email: an RFC 5322 dot-atom local part and a dotted host name of two labels or more
    "email": rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}


def format_string(name: str) -> Expr:
    """A JSON string in the format `name`; ConfigError for a format we do not enforce."""
    if name not in FORMATS:
        raise ConfigError(f"JSON Schema format {name!r} is not supported; supported: "
                          f"{', '.join(FORMATS)}")
    return seq(literal(b'"'), regex_expr(FORMATS[name], encode=json_chars), literal(b'"'))
