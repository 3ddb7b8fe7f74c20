"""Code-point ranges as UTF-8 byte sequences, so a character class can be matched byte by byte.

A set of code points becomes a list of byte-range sequences: each sequence is a tuple of
(lo, hi) byte ranges, one per byte, and the class matches exactly the byte strings of the
union of their products. Splitting follows the layout of UTF-8 (RFC 3629, section 3): a range is
first cut where the encoded length changes (U+007F, U+07FF, U+FFFF), then wherever the
continuation bytes of its ends do not span their whole 0x80-0xBF range, until each piece is a
product of byte ranges. Surrogates (U+D800-U+DFFF) are not characters and never appear.

    >>> utf8_sequences([(0x41, 0x5A)])
    [((65, 90),)]
    >>> [[f"{lo:02X}-{hi:02X}" for lo, hi in seq] for seq in utf8_sequences([(0xE9, 0xE9)])]
    [['C3-C3', 'A9-A9']]
    >>> len(utf8_sequences([(0, MAX_CODE_POINT)]))
    9

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/utf8.py
"""

from __future__ import annotations

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)
_LENGTH_ENDS = (0x7F, 0x7FF, 0xFFFF, MAX_CODE_POINT)  # last code point of 1, 2, 3, 4 bytes

ByteSeq = tuple[tuple[int, int], ...]


def normalize(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged code-point ranges with surrogates removed.

    >>> normalize([(5, 9), (0, 3), (4, 4), (0xD7FF, 0xE000)])
    [(0, 9), (55295, 55295), (57344, 57344)]
    """
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return _cut(out, *SURROGATES)


def _cut(ranges: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """Remove [lo, hi] from sorted ranges."""
    out = []
    for a, b in ranges:
        if b < lo or a > hi:
            out.append((a, b))
            continue
        if a < lo:
            out.append((a, lo - 1))
        if b > hi:
            out.append((hi + 1, b))
    return out


def complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Every code point (surrogates excluded) not in `ranges`.

    >>> complement([(0, 0x40), (0x42, MAX_CODE_POINT)])
    [(65, 65)]
    """
    out, nxt = [], 0
    for lo, hi in normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return normalize(out)


def utf8_sequences(ranges: list[tuple[int, int]]) -> list[ByteSeq]:
    """The byte-range sequences whose union is the UTF-8 encoding of the code points."""
    out: list[ByteSeq] = []
    for lo, hi in normalize(ranges):
        start = lo
        for end in _LENGTH_ENDS:  # cut where the encoded length changes
            if start > hi:
                break
            if start <= end:
                _split(start, min(hi, end), out)
                start = end + 1
    return out


def _split(lo: int, hi: int, out: list[ByteSeq]) -> None:
    """Append the sequences of [lo, hi], two code points of the same encoded length."""
    n = len(chr(lo).encode())
    for i in range(1, n):  # i trailing continuation bytes, 6 bits each
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:  # the ends differ above these bits
            if lo & m != 0:
                _split(lo, lo | m, out)
                _split((lo | m) + 1, hi, out)
                return
            if hi & m != m:
                _split(lo, (hi & ~m) - 1, out)
                _split(hi & ~m, hi, out)
                return
    out.append(tuple(zip(chr(lo).encode(), chr(hi).encode())))


def code_point_trie(names: list[str]) -> dict:
    """A trie of strings by code point: node[ord(c)] is the child, node[None] marks an end.

    >>> code_point_trie(["ab", "a"])
    {97: {98: {None: {}}, None: {}}}
    """
    trie: dict = {}
    for name in names:
        node = trie
        for c in name:
            node = node.setdefault(ord(c), {})
        node[None] = {}  # a name ends here
    return trie
