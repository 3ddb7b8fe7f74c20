"""The heap-based merge equals the textbook quadratic loop, and stays fast on long pieces."""

from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.tokenizer.bpe import bpe_merge, naive_bpe_merge


@st.composite
def ranks_and_piece(draw):
    alphabet = b"abc"
    ranks = {bytes([i]): i for i in range(256)}
    for token in draw(st.lists(st.binary(min_size=2, max_size=5), max_size=25)):
        token = bytes(alphabet[x % 3] for x in token)
        ranks.setdefault(token, len(ranks))
    piece = bytes(alphabet[x % 3] for x in draw(st.binary(min_size=1, max_size=30)))
    return ranks, piece


@settings(max_examples=400)
@given(ranks_and_piece())
def test_heap_merge_equals_textbook_merge(case):
    ranks, piece = case
    assert bpe_merge(piece, ranks) == naive_bpe_merge(piece, ranks)


def test_long_single_piece_is_not_quadratic():
    # 2**k runs of "a" with tokens for a, aa, aaaa, ...: the answer is known by construction.
    ranks = {bytes([i]): i for i in range(256)}
    for k in range(1, 11):
        ranks[b"a" * 2**k] = 255 + k
    ids = bpe_merge(b"a" * 1_000_000, ranks)
    assert sum(2 ** (i - 255) for i in ids) == 1_000_000
    # Leftmost-first merging at every level leaves 976 runs of 1024 and a tail of 576 = 512 + 64.
    assert ids == [265] * 976 + [264, 261]
