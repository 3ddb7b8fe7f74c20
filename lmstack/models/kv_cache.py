"""The key/value cache that makes transformer decoding cost O(T) per token instead of O(T²).

When a decoder generates token t+1, the keys and values of tokens 0..t do not change (the model
is causal), so recomputing them every step is waste. The cache keeps them: one preallocated
tensor per layer for keys and one for values, shaped (batch, n_kv_head, max_len, head_dim), and
`length`, how many positions are filled. A forward pass with a cache

1. checks there is room (`check_room`),
2. in every layer writes the new keys/values at positions length..length+T-1 and attends over
   all of 0..length+T-1 (`update`),
3. then moves `length` on by T (`advance`).

Prefill is a forward over the whole prompt; each decode step is a forward over one token per
row. Positions (RoPE angles, ALiBi distances, learned `wpe` rows) start at `length`. Keys are
stored *after* RoPE, so they never need rotating again. With grouped-query attention only the
n_kv_head shared heads are stored: that saving is the point of GQA (Ainslie et al. 2023).

Rows may hold different lengths (prompts of different lengths batched together, or rows of a
continuous batch that joined at different times). `length` is then the longest row, and
`row_lengths` (a LongTensor (B,), None while all rows are equal) says where each row is: a
forward writes row b's new keys at row_lengths[b].., its queries sit at those positions, and
the model masks every key slot beyond the query's own position, so the stale slots of shorter
rows are never read. `select(rows)` keeps or reorders rows (beam search, finished rows leaving
a batch); `extend(other)` appends the rows of another cache (requests joining a running batch,
lmstack/serve/scheduler.py).

A sliding window (`GPTConfig.sliding_window`, Mistral) lives in the attention mask, not here:
the cache keeps every position up to max_len, so slot = position still holds. A rolling buffer
of `window` slots would use less memory, but could not `crop` back over slots it had already
overwritten (speculative decoding rejects drafts that way) and would need per-row wrap-around
for ragged rows.

    >>> import torch
    >>> cache = KVCache(n_layer=1, batch_size=1, n_kv_head=1, max_len=4, head_dim=2)
    >>> k, v = cache.update(0, torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2)); cache.advance(3)
    >>> k.shape, cache.length
    (torch.Size([1, 1, 3, 2]), 3)
    >>> cache.check_room(batch_size=1, n_new=2)
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: KV cache overflow: 3 cached + 2 new tokens exceed max_len 4; create the cache with a larger max_len (model.new_cache(batch_size, max_len))

Run its doctests: `pytest lmstack/models/kv_cache.py`.
"""

from __future__ import annotations

import torch

from lmstack.errors import ConfigError


