"""LSTM/GRU language models: protocol, incremental decoding through the hidden state, tying."""

from __future__ import annotations

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.models import RNNLM, RNNConfig, RNNState, num_params

from .helpers import cached_logits, randomize


def make(cell: str, **overrides) -> RNNLM:
    fields = dict(cell=cell, vocab_size=37, n_embd=16, hidden_size=24, n_layer=2)
    fields.update(overrides)
    return randomize(RNNLM(RNNConfig(**fields))).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_incremental_decoding_equals_full_forward(cell):
    model = make(cell, dropout=0.3)  # dropout must be inactive in eval mode
    idx = torch.randint(0, 37, (3, 15))
    with torch.no_grad():
        full = model(idx)
        assert full.shape == (3, 15, 37)
        for prefill in (0, 6):
            torch.testing.assert_close(cached_logits(model, idx, prefill), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_shapes_and_reset(cell):
    model = make(cell)
    state = model.new_cache(4, max_len=99)
    assert isinstance(state, RNNState)
    assert state.h.shape == (2, 4, 24)
    assert (state.c is not None) == (cell == "lstm")
    assert state.max_len is None and state.batch_size == 4
    idx = torch.randint(0, 37, (4, 5))
    with torch.no_grad():
        first = model(idx, cache=state)
        assert state.length == 5 and state.h.abs().sum() > 0
        state.reset()
        torch.testing.assert_close(model(idx, cache=state), first)
    with pytest.raises(ConfigError, match="batch size 4 but the cache was made for 2"):
        model(idx, cache=model.new_cache(2))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_future_tokens_do_not_change_earlier_logits(cell):
    model = make(cell)
    idx = torch.randint(0, 37, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (idx[:, 7] + 1) % 37
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


def test_parameter_count_matches_the_cell_equations():
    # LSTM layer: 4 gates, each W_ih (H×in), W_hh (H×H) and PyTorch's two biases (2H).
    # GRU layer: the same with 3 gates. Plus embedding V·E and head V·H + V.
    V, E, H = 37, 16, 24
    def cells(g):
        return g * (H * E + H * H + 2 * H) + g * (H * H + H * H + 2 * H)
    assert num_params(make("lstm")) == V * E + cells(4) + V * H + V
    assert num_params(make("gru")) == V * E + cells(3) + V * H + V
    assert num_params(make("gru"), non_embedding=True) == cells(3) + V


def test_tied_embeddings_share_storage_and_need_equal_sizes():
    model = make("lstm", n_embd=24, tie_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    assert make("lstm").lm_head.weight.data_ptr() != make("lstm").wte.weight.data_ptr()
    with pytest.raises(ConfigError, match="tie_embeddings needs n_embd == hidden_size, got 16 and 24"):
        RNNConfig(n_embd=16, hidden_size=24, tie_embeddings=True)


def test_dropout_active_only_in_training():
    model = make("gru", dropout=0.5)
    idx = torch.randint(0, 37, (2, 10))
    torch.testing.assert_close(model(idx), model(idx))
    model.train()
    assert not torch.allclose(model(idx), model(idx))
