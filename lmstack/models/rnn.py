"""Recurrent language models: an embedding, a stack of LSTM or GRU layers, a linear head.

The pre-transformer state of the art (Mikolov et al. 2010; Zaremba et al. 2014, "Recurrent
Neural Network Regularization"): each token's embedding updates a hidden state that summarizes
everything before it, and the head reads next-token logits off that state. The cell is an LSTM
(Hochreiter & Schmidhuber 1997) or a GRU (Cho et al. 2014), run by PyTorch's fused `nn.LSTM` /
`nn.GRU`. Dropout goes on the embeddings, between layers and before the head, as in Zaremba et
al.; `tie_embeddings` shares the head's weight with the embedding (Press & Wolf 2017, Inan et
al. 2017), which needs n_embd == hidden_size.

The language model protocol (protocol.py) holds: the decoding "cache" is the hidden state
itself (`RNNState`), so feeding a sequence in pieces equals feeding it whole, and a cache never
fills up (`max_len` is None).

    >>> import torch
    >>> model = RNNLM(RNNConfig(cell="gru", vocab_size=20, n_embd=8, hidden_size=16, n_layer=2))
    >>> model(torch.zeros(2, 5, dtype=torch.long)).shape
    torch.Size([2, 5, 20])
    >>> RNNConfig(n_embd=64, hidden_size=128, tie_embeddings=True)
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: tie_embeddings needs n_embd == hidden_size, got 64 and 128; set them equal or tie_embeddings=false

Run the tests: `pytest tests/models/test_rnn.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmstack.errors import ConfigError
from lmstack.models.config import ModelConfig, require, require_choice
from lmstack.models.protocol import check_idx, last_positions

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RNNConfig(ModelConfig):
    """Architecture of an `RNNLM`; `model_type` in config.json is the cell ("lstm" or "gru")."""

    cell: str = "lstm"           # "lstm" or "gru"
    vocab_size: int = 256        # token ids are 0..vocab_size-1
    n_embd: int = 128            # embedding size (the first layer's input)
    hidden_size: int = 256       # hidden state size of every layer
    n_layer: int = 2             # stacked recurrent layers
    dropout: float = 0.0         # on embeddings, between layers and before the head
    tie_embeddings: bool = False  # head shares the embedding matrix (needs n_embd == hidden_size)

    model_types = tuple(CELLS)

    @property
    def model_type(self) -> str:
        return self.cell

    def validate(self) -> None:
        require_choice("cell", self.cell, CELLS)
        for name in ("vocab_size", "n_embd", "hidden_size", "n_layer"):
            value = getattr(self, name)
            require(value >= 1, f"{name} must be at least 1, got {value}")
        require(0.0 <= self.dropout < 1.0, f"dropout {self.dropout} must be in [0, 1)")
        require(not self.tie_embeddings or self.n_embd == self.hidden_size,
                f"tie_embeddings needs n_embd == hidden_size, got {self.n_embd} and {self.hidden_size}; "
                "set them equal or tie_embeddings=false")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RNNConfig:
        """Like `ModelConfig.from_dict`; `model_type` ("lstm"/"gru") supplies `cell` if absent."""
        d = dict(d)
        if "model_type" in d and "cell" not in d:
            d["cell"] = d["model_type"]
        config = super().from_dict(d)
        require(d.get("model_type", config.cell) == config.cell,
                f"model_type {d.get('model_type')!r} disagrees with cell {config.cell!r}; make them equal")
        return config


class RNNState:
    """The decoding state of an `RNNLM`: the hidden state h (and, for an LSTM, the cell state c)."""

    def __init__(self, h: torch.Tensor, c: torch.Tensor | None = None) -> None:
        self.h = h      # (n_layer, batch, hidden_size)
        self.c = c      # same shape, LSTM only
        self.length = 0

    @property
    def batch_size(self) -> int:
        """Rows the state holds."""
        return self.h.size(1)

    @property
    def max_len(self) -> None:
        """A recurrent state never fills up."""
        return None

    def select(self, rows: torch.Tensor | list[int]) -> None:
        """Keep only these rows, in this order (repeats allowed): beam reordering, finished rows."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.h.device)
        self.h = self.h[:, rows]
        self.c = None if self.c is None else self.c[:, rows]

    def extend(self, other: RNNState) -> None:
        """Append the rows of `other` after these (requests joining a running batch)."""
        self.h = torch.cat([self.h, other.h], dim=1)
        self.c = None if self.c is None else torch.cat([self.c, other.c], dim=1)
        self.length = max(self.length, other.length)

    def reset(self) -> None:
        """Back to the zero state before the first token."""
        self.h = torch.zeros_like(self.h)
        self.c = None if self.c is None else torch.zeros_like(self.c)
        self.length = 0


class RNNLM(nn.Module):
    """LSTM or GRU language model: ids (B, T) -> next-token logits (B, T, vocab_size)."""

    config_class = RNNConfig

    def __init__(self, config: RNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else RNNConfig()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        # nn.LSTM applies `dropout` between layers only, so it is a no-op with one layer.
        self.rnn = CELLS[config.cell](
            config.n_embd, config.hidden_size, num_layers=config.n_layer, batch_first=True,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
        )
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        # Zaremba et al. initialize uniformly in ±0.1; nn.LSTM's own ±1/sqrt(hidden) is kept.
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)
        nn.init.zeros_(self.lm_head.bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        else:
            nn.init.uniform_(self.lm_head.weight, -0.1, 0.1)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> RNNState:
        """A zero hidden state for `batch_size` rows; `max_len` is accepted and ignored."""
        c = self.config
        weight = self.lm_head.weight
        zeros = torch.zeros(c.n_layer, batch_size, c.hidden_size, dtype=weight.dtype, device=weight.device)
        return RNNState(zeros, zeros.clone() if c.cell == "lstm" else None)

    def forward(self, idx: torch.Tensor, cache: RNNState | None = None,
                lengths: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab_size) for ids (B, T), continuing from the state in `cache` if given.

        `lengths` (B,) marks right padding: the state of row b is taken after its first
        lengths[b] tokens (a packed sequence), so padding never enters it. `last_only` returns
        (B, 1, vocab_size), each row's last real token's logits."""
        B, T = check_idx(idx)
        x = self.drop(self.wte(idx))
        if cache is None:
            out, _ = self.rnn(x)  # starts from a zero state
        else:
            if cache.batch_size != B:
                raise ConfigError(f"input has batch size {B} but the cache was made for {cache.batch_size}; "
                                  f"call model.new_cache({B})")
            state = cache.h if cache.c is None else (cache.h, cache.c)
            if lengths is None:
                out, state = self.rnn(x, state)
            else:
                packed = nn.utils.rnn.pack_padded_sequence(
                    x, torch.as_tensor(lengths).cpu(), batch_first=True, enforce_sorted=False)
                out, state = self.rnn(packed, state)
                out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
            cache.h, cache.c = (state, None) if cache.c is None else state
            cache.length += T
        if last_only:
            out = last_positions(out, lengths)
        return self.lm_head(self.drop(out))
