"""What the mask computation needs from a recognizer: states that step one byte at a time.

Both recognizers (the regex automaton of nfa.py and the Earley recognizer of earley.py) build
their states lazily and hash-cons them: a state is built once per distinct content and then
shared, so a step is memoized on the state (`State.steps`), and everything computed from a state
(its token mask above all) can be cached by the state itself. This is the lazy subset
construction of Thompson (1968) as RE2 uses it, applied to Earley columns too.

A state is *viable*: every state a recognizer returns can still be extended to a complete
member of the language (the recognizers drop dead parts), so "the byte b may come next" is
exactly "step(state, b) is not None", and `next_mask` is the set of such bytes.

    >>> from lmstack.infer.structured.grammar import text
    >>> from lmstack.infer.structured.nfa import NfaRecognizer
    >>> r = NfaRecognizer(text("ab"))
    >>> feed(r, r.start, b"a").accepting, feed(r, r.start, b"ab").accepting, feed(r, r.start, b"b")
    (False, True, None)
"""

from __future__ import annotations

import abc
from collections.abc import Hashable


class State:
    """One recognizer state: `accepting` (the input so far is complete), `next_mask` (bit b set
    iff byte b may come next) and the memo of its steps."""

    __slots__ = ("__weakref__", "accepting", "content", "next_mask", "steps")

    def __init__(self, content: Hashable, accepting: bool, next_mask: int) -> None:
        self.content = content
        self.accepting = accepting
        self.next_mask = next_mask
        self.steps: dict[int, State | None] = {}

    @property
    def terminated(self) -> bool:
        """Complete, and no byte may follow."""
        return self.accepting and self.next_mask == 0


class LazyRecognizer(abc.ABC):
    """Base of both recognizers: interning and the step memo; subclasses give `_successor`."""

    start: State

    def __init__(self) -> None:
        self._states: dict[Hashable, State] = {}

    def step(self, state: State, byte: int) -> State | None:
        """The state after `byte`, or None if no member of the language continues so."""
        try:
            return state.steps[byte]
        except KeyError:
            pass
        nxt = self._successor(state, byte) if (state.next_mask >> byte) & 1 else None
        state.steps[byte] = nxt
        return nxt

    @abc.abstractmethod
    def _successor(self, state: State, byte: int) -> State | None:
        """The state after `byte`, computed (not memoized); `byte` is in `state.next_mask`."""

    def intern(self, content: Hashable, accepting: bool, next_mask: int) -> State | None:
        """The one State with this content (None when it is dead: not accepting, no next byte)."""
        if not accepting and next_mask == 0:
            return None
        state = self._states.get(content)
        if state is None:
            state = self._states[content] = State(content, accepting, next_mask)
        return state

    @property
    def n_states(self) -> int:
        """States built so far."""
        return len(self._states)


def feed(recognizer: LazyRecognizer, state: State | None, data: bytes) -> State | None:
    """The state after all of `data` (None as soon as a byte is impossible)."""
    for b in data:
        if state is None:
            return None
        state = recognizer.step(state, b)
    return state


def matches(recognizer: LazyRecognizer, data: bytes) -> bool:
    """`data` is a complete member of the language."""
    state = feed(recognizer, recognizer.start, data)
    return state is not None and state.accepting
