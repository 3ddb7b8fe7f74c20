"""The language model protocol: the one interface every model here follows.

The trainer, the evaluator and every decoder are written against this and nothing else, so any
of them works with any model (transformer, RNN, n-gram):

- `model(idx)` maps token ids `idx`, a LongTensor (batch, time), to next-token logits
  (batch, time, vocab): `logits[b, t]` scores the token that follows `idx[b, :t+1]`.
- `model.new_cache(batch_size, max_len=None)` returns an empty decoding state for that many
  rows (a `KVCache` for the transformer, the hidden state for RNNs, the last n-1 tokens for the
  n-gram model). `model(idx, cache=cache)` consumes `idx` — a whole prompt (prefill) or one
  token per row (a decode step) — continuing from what the cache holds, updates the cache in
  place and returns logits for just the new positions. Feeding a sequence in pieces through a
  cache gives the same logits as one full forward (the tests check it for every model).
- Every cache has `length` (positions consumed so far), `batch_size`, `max_len` (None if
  unbounded) and `reset()`.
- `model.config` is the model's config dataclass; `model.config.to_dict()` is its `config.json`.

`check_idx` is the shared boundary check on the ids. Run: `pytest tests/models/test_protocol.py`.

    >>> import torch
    >>> check_idx(torch.tensor([[1, 2, 3]]), vocab_size=4)
    (1, 3)
    >>> check_idx(torch.tensor([[1, 9]]), vocab_size=4)
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: token id 9 is out of range for vocab_size 4 (ids must be 0..3); was the input encoded with the model's tokenizer?
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from lmstack.errors import ConfigError


@runtime_checkable
class Cache(Protocol):
    """What every model's decoding state offers."""

    length: int

    @property
    def batch_size(self) -> int: ...

    @property
    def max_len(self) -> int | None: ...

    def reset(self) -> None: ...


@runtime_checkable
class LanguageModel(Protocol):
    """What every model offers: ids (B, T) -> logits (B, T, V), optionally through a cache."""

    config: Any

    def __call__(self, idx: torch.Tensor, cache: Any = None) -> torch.Tensor: ...

    def new_cache(self, batch_size: int, max_len: int | None = None) -> Any: ...


def check_idx(idx: torch.Tensor, vocab_size: int) -> tuple[int, int]:
    """Validate a batch of token ids at the model boundary; return (batch, time)."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ConfigError(f"expected token ids as a (batch, time) tensor, got {shape}; use idx[None] for one sequence")
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ConfigError(f"token ids must be an integer tensor, got {idx.dtype}; use idx.long()")
    if idx.numel() == 0:
        raise ConfigError(f"expected at least one token, got shape {tuple(idx.shape)}")
    if torch.compiler.is_compiling():  # reading values back would break the compiled graph
        return idx.shape[0], idx.shape[1]
    lo, hi = (int(m) for m in torch.aminmax(idx))
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ConfigError(
            f"token id {bad} is out of range for vocab_size {vocab_size} (ids must be 0..{vocab_size - 1}); "
            "was the input encoded with the model's tokenizer?"
        )
    return idx.shape[0], idx.shape[1]
