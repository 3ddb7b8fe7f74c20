"""Lark-style EBNF (the grammar language of the `lark` parser) into the grammar IR.

What is read: rules `name: a b | c` and terminals `NAME: ...` (with ?/! prefixes and .priority
suffixes, which shape trees, not languages), "strings", "a".."z" character ranges, /regex/
terminals (regex.py, no flags), ( ), [ ] and ? * + for optional and repeated items, item ~ n and
item ~ n..m, `-> alias` (ignored), // comments, and %import common.NAME for the terminals of
lark's common.lark that we write ourselves (COMMON). The start rule is `start`.

Semantics: the grammar is read as a context-free language over characters, with no separate
lexer: an output is allowed when it derives from `start`, so whitespace is only where the rules
put it. %ignore (which needs a lexer between terminals) is refused by name, as are %declare,
%override, %extend, templates and case-insensitive strings. Syntax errors give line and column.

    >>> from lmstack.infer.structured.earley import EarleyRecognizer
    >>> from lmstack.infer.structured.recognizer import matches
    >>> g = parse_lark('''
    ... start: sum
    ... ?sum: sum "+" NUMBER | NUMBER   // left recursive
    ... %import common.NUMBER
    ... ''')
    >>> r = EarleyRecognizer(g.lower())
    >>> matches(r, b"1+2.5+3e4"), matches(r, b"1+")
    (True, False)

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/lark_grammar.py
"""

from __future__ import annotations

import re

from lmstack.errors import ConfigError
from lmstack.infer.structured.grammar import Expr, Grammar
from lmstack.infer.structured.regex import regex_expr
from lmstack.infer.structured.syntax import ExprParser, Source, Token, decode_string, tokenize

# lark's common.lark terminals, as our own regular expressions
COMMON = {
    "DIGIT": r"[0-9]", "HEXDIGIT": r"[a-fA-F0-9]", "INT": r"[0-9]+", "SIGNED_INT": r"[+-]?[0-9]+",
    "DECIMAL": r"[0-9]+\.[0-9]*|\.[0-9]+",
    "FLOAT": r"[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?",
    "NUMBER": r"[0-9]+(?:[eE][+-]?[0-9]+)?|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?",
    "SIGNED_NUMBER": r"[+-]?(?:[0-9]+(?:[eE][+-]?[0-9]+)?|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)",
    "LETTER": r"[A-Za-z]", "LCASE_LETTER": r"[a-z]", "UCASE_LETTER": r"[A-Z]", "WORD": r"[A-Za-z]+",
    "CNAME": r"[A-Za-z_][A-Za-z0-9_]*", "WS": r"[ \t\f\r\n]+", "WS_INLINE": r"[ \t]+",
    "NEWLINE": r"(?:\r?\n)+", "CR": r"\r", "LF": r"\n",
    "ESCAPED_STRING": r'"(?:[^"\\\n]|\\[^\n])*"',
}
_TOKEN = re.compile(r"""
    (?P<space>[ \t\f\r]+|//[^\n]*)
  | (?P<newline>\n)
  | (?P<string>"(?:[^"\\\n]|\\.)*"i?)
  | (?P<regex>/(?:[^/\\\n]|\\.)+/[imslux]*)
  | (?P<directive>%[a-z]+[^\n]*)
  | (?P<range>~\s*\d+(?:\s*\.\.\s*\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.-?\d+)?)
  | (?P<op>->|\.\.|[:|()\[\]?*+!{}])
""", re.VERBOSE)


def parse_lark(source: str) -> Grammar:
    """The grammar of Lark text; ConfigError (with line and column) for what we cannot read."""
    src = Source("Lark", source)
    tokens = tokenize(src, _TOKEN, _token)
    parser = ExprParser(src, tokens, define=":")
    rules: dict[str, Expr] = {}
    while parser.tok.kind != "EOF":
        t = parser.tok
        if t.kind == "DIRECTIVE":
            _directive(src, t, rules)
            parser.i += 1
            continue
        header = parser.definition_at(parser.i)
        if not header:
            raise src.error(t.pos, f"expected a rule definition 'name: ...', found {t.value!r}")
        name_tok = tokens[parser.i + header - 2]
        if name_tok.value in rules:
            raise src.error(name_tok.pos, f"rule {name_tok.value!r} is defined twice")
        parser.i += header
        rules[name_tok.value] = parser.alternatives()
        if parser.tok.kind == "OP" and parser.tok.value in (")", "]"):
            raise src.error(parser.tok.pos, f"unbalanced {parser.tok.value!r}")
    return Grammar(rules, "start")


def _token(src: Source, kind: str, value: str, pos: int, bol: bool) -> Token:
    """One token; strings decoded, regexes compiled, ~ ranges as QUANT (lo, hi)."""
    if kind == "string":
        if value.endswith("i"):
            raise src.error(pos, "case-insensitive strings (\"...\"i) are not supported")
        return Token("STRING", decode_string(src, pos + 1, value[1:-1]), pos, bol)
    if kind == "regex":
        body, flags = value[1:value.rindex("/")], value[value.rindex("/") + 1:]
        if flags:
            raise src.error(pos, f"regex flags {flags!r} are not supported")
        try:
            return Token("EXPR", regex_expr(body.replace("\\/", "/")), pos, bol)
        except ConfigError as e:
            raise src.error(pos, str(e)) from None
    if kind == "range":
        bounds = [int(n) for n in re.findall(r"\d+", value)]
        return Token("QUANT", (bounds[0], bounds[-1]), pos, bol)
    if kind == "name":
        return Token("NAME", value.split(".")[0], pos, bol)  # NAME.2: a priority, dropped
    if kind == "directive":
        return Token("DIRECTIVE", value, pos, bol)
    if value == "{":
        raise src.error(pos, "templates (name{args}) are not supported")
    return Token("OP", value, pos, bol)


def _directive(src: Source, t: Token, rules: dict[str, Expr]) -> None:
    """%import common.NAME / common (A, B); every other directive is refused by name."""
    words = t.value.split()
    if words[0] != "%import":
        why = {"%ignore": "it needs a lexer between terminals: write the whitespace into the "
                          "rules where it may appear"}.get(words[0], "")
        raise src.error(t.pos, f"{words[0]} is not supported" + (f": {why}" if why else ""))
    m = re.fullmatch(r"%import\s+common\s*(?:\.\s*(\w+)(?:\s*->\s*(\w+))?|\(([\w\s,]+)\))\s*",
                     t.value)
    if m is None:
        raise src.error(t.pos, "only '%import common.NAME' and '%import common (A, B)' are "
                               "supported")
    names = [(m.group(1), m.group(2) or m.group(1))] if m.group(1) else \
        [(n.strip(), n.strip()) for n in m.group(3).split(",") if n.strip()]
    for name, alias in names:
        if name not in COMMON:
            raise src.error(t.pos, f"common.{name} is not one of the common terminals we know: "
                                   f"{', '.join(COMMON)}")
        rules[alias] = regex_expr(COMMON[name])