class KVCache:
    """Preallocated per-layer keys and values plus the number of positions filled."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1 or max_len < 1:
            raise ConfigError(f"KV cache needs batch_size >= 1 and max_len >= 1, got {batch_size} and {max_len}")
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.row_lengths: torch.Tensor | None = None  # per-row lengths when rows differ
        self._write_pos: torch.Tensor | None = None   # (B, T) slots of the forward in progress

    @property
    def batch_size(self) -> int:
        """Rows the cache holds."""
        return self.k.size(1)

    @property
    def max_len(self) -> int:
        """Positions the cache can hold per row."""
        return self.k.size(3)

    def check_room(self, batch_size: int, n_new: int) -> None:
        """Raise `ConfigError` unless `n_new` more positions of `batch_size` rows fit."""
        if batch_size != self.batch_size:
            raise ConfigError(
                f"input has batch size {batch_size} but the cache was made for {self.batch_size}; "
                f"call model.new_cache({batch_size}, max_len)"
            )
        if self.length + n_new > self.max_len:
            raise ConfigError(
                f"KV cache overflow: {self.length} cached + {n_new} new tokens exceed max_len "
                f"{self.max_len}; create the cache with a larger max_len (model.new_cache(batch_size, max_len))"
            )

    def positions(self, n_new: int) -> torch.Tensor | None:
        """(B, n_new) positions of the next forward's tokens if rows differ in length, else None.

        The model calls this before its layers; `update` then writes at these positions."""
        if self.row_lengths is None:
            self._write_pos = None
            return None
        pos = self.row_lengths[:, None] + torch.arange(n_new, device=self.row_lengths.device)
        self._write_pos = pos  # check_room has checked the longest row fits
        return pos

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (B, n_kv_head, T, head_dim) of `layer`; return all of them so far."""
        T = k.size(2)
        if self._write_pos is None:  # all rows at `length`: one slice write
            end = self.length + T
            self.k[layer, :, :, self.length : end] = k
            self.v[layer, :, :, self.length : end] = v
        else:  # row b writes at its own slots row_lengths[b]..
            end = int(self._write_pos[:, -1].max()) + 1
            index = self._write_pos[:, None, :, None].expand(-1, k.size(1), -1, k.size(3))
            self.k[layer].scatter_(2, index, k)
            self.v[layer].scatter_(2, index, v)
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int, lengths: torch.Tensor | None = None) -> None:
        """Mark `n` more positions as filled (the model calls this after its last layer);
        `lengths` (B,), if given, says how many of the n each row really consumed (right padding)."""
        if lengths is None and self.row_lengths is None:
            self.length += n
            return
        rows = self.lengths() + (n if lengths is None else lengths.to(self.k.device, torch.long))
        self._set_rows(rows)

    def _set_rows(self, rows: torch.Tensor) -> None:
        lo, hi = (int(x) for x in torch.aminmax(rows))
        self.length = hi
        self.row_lengths = None if lo == hi else rows
        self._write_pos = None

    def crop(self, length: int | torch.Tensor) -> None:
        """Forget every position from `length` on (e.g. rejected speculative tokens); a (B,)
        tensor crops each row to its own length."""
        current = self.lengths()
        new = torch.as_tensor(length, dtype=torch.long, device=self.k.device).expand(self.batch_size)
        if bool((new < 0).any() or (new > current).any()):
            raise ConfigError(f"cannot crop a cache of lengths {current.tolist()} to {new.tolist()}")
        self._set_rows(new.clone())

    def lengths(self) -> torch.Tensor:
        """(B,) positions filled in each row."""
        if self.row_lengths is not None:
            return self.row_lengths
        return torch.full((self.batch_size,), self.length, dtype=torch.long, device=self.k.device)

    def extend(self, other: KVCache) -> None:
        """Append the rows of `other` (same model) after these; the longer max_len wins.

        Each row keeps its own length, so a request prefilled on its own can join a batch
        that is already decoding (continuous batching)."""
        if other.k.shape[::2] != self.k.shape[::2] or other.k.size(4) != self.k.size(4):
            raise ConfigError(f"cannot join caches of shapes {tuple(other.k.shape)} and {tuple(self.k.shape)}: "
                              "they come from different models")
        max_len = max(self.max_len, other.max_len)

        def grown(t: torch.Tensor) -> torch.Tensor:
            pad = max_len - t.size(3)
            return t if pad == 0 else torch.nn.functional.pad(t, (0, 0, 0, pad))

        lengths = torch.cat([self.lengths(), other.lengths().to(self.k.device)])
        self.k = torch.cat([grown(self.k), grown(other.k)], dim=1)
        self.v = torch.cat([grown(self.v), grown(other.v)], dim=1)
        self._set_rows(lengths)

    def select(self, rows: torch.Tensor | list[int]) -> None:
        """Keep only these rows, in this order (repeats allowed): beam reordering, dropping
        finished rows."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        if self.row_lengths is not None:
            self._set_rows(self.row_lengths[rows])

    def reset(self) -> None:
        """Empty the cache for reuse with a new batch of prompts."""
        self.length = 0
        self.row_lengths = None
        self._write_pos = None
