"""llama.cpp's GBNF (grammars/README.md of llama.cpp) into the grammar IR.

What is read: rules `name ::= alternatives` (names of letters, digits, '-' and '_'), "literals"
with escapes (\\n \\t \\r \\\\ \\" \\xHH \\uHHHH \\UHHHHHHHH), character classes [a-z] and
[^...] (read by regex.py, so they mean what they mean there), `.` for any character, ( ),
|, the quantifiers * + ? {m} {m,} {m,n}, and # comments. A rule may go on over several lines;
it ends where the next `name ::=` starts a line. The start rule is `root`. Syntax errors give
line and column.

    >>> from lmstack.infer.structured.earley import EarleyRecognizer
    >>> from lmstack.infer.structured.recognizer import matches
    >>> g = parse_gbnf('''
    ... root ::= item ("," item){0,2}   # up to three items
    ... item ::= [a-z]+ | "\\\\u00e9"
    ... ''')
    >>> r = EarleyRecognizer(g.lower())
    >>> matches(r, b"ab,c"), matches(r, "é".encode()), matches(r, b"a,b,c,d")
    (True, True, False)

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/gbnf.py
"""

from __future__ import annotations

import re

from lmstack.errors import ConfigError
from lmstack.infer.structured.grammar import ANY_CHAR, Expr, Grammar
from lmstack.infer.structured.regex import regex_expr
from lmstack.infer.structured.syntax import ExprParser, Source, Token, decode_string, tokenize

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+|\#[^\n]*)
  | (?P<newline>\n)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<cls>\[(?:[^\]\\\n]|\\.)*\])
  | (?P<quant>\{\s*\d*\s*(?:,\s*\d*\s*)?\})
  | (?P<name>[A-Za-z0-9_-]+)
  | (?P<op>::=|[|()?*+.])
""", re.VERBOSE)


def parse_gbnf(source: str) -> Grammar:
    """The grammar of GBNF text; ConfigError (with line and column) for what we cannot read."""
    src = Source("GBNF", source)
    tokens = tokenize(src, _TOKEN, _token)
    parser = ExprParser(src, tokens, define="::=")
    rules: dict[str, Expr] = {}
    while parser.tok.kind != "EOF":
        if not parser.definition_at(parser.i):
            raise src.error(parser.tok.pos, f"expected a rule 'name ::= ...', found "
                                            f"{parser.tok.value!r}")
        name = parser.tok
        if name.value in rules:
            raise src.error(name.pos, f"rule {name.value!r} is defined twice")
        parser.i += 2
        rules[name.value] = parser.alternatives()
        if parser.tok.kind == "OP" and parser.tok.value == ")":
            raise src.error(parser.tok.pos, "unbalanced ')'")
    return Grammar(rules, "root")


def _token(src: Source, kind: str, value: str, pos: int, bol: bool) -> Token:
    if kind == "string":
        return Token("STRING", decode_string(src, pos + 1, value[1:-1]), pos, bol)
    if kind == "cls":
        try:
            return Token("EXPR", regex_expr(value), pos, bol)
        except ConfigError as e:
            raise src.error(pos, str(e)) from None
    if kind == "quant":
        lo, comma, hi = value[1:-1].replace(" ", "").partition(",")
        low = int(lo) if lo else 0
        return Token("QUANT", (low, (int(hi) if hi else None) if comma else low), pos, bol)
    if kind == "name":
        return Token("NAME", value, pos, bol)
    if value == ".":
        return Token("EXPR", ANY_CHAR, pos, bol)
    return Token("OP", value, pos, bol)
