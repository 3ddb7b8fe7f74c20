"""Speculative decoding against plain decoding: greedy token for token (draft model, prompt
lookup), every stopping rule, streaming; sampling against the target's exact distribution with a
chi-square test that the draft's own distribution fails; bad input."""

from __future__ import annotations

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.infer.speculative import SpeculativeDecoder, accept_reject, prompt_lookup
from lmstack.models import GPT, GPTConfig, RNNConfig, RNNLM

torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared 2-core machine


def gpt(vocab: int, n_layer: int, n_embd: int, seed: int, block_size: int = 96, std: float = 0.1) -> GPT:
    torch.manual_seed(seed)
    # untied, wide init: random models whose argmax depends on the context (tied embeddings at
    # the default init just repeat the last token, so any two of them agree on everything)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=2,
                         n_embd=n_embd, position="rope", norm="rmsnorm", mlp="swiglu",
                         tie_embeddings=False, init_std=std)).eval()


def noisy_copy(model: GPT, scale: float, seed: int) -> GPT:
    """The same model with noise on every weight: a draft that agrees often, not always."""
    g = torch.Generator().manual_seed(seed)
    copy = GPT(model.config).eval()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp(min=1e-3))
    return copy


@pytest.fixture(scope="module")
def target(tok):
    return Engine(gpt(tok.vocab_size, 2, 32, seed=0), tok)


@pytest.fixture(scope="module")
def drafts(tok, target):
    return {"noisy": Engine(noisy_copy(target.model, 0.3, seed=1), tok),
            "small": Engine(gpt(tok.vocab_size, 1, 16, seed=2), tok)}


PROMPTS = ["def main():\n    return", "import os\nimport sys\nimport os\nimport", "x"]


def spec_and_plain(target, decoder, prompt, **settings):
    plain = target.generate(prompt, **settings)
    return decoder.generate(prompt, **settings), plain


@pytest.mark.parametrize("gamma", [1, 4])
@pytest.mark.parametrize("which", ["noisy", "small"])
def test_greedy_with_a_draft_model_is_plain_greedy(target, drafts, which, gamma):
    decoder = target.speculative(draft=drafts[which], gamma=gamma)
    rates = []
    for prompt in PROMPTS:
        spec, plain = spec_and_plain(target, decoder, prompt, temperature=0, max_new_tokens=24,
                                     ignore_eos=True)
        assert spec.tokens == plain.tokens
        assert (spec.text, spec.finish_reason, spec.prompt_tokens) == \
            (plain.text, plain.finish_reason, plain.prompt_tokens)
        s = decoder.stats
        assert s.new_tokens == 24 and s.accepted <= s.proposed
        assert s.target_passes == 24 - s.accepted  # every pass yields 1 + its accepted tokens
        rates.append(s.acceptance_rate)
    if which == "noisy":  # both accepted and rejected drafts were exercised
        assert 0 < min(rates) and max(rates) < 1


@pytest.mark.parametrize("ngram", [1, 3])
def test_greedy_with_prompt_lookup_is_plain_greedy(target, ngram):
    decoder = target.speculative(prompt_lookup=ngram, gamma=4)
    for prompt in PROMPTS:
        spec, plain = spec_and_plain(target, decoder, prompt, temperature=0, max_new_tokens=40,
                                     ignore_eos=True)
        assert spec.tokens == plain.tokens and spec.text == plain.text
    assert decoder.stats.proposed > 0 and decoder.stats.draft_passes == 0


def test_prompt_lookup_accepts_on_a_repetitive_model(tok):
    # a model that has learnt to repeat: tied embeddings at the default init copy the last token
    torch.manual_seed(0)
    parrot = Engine(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2,
                                  n_embd=32)).eval(), tok)
    decoder = parrot.speculative(prompt_lookup=2, gamma=5)
    spec, plain = spec_and_plain(parrot, decoder, "a b a b a b", temperature=0, max_new_tokens=30)
    assert spec.tokens == plain.tokens
    assert decoder.stats.acceptance_rate > 0.5 and decoder.stats.target_passes < 30


@pytest.mark.parametrize("max_new", [0, 1, 2, 4, 5, 9])
def test_max_new_tokens_edges(target, drafts, max_new):
    for decoder in (target.speculative(draft=drafts["noisy"], gamma=4),
                    target.speculative(prompt_lookup=2, gamma=4)):
        spec, plain = spec_and_plain(target, decoder, PROMPTS[1], temperature=0,
                                     max_new_tokens=max_new, ignore_eos=True)
        assert spec.tokens == plain.tokens and len(spec.tokens) == max_new
        assert spec.finish_reason == plain.finish_reason == "length"


def test_context_end(target, drafts):
    ctx = target.model.config.block_size
    prompt = list(range(1, ctx - 3))  # room for 3 tokens
    decoder = target.speculative(draft=drafts["noisy"], gamma=6)
    spec, plain = spec_and_plain(target, decoder, prompt, temperature=0, max_new_tokens=20)
    assert spec.tokens == plain.tokens and spec.finish_reason == "length"
    assert len(prompt) + len(spec.tokens) == ctx


