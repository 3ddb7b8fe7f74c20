"""An incremental Earley recognizer over bytes, its columns hash-consed into lazy states.

Earley (1970), "An efficient context-free parsing algorithm": column i holds the items
(rule, dot, origin) that are consistent with the first i bytes; scanning a byte moves items over
a terminal into column i+1, completion moves the items of the origin column that wait for the
finished nonterminal, and prediction adds the rules of every nonterminal after a dot. Left
recursion and ambiguity need nothing special. Nullable nonterminals follow Aycock and Horspool
(2002), "Practical Earley Parsing": when an item's next symbol is nullable, the item is also
advanced over it at once, so completions never have to look back into the column being built.

Incremental use: a column is immutable once built, so "copy the chart" is keeping a reference
and "roll back" is dropping the newest columns (the matcher keeps a stack of them). Columns are
hash-consed (recognizer.py): an item predicted in the column itself stores origin SELF (None)
instead of the column, and completed items are dropped after they have done their work, so two
columns that will behave the same from here on are the same object. In a left-recursive loop
such as a JSON string's characters the column after each character is the one before it, which
makes steps and masks memoizable like the states of a DFA.

Every item is viable: the grammar was pruned of unproductive rules (grammar.py), and every item
is reachable from the start by construction, so each one extends to a complete parse.

    >>> from lmstack.infer.structured.grammar import Grammar, Alt, Seq, Ref, text
    >>> from lmstack.infer.structured.recognizer import matches
    >>> g = Grammar({"start": Alt((Seq((Ref("start"), text("+"), text("1"))), text("1")))})
    >>> r = EarleyRecognizer(g.lower())
    >>> matches(r, b"1+1+1"), matches(r, b"1+"), r.step(r.start, ord("+"))
    (True, False, None)
"""

from __future__ import annotations

from lmstack.infer.structured.grammar import Bnf, Bytes
from lmstack.infer.structured.recognizer import LazyRecognizer, State

SELF = None  # origin of an item predicted in the very column that holds it

Item = tuple[int, int, "State | None"]  # (rule index, dot, origin column or SELF)


class Column:
    """The hashable content of an Earley state: its pending items, and two indexes of them."""

    __slots__ = ("_hash", "accepting", "items", "scans", "waiting")

    def __init__(self, items: frozenset, accepting: bool, bnf: Bnf) -> None:
        self.items = items
        self.accepting = accepting
        self._hash = hash((items, accepting))
        self.scans: list[tuple[int, Item]] = []  # (byte mask, item whose next symbol it is)
        self.waiting: dict[int, list[Item]] = {}  # nonterminal -> items with it after the dot
        for item in items:
            sym = bnf.rules[item[0]][1][item[1]]
            if isinstance(sym, Bytes):
                self.scans.append((sym.mask, item))
            else:
                self.waiting.setdefault(sym, []).append(item)

    def __eq__(self, other) -> bool:
        return isinstance(other, Column) and self.accepting == other.accepting \
            and self.items == other.items

    def __hash__(self) -> int:
        return self._hash


class EarleyRecognizer(LazyRecognizer):
    """Earley's recognizer for a pruned BNF (Grammar.lower()); states hold Columns."""

    def __init__(self, bnf: Bnf) -> None:
        super().__init__()
        self.bnf = bnf
        self.nullable = _nullable(bnf)
        (start_rule,) = bnf.by_lhs[bnf.start]
        start = self._column([(start_rule, 0, SELF)])
        assert start is not None, "a pruned grammar always has a viable start"
        self.start: State = start

    def _successor(self, state: State, byte: int) -> State | None:
        """Scan `byte`, then close the new column."""
        column: Column = state.content
        kernel = [(r, d + 1, state if o is SELF else o)
                  for mask, (r, d, o) in column.scans if (mask >> byte) & 1]
        return self._column(kernel) if kernel else None

    def _column(self, kernel: list[Item]) -> State | None:
        """Predict and complete from the kernel items; intern the resulting column."""
        rules, by_lhs, nullable, start = self.bnf.rules, self.bnf.by_lhs, self.nullable, self.bnf.start
        seen: set[Item] = set()
        pending: list[Item] = []
        accepting = False
        agenda = list(kernel)
        while agenda:
            item = agenda.pop()
            if item in seen:
                continue
            seen.add(item)
            r, dot, origin = item
            lhs, rhs = rules[r]
            if dot == len(rhs):  # complete: advance what waited for lhs at the origin
                accepting = accepting or lhs == start
                if origin is not SELF:  # SELF: lhs derived '' here, done at prediction (A&H)
                    col: Column = origin.content
                    agenda.extend((r2, d2 + 1, origin if o2 is SELF else o2)
                                  for r2, d2, o2 in col.waiting.get(lhs, ()))
                continue
            pending.append(item)
            sym = rhs[dot]
            if not isinstance(sym, Bytes):  # predict, and step over a nullable symbol
                agenda.extend((r2, 0, SELF) for r2 in by_lhs.get(sym, ()))
                if sym in nullable:
                    agenda.append((r, dot + 1, origin))
        column = Column(frozenset(pending), accepting, self.bnf)
        mask = 0
        for m, _ in column.scans:
            mask |= m
        return self.intern(column, accepting, mask)


def _nullable(bnf: Bnf) -> set[int]:
    """Nonterminals that derive the empty string."""
    nullable: set[int] = set()
    changed = True
    while changed:
        changed = False
        for lhs, rhs in bnf.rules:
            if lhs not in nullable and all(not isinstance(s, Bytes) and s in nullable for s in rhs):
                nullable.add(lhs)
                changed = True
    return nullable
