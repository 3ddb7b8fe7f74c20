"""The engine against itself across code paths: cached vs uncached, batched vs one by one,
streamed vs returned; sampling against the distribution it should draw from; bad settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError
from lmstack.infer import Engine, GenerationConfig
from lmstack.models import GPT, GPTConfig, NGramConfig, NGramLM, RNNConfig, RNNLM


@pytest.fixture(scope="module")
def engine(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    return Engine(model, tok)


def models(vocab: int) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    return {
        "gpt-rope": GPT(GPTConfig(vocab_size=vocab, block_size=48, n_layer=2, n_head=2, n_embd=32, position="rope")),
        "gpt-alibi": GPT(GPTConfig(vocab_size=vocab, block_size=48, n_layer=1, n_head=2, n_embd=32, position="alibi")),
        "lstm": RNNLM(RNNConfig(cell="lstm", vocab_size=vocab, n_embd=16, hidden_size=32)),
        "ngram": NGramLM(NGramConfig(vocab_size=vocab, order=3)).fit(
            [torch.randint(0, vocab, (300,), generator=g).tolist()]),
    }


def greedy_uncached(model, prompt: list[int], n: int) -> list[int]:
    """The textbook loop: the whole sequence through the model for every new token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


PROMPTS = [[5, 9, 2, 7, 1], [3], [8, 8, 4, 6, 2, 9, 9, 1, 0]]


@pytest.mark.parametrize("name", ["gpt-rope", "gpt-alibi", "lstm", "ngram"])
def test_cached_batched_greedy_equals_uncached_one_by_one(name):
    model = models(40)[name].eval()
    engine = Engine(model)  # no tokenizer: ids in, ids out, no end-of-text id
    batched = engine.generate(PROMPTS, temperature=0, max_new_tokens=12)
    for prompt, out in zip(PROMPTS, batched):
        assert out.tokens == greedy_uncached(model, prompt, 12)
        assert out.finish_reason == "length" and out.prompt_tokens == len(prompt)
        assert engine.generate(prompt, temperature=0, max_new_tokens=12).tokens == out.tokens


def test_top_k_1_is_greedy(engine):
    greedy = engine.generate("def main():", temperature=0, max_new_tokens=16)
    sampled = engine.generate("def main():", temperature=1.3, top_k=1, seed=4, max_new_tokens=16)
    assert sampled.tokens == greedy.tokens


def test_top_p_1_and_temperature_1_leave_the_distribution_unchanged(engine, tok):
    ids = tok.encode("import os\n")
    with torch.no_grad():
        reference = F.softmax(engine.model(torch.tensor([ids]))[0, -1], dim=-1)
    dist = engine.next_token_distribution(ids, temperature=1.0, top_p=1.0)
    assert torch.equal(dist, reference)
    assert not torch.equal(engine.next_token_distribution(ids, top_p=0.5), reference)


def test_same_seed_same_text_whatever_else_is_in_the_batch(engine):
    settings = dict(temperature=0.9, top_p=0.95, seed=1234, max_new_tokens=20)
    alone = engine.generate("class Foo:", **settings)
    again = engine.generate("class Foo:", **settings)
    in_batch = engine.generate(["x = [", "class Foo:", "import re, sys\nfrom os import path"], **settings)
    assert alone.tokens == again.tokens == in_batch[1].tokens
    assert engine.generate("class Foo:", **{**settings, "seed": 99}).tokens != alone.tokens


def test_stop_strings_across_tokens_never_leak(engine, tok):
    free = engine.generate("def f(x):", temperature=0.8, seed=5, max_new_tokens=40)
    text = free.text
    # A stop string that starts inside one token and ends inside another.
    bounds, pos = [], 0
    for t in free.tokens:
        pos += len(tok.decode([t]))
        bounds.append(pos)
    cut = next(b for b in bounds if 3 <= b < len(text) - 3)
    stop = text[cut - 2:cut + 2]
    expected = text[:text.index(stop)]
    stopped = engine.generate("def f(x):", temperature=0.8, seed=5, max_new_tokens=40, stop=[stop, "NEVER"])
    assert stopped.text == expected and stopped.finish_reason == "stop"
    deltas = list(engine.stream("def f(x):", temperature=0.8, seed=5, max_new_tokens=40, stop=[stop]))
    assert "".join(deltas) == expected
    assert all(stop not in d for d in deltas)
    assert engine.last.finish_reason == "stop"


