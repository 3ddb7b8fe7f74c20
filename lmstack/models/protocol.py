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
- `model(idx, cache=cache, lengths=lengths)`: `lengths` (B,) marks right padding, row b's real
  tokens being its first lengths[b]; the cache takes in only those (rows of different lengths
  in one batch), and logits at padded positions are meaningless.
- `model(idx, ..., last_only=True)` returns (B, 1, vocab): the logits of each row's last real
  token only (position lengths[b] - 1, or T - 1), all a decoder's prefill needs.
- Every cache has `length` (positions consumed so far), `batch_size`, `max_len` (None if
  unbounded) and `reset()`.
- `model.config` is the model's config dataclass; `model.config.to_dict()` is its `config.json`.

`check_idx` is every forward's cheap check of the ids' shape and dtype. Their *values* are
checked once, where ids enter, not on every forward (that would read them back from the device,
a host sync per decode step): `Engine.encode` checks prompt ids against the vocabulary, and the
trainer reads shards whose tokenizer fingerprint the loader checks, with a model whose
vocab_size `lmstack.train.loop.build` checks is at least the tokenizer's.
Run: `pytest tests/models/test_protocol.py`.

    >>> import torch
    >>> check_idx(torch.tensor([[1, 2, 3]]))
    (1, 3)
    >>> check_idx(torch.tensor([1, 2]))
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: expected token ids as a (batch, time) tensor, got (2,); use idx[None] for one sequence
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError

IGNORE_INDEX = -100  # the label of an untrained position: F.cross_entropy's default ignore_index


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

    def __call__(self, idx: torch.Tensor, cache: Any = None, lengths: torch.Tensor | None = None,
                 last_only: bool = False) -> torch.Tensor: ...

    def new_cache(self, batch_size: int, max_len: int | None = None) -> Any: ...


def model_device(model: Any) -> torch.device:
    """Where the model's weights live (the CPU for a model without tensors, like an empty
    n-gram): the one place every caller asks."""
    tensors = itertools.chain(getattr(model, "parameters", tuple)(), getattr(model, "buffers", tuple)())
    return next((t.device for t in tensors), torch.device("cpu"))


def check_idx(idx: torch.Tensor) -> tuple[int, int]:
    """Check that token ids are a non-empty integer (batch, time) tensor; return (batch, time).
    Only metadata is read: nothing waits for the device."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ConfigError(f"expected token ids as a (batch, time) tensor, got {shape}; use idx[None] for one sequence")
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ConfigError(f"token ids must be an integer tensor, got {idx.dtype}; use idx.long()")
    if idx.numel() == 0:
        raise ConfigError(f"expected at least one token, got shape {tuple(idx.shape)}")
    return idx.shape[0], idx.shape[1]


def last_positions(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, T, ...) -> (B, 1, ...): each row's last real position (lengths[b] - 1, else T - 1),
    what `last_only=True` returns.

    >>> last_positions(torch.arange(6).view(2, 3), torch.tensor([1, 3]))
    tensor([[0],
            [5]])
    """
    if lengths is None:
        return x[:, -1:]
    last = torch.as_tensor(lengths, device=x.device) - 1
    return x[torch.arange(x.size(0), device=x.device), last, None]


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in nats of logits (..., V) against target ids (...), computed in float32 (or wider):
    the "mean" or "sum" over every token, or "none": one value per token, in the targets' shape.
    The one definition the trainer, the evaluator and perplexity share.

    >>> uniform = torch.zeros(1, 2, 4)  # (B, T, V): every token has p = 1/4, so the loss is ln 4
    >>> round(float(next_token_loss(uniform, torch.tensor([[0, 3]]))), 4)
    1.3863
    >>> next_token_loss(uniform, torch.tensor([[0, 3]]), reduction="none").shape
    torch.Size([1, 2])
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays float64
    flat = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),  # (B·T, V) vs (B·T,)
                           reduction=reduction)
    return flat.view(targets.shape) if reduction == "none" else flat
