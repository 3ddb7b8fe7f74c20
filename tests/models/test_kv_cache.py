"""KV cache: prefill + token-by-token decoding equals one full forward, for every position
scheme and head layout; overflow and misuse raise clear errors."""

from __future__ import annotations

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.models import KVCache

from .helpers import cached_logits, random_gpt


@pytest.mark.parametrize("position", ["learned", "rope", "alibi", "none"])
@pytest.mark.parametrize("n_kv_head", [4, 2, 1])  # multi-head, grouped-query, multi-query
def test_cached_decoding_equals_full_forward(position, n_kv_head):
    model = random_gpt(position=position, n_kv_head=n_kv_head, qk_norm=n_kv_head == 2)
    idx = torch.randint(0, 61, (3, 24))
    with torch.no_grad():
        full = model(idx)
        for prefill in (0, 1, 9):
            torch.testing.assert_close(cached_logits(model, idx, prefill), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_cached_decoding_with_the_manual_attention_path(position):
    model = random_gpt(position=position, n_kv_head=2, attn_impl="manual")
    idx = torch.randint(0, 61, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(cached_logits(model, idx, 5), model(idx), rtol=0, atol=1e-5)


def test_chunked_prefill_equals_full_forward():
    model = random_gpt(position="rope", n_kv_head=2)
    idx = torch.randint(0, 61, (2, 20))
    cache = model.new_cache(2, 32)
    with torch.no_grad():
        chunks = [model(idx[:, a:b], cache=cache) for a, b in [(0, 7), (7, 15), (15, 20)]]
        torch.testing.assert_close(torch.cat(chunks, 1), model(idx), rtol=0, atol=1e-5)


def test_cache_layout_and_length():
    model = random_gpt(n_kv_head=2, n_layer=3)
    cache = model.new_cache(batch_size=2, max_len=10)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == cache.v.shape == (3, 2, 2, 10, 8)
    assert (cache.batch_size, cache.max_len, cache.length) == (2, 10, 0)
    with torch.no_grad():
        model(torch.zeros(2, 4, dtype=torch.long), cache=cache)
    assert cache.length == 4
    assert cache.k[:, :, :, :4].abs().sum() > 0 and cache.k[:, :, :, 4:].abs().sum() == 0
    assert model.new_cache(1).max_len == model.config.block_size


def test_cache_follows_model_dtype():
    model = random_gpt(position="rope").double()
    cache = model.new_cache(1, 8)
    assert cache.k.dtype == torch.float64
    assert model(torch.zeros(1, 3, dtype=torch.long), cache=cache).dtype == torch.float64


def test_overflow_raises_before_writing():
    model = random_gpt(position="rope")
    cache = model.new_cache(1, max_len=6)
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
        with pytest.raises(ConfigError, match="KV cache overflow: 5 cached \\+ 2 new tokens exceed max_len 6"):
            model(torch.zeros(1, 2, dtype=torch.long), cache=cache)
    assert cache.length == 5  # the failed call changed nothing


def test_wrong_batch_size_raises():
    model = random_gpt()
    with pytest.raises(ConfigError, match="batch size 3 but the cache was made for 2"):
        model(torch.zeros(3, 1, dtype=torch.long), cache=model.new_cache(2, 8))


@pytest.mark.parametrize("position", ["learned", "rope", "alibi", "none"])
def test_the_cache_is_limited_to_block_size_for_every_position_scheme(position):
    with pytest.raises(ConfigError, match="sequence length 40 exceeds block_size 32"):
        random_gpt(position=position).new_cache(1, max_len=40)


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
@torch.no_grad()
def test_cached_decoding_runs_past_the_sliding_window(position, attn_impl):
    # The cache keeps every position; the window is applied in the mask, so decoding, chunked
    # prefill and crop work past the window as they do without one.
    model = random_gpt(position=position, attn_impl=attn_impl, n_kv_head=2, sliding_window=5)
    idx = torch.randint(0, 61, (2, 30))
    full = model(idx)
    unwindowed = random_gpt(position=position, attn_impl=attn_impl, n_kv_head=2)(idx)
    assert (full[:, 5:] - unwindowed[:, 5:]).abs().max() > 1e-3  # the window matters here
    for prefill in (0, 3, 12):
        torch.testing.assert_close(cached_logits(model, idx, prefill), full, rtol=0, atol=1e-5)
    cache = model.new_cache(2, 32)
    chunks = [model(idx[:, a:b], cache=cache) for a, b in [(0, 4), (4, 13), (13, 20)]]
    model(torch.randint(0, 61, (2, 6)), cache=cache)  # rejected draft tokens...
    cache.crop(20)                                   # ...forgotten
    chunks.append(model(idx[:, 20:], cache=cache))
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=0, atol=1e-5)


def test_crop_and_reset_rewind_the_cache():
    model = random_gpt(position="rope")
    idx = torch.randint(0, 61, (1, 12))
    other = torch.randint(0, 61, (1, 4))
    cache = model.new_cache(1, 16)
    with torch.no_grad():
        full = model(idx)
        model(idx[:, :8], cache=cache)
        model(other, cache=cache)          # a rejected continuation...
        cache.crop(8)                      # ...is forgotten
        torch.testing.assert_close(model(idx[:, 8:], cache=cache), full[:, 8:], rtol=0, atol=1e-5)
        cache.reset()
        torch.testing.assert_close(model(idx, cache=cache), full, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError):
        cache.crop(13)
