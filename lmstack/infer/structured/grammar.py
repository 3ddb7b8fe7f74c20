"""The grammar IR every front-end compiles to: rules of expressions over BYTES.

An expression is one of five frozen nodes:

    Bytes(mask)          one byte from a set (bit b of the 256-bit int `mask` set: byte b allowed)
    Seq(items)           the items one after another; Seq(()) is the empty string
    Alt(items)           any one of the items; Alt(()) matches nothing
    Repeat(item, lo, hi) item between lo and hi times (hi None: no upper bound)
    Ref(name)            the rule called `name`

A `Grammar` is a dict of named rules and a start name, like the EBNF of ISO 14977 with terminals
cut down to single bytes. Characters are not a separate notion: `chars()` compiles a set of code
points into the alternatives of their UTF-8 byte sequences (utf8.py), so a token that ends in the
middle of a character is checked exactly, byte by byte. Every node has a direct EBNF spelling
(a byte set is a class of \\xHH bytes), so a `to_lark()` emitter can print the same language.

`Grammar.lower()` checks the grammar and flattens it into plain BNF for the Earley recognizer:
a rule that is referenced but not defined is an error naming it; rules that derive no string at
all (unproductive) are dropped, and if the start rule is one of them the language is empty,
which is an error before any decoding; rules not reachable from the start are ignored.

    >>> g = Grammar({"start": Seq((literal(b"a"), Repeat(Ref("b"), 0, None))), "b": chars([(0x62, 0x63)])})
    >>> bnf = g.lower()
    >>> len(bnf.rules) > 0 and bnf.start == 0
    True
    >>> Grammar({"start": Ref("nope")}).lower()
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: the grammar uses rule 'nope' but never defines it (referenced from 'start')

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/grammar.py
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmstack.errors import ConfigError
from lmstack.infer.structured.utf8 import complement, utf8_sequences


@dataclass(frozen=True)
class Bytes:
    """One byte out of a set: bit b of `mask` is set iff byte b is allowed."""

    mask: int

    @classmethod
    def range(cls, lo: int, hi: int) -> Bytes:
        """The bytes lo..hi inclusive."""
        return cls(((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1))

    def __contains__(self, byte: int) -> bool:
        return (self.mask >> byte) & 1 == 1


@dataclass(frozen=True)
class Seq:
    """The items one after another."""

    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Alt:
    """Any one of the items."""

    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Repeat:
    """`item` between `lo` and `hi` times (hi None: unbounded)."""

    item: Expr
    lo: int
    hi: int | None


@dataclass(frozen=True)
class Ref:
    """The rule called `name`."""

    name: str


Expr = Bytes | Seq | Alt | Repeat | Ref
EMPTY = Seq(())
NOTHING = Alt(())
MAX_REPEAT = 10_000  # a larger bound is almost surely a mistake, and its automaton is huge


def seq(*items: Expr) -> Expr:
    """A sequence, flattened: seq(a) is a."""
    flat: list[Expr] = []
    for it in items:
        flat.extend(it.items if isinstance(it, Seq) else (it,))
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def alt(*items: Expr) -> Expr:
    """An alternation, flattened: alt(a) is a."""
    flat: list[Expr] = []
    for it in items:
        flat.extend(it.items if isinstance(it, Alt) else (it,))
    return flat[0] if len(flat) == 1 else Alt(tuple(flat))


def optional(item: Expr) -> Expr:
    """item or nothing."""
    return Repeat(item, 0, 1)


def repeat(item: Expr, lo: int, hi: int | None) -> Expr:
    """item{lo,hi}; ConfigError for a reversed or absurdly large bound."""
    if lo < 0 or (hi is not None and hi < lo):
        raise ConfigError(f"repetition {{{lo},{hi}}}: the bounds must satisfy 0 <= min <= max")
    if max(lo, hi or 0) > MAX_REPEAT:
        raise ConfigError(f"repetition {{{lo},{hi}}}: bounds above {MAX_REPEAT} are not supported")
    return Repeat(item, lo, hi)


def literal(data: bytes) -> Expr:
    """The exact byte string `data`.

    >>> literal(b"ab") == Seq((Bytes(1 << 97), Bytes(1 << 98)))
    True
    """
    return seq(*(Bytes(1 << b) for b in data)) if data else EMPTY


def text(s: str) -> Expr:
    """The UTF-8 bytes of `s`."""
    return literal(s.encode())


def chars(ranges: list[tuple[int, int]], negate: bool = False) -> Expr:
    """One character out of the code-point ranges (or out of all others, `negate`), as bytes.

    >>> chars([(0x61, 0x63)]) == Bytes.range(0x61, 0x63)
    True
    """
    if negate:
        ranges = complement(ranges)
    return alt(*(seq(*(Bytes.range(lo, hi) for lo, hi in s)) for s in utf8_sequences(ranges))) \
        if ranges else NOTHING


ANY_CHAR = chars([(0, 0x10FFFF)])


@dataclass
class Bnf:
    """Flat BNF: rules[i] = (lhs, rhs) with rhs a tuple of symbols, a symbol being a
    nonterminal index (int) or a Bytes; `names[n]` names nonterminal n; `start` is a
    nonterminal with a single rule."""

    rules: list[tuple[int, tuple[int | Bytes, ...]]]
    names: list[str]
    start: int
    by_lhs: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class Grammar:
    """Named rules of expressions; `start` names the rule the whole output must match."""

    rules: dict[str, Expr]
    start: str = "start"

    def check(self) -> None:
        """ConfigError for an undefined start or a referenced but undefined rule."""
        if self.start not in self.rules:
            raise ConfigError(f"the grammar has no start rule {self.start!r}; define it")
        for name in self.reachable():
            for ref in _refs(self.rules[name]):
                if ref not in self.rules:
                    raise ConfigError(f"the grammar uses rule {ref!r} but never defines it "
                                      f"(referenced from {name!r})")

    def reachable(self) -> list[str]:
        """Rule names reachable from the start (defined ones only), in discovery order."""
        seen, todo = [self.start], [self.start]
        while todo:
            for ref in _refs(self.rules[todo.pop()]):
                if ref in self.rules and ref not in seen:
                    seen.append(ref)
                    todo.append(ref)
        return seen

    def lower(self) -> Bnf:
        """Check, then flatten to BNF with unproductive rules removed (see the module doc)."""
        self.check()
        lowering = _Lowering()
        start = lowering.nonterminal("<start>")
        for name in self.reachable():
            lowering.define(lowering.nonterminal(name), self.rules[name])
        lowering.rules.append((start, (lowering.nonterminal(self.start),)))
        return _prune(lowering.rules, lowering.names, start, self.start)


def _refs(e: Expr):
    """Every rule name `e` mentions."""
    if isinstance(e, Ref):
        yield e.name
    elif isinstance(e, (Seq, Alt)):
        for it in e.items:
            yield from _refs(it)
    elif isinstance(e, Repeat):
        yield from _refs(e.item)


class _Lowering:
    """Flattens expressions into BNF rules, naming a helper nonterminal for each inner node."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        self.rules: list[tuple[int, tuple[int | Bytes, ...]]] = []
        self.memo: dict[int, tuple[Expr, int]] = {}  # id(node) -> (node, its nonterminal)

    def nonterminal(self, name: str) -> int:
        if name not in self.ids:
            self.ids[name] = len(self.names)
            self.names.append(name)
        return self.ids[name]

    def define(self, lhs: int, e: Expr) -> None:
        """Rules lhs -> each alternative of e."""
        for branch in (e.items if isinstance(e, Alt) else (e,)):
            self.rules.append((lhs, self.symbols(branch)))

    def symbols(self, e: Expr) -> tuple[int | Bytes, ...]:
        """The right-hand side for e: a Seq's items in turn, anything else as one symbol."""
        return tuple(self.symbol(it) for it in e.items) if isinstance(e, Seq) else (self.symbol(e),)

    def symbol(self, e: Expr) -> int | Bytes:
        if isinstance(e, Bytes):
            return e
        if isinstance(e, Ref):
            return self.nonterminal(e.name)
        if id(e) in self.memo:  # a node shared in the tree gets one nonterminal
            return self.memo[id(e)][1]
        n = self.nonterminal(f"<{len(self.names)}>")
        self.memo[id(e)] = (e, n)
        if isinstance(e, Repeat):
            self._repeat(n, e)
        else:
            self.define(n, e)
        return n

    def _repeat(self, n: int, e: Repeat) -> None:
        """item{lo,hi}: lo copies, then a LEFT-recursive star (constant-size Earley columns)
        or a chain of hi-lo nested optionals."""
        item = self.symbol(e.item)
        head = (item,) * e.lo
        if e.hi is None:
            star = self.nonterminal(f"<{len(self.names)}*>")
            self.rules += [(star, ()), (star, (star, item))]
            self.rules.append((n, head + (star,)))
            return
        tail: tuple[int | Bytes, ...] = ()
        for _ in range(e.hi - e.lo):  # opt_k -> '' | item opt_{k-1}
            opt = self.nonterminal(f"<{len(self.names)}?>")
            self.rules += [(opt, ()), (opt, (item,) + tail)]
            tail = (opt,)
        self.rules.append((n, head + tail))


def _prune(rules, names, start: int, start_name: str) -> Bnf:
    """Drop rules using an unproductive symbol; ConfigError if the start is unproductive."""
    productive: set[int] = set()
    changed = True
    while changed:
        changed = False
        for lhs, rhs in rules:
            if lhs not in productive and all(
                    (s.mask != 0) if isinstance(s, Bytes) else s in productive for s in rhs):
                productive.add(lhs)
                changed = True
    if start not in productive:
        raise ConfigError(f"no output can satisfy the constraint: rule {start_name!r} derives no "
                          "string at all (the language is empty)")
    kept = [(lhs, rhs) for lhs, rhs in rules if lhs in productive and all(
        s.mask != 0 if isinstance(s, Bytes) else s in productive for s in rhs)]
    by_lhs: dict[int, list[int]] = {}
    for i, (lhs, _) in enumerate(kept):
        by_lhs.setdefault(lhs, []).append(i)
    return Bnf(kept, names, start, by_lhs)
