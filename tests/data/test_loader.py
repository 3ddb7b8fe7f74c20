"""TokenLoader: x/y shift, shapes, rank disjointness, determinism, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.data.loader import TokenLoader
from lmstack.data.shards import ShardConfig, read_tokens, write_shards
from lmstack.data.sources import Document
from lmstack.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def shard_dir(small_tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    docs = [Document(f"line {i} of a small corpus with some words " * 3, f"m:{i}") for i in range(80)]
    write_shards(docs, small_tok, d, ShardConfig(workers=1, progress=False, val_fraction=0.1))
    return d


@given(batch=st.integers(1, 4), block=st.integers(1, 32), shuffle=st.booleans(), seed=st.integers(0, 9))
@settings(max_examples=25, deadline=None)
def test_y_is_x_shifted_and_batches_come_from_the_stream(shard_dir, batch, block, shuffle, seed):
    loader = TokenLoader(shard_dir, "train", batch, block, shuffle=shuffle, seed=seed)
    tokens = np.asarray(read_tokens(shard_dir, "train"), dtype=np.int64)
    for _ in range(3):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (batch, block) and x.dtype == y.dtype == np.int64
        assert np.array_equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x, y):
            # Each row is a window starting at a multiple of block_size in the token stream.
            starts = [s for s in range(0, len(tokens) - block, block) if tokens[s] == row_x[0]]
            assert any(np.array_equal(tokens[s : s + block], row_x) and np.array_equal(tokens[s + 1 : s + block + 1], row_y)
                       for s in starts)


def test_sequential_order_walks_the_stream(shard_dir):
    loader = TokenLoader(shard_dir, "train", batch_size=2, block_size=8, shuffle=False)
    tokens = np.asarray(read_tokens(shard_dir, "train"), dtype=np.int64)
    x, _ = loader.next_batch()
    assert np.array_equal(x[0], tokens[0:8]) and np.array_equal(x[1], tokens[8:16])
    x, _ = loader.next_batch()
    assert np.array_equal(x[0], tokens[16:24])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_get_disjoint_equal_shares(shard_dir, world_size):
    tokens = np.asarray(read_tokens(shard_dir, "train"), dtype=np.int64)
    shares = []
    for rank in range(world_size):
        loader = TokenLoader(shard_dir, batch_size=2, block_size=8, rank=rank, world_size=world_size, seed=5)
        used = loader.windows()[: 2 * loader.batches_per_epoch]
        assert len(set(used.tolist())) == len(used)  # No window twice in one epoch.
        x, _ = loader.batch_at(0)
        assert np.array_equal(x[1], tokens[used[1] * 8 : used[1] * 8 + 8])
        shares.append(set(used.tolist()))
    assert all(a.isdisjoint(b) for i, a in enumerate(shares) for b in shares[i + 1 :])
    assert len({len(s) for s in shares}) == 1
    assert all(0 <= w < loader.num_windows for s in shares for w in s)


def test_epochs_reshuffle_and_seed_determines_order(shard_dir):
    a = TokenLoader(shard_dir, batch_size=2, block_size=8, seed=1)
    b = TokenLoader(shard_dir, batch_size=2, block_size=8, seed=1)
    c = TokenLoader(shard_dir, batch_size=2, block_size=8, seed=2)
    n = a.batches_per_epoch
    xa = [a.next_batch()[0] for _ in range(2 * n)]
    xb = [b.next_batch()[0] for _ in range(2 * n)]
    xc = [c.next_batch()[0] for _ in range(n)]
    assert all(np.array_equal(p, q) for p, q in zip(xa, xb))
    assert not all(np.array_equal(p, q) for p, q in zip(xa, xc))
    assert a.epoch == 1
    assert not all(np.array_equal(p, q) for p, q in zip(xa[:n], xa[n:]))  # New epoch, new order.


@given(steps=st.integers(0, 40))
@settings(max_examples=15, deadline=None)
def test_resume_yields_the_same_batches(shard_dir, steps):
    a = TokenLoader(shard_dir, batch_size=3, block_size=4, seed=3)
    for _ in range(steps):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(5)]
    b = TokenLoader(shard_dir, batch_size=3, block_size=4, seed=3)
    b.load_state_dict(state)
    for (ex, ey), (gx, gy) in zip(expected, (b.next_batch() for _ in range(5))):
        assert np.array_equal(ex, gx) and np.array_equal(ey, gy)


def test_resume_with_other_settings_is_refused(shard_dir):
    state = TokenLoader(shard_dir, batch_size=3, block_size=4, seed=3).state_dict()
    with pytest.raises(DataError, match="batch_size: saved 3 vs now 2"):
        TokenLoader(shard_dir, batch_size=2, block_size=4, seed=3).load_state_dict(state)


def test_errors(shard_dir, other_tok, small_tok):
    with pytest.raises(DataError, match="fewer than the .* one batch"):
        TokenLoader(shard_dir, "val", batch_size=64, block_size=1024)
    with pytest.raises(DataError, match=other_tok.fingerprint):
        TokenLoader(shard_dir, tokenizer=other_tok, batch_size=1, block_size=4)
    TokenLoader(shard_dir, tokenizer=small_tok, batch_size=1, block_size=4)
    with pytest.raises(DataError, match="no split 'test'"):
        TokenLoader(shard_dir, "test")
    with pytest.raises(ConfigError):
        TokenLoader(shard_dir, rank=2, world_size=2)
    with pytest.raises(ConfigError):
        TokenLoader(shard_dir, batch_size=0)
