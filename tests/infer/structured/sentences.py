"""Test helpers: random sentences of a grammar, and the brute-force oracle of a token mask.

`sentence` derives a random string from a lowered grammar (grammar.Bnf), choosing rules at
random until its byte budget is spent and then always the rule with the shortest derivation, so
it ends. `viable` answers "does some completion of these bytes reach an accepting state" by a
breadth-first search over bytes, which checks the recognizers' promise that every state they
return is viable.
"""

from __future__ import annotations

import random

from lmstack.infer.structured.grammar import Bnf, Bytes
from lmstack.infer.structured.recognizer import LazyRecognizer, State, feed


def _shortest(bnf: Bnf) -> dict[int, int]:
    """Nodes in the smallest derivation tree of each nonterminal (choosing the smallest rule
    always shrinks what is left to derive, so the derivation ends)."""
    best: dict[int, int] = {}
    changed = True
    while changed:
        changed = False
        for lhs, rhs in bnf.rules:
            if all(isinstance(s, Bytes) or s in best for s in rhs):
                n = 1 + sum(1 if isinstance(s, Bytes) else best[s] for s in rhs)
                if n < best.get(lhs, 1 << 60):
                    best[lhs] = n
                    changed = True
    return best


def sentence(bnf: Bnf, rng: random.Random, budget: int = 60) -> bytes:
    """A random member of the language (short once `budget` bytes are written)."""
    best = _shortest(bnf)
    out = bytearray()

    def rule_cost(r: int) -> int:
        return 1 + sum(1 if isinstance(s, Bytes) else best[s] for s in bnf.rules[r][1])

    stack: list[int | Bytes] = [bnf.start]
    while stack:
        sym = stack.pop()
        if isinstance(sym, Bytes):
            out.append(rng.choice([b for b in range(256) if b in sym]))
            continue
        choices = bnf.by_lhs[sym]
        if len(out) + len(stack) > budget:
            r = min(choices, key=rule_cost)
        else:
            r = rng.choice(choices)
        stack.extend(reversed(bnf.rules[r][1]))
    return bytes(out)


def viable(recognizer: LazyRecognizer, state: State | None, depth: int = 12) -> bool:
    """Some string of at most `depth` more bytes takes `state` to an accepting state."""
    frontier, seen = [state] if state is not None else [], set()
    for _ in range(depth + 1):
        nxt = []
        for s in frontier:
            if s.accepting:
                return True
            for b in range(256):
                t = recognizer.step(s, b)
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    nxt.append(t)
        frontier = nxt
    return False


def brute_force_mask(recognizer: LazyRecognizer, token_bytes, end_ids, text: bytes) -> list[int]:
    """The ids a token mask must allow after `text`: those whose bytes keep it viable, and the
    end ids if `text` is complete (each token fed from the start, no trie, no cache)."""
    allowed = []
    for i, data in enumerate(token_bytes):
        if data:
            state = feed(recognizer, recognizer.start, text + data)
            if state is not None and viable(recognizer, state):
                allowed.append(i)
    end = feed(recognizer, recognizer.start, text)
    if end is not None and end.accepting:
        allowed += list(end_ids)
    return sorted(allowed)
