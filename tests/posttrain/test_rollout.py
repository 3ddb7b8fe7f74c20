"""Rollouts through the engine: shared prefill gives the same samples as k separate prefills,
rows are laid out as logprobs.py scores them, the engine's log-probabilities equal a
teacher-forced forward's, and every row draws from its own seeded stream."""

from __future__ import annotations

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.infer.sampling import decode, prefill
from lmstack.models import GPT, GPTConfig
from lmstack.models.protocol import IGNORE_INDEX
from lmstack.posttrain.logprobs import token_logprobs
from lmstack.posttrain.rollout import collate_rollouts, rollout_rows, sample_rollouts


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                         n_embd=32, position="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                         dropout=0.0))


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok.encode("def f(x):"), tok.encode("import os\nimport sys"), tok.encode("class A:")]


SETTINGS = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 12, "seed": 7}


def test_shared_prefill_gives_the_rollouts_of_separate_prefills(model, tok, prompts):
    shared = sample_rollouts(model, tok, prompts, 4, SETTINGS)
    separate = sample_rollouts(model, tok, prompts, 4, SETTINGS, share_prefill=False)
    assert shared.tokens == separate.tokens
    assert shared.texts == separate.texts
    assert torch.equal(shared.input_ids, separate.input_ids)
    other = sample_rollouts(model, tok, prompts, 4, {**SETTINGS, "seed": 8})
    assert other.tokens != shared.tokens  # the comparison can fail: another seed, other samples


def test_prefill_of_repeated_prompts_equals_one_prefill_per_row(model, prompts):
    rows = [prompts[0], prompts[1], prompts[0], prompts[0], prompts[2], prompts[1]]
    cache, logits = prefill(model, rows, 4)
    plain_cache, plain_logits = prefill(model, rows, 4, share=False)
    assert torch.allclose(logits, plain_logits, atol=1e-5)
    assert torch.equal(cache.lengths(), plain_cache.lengths())
    for r, p in enumerate(rows):  # each row's keys/values over its own prompt
        assert torch.allclose(cache.k[:, r, :, :len(p)], plain_cache.k[:, r, :, :len(p)], atol=1e-5)
        assert torch.allclose(cache.v[:, r, :, :len(p)], plain_cache.v[:, r, :, :len(p)], atol=1e-5)


def test_rows_are_prompt_then_completion_with_shifted_labels(model, tok, prompts):
    r = sample_rollouts(model, tok, prompts, 3, SETTINGS)
    assert len(r) == 9 and r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for row in range(len(r)):
        p, n = len(prompts[row // 3]), int(r.lengths[row])
        assert r.input_ids[row, :p].tolist() == prompts[row // 3]
        assert r.input_ids[row, p:n].tolist() == r.tokens[row]
        trained = (r.labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert trained == list(range(p - 1, n - 1))
        assert r.labels[row, p - 1:n - 1].tolist() == r.tokens[row]
    assert r.mask.sum().item() == sum(len(t) for t in r.tokens) == int(r.completion_lengths.sum())


def test_a_stop_id_is_kept_as_the_last_trained_token(model, tok, prompts):
    free = sample_rollouts(model, tok, prompts, 8, SETTINGS)
    drawn = [t for row in free.tokens for t in row]
    stop = max(set(drawn), key=drawn.count)  # the commonest sampled token: some row stops on it
    r = sample_rollouts(model, tok, prompts, 8, {**SETTINGS, "stop_token_ids": [stop],
                                                 "max_new_tokens": 30})
    stopped = [i for i, why in enumerate(r.finish_reasons) if why == "stop"]
    assert stopped, r.finish_reasons
    ends = {stop, tok.special_tokens["<|endoftext|>"]}  # the stop id, and eos (the engine's)
    for i in stopped:
        assert r.tokens[i][-1] in ends and not ends & set(r.tokens[i][:-1])
    assert any(r.tokens[i][-1] == stop for i in stopped)


def test_engine_logprobs_equal_a_teacher_forced_forward(model, tok, prompts):
    r = sample_rollouts(model, tok, prompts, 2, {**SETTINGS, "top_p": 1.0, "logprobs": True})
    with torch.no_grad():
        logp = token_logprobs(model(r.input_ids), r.labels)   # (N, T)
    # the engine reports the raw model's log-probabilities of the drawn tokens
    rows = rollout_rows(Engine(model, tok), prompts, 2, {**SETTINGS, "top_p": 1.0, "logprobs": True})
    for _ in decode(model, rows):
        pass
    for i, row in enumerate(rows):
        p = int(r.prompt_lengths[i])
        ours = logp[i, p - 1:p - 1 + len(row.logprobs)]
        assert torch.allclose(ours, torch.tensor(row.logprobs), atol=1e-4), i


def test_rows_draw_from_their_own_streams(model, tok, prompts):
    r = sample_rollouts(model, tok, [prompts[0], prompts[0]], 1, SETTINGS)
    assert r.tokens[0] != r.tokens[1]  # the same prompt twice: two different samples


def test_train_mode_is_restored(model, tok, prompts):
    model.train()
    sample_rollouts(model, tok, prompts[:1], 2, SETTINGS)
    assert model.training
    model.eval()
    sample_rollouts(model, tok, prompts[:1], 2, SETTINGS)
    assert not model.training


def test_bad_input(model, tok, prompts):
    with pytest.raises(ConfigError, match="at least 1"):
        sample_rollouts(model, tok, prompts, 0, SETTINGS)
    with pytest.raises(ConfigError, match="empty"):
        sample_rollouts(model, tok, [[]], 2, SETTINGS)
    with pytest.raises(ConfigError, match="prompts·k"):
        collate_rollouts([[1]], [[2]], k=2)
