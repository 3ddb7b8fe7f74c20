"""The heap-based merges (id rule and rank rule) equal their textbook quadratic loops, and
stay fast on long pieces."""

from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.tokenizer.bpe import bpe_merge, naive_bpe_merge, naive_rank_merge, rank_merge


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


@st.composite
def pairs_and_ids(draw):
    """A merge list over symbols 0, 1, 2 and the tokens it makes, ranked in a drawn order (not
    id order), and a piece of those symbols."""
    symbols, listed = [0, 1, 2], []
    for _ in range(draw(st.integers(0, 20))):
        listed.append((draw(st.sampled_from(symbols)), draw(st.sampled_from(symbols))))
        symbols.append(len(symbols))
    order = draw(st.permutations(range(len(listed))))
    pairs = {pair: (rank, 3 + k) for k, (pair, rank) in enumerate(zip(listed, order))}
    return pairs, draw(st.lists(st.sampled_from([0, 1, 2]), max_size=30))


@settings(max_examples=400)
@given(pairs_and_ids())
def test_heap_rank_merge_equals_textbook_rank_merge(case):
    pairs, ids = case
    assert rank_merge(ids, pairs) == naive_rank_merge(ids, pairs)


def test_rank_rule_is_not_the_id_rule():
    """A token whose listed pair cannot form: the rank rule keeps [a, bc]; the id rule, which
    merges any pair whose concatenation is a token, makes "abc" (the negative control)."""
    a, b, c, bc, ab, abc = 97, 98, 99, 256, 257, 258
    pairs = {(b, c): (0, bc), (a, b): (1, ab), (ab, c): (2, abc)}
    assert rank_merge([a, b, c], pairs) == [a, bc]
    ranks = {bytes([i]): i for i in range(256)} | {b"bc": bc, b"ab": ab, b"abc": abc}
    assert bpe_merge(b"xabcx"[1:4], ranks) == [abc]


def test_long_piece_rank_merge_is_not_quadratic():
    pairs = {(255 + k if k else 97, 255 + k if k else 97): (k, 256 + k) for k in range(10)}
    ids = rank_merge([97] * 300_000, pairs)  # 292 runs of 1024, then 512 + 256 + ... + 32
    assert ids == [265] * 292 + [264, 263, 262, 261, 260]
