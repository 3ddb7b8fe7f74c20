"""Turning token ids back into text, whole or streamed.

A token is a run of bytes, not of characters: "é" may be split over two tokens, and a single
token may end in the middle of a character. Decoding a whole sequence joins the bytes and
decodes once; streaming must hold back the bytes of an unfinished character until the next
token completes it, or the user sees U+FFFD flicker where an accent should be.

    >>> pieces = {0: b"caf", 1: b"\\xc3", 2: b"\\xa9!"}
    >>> d = IncrementalDecoder(pieces.__getitem__)
    >>> [d.add(i) for i in (0, 1, 2)]
    ['caf', '', 'é!']
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable

from lmstack.errors import TokenizerError

_ERRORS = ("replace", "strict", "ignore", "backslashreplace")


def _check_errors(errors: str) -> None:
    if errors not in _ERRORS:
        raise TokenizerError(f"errors={errors!r} is not one of {_ERRORS}")


def decode_bytes(data: bytes, errors: str = "replace") -> str:
    """UTF-8 decode; strict mode raises a TokenizerError naming the bad offset.

    >>> decode_bytes(b"ok\\xff")
    'ok\\ufffd'
    >>> decode_bytes(b"ok\\xff", errors="strict")
    Traceback (most recent call last):
    ...
    lmstack.errors.TokenizerError: the ids decode to bytes that are not valid UTF-8 at offset 2 ...
    """
    _check_errors(errors)
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        raise TokenizerError(
            f"the ids decode to bytes that are not valid UTF-8 at offset {e.start} ({e.reason}); "
            "decode with errors='replace' to see them as U+FFFD"
        ) from None


class IncrementalDecoder:
    """Feed ids one by one (or in chunks); get back only complete characters."""

    def __init__(self, token_bytes: Callable[[int], bytes], errors: str = "replace") -> None:
        _check_errors(errors)
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors)

    def add(self, ids: int | Iterable[int]) -> str:
        """Decode more ids; returns the text they complete (maybe empty)."""
        if isinstance(ids, int):
            ids = (ids,)
        data = b"".join(self._token_bytes(i) for i in ids)
        try:
            return self._utf8.decode(data)
        except UnicodeDecodeError as e:
            raise TokenizerError(f"invalid UTF-8 in the token stream ({e.reason})") from None

    def flush(self) -> str:
        """End of stream: emit held-back bytes (as U+FFFD under errors='replace')."""
        try:
            return self._utf8.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise TokenizerError(f"the token stream ends inside a character ({e.reason})") from None
