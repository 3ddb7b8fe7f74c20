"""Token healing at the boundary between fixed text and a hole (Lundberg 2023, guidance).

A prompt that ends in "https:" or "Name: " tokenizes its last characters on their own, but in
training text they were usually part of a longer token (":/" or " John"): the model, handed the
short token, rarely continues the way it would have. Healing backs up over the prompt's last
token and makes the hole's first token begin with that token's bytes: the model picks the
tokenization itself, and the backed-up text is taken off the front of the hole's value.

    >>> vocab = [b"a", b" ", b" J", b" John", b"J", None]
    >>> heal_split([0, 1], vocab)
    ([0], b' ')
    >>> healing_mask(b" ", vocab).tolist()
    [False, True, True, True, False, False]
    >>> heal_split([0, 5], vocab)        # a special token is never backed over
    ([0, 5], b'')

Run the doctests: `pytest lmstack/infer/program/healing.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def heal_split(ids: list[int], token_bytes: Sequence[bytes | None]) -> tuple[list[int], bytes]:
    """(ids without their last token, that token's bytes) when healing can back over it: it
    writes text, whole UTF-8 characters, and it is not the only token; else (ids, b"")."""
    if len(ids) < 2:
        return ids, b""
    last = token_bytes[ids[-1]]
    if not last:
        return ids, b""
    try:
        last.decode("utf-8")
    except UnicodeDecodeError:  # half a character: its text cannot be taken off the value
        return ids, b""
    return ids[:-1], last


def healing_mask(prefix: bytes, token_bytes: Sequence[bytes | None]) -> np.ndarray:
    """Bool mask (V,) of the ids whose bytes begin with `prefix` (the backed-up token is one)."""
    return np.fromiter((b is not None and b.startswith(prefix) for b in token_bytes),
                       dtype=bool, count=len(token_bytes))
