"""The byte-pair merge at the heart of a BPE encoder, written to be read: two rules.

A chunk of text (one piece from the split pattern) starts as its UTF-8 bytes, one token per
byte. Then, again and again, the adjacent pair whose concatenation has the lowest rank in the
vocabulary is merged into one token (the leftmost pair wins a tie), until no adjacent pair forms
a known token. This is the rule of GPT-2 (Radford et al. 2019) as tiktoken states it: the rank of
a token is its id, and tokens made earlier in training have lower ids, so the merges replay in
training order. A piece that is itself a token is returned whole, as tiktoken does.

Hugging Face `tokenizers` and llama.cpp use another rule, for the vocabularies they ship: the
adjacent pair listed earliest in the merge list merges, and only listed pairs do (`rank_merge`).
The two agree on a vocabulary trained in order and listing every way to make each token, not in
general (tests/tokenizer/test_bpe.py shows a vocabulary where they differ; engines.py says when
tiktoken may still run the rank rule).

The textbook loop rescans all pairs after every merge, which is quadratic in the piece length
(a million-character run of "a" would never finish). Here the candidate pairs live in a heap and
the parts in a linked list, so each merge costs O(log n).

    >>> ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"abc": 257, b"bc": 258}
    >>> bpe_merge(b"abcab", ranks)
    [257, 256]
    >>> bpe_merge(b"abc", ranks)          # a whole piece that is a token is one id
    [257]
    >>> bpe_merge(b"xbcy", ranks)
    [120, 258, 121]
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping


def bpe_merge(piece: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """Encode one pre-tokenized piece with BPE; returns token ids (= ranks)."""
    whole = ranks.get(piece)
    if whole is not None:
        return [whole]
    n = len(piece)
    # Part i covers piece[i:end[i]]; parts form a linked list through nxt/prv; a merged-away
    # part is marked dead by end[i] = -1.
    end = list(range(1, n + 1))
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    heap: list[tuple[int, int, int]] = []  # (rank, left part start, right part end)

    def push(i: int) -> None:
        j = nxt[i]
        if j < n:
            rank = ranks.get(piece[i : end[j]])
            if rank is not None:
                heapq.heappush(heap, (rank, i, end[j]))

    for i in range(n - 1):
        push(i)
    while heap:
        _, i, stop = heapq.heappop(heap)
        j = nxt[i]
        # Skip stale entries: the left part died, or the pair's extent changed since the push.
        if end[i] == -1 or j >= n or end[j] != stop:
            continue
        end[i] = stop
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        end[j] = -1
        if prv[i] >= 0:
            push(prv[i])
        push(i)
    out = []
    i = 0
    while i < n:
        out.append(ranks[piece[i : end[i]]])
        i = nxt[i]
    return out


def naive_bpe_merge(piece: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """The textbook quadratic loop, kept as the definition `bpe_merge` is tested against.

    >>> ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"abc": 257, b"bc": 258}
    >>> naive_bpe_merge(b"abcab", ranks)
    [257, 256]
    """
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best = None
        for k in range(len(parts) - 1):
            rank = ranks.get(parts[k] + parts[k + 1])
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, k)
        if best is None:
            break
        k = best[1]
        parts[k : k + 2] = [parts[k] + parts[k + 1]]
    return [ranks[p] for p in parts]


def rank_merge(ids: list[int], pairs: Mapping[tuple[int, int], tuple[int, int]]) -> list[int]:
    """Hugging Face's BPE rule on one piece: merge the adjacent pair listed earliest in the merge
    list (`pairs[(left, right)] = (rank, new id)`), leftmost first on ties, until no adjacent pair
    is listed. Unlike `bpe_merge`, a pair whose concatenation is a token but that is not itself
    listed never merges, and a rank is a place in the list, not an id.

    >>> pairs = {(1, 2): (0, 10), (10, 3): (1, 11), (2, 3): (2, 12)}
    >>> rank_merge([1, 2, 3], pairs), rank_merge([4, 2, 3], pairs)
    ([11], [4, 12])
    >>> rank_merge([2, 3, 1, 2], pairs)   # (1, 2) is listed first: it wins over (2, 3)
    [12, 10]
    """
    n = len(ids)
    if n < 2:
        return list(ids)
    ids = list(ids)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap: list[tuple[int, int, int]] = []  # (rank, left position, right id when pushed)

    def push(i: int) -> None:
        j = nxt[i]
        if j < n:
            found = pairs.get((ids[i], ids[j]))
            if found is not None:
                heapq.heappush(heap, (found[0], i, ids[j]))

    for i in range(n - 1):
        push(i)
    while heap:
        rank, i, right = heapq.heappop(heap)
        j = nxt[i]
        # Stale entries: the left part died, or either side changed since the push (a rank
        # names one pair, so an unchanged rank means unchanged parts).
        if not alive[i] or j >= n or ids[j] != right \
                or pairs.get((ids[i], right), (-1,))[0] != rank:
            continue
        ids[i] = pairs[(ids[i], right)][1]
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        if prv[i] >= 0:
            push(prv[i])
        push(i)
    out, i = [], 0
    while i < n:
        out.append(ids[i])
        i = nxt[i]
    return out


def naive_rank_merge(ids: list[int], pairs: Mapping[tuple[int, int], tuple[int, int]]) -> list[int]:
    """The textbook loop of the rank rule, the definition `rank_merge` is tested against.

    >>> naive_rank_merge([2, 3, 1, 2], {(1, 2): (0, 10), (2, 3): (2, 12)})
    [12, 10]
    """
    parts = list(ids)
    while len(parts) > 1:
        listed = [(pairs[p][0], k) for k, p in enumerate(zip(parts, parts[1:])) if p in pairs]
        if not listed:
            break
        _, k = min(listed)
        parts[k : k + 2] = [pairs[(parts[k], parts[k + 1])][1]]
    return parts
