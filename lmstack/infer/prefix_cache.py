"""Prefix caching: reuse the keys and values of a prompt prefix that an earlier request computed.

Chat requests repeat themselves: the same system prompt opens every conversation, and each turn
of a conversation resends all the turns before it. The keys/values of those tokens do not depend
on what follows them (attention is causal), so a prefill only has to compute the new suffix.

Design: block hashing, as in vLLM (Kwon et al. 2023), not a radix tree (SGLang, Zheng et al.
2024). A prompt is cut into blocks of `block_size` tokens; block i is named by a hash of
(name of block i-1, its own tokens), so a name stands for the whole prefix up to and including
that block, and a lookup walks the prompt's blocks until the first miss. Why blocks rather than
a tree: our KV cache is one contiguous tensor per row, so a hit is *copied* into the new row
(cheap next to recomputing it); equal-size blocks make the memory budget exact, eviction one
block at a time, and the code a dict plus an LRU order. A radix tree shares prefixes at token
granularity, which matters with paged attention where hits are not copied; with copying, a
partial last block is at most block_size-1 tokens of recomputation.

- Only whole blocks are stored, and a hit never covers a prompt's last token: the prefill must
  still run at least one token to produce the logits of the next one.
- Memory: `max_bytes` bounds the stored keys/values. Inserting past it evicts the least recently
  used blocks whose reference count is zero; a block is referenced from its lookup until the
  copy into the new row is done (`release`), so an entry in use is never evicted. Lookups
  touch a chain's blocks from the last to the first, so a parent block is always more recent
  than its children and LRU evicts chains from their ends.
- Exactness: the cached keys/values are those the same prefix produced before, so outputs equal
  uncached ones up to float rounding of prefill in different chunk sizes (tested: same greedy
  tokens, logits within 1e-5).
- Models without a KV cache (RNNs, n-grams) simply do not use it.

    from lmstack.infer import Engine
    from lmstack.infer.prefix_cache import PrefixCache
    engine = Engine.load("runs/quickstart", prefix_cache=PrefixCache(max_bytes=256 << 20))
    engine.generate(system_prompt + question_1); engine.generate(system_prompt + question_2)
    engine.prefix_cache.stats()          # hits, tokens reused, bytes held, evictions

`lmstack serve` uses one for all requests (`--prefix-cache-mb`, default 256; 0 turns it off).
Tests: `pytest tests/infer/test_prefix_cache.py`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmstack.errors import ConfigError
from lmstack.infer.variants import running
from lmstack.models.gpt import GPT
from lmstack.models.kv_cache import KVCache


def block_names(tokens: Sequence[int], block_size: int, variant: int = 0) -> list[int]:
    """The chained hash of every whole block of `tokens`: name i covers tokens[: (i+1)*block_size].
    The chain starts from the row's variant (variants.py: a LoRA adapter, whose keys and values
    differ from the base's), so prefixes are shared within a variant only.

    >>> a, b = block_names([1, 2, 3, 4, 5], 2), block_names([1, 2, 3, 4, 9, 9], 2)
    >>> len(a), a == b[:2], a[1] == block_names([7, 7, 3, 4], 2)[1]
    (2, True, False)
    >>> set(a) & set(block_names([1, 2, 3, 4, 5], 2, variant=1))
    set()
    """
    names, parent = [], 0 if variant == 0 else hash(("variant", variant))
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start:start + block_size])))
        names.append(parent)
    return names


@dataclass
class _Block:
    k: torch.Tensor   # (n_layer, n_kv_head, block_size, head_dim)
    v: torch.Tensor
    refs: int = 0

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class PrefixCache:
    """Keys/values of prompt prefixes, by block, under a memory budget (see module docstring)."""

    def __init__(self, max_bytes: int = 256 << 20, block_size: int = 16) -> None:
        if block_size < 1 or max_bytes < 0:
            raise ConfigError(f"prefix cache needs block_size >= 1 and max_bytes >= 0, got {block_size} and {max_bytes}")
        self.max_bytes, self.block_size = max_bytes, block_size
        self._blocks: OrderedDict[int, _Block] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.bytes = 0
        self.counts = {"lookups": 0, "hit_tokens": 0, "missed_tokens": 0, "inserted_blocks": 0, "evicted_blocks": 0}

    # ---- the store --------------------------------------------------------------------------

    def lookup(self, tokens: Sequence[int], variant: int = 0) -> list[int]:
        """Names of the cached blocks that start `tokens` (never its last token) under
        `variant`, now referenced: call `release` with them when their keys/values have been copied."""
        usable = block_names(tokens, self.block_size, variant)[: (len(tokens) - 1) // self.block_size]
        with self._lock:
            hit: list[int] = []
            for name in usable:
                if name not in self._blocks:
                    break
                hit.append(name)
            for name in reversed(hit):  # children first, so parents end up the more recent
                self._blocks[name].refs += 1
                self._blocks.move_to_end(name)
            self.counts["lookups"] += 1
            self.counts["hit_tokens"] += len(hit) * self.block_size
            self.counts["missed_tokens"] += len(tokens) - len(hit) * self.block_size
        return hit

    def release(self, names: list[int]) -> None:
        """Drop the references `lookup` took."""
        with self._lock:
            for name in names:
                block = self._blocks.get(name)
                if block is not None:
                    block.refs -= 1

    def insert(self, tokens: Sequence[int], cache: KVCache, row: int = 0, variant: int = 0) -> None:
        """Store the whole blocks of `tokens` whose keys/values (under `variant`) are in `cache` row `row`."""
        names = block_names(tokens, self.block_size, variant)
        with self._lock:
            for i in reversed(range(len(names))):
                name, start = names[i], i * self.block_size
                if name in self._blocks:
                    self._blocks.move_to_end(name)
                    continue
                end = start + self.block_size
                block = _Block(cache.k[:, row, :, start:end].clone(), cache.v[:, row, :, start:end].clone())
                if not self._make_room(block.nbytes):
                    return  # everything left is in use, or the budget is smaller than a block
                self._blocks[name] = block
                self.bytes += block.nbytes
                self.counts["inserted_blocks"] += 1
            # Parents were inserted last, so they are the most recent: evicted after children.

    def _make_room(self, nbytes: int) -> bool:
        """Evict least recently used unreferenced blocks until `nbytes` more fit."""
        if self.bytes + nbytes <= self.max_bytes:
            return True
        for name in list(self._blocks):
            if self.bytes + nbytes <= self.max_bytes:
                break
            if self._blocks[name].refs == 0:
                self.bytes -= self._blocks.pop(name).nbytes
                self.counts["evicted_blocks"] += 1
        return self.bytes + nbytes <= self.max_bytes

    def clear(self) -> None:
        """Forget every unreferenced block."""
        with self._lock:
            for name in [n for n, b in self._blocks.items() if b.refs == 0]:
                self.bytes -= self._blocks.pop(name).nbytes

    def stats(self) -> dict[str, int]:
        """Blocks and bytes held, and the lookup/hit/eviction counters."""
        with self._lock:
            return {"blocks": len(self._blocks), "bytes": self.bytes, **self.counts}

    # ---- prefill through the store -------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, model, prompts: Sequence[Sequence[int]], extra: int, max_len: int | None,
                variants: Sequence[int] | None = None):
        """Like sampling.prefill: a cache holding every prompt and each row's last logits (B, V);
        cached prefixes are copied in, only the rest is computed. Repeated prompts (n samples
        of one request) are computed once. `variants`: each prompt's variant (variants.py)."""
        keys = list(zip(variants or [0] * len(prompts), map(tuple, prompts)))
        unique: dict[tuple[int, tuple[int, ...]], int] = {}
        for key in keys:
            unique.setdefault(key, len(unique))
        cache, logits = None, []
        for variant, p in unique:
            row_len = len(p) + max(extra, 1)
            one = model.new_cache(1, row_len if max_len is None else min(max_len, row_len))
            hit = self.lookup(p, variant)
            try:
                with self._lock:
                    blocks = [self._blocks[name] for name in hit]
                cached = len(hit) * self.block_size
                for i, block in enumerate(blocks):
                    start = i * self.block_size
                    one.k[:, 0, :, start:start + self.block_size] = block.k
                    one.v[:, 0, :, start:start + self.block_size] = block.v
            finally:
                self.release(hit)
            one.advance(cached)
            ids = torch.tensor([p[cached:]], dtype=torch.long, device=one.k.device)
            with running(model, [variant]):
                logits.append(model(ids, cache=one, last_only=True)[:, -1].float())
            self.insert(p, one, variant=variant)
            if cache is None:
                cache = one
            else:
                cache.extend(one)
        order = [unique[key] for key in keys]
        if order != list(range(len(unique))):
            cache.select(order)
        return cache, torch.cat(logits)[order]

    @staticmethod
    def supports(model) -> bool:
        """Whether the model decodes from a `KVCache`, whose rows this cache copies: the GPT
        family (imported and quantized ones included), not the RNNs or the n-gram."""
        return isinstance(model, GPT)
