"""A byte-level Thompson NFA for a rule-free expression, run as a lazily built DFA.

Thompson's construction (Thompson 1968; Russ Cox, "Regular Expression Matching Can Be Simple
And Fast", 2007): every node of a grammar expression (grammar.py) without `Ref`s becomes a
fragment between two NFA states joined by epsilon moves; `Bytes` nodes are the only moves that
read input. Regular expressions reach here after their character classes were compiled to UTF-8
byte sequences (utf8.py), so this automaton is over bytes and a token that ends in the middle of
a character leaves it in the middle of that character's byte sequence, exactly.

Simulation is the subset construction done lazily: a recognizer state is the epsilon-closed set
of NFA states, kept only where an accepting state can still be reached (dead states pruned, so
every state is viable), interned so that each distinct set is built once.

    >>> from lmstack.infer.structured.grammar import text, alt, Repeat
    >>> from lmstack.infer.structured.recognizer import matches
    >>> r = NfaRecognizer(Repeat(alt(text("ab"), text("é")), 1, None))
    >>> matches(r, "abéab".encode()), matches(r, "ab\\xc3".encode("latin-1")), matches(r, b"")
    (True, False, False)
"""

from __future__ import annotations

from lmstack.errors import ConfigError
from lmstack.infer.structured.grammar import Alt, Bytes, Expr, Ref, Repeat, Seq
from lmstack.infer.structured.recognizer import LazyRecognizer, State


class Nfa:
    """States 0..n-1; `eps[s]` epsilon targets, `moves[s]` (mask, target) byte moves."""

    def __init__(self, e: Expr) -> None:
        self.eps: list[list[int]] = []
        self.moves: list[list[tuple[int, int]]] = []
        self.start, self.accept = self.new(), self.new()
        self.build(e, self.start, self.accept)

    def new(self) -> int:
        self.eps.append([])
        self.moves.append([])
        return len(self.eps) - 1

    def build(self, e: Expr, a: int, b: int) -> None:
        """Add a fragment that goes from state a to state b reading a string of e."""
        if isinstance(e, Bytes):
            self.moves[a].append((e.mask, b))
        elif isinstance(e, Seq):
            for i, item in enumerate(e.items):
                nxt = b if i == len(e.items) - 1 else self.new()
                self.build(item, a, nxt)
                a = nxt
            if not e.items:
                self.eps[a].append(b)
        elif isinstance(e, Alt):
            for item in e.items:  # fresh ends per branch keep loops from leaking across
                x, y = self.new(), self.new()
                self.eps[a].append(x)
                self.build(item, x, y)
                self.eps[y].append(b)
        elif isinstance(e, Repeat):
            self._repeat(e, a, b)
        elif isinstance(e, Ref):
            raise ConfigError(f"rule {e.name!r}: a regular expression cannot refer to rules")
        else:
            raise TypeError(f"not a grammar expression: {e!r}")

    def _repeat(self, e: Repeat, a: int, b: int) -> None:
        """lo copies of the item, then a loop (hi None) or hi-lo skippable copies."""
        for _ in range(e.lo):
            nxt = self.new()
            self.build(e.item, a, nxt)
            a = nxt
        if e.hi is None:
            x = self.new()
            self.eps[a].append(x)
            self.build(e.item, x, a)
        else:
            for _ in range(e.hi - e.lo):
                self.eps[a].append(b)
                nxt = self.new()
                self.build(e.item, a, nxt)
                a = nxt
        self.eps[a].append(b)

    def live(self) -> set[int]:
        """States from which the accepting state can be reached."""
        back: list[list[int]] = [[] for _ in self.eps]
        for s, targets in enumerate(self.eps):
            for t in targets:
                back[t].append(s)
        for s, moves in enumerate(self.moves):
            for mask, t in moves:
                if mask:
                    back[t].append(s)
        seen, todo = {self.accept}, [self.accept]
        while todo:
            for s in back[todo.pop()]:
                if s not in seen:
                    seen.add(s)
                    todo.append(s)
        return seen


class NfaRecognizer(LazyRecognizer):
    """The lazy DFA of an expression's NFA; ConfigError if the language is empty."""

    def __init__(self, e: Expr) -> None:
        super().__init__()
        self.nfa = Nfa(e)
        self._live = self.nfa.live()
        start = self._state({self.nfa.start})
        if start is None:
            raise ConfigError("no output can satisfy the constraint (the language is empty)")
        self.start: State = start

    def _state(self, seeds: set[int]) -> State | None:
        """The interned state of the live part of the epsilon closure of `seeds`."""
        closed, todo = set(seeds), list(seeds)
        while todo:
            for t in self.nfa.eps[todo.pop()]:
                if t not in closed:
                    closed.add(t)
                    todo.append(t)
        kept = frozenset(s for s in closed if s in self._live)
        mask = 0
        for s in kept:
            for m, t in self.nfa.moves[s]:
                if t in self._live:
                    mask |= m
        return self.intern(kept, self.nfa.accept in kept, mask)

    def _successor(self, state: State, byte: int) -> State | None:
        targets = {t for s in state.content for m, t in self.nfa.moves[s]
                   if (m >> byte) & 1 and t in self._live}
        return self._state(targets) if targets else None
