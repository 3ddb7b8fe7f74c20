"""The EBNF core that the Lark and GBNF front-ends share: tokens and a recursive-descent parser.

Both dialects write a rule as `name <define> alternatives`, alternatives as sequences joined by
'|', and a sequence as items, each an atom (a rule name, a string, a character class, a regex,
a parenthesised group, Lark's [optional]) with postfix quantifiers. The dialect's tokenizer
(lark_grammar.py, gbnf.py) turns text into `Token`s; `ExprParser` turns tokens into grammar
expressions (grammar.py). A rule runs until the next definition (a name and the define operator
first on a line), which is how both dialects let a rule continue over several lines.

Errors are ConfigErrors that give the line and column: `Source.error`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lmstack.errors import ConfigError
from lmstack.infer.structured.grammar import (
    Expr,
    Ref,
    alt,
    chars,
    optional,
    repeat,
    seq,
    text,
)


@dataclass(frozen=True)
class Token:
    """`kind`: NAME, STRING, EXPR (a class or regex, already compiled), NUMBER, OP, DIRECTIVE or
    EOF; `value` its text or Expr; `pos` its offset; `bol` first on its line."""

    kind: str
    value: object
    pos: int
    bol: bool


class Source:
    """Grammar text, for error positions."""

    def __init__(self, dialect: str, text_: str) -> None:
        self.dialect, self.text = dialect, text_

    def error(self, pos: int, what: str) -> ConfigError:
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return ConfigError(f"{self.dialect} grammar, line {line} column {column}: {what}")


def tokenize(src: Source, pattern: re.Pattern,
             make: Callable[[Source, str, str, int, bool], Token]) -> list[Token]:
    """The tokens of `src` by `pattern`'s named groups, `make(src, kind, text, pos, bol)` each
    (bol: first on its line); groups "space" and "newline" separate tokens; EOF last."""
    tokens: list[Token] = []
    pos, bol = 0, True
    while pos < len(src.text):
        m = pattern.match(src.text, pos)
        if m is None:
            raise src.error(pos, f"unexpected character {src.text[pos]!r}")
        kind, value = m.lastgroup, m.group()
        if kind == "newline":
            bol = True
        elif kind != "space":
            tokens.append(make(src, kind, value, pos, bol))
            bol = False
        pos = m.end()
    tokens.append(Token("EOF", None, pos, True))
    return tokens


def decode_string(src: Source, pos: int, body: str) -> str:
    """The value of a quoted literal's body: \\n \\t \\r \\\\ \\" \\' \\xHH \\uHHHH \\UHHHHHHHH."""
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "[": "[",
              "]": "]", "/": "/", "0": "\0", "f": "\f", "v": "\v", "b": "\b", "a": "\a"}
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1:i + 2]
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e in ("x", "u", "U"):
            n = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2:i + 2 + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise src.error(pos + i, f"bad escape \\{e}: expected {n} hex digits")
            out.append(chr(int(digits, 16)))
            i += 2 + n
        else:
            raise src.error(pos + i, f"unknown escape \\{e} in a string")
    return "".join(out)


class ExprParser:
    """Alternatives, sequences and items over a token list; the dialect gives `quantifier`."""

    def __init__(self, src: Source, tokens: list[Token], define: str) -> None:
        self.src, self.toks, self.i, self.define = src, tokens, 0, define

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def is_op(self, value: str, offset: int = 0) -> bool:
        t = self.toks[min(self.i + offset, len(self.toks) - 1)]
        return t.kind == "OP" and t.value == value

    def expect(self, value: str) -> None:
        if not self.is_op(value):
            raise self.src.error(self.tok.pos, f"expected {value!r}, found {self._show(self.tok)}")
        self.i += 1

    @staticmethod
    def _show(t: Token) -> str:
        return "the end of the grammar" if t.kind == "EOF" else repr(t.value) \
            if t.kind != "EXPR" else "a character class"

    def definition_at(self, i: int) -> int:
        """Tokens a definition header takes at index i (prefix ?/!, name, define op), else 0."""
        t = self.toks[i]
        if not t.bol:
            return 0
        skip = 1 if t.kind == "OP" and t.value in ("?", "!") else 0
        j = i + skip
        if j + 1 < len(self.toks) and self.toks[j].kind == "NAME":
            nxt = self.toks[j + 1]
            if nxt.kind == "OP" and nxt.value == self.define:
                return skip + 2
        return 0

    def alternatives(self) -> Expr:
        """sequence ('|' sequence)*"""
        branches = [self.sequence()]
        while self.is_op("|"):
            self.i += 1
            branches.append(self.sequence())
        return alt(*branches)

    def sequence(self) -> Expr:
        items = []
        while not (self.tok.kind in ("EOF", "DIRECTIVE") or self.definition_at(self.i)
                   or self.tok.kind == "OP" and self.tok.value in ("|", ")", "]", "->")):
            items.append(self.quantified(self.atom()))
        if self.is_op("->"):  # Lark alias: names the tree node, no change to the language
            self.i += 2
        return seq(*items)

    def atom(self) -> Expr:
        t = self.tok
        self.i += 1
        if t.kind == "NAME":
            return Ref(t.value)
        if t.kind == "STRING" and self.is_op(".."):  # Lark's "a".."z"
            return self._char_range(t)
        if t.kind == "STRING":
            return text(t.value)
        if t.kind == "EXPR":
            return t.value
        if t.kind == "OP" and t.value == "(":
            inner = self.alternatives()
            self.expect(")")
            return inner
        if t.kind == "OP" and t.value == "[":
            inner = self.alternatives()
            self.expect("]")
            return optional(inner)
        raise self.src.error(t.pos, f"unexpected {self._show(t)}")

    def _char_range(self, lo: Token) -> Expr:
        hi = self.toks[self.i + 1]
        if hi.kind != "STRING" or len(lo.value) != 1 or len(hi.value) != 1 or hi.value < lo.value:
            raise self.src.error(lo.pos, 'a range is two single characters, "a".."z"')
        self.i += 2
        return chars([(ord(lo.value), ord(hi.value))])

    def quantified(self, item: Expr) -> Expr:
        while True:
            t = self.tok
            if t.kind == "OP" and t.value in ("?", "*", "+") and not self.definition_at(self.i):
                self.i += 1
                item = repeat(item, *{"?": (0, 1), "*": (0, None), "+": (1, None)}[t.value])
            elif t.kind == "QUANT":
                self.i += 1
                item = self._bounded(item, t)
            else:
                return item

    def _bounded(self, item: Expr, t: Token) -> Expr:
        lo, hi = t.value
        try:
            return repeat(item, lo, hi)
        except ConfigError as e:
            raise self.src.error(t.pos, str(e)) from None
