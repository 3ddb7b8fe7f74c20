"""Rows of different lengths in one batch, through every model's cache: right-padded prefill
with `lengths`, then decode steps at each row's own position, must give each row the logits it
gets alone; `select` keeps and reorders rows (beam search, finished rows leaving a batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmstack.models import GPT, GPTConfig, NGramConfig, NGramLM, RNNConfig, RNNLM

V = 48


def gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32, **kw)).eval()


def ngram() -> NGramLM:
    rng = np.random.default_rng(0)
    return NGramLM(NGramConfig(vocab_size=V, order=3)).fit([rng.integers(0, V, 400).tolist()])


MODELS = {
    "gpt-learned": lambda: gpt(position="learned"),
    "gpt-rope-gqa": lambda: gpt(position="rope", n_kv_head=2),
    "gpt-alibi": lambda: gpt(position="alibi"),
    "gpt-nope-manual": lambda: gpt(position="none", attn_impl="manual"),
    "gpt-rope-window": lambda: gpt(position="rope", n_kv_head=2, sliding_window=3),
    "gpt-alibi-window-manual": lambda: gpt(position="alibi", sliding_window=4, attn_impl="manual"),
    "lstm": lambda: (torch.manual_seed(0), RNNLM(RNNConfig(cell="lstm", vocab_size=V, n_embd=16, hidden_size=24)))[1].eval(),
    "gru": lambda: (torch.manual_seed(0), RNNLM(RNNConfig(cell="gru", vocab_size=V, n_embd=16, hidden_size=24)))[1].eval(),
    "ngram": ngram,
}


def right_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
    return ids, torch.tensor([len(r) for r in rows])


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_ragged_prefill_and_decode_match_each_row_alone(name):
    model = MODELS[name]()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (5, 2, 9)]
    continuations = torch.randint(0, V, (3, 4), generator=g)
    cache = model.new_cache(3, 16)
    ids, lengths = right_pad(prompts)
    logits = model(ids, cache=cache, lengths=lengths)
    last = logits[torch.arange(3), lengths - 1]
    steps = [model(continuations[:, i:i + 1], cache=cache)[:, 0] for i in range(4)]
    for b, p in enumerate(prompts):
        alone = model(torch.tensor([p + continuations[b].tolist()]))[0]
        torch.testing.assert_close(last[b], alone[len(p) - 1], atol=1e-5, rtol=1e-5)
        for i in range(4):
            torch.testing.assert_close(steps[i][b], alone[len(p) + i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_select_reorders_and_drops_rows(name):
    model = MODELS[name]()
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    cache = model.new_cache(3, 16)
    ids, lengths = right_pad(prompts)
    model(ids, cache=cache, lengths=lengths)
    cache.select([2, 0, 0])  # row 1 leaves; row 0 is duplicated (two beams from one)
    nxt = torch.tensor([[10], [11], [12]])
    out = model(nxt, cache=cache)[:, 0]
    for row, (p, t) in enumerate(zip([prompts[2], prompts[0], prompts[0]], [10, 11, 12])):
        alone = model(torch.tensor([p + [t]]))[0, -1]
        torch.testing.assert_close(out[row], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 2])
def test_kv_cache_crop_per_row_and_overflow(window):
    model = gpt(position="rope", sliding_window=window)
    cache = model.new_cache(2, 8)
    model(torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]), cache=cache)
    cache.crop(torch.tensor([4, 2]))
    assert cache.length == 4 and cache.row_lengths.tolist() == [4, 2]
    with torch.no_grad():
        out = model(torch.tensor([[9], [9]]), cache=cache)[:, 0]
        torch.testing.assert_close(out[1], model(torch.tensor([[5, 6, 9]]))[0, -1], atol=1e-5, rtol=1e-5)
    from lmstack.errors import ConfigError
    with pytest.raises(ConfigError, match="KV cache overflow"):
        model(torch.ones(2, 4, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("window", [None, 3])
@torch.no_grad()
def test_extend_joins_rows_prefilled_apart(window):
    # Continuous batching: a request prefilled on its own joins a batch that is already decoding.
    model = gpt(position="rope", n_kv_head=2, sliding_window=window)
    g = torch.Generator().manual_seed(2)
    first, second = torch.randint(0, V, (2, 7), generator=g), torch.randint(0, V, (1, 3), generator=g)
    steps = torch.randint(0, V, (3, 5), generator=g)
    running = model.new_cache(2, 16)
    model(first, cache=running)
    model(steps[:2, :1], cache=running)  # the batch decodes a step before the newcomer arrives
    joining = model.new_cache(1, 24)
    model(second, cache=joining)
    running.extend(joining)
    assert running.max_len == 24 and running.lengths().tolist() == [8, 8, 3]
    out = [model(steps[:, i:i + 1], cache=running)[:, 0] for i in range(1, 5)]
    rows = [torch.cat([first[0], steps[0]]), torch.cat([first[1], steps[1]]),
            torch.cat([second[0], steps[2, 1:]])]
    starts = [8, 8, 3]
    for b, (row, start) in enumerate(zip(rows, starts)):
        alone = model(row[None])[0]
        for i in range(4):
            torch.testing.assert_close(out[i][b], alone[start + i], atol=1e-5, rtol=1e-5)
