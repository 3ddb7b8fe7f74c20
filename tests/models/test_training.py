"""Smoke tests: a few optimizer steps on a small repetitive corpus make every model's loss fall."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmstack.models import GPTConfig, NGramConfig, RNNConfig, build_model

TEXT = b"the cat sat on the mat. the dog sat on the log. " * 40
DATA = torch.tensor(list(TEXT))


def batches(n: int, batch_size: int = 8, block: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        starts = torch.randint(0, len(DATA) - block - 1, (batch_size,), generator=gen)
        x = torch.stack([DATA[s : s + block] for s in starts])
        y = torch.stack([DATA[s + 1 : s + block + 1] for s in starts])
        yield x, y


def loss_of(model, x, y) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


@pytest.mark.parametrize("config", [
    GPTConfig(n_layer=2, n_embd=32, n_head=4, block_size=32),  # GPT-2 style
    GPTConfig(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, block_size=32, position="rope", norm="rmsnorm",
              mlp="swiglu", bias=False, tie_embeddings=False),  # Llama style
    GPTConfig(n_layer=2, n_embd=32, n_head=4, n_kv_head=1, block_size=32, position="alibi", mlp="relu2",
              qk_norm=True, dropout=0.1, attn_impl="manual"),
    RNNConfig(cell="lstm", n_embd=32, hidden_size=64, n_layer=1),
    RNNConfig(cell="gru", n_embd=32, hidden_size=32, n_layer=1, tie_embeddings=True, dropout=0.1),
], ids=["gpt2", "llama", "alibi-mqa", "lstm", "gru"])
def test_loss_falls(config):
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x_eval, y_eval = next(batches(1, seed=99))
    model.eval()
    with torch.no_grad():
        before = loss_of(model, x_eval, y_eval).item()
    model.train()
    for x, y in batches(80):
        loss = loss_of(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss_of(model, x_eval, y_eval).item()
    assert before > 5.0  # near log(256) = 5.55: an untrained model knows nothing
    assert after < 0.5 * before


@pytest.mark.parametrize("smoothing", ["kneser_ney", "add_k"])
def test_ngram_fit_lowers_loss(smoothing):
    model = build_model(NGramConfig(order=4, smoothing=smoothing, k=0.01))
    x, y = next(batches(1, seed=99))
    before = loss_of(model, x, y).item()
    assert before == pytest.approx(np.log(256), rel=1e-5)  # unfitted: uniform
    model.fit(DATA.numpy())
    assert loss_of(model, x, y).item() < 0.3 * before