def test_stop_strings_and_stop_ids(target, drafts):
    decoder = target.speculative(draft=drafts["noisy"], gamma=4)
    full = target.generate(PROMPTS[0], temperature=0, max_new_tokens=40, ignore_eos=True)
    stop = full.text[len(full.text) // 2:][:3]
    stop_id = full.tokens[12]
    cases = [dict(stop=[stop]), dict(stop_token_ids=[stop_id]), dict(stop=["\x00never", stop])]
    for extra in cases:
        for d in (decoder, target.speculative(prompt_lookup=1)):
            spec, plain = spec_and_plain(target, d, PROMPTS[0], temperature=0, max_new_tokens=40,
                                         ignore_eos=True, **extra)
            assert (spec.tokens, spec.text, spec.finish_reason) == \
                (plain.tokens, plain.text, plain.finish_reason)
            assert spec.finish_reason == "stop"


def test_stream_joins_to_the_text_and_never_shows_a_stop_string(target, drafts):
    decoder = target.speculative(draft=drafts["noisy"], gamma=3)
    full = target.generate(PROMPTS[0], temperature=0, max_new_tokens=30, ignore_eos=True)
    stop = full.text[-6:-3]
    deltas = list(decoder.stream(PROMPTS[0], temperature=0, max_new_tokens=30, ignore_eos=True,
                                 stop=[stop]))
    plain = list(target.stream(PROMPTS[0], temperature=0, max_new_tokens=30, ignore_eos=True,
                               stop=[stop]))
    assert "".join(deltas) == "".join(plain) == decoder.last.text
    assert all(stop not in d for d in deltas)


def test_processors_apply_to_both_sides(target, drafts):
    decoder = target.speculative(draft=drafts["small"], gamma=3)
    settings = dict(max_new_tokens=20, ignore_eos=True, repetition_penalty=1.5,
                    banned_token_ids=[5, 6], no_repeat_ngram_size=2)
    spec, plain = spec_and_plain(target, decoder, PROMPTS[1], temperature=0, **settings)
    assert spec.tokens == plain.tokens
    # top_k=1 sampling is greedy: the filters shape p and q alike
    sampled = decoder.generate(PROMPTS[1], temperature=1.3, top_k=1, seed=3, **settings)
    assert sampled.tokens == plain.tokens


def test_seeded_sampling_is_reproducible_and_logprobs_are_the_targets(target, drafts):
    decoder = target.speculative(draft=drafts["noisy"], gamma=3)
    a = decoder.generate(PROMPTS[0], temperature=0.9, top_p=0.95, seed=7, max_new_tokens=24,
                         ignore_eos=True, logprobs=True)
    b = decoder.generate(PROMPTS[0], temperature=0.9, top_p=0.95, seed=7, max_new_tokens=24,
                         ignore_eos=True, logprobs=True)
    assert a.tokens == b.tokens and len(a.tokens) == 24
    score = target.score(PROMPTS[0], a.tokens)
    assert a.logprobs == pytest.approx(score.token_logprobs, abs=1e-4)


def test_a_list_of_prompts(target):
    decoder = target.speculative(prompt_lookup=2)
    outs = decoder.generate(PROMPTS, temperature=0, max_new_tokens=10, ignore_eos=True)
    plain = target.generate(PROMPTS, temperature=0, max_new_tokens=10, ignore_eos=True)
    assert [o.tokens for o in outs] == [p.tokens for p in plain]
    assert [o.index for o in outs] == [0, 1, 2]


# ---- the distribution ---------------------------------------------------------------------


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of `counts` against `probs` (cells with an expected
    count under 5 pooled into one); an observed count where probs is 0 gives 0.0."""
    n = counts.sum()
    expected = probs.double().flatten() * n
    observed = counts.double().flatten()
    if bool((observed[expected == 0] > 0).any()):
        return 0.0
    small = expected < 5
    e = torch.cat([expected[~small], expected[small].sum().view(1)])
    o = torch.cat([observed[~small], observed[small].sum().view(1)])
    keep = e > 0
    e, o = e[keep], o[keep]
    stat = ((o - e) ** 2 / e).sum()
    df = len(e) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def test_accept_reject_draws_exactly_from_p():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]])
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    firsts = {"spec": torch.zeros(4), "lookup": torch.zeros(4), "naive": torch.zeros(4)}
    for _ in range(3000):
        d = int(torch.multinomial(q[0], 1, generator=g))
        n, t = accept_reject(p, q, [d], g)
        firsts["spec"][d if n == 1 else t] += 1
        firsts["naive"][d] += 1  # always accepting the draft: q's distribution, not p's
        n, t = accept_reject(p, None, [2], g)  # a deterministic drafter proposing 2
        firsts["lookup"][2 if n == 1 else t] += 1
    assert chi_square_p(firsts["spec"], p[0]) > 1e-3
    assert chi_square_p(firsts["lookup"], p[0]) > 1e-3
    assert chi_square_p(firsts["naive"], p[0]) < 1e-6


def two_token_distribution(engine: Engine, prompt: list[int], **settings) -> torch.Tensor:
    """Exact P(first two tokens) (V, V) under the engine's processed distribution."""
    first = engine.next_token_distribution(prompt, **settings)
    return torch.stack([first[a] * engine.next_token_distribution(prompt + [a], **settings)
                        for a in range(len(first))])


def test_speculative_sampling_matches_the_target_distribution():
    settings = dict(temperature=0.8, top_k=6)  # processors shape p and q alike
    V, prompt, n = 8, [1, 2, 3], 1000
    target = Engine(gpt(V, 1, 16, seed=10, std=0.5))
    draft = Engine(gpt(V, 1, 16, seed=11, std=0.5))  # deliberately different
    exact = two_token_distribution(target, prompt, **settings)
    draft_exact = two_token_distribution(draft, prompt, **settings)
    assert (exact - draft_exact).abs().sum() > 0.3  # the draft really is another distribution
    decoder = target.speculative(draft=draft, gamma=2)
    counts = torch.zeros(V, V)
    accepted = 0
    for seed in range(n):
        out = decoder.generate(prompt, max_new_tokens=2, seed=seed, **settings)
        counts[out.tokens[0], out.tokens[1]] += 1
        accepted += decoder.stats.accepted
    assert 0 < accepted < n  # acceptances and rejections both happened
    assert chi_square_p(counts, exact) > 1e-3
    # the test can fail: the same counts are far from the draft's distribution, and samples
    # of the draft model itself are far from the target's
    assert chi_square_p(counts, draft_exact) < 1e-6
    naive = torch.zeros(V, V)
    for seed in range(n // 3):
        t = draft.generate(prompt, max_new_tokens=2, seed=seed, **settings).tokens
        naive[t[0], t[1]] += 1
    assert chi_square_p(naive, exact) < 1e-6


def test_prompt_lookup_sampling_matches_the_target_distribution():
    V, prompt, n = 8, [1, 2, 3, 1, 2, 3, 1, 2], 800
    target = Engine(gpt(V, 1, 16, seed=12, std=0.5))
    exact = two_token_distribution(target, prompt, temperature=1.0)
    decoder = target.speculative(prompt_lookup=2, gamma=2)  # always proposes 3, 1
    counts = torch.zeros(V, V)
    for seed in range(n):
        t = decoder.generate(prompt, max_new_tokens=2, seed=seed, temperature=1.0).tokens
        counts[t[0], t[1]] += 1
    assert chi_square_p(counts, exact) > 1e-3


# ---- pure helpers and bad input -----------------------------------------------------------


def test_prompt_lookup_helper():
    assert prompt_lookup([1, 2, 3, 4, 1, 2], 2, 3) == [3, 4, 1]
    assert prompt_lookup([1, 2, 3, 4, 1, 2], 2, 0) == []
    assert prompt_lookup([4], 3, 3) == []
    assert prompt_lookup([9, 9, 9], 2, 5) == [9]  # (9, 9) at 0 is followed by one 9


def test_bad_input_is_a_clear_error(target, drafts, tok, corpus):
    from lmstack.tokenizer import train_bpe

    for gamma in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="gamma"):
            target.speculative(draft=drafts["small"], gamma=gamma)
    other_tok = train_bpe(corpus[:3], vocab_size=tok.vocab_size, progress=False, workers=1)
    foreign = Engine(gpt(tok.vocab_size, 1, 16, seed=3), other_tok)
    with pytest.raises(ConfigError, match="tokenizer"):
        target.speculative(draft=foreign)
    with pytest.raises(ConfigError, match="vocabulary"):
        target.speculative(draft=gpt(tok.vocab_size + 5, 1, 16, seed=3))
    with pytest.raises(ConfigError, match="exactly one drafter"):
        SpeculativeDecoder(target)
    with pytest.raises(ConfigError, match="exactly one drafter"):
        target.speculative(drafts["small"], prompt_lookup=3)
    with pytest.raises(ConfigError, match="prompt_lookup"):
        target.speculative(prompt_lookup=0)
    with pytest.raises(ConfigError, match="greedy and sampling"):
        target.speculative(prompt_lookup=2).generate("x", num_beams=2)
    rnn = Engine(RNNLM(RNNConfig(cell="gru", vocab_size=tok.vocab_size, n_embd=8, hidden_size=8)), tok)
    with pytest.raises(ConfigError, match="RNN"):
        rnn.speculative(prompt_lookup=2)
    with pytest.raises(ConfigError, match="draft must be"):
        target.speculative(draft=rnn)
    with pytest.raises(ConfigError, match="no prompts"):
        target.speculative(prompt_lookup=2).generate([])