def test_stream_joins_to_the_generated_text(engine):
    settings = dict(temperature=1.0, seed=7, max_new_tokens=30)
    full = engine.generate("# 日本語 émoji 🙂\n", **settings)
    deltas = list(engine.stream("# 日本語 émoji 🙂\n", **settings))
    assert "".join(deltas) == full.text and len(deltas) > 1


def test_end_of_text_and_min_new_tokens(engine, tok):
    eot = tok.eot_id
    out = engine.generate("x", logit_bias={eot: 100.0}, max_new_tokens=10)
    assert out.tokens == [] and out.text == "" and out.finish_reason == "stop"
    out = engine.generate("x", logit_bias={eot: 100.0}, min_new_tokens=3, max_new_tokens=10)
    assert len(out.tokens) == 3 and out.finish_reason == "stop"
    out = engine.generate("x", logit_bias={eot: 100.0}, ignore_eos=True, max_new_tokens=4)
    assert out.tokens == [eot] * 4 and out.finish_reason == "length"
    assert engine.generate("x", max_new_tokens=0).tokens == []


def test_context_full_ends_with_length(engine, tok):
    prompt = list(range(60))
    out = engine.generate(prompt, temperature=0, max_new_tokens=50, ignore_eos=True)
    assert len(out.tokens) == 64 - 60 and out.finish_reason == "length"


def test_logprobs_agree_with_scoring(engine):
    out = engine.generate("for i in range(", temperature=0.7, seed=3, max_new_tokens=12,
                          logprobs=True, top_logprobs=3)
    score = engine.score("for i in range(", out.tokens)
    assert score.token_logprobs == pytest.approx(out.logprobs, abs=1e-4)
    assert all(len(t) == 3 and t[0][1] >= t[1][1] >= t[2][1] for t in out.top_logprobs)
    assert all(lp <= alts[0][1] + 1e-6 for lp, alts in zip(out.logprobs, out.top_logprobs))


def test_best_of_keeps_the_highest_mean_logprob(engine):
    settings = dict(temperature=1.0, seed=11, max_new_tokens=8)
    best = engine.generate("while True:", best_of=5, num_return_sequences=2, **settings)
    assert len(best) == 2 and best[0].score >= best[1].score
    samples = [engine.generate("while True:", **{**settings, "seed": 11 + j}, logprobs=True) for j in range(5)]
    assert best[0].tokens == max(samples, key=lambda c: c.score).tokens
    longest = engine.generate("while True:", best_of=5, scorer=lambda p, c: len(c.text), **settings)
    assert len(longest.text) == max(len(s.text) for s in samples)


class FixedLM(torch.nn.Module):
    """Next-token logits that never depend on the input: a known distribution to sample from."""

    class Cache:
        def __init__(self, batch_size: int) -> None:
            self.length, self._b = 0, batch_size

        batch_size = property(lambda self: self._b)
        max_len = None

        def select(self, rows):
            self._b = len(rows)

        def reset(self):
            self.length = 0

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)
        self.config = GPTConfig(vocab_size=len(logits), block_size=1000, n_layer=1, n_head=1, n_embd=8)

    def new_cache(self, batch_size, max_len=None):
        return FixedLM.Cache(batch_size)

    def forward(self, idx, cache=None, lengths=None, last_only=False):
        if cache is not None:
            cache.length += idx.size(1)
        return self.logits.expand(idx.size(0), 1 if last_only else idx.size(1), -1)


@pytest.mark.parametrize("settings", [dict(), dict(top_p=0.8), dict(top_k=3, temperature=0.7),
                                      dict(min_p=0.2)])
