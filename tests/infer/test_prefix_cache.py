"""Prefix caching changes nothing but speed: same tokens, same logits, bounded memory."""

from __future__ import annotations

import random

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.infer.prefix_cache import PrefixCache
from lmstack.infer.sampling import prefill
from lmstack.models import GPT, GPTConfig, RNNConfig, RNNLM
from lmstack.serve.scheduler import Scheduler

# keys + values of one 4-token block: 2 layers x 2 kv heads x 4 positions x head_dim 16, fp32
BLOCK_BYTES = 2 * 2 * 2 * 4 * 16 * 4
SYSTEM = "You are a helpful assistant who answers in Python code only. " * 3


def gpt(vocab: int, position: str) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                         position=position))


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
def test_cached_prefill_equals_a_cold_one(tok, position):
    model = gpt(tok.vocab_size, position)
    store = PrefixCache(block_size=8)
    prompts = [tok.encode(SYSTEM + q) for q in ("def add(a, b):", "import sys", "x = [i for i in")]
    _, first = prefill(model, prompts[:1], 4, store)
    cache, warm = prefill(model, prompts, 4, store)      # all three share the system prompt
    cold_cache, cold = prefill(model, prompts, 4)
    assert store.stats()["hit_tokens"] >= 2 * (len(tok.encode(SYSTEM)) // 8 - 1) * 8
    torch.testing.assert_close(warm, cold, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(warm[:1], first, atol=1e-5, rtol=1e-5)
    for row, p in enumerate(prompts):
        n = len(p)
        torch.testing.assert_close(cache.k[:, row, :, :n], cold_cache.k[:, row, :, :n], atol=1e-5, rtol=1e-5)
    assert cache.lengths().tolist() == [len(p) for p in prompts]


def test_generation_is_identical_with_the_cache(tok):
    model = gpt(tok.vocab_size, "rope")
    plain, cached = Engine(model, tok), Engine(model, tok, prefix_cache=PrefixCache(block_size=16))
    for q in ("def add(a, b):", "import sys", "def add(a, b):\n    return"):
        settings = dict(temperature=0, max_new_tokens=16, ignore_eos=True)
        assert cached.generate(SYSTEM + q, **settings).tokens == plain.generate(SYSTEM + q, **settings).tokens
        sampled = dict(temperature=0.9, seed=4, max_new_tokens=8, num_return_sequences=2, best_of=2)
        assert [c.text for c in cached.generate(SYSTEM + q, **sampled)] == \
               [c.text for c in plain.generate(SYSTEM + q, **sampled)]
    assert cached.prefix_cache.stats()["hit_tokens"] > 0


def test_the_scheduler_reuses_prefixes_and_matches_the_engine(tok):
    model = gpt(tok.vocab_size, "learned")
    engine = Engine(model, tok, prefix_cache=PrefixCache(block_size=8))
    scheduler = Scheduler(engine, max_batch=2)
    events: dict = {}
    settings = dict(temperature=0, max_new_tokens=10, ignore_eos=True)
    questions = ["a = 1", "b = 2", "def f():", "class C:"]
    with torch.inference_mode():
        requests = []
        for i, q in enumerate(questions):
            requests.append(scheduler.submit(engine.encode(SYSTEM + q), engine.config(**settings),
                                             lambda e, i=i: events.setdefault(i, []).append(e)))
            scheduler.step()
        while not all(r.done.is_set() for r in requests):
            scheduler.step()
    plain = Engine(model, tok)
    for i, q in enumerate(questions):
        assert sum((e.tokens for e in events[i]), []) == plain.generate(SYSTEM + q, **settings).tokens
    assert engine.prefix_cache.stats()["hit_tokens"] >= 3 * (len(tok.encode(SYSTEM)) // 8 - 1) * 8


def test_memory_budget_holds_under_many_requests(tok):
    model = gpt(tok.vocab_size, "rope")
    block_bytes = BLOCK_BYTES
    store = PrefixCache(max_bytes=10 * block_bytes, block_size=4)
    rng = random.Random(0)
    for _ in range(30):
        prompt = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(5, 60))]
        prefill(model, [prompt], 2, store)
        assert store.bytes <= store.max_bytes
    stats = store.stats()
    assert stats["evicted_blocks"] > 0 and stats["blocks"] <= 10
    assert stats["bytes"] == stats["blocks"] * block_bytes


def test_a_block_in_use_is_never_evicted(tok):
    model = gpt(tok.vocab_size, "rope")
    store = PrefixCache(max_bytes=4 * (BLOCK_BYTES), block_size=4)
    kept = list(range(1, 18))
    prefill(model, [kept], 2, store)
    held = store.lookup(kept)                   # 4 blocks referenced, as during a copy
    assert len(held) == 4
    for seed in range(5):                       # a storm of other prompts wants the room
        rng = random.Random(seed)
        prefill(model, [[rng.randrange(tok.vocab_size) for _ in range(40)]], 2, store)
    assert store.lookup(kept) == held           # all still there
    store.release(held), store.release(held)
    prefill(model, [[7] * 40], 2, store)        # released: now they can go
    assert len(store.lookup(kept)) < 4


def test_lru_evicts_chains_from_their_ends(tok):
    model = gpt(tok.vocab_size, "rope")
    store = PrefixCache(max_bytes=3 * (BLOCK_BYTES), block_size=4)
    prefill(model, [list(range(1, 14))], 2, store)  # 3 blocks: exactly the budget
    prefill(model, [[9] * 5], 2, store)             # one new block: the chain loses its LAST block
    assert len(store.lookup(list(range(1, 14)))) == 2


def test_models_without_a_kv_cache_ignore_it(tok):
    torch.manual_seed(0)
    rnn = RNNLM(RNNConfig(vocab_size=tok.vocab_size, n_layer=1, n_embd=16, hidden_size=32))
    store = PrefixCache()
    out = Engine(rnn, tok, prefix_cache=store).generate("import os", temperature=0, max_new_tokens=5)
    assert out.tokens == Engine(rnn, tok).generate("import os", temperature=0, max_new_tokens=5).tokens
    assert store.stats()["lookups"] == 0


def test_bad_settings():
    with pytest.raises(ConfigError, match="block_size"):
        PrefixCache(block_size=0)
