"""A byte trie of a vocabulary, and the walk that turns a recognizer state into a token mask.

Every token is a path of bytes from the root; the walk goes depth first with the recognizer,
stepping one byte per edge, and abandons a subtree as soon as its byte is impossible, so a token
is allowed exactly when the recognizer accepts all of its bytes as a continuation. Tokens that
span several terminals, or end inside a UTF-8 character, need nothing special: the recognizer
works on bytes. Shared prefixes are stepped once, and the recognizer's memo makes a step that
was seen before a dictionary lookup. This is the trie walk of the reference implementations of
constrained decoding (e.g. Willard and Louf 2023, "Efficient Guided Generation for LLMs", and
llguidance's token trie), written plainly.

    >>> from lmstack.infer.structured.nfa import NfaRecognizer
    >>> from lmstack.infer.structured.regex import regex_expr
    >>> trie = VocabTrie([b"a", b"ab", b"b", None, b"abc"])
    >>> r = NfaRecognizer(regex_expr("ab+"))
    >>> sorted(trie.allowed_ids(r, r.start))
    [0, 1]

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/trie.py
"""

from __future__ import annotations

from collections.abc import Sequence

from lmstack.infer.structured.recognizer import LazyRecognizer, State

_MISSING = object()


class VocabTrie:
    """`children[node]`: (byte, child) pairs; `ends[node]`: the token ids whose bytes end there.
    Node 0 is the root (the empty string); ids with no bytes (None or b'') are left out."""

    def __init__(self, token_bytes: Sequence[bytes | None]) -> None:
        kids: list[dict[int, int]] = [{}]
        ends: list[list[int]] = [[]]
        for token_id, data in enumerate(token_bytes):
            if not data:
                continue
            node = 0
            for b in data:
                nxt = kids[node].get(b)
                if nxt is None:
                    nxt = kids[node][b] = len(kids)
                    kids.append({})
                    ends.append([])
                node = nxt
            ends[node].append(token_id)
        self.children = [tuple(sorted(k.items())) for k in kids]
        self.ends = [tuple(e) for e in ends]

    @property
    def n_nodes(self) -> int:
        """Nodes, the root included."""
        return len(self.children)

    def allowed_ids(self, recognizer: LazyRecognizer, state: State) -> list[int]:
        """Ids of the tokens whose every byte the recognizer accepts from `state`."""
        allowed: list[int] = []
        children, ends, step = self.children, self.ends, recognizer.step
        stack = [(0, state)]
        while stack:
            node, st = stack.pop()
            steps = st.steps
            for byte, child in children[node]:
                nxt = steps.get(byte, _MISSING)
                if nxt is _MISSING:
                    nxt = step(st, byte)
                if nxt is None:
                    continue  # no token below this edge is possible
                allowed.extend(ends[child])
                if children[child] and nxt.next_mask:
                    stack.append((child, nxt))
        return allowed