def test_sampling_frequencies_match_the_filtered_distribution(settings):
    engine = Engine(FixedLM([2.0, 1.5, 1.0, 0.5, 0.0, -1.0]))
    expected = engine.next_token_distribution([0], **settings)
    torch.manual_seed(0)
    n = 3000
    outs = engine.generate([[0]] * n, max_new_tokens=1, **settings)  # seed None: fresh per row
    counts = torch.bincount(torch.tensor([o.tokens[0] for o in outs]), minlength=6).double()
    support = expected > 0
    assert counts[~support].sum() == 0  # filtered tokens are never drawn
    e = expected[support].double() * n
    chi2 = float(((counts[support] - e) ** 2 / e).sum())
    # 99.9% quantiles of chi-square with df = support - 1 (1..5 degrees of freedom).
    critical = {0: 0.0, 1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}[int(support.sum()) - 1]
    assert chi2 < critical, (chi2, counts.tolist(), expected.tolist())


def test_beam_width_1_is_greedy_and_beam_scores_at_least_greedy(engine):
    greedy = engine.generate("def area(r):", temperature=0, max_new_tokens=10, ignore_eos=True)
    beam1 = engine.generate("def area(r):", num_beams=1, temperature=0, max_new_tokens=10, ignore_eos=True)
    assert beam1.tokens == greedy.tokens
    beam = engine.generate("def area(r):", num_beams=4, max_new_tokens=10, ignore_eos=True,
                           length_penalty=0.0)
    assert engine.score("def area(r):", beam.tokens).logprob >= engine.score("def area(r):", greedy.tokens).logprob - 1e-4


def test_constrained_beam_contains_the_forced_words(engine):
    out = engine.generate("def area(r):", num_beams=4, force_words=["return"], max_new_tokens=16)
    assert "return" in out.text


@pytest.mark.parametrize("settings,name", [
    (dict(temperature=-0.5), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"), (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(num_beams=0), "num_beams"), (dict(stop=[""]), "stop"), (dict(nucleus=0.9), "unknown"),
])
def test_invalid_settings_name_the_setting(engine, settings, name):
    with pytest.raises(ConfigError, match=name):
        engine.generate("x", **settings)


def test_bad_prompts(engine):
    with pytest.raises(ConfigError, match="prompt 0 is empty"):
        engine.generate("")
    with pytest.raises(ConfigError, match="context is 64"):
        engine.generate(list(range(64)))
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        engine.generate([1, 10**6])


def test_config_round_trip_of_defaults():
    cfg = GenerationConfig.from_kwargs(GenerationConfig(temperature=0.5), top_k=5)
    assert (cfg.temperature, cfg.top_k, cfg.strategy) == (0.5, 5, "sample")


def test_processors_are_skipped_only_when_every_one_is_off():
    from lmstack.infer.processors import ProcessorSettings
    from lmstack.infer.step import is_passthrough

    assert is_passthrough(ProcessorSettings(temperature=0)) and is_passthrough(ProcessorSettings())
    assert not is_passthrough(ProcessorSettings(temperature=0.7))
    assert not is_passthrough(ProcessorSettings(temperature=0, repetition_penalty=1.2))
    assert not is_passthrough(ProcessorSettings(temperature=0, banned_token_ids=[3]))


def test_prompts_as_tensors_and_arrays(engine, tok):
    import numpy as np

    ids = tok.encode("import os")
    want = engine.generate(ids, temperature=0, max_new_tokens=5).tokens
    assert engine.generate(torch.tensor(ids), temperature=0, max_new_tokens=5).tokens == want
    assert engine.generate(np.array(ids), temperature=0, max_new_tokens=5).tokens == want
    batch = engine.generate(torch.tensor([ids, ids]), temperature=0, max_new_tokens=5)
    assert [c.tokens for c in batch] == [want, want]
    assert [c.tokens for c in engine.generate([np.array(ids)], temperature=0, max_new_tokens=5)] == [want]
    with pytest.raises(ConfigError, match="1-D .* or 2-D"):
        engine.generate(torch.zeros(1, 1, 2, dtype=torch.long))
