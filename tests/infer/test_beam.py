"""Beam search against greedy decoding, against uncached recomputation and on constructed
models whose best sequence is known; constrained beam search and its `ConstraintState`; bad
settings (against transformers: test_beam_hf.py). Run: `.venv/bin/python -m pytest -q tests/infer/test_beam.py lmstack/infer/beam.py --doctest-modules`."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lmstack.errors import ConfigError
from lmstack.infer.beam import ConstraintState, Hypothesis, beam_search
from lmstack.infer.config import GenerationConfig
from lmstack.infer.step import DecodePlan
from lmstack.models import GPT, GPTConfig, NGramConfig, NGramLM, RNNConfig, RNNLM

V = 32


def gpt(block_size: int = 64) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=2, n_embd=32)).eval()


def lstm() -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(RNNConfig(cell="lstm", vocab_size=V, n_embd=16, hidden_size=32)).eval()


def ngram() -> NGramLM:
    g = torch.Generator().manual_seed(0)
    # A skewed bigram chain, so the n-gram model has clear favourites to follow.
    seq = [0]
    for _ in range(600):
        follow = torch.rand(1, generator=g) < 0.7
        seq.append((seq[-1] * 5 + 3) % V if follow else int(torch.randint(0, V, (1,), generator=g)))
    return NGramLM(NGramConfig(vocab_size=V, order=3)).fit([seq])


MODELS = {"gpt": gpt, "lstm": lstm, "ngram": ngram}


class LastTokenCache:
    """The decoding state of `TableLM`: each row's last token."""

    def __init__(self, batch_size: int, max_len: int | None) -> None:
        self.last = torch.zeros(batch_size, dtype=torch.long)
        self.length = 0
        self._max_len = max_len

    @property
    def batch_size(self) -> int:
        return self.last.numel()

    @property
    def max_len(self) -> int | None:
        return self._max_len

    def select(self, rows: list[int]) -> None:
        self.last = self.last[torch.as_tensor(rows, dtype=torch.long)]

    def reset(self) -> None:
        self.last.zero_()
        self.length = 0


class TableLM(nn.Module):
    """A bigram lookup table following the LM protocol: next-token log-probs depend on the last
    token only; `table[prev][next] = p`, every other token gets a tiny share."""

    def __init__(self, table: dict[int, dict[int, float]], vocab: int = 8, eps: float = 1e-6) -> None:
        super().__init__()
        probs = torch.full((vocab, vocab), eps, dtype=torch.float64)
        for prev, row in table.items():
            for nxt, p in row.items():
                probs[prev, nxt] = p
        self.register_buffer("logp", (probs / probs.sum(-1, keepdim=True)).log().float())
        self.config = SimpleNamespace(vocab_size=vocab)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> LastTokenCache:
        return LastTokenCache(batch_size, max_len)

    def forward(self, idx: torch.Tensor, cache: LastTokenCache | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        if cache is not None:
            n = torch.full((idx.size(0),), idx.size(1)) if lengths is None else torch.as_tensor(lengths)
            cache.last = idx[torch.arange(idx.size(0)), n - 1]
            cache.length += idx.size(1)
        return self.logp[idx]


def greedy_uncached(model, prompt: list[int], n: int, stop: int | None = None) -> list[int]:
    """The textbook loop: the whole sequence through the model for every new token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            tok = int(model(torch.tensor([ids]))[0, -1].argmax())
            if tok == stop:
                break
            ids.append(tok)
    return ids[len(prompt):]


def recomputed(model, prompt: list[int], hyp: Hypothesis) -> list[float]:
    """Each generated token's log-probability (the stop id's last), from one uncached forward."""
    seq = hyp.tokens + ([hyp.stop_token] if hyp.finish_reason == "stop" else [])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + seq]))[0].double(), -1)
    return [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(seq)]


def contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


# ---- plain beam search --------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_one_beam_is_greedy(name):
    model = MODELS[name]()
    for prompt in ([1, 2, 3], [7], [30, 4, 4, 9, 0]):
        want = greedy_uncached(model, prompt, 12)
        (hyp,) = beam_search(model, prompt, num_beams=1, max_new_tokens=12)
        assert hyp.tokens == want and hyp.finish_reason == "length"
        # Stopping at a stop id it meets on the way, as greedy does.
        stop = want[4]
        (hyp,) = beam_search(model, prompt, num_beams=1, max_new_tokens=12, stop_ids=[stop])
        assert hyp.tokens == greedy_uncached(model, prompt, 12, stop)
        assert hyp.finish_reason == "stop" and hyp.stop_token == stop
        assert len(hyp.token_logprobs) == len(hyp.tokens) + 1


def test_beam_finds_the_better_branch_greedy_misses():
    # From 0: A=1 (0.6) then only weak continuations (best 0.3); B=2 (0.4) then 3 almost surely.
    model = TableLM({0: {1: 0.6, 2: 0.4}, 1: {3: 0.3, 4: 0.25, 5: 0.25, 6: 0.2}, 2: {3: 1.0},
                     3: {7: 1.0}, 4: {7: 1.0}, 5: {7: 1.0}, 6: {7: 1.0}}).eval()
    (greedy,) = beam_search(model, [0], num_beams=1, max_new_tokens=5, stop_ids=[7])
    assert greedy.tokens == greedy_uncached(model, [0], 5, stop=7) == [1, 3]
    best, second = beam_search(model, [0], num_beams=2, max_new_tokens=5, stop_ids=[7], num_return_sequences=2)
    assert best.tokens == [2, 3] and best.finish_reason == "stop"
    assert second.tokens == [1, 3]
    assert best.logprob > greedy.logprob + 0.5  # log 0.4 vs log 0.18
    assert best.logprob == pytest.approx(math.log(0.4), abs=1e-4)
    for h in (best, greedy):
        assert sum(recomputed(model, [0], h)) == pytest.approx(h.logprob, abs=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_results_sorted_and_logprobs_match_uncached_recomputation(name):
    model = MODELS[name]()
    prompt = [5, 11, 2]
    stop = greedy_uncached(model, prompt, 3)[-1]  # a token the model likes, so some beams stop
    hyps = beam_search(model, prompt, num_beams=4, max_new_tokens=8, stop_ids=[stop],
                       num_return_sequences=4, length_penalty=0.7)
    assert len(hyps) == 4
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert len({tuple(h.tokens) for h in hyps}) == 4
    for h in hyps:
        assert stop not in h.tokens
        assert h.logprob == pytest.approx(sum(h.token_logprobs), abs=1e-9)
        assert h.token_logprobs == pytest.approx(recomputed(model, prompt, h), abs=1e-4)
        assert h.score == pytest.approx(h.logprob / len(h.token_logprobs) ** 0.7)
        assert (h.finish_reason == "stop") == (h.stop_token == stop)
        assert h.finish_reason == "stop" or len(h.tokens) == 8
    assert beam_search(model, prompt, num_beams=4, max_new_tokens=8, stop_ids=[stop], length_penalty=0.7) == hyps[:1]


def test_length_penalty_changes_the_ranking():
    # Short: 1 then stop, p = 0.55 over 2 tokens. Long: 2 3 4 then stop, p = 0.45 over 4 tokens.
    model = TableLM({0: {1: 0.55, 2: 0.45}, 1: {7: 1.0}, 2: {3: 1.0}, 3: {4: 1.0}, 4: {7: 1.0}}).eval()
    run = lambda lp: beam_search(model, [0], num_beams=2, max_new_tokens=6, stop_ids=[7],  # noqa: E731
                                 length_penalty=lp, num_return_sequences=2)
    assert [h.tokens for h in run(0.0)] == [[1], [2, 3, 4]]   # plain log-probability: short wins
    assert [h.tokens for h in run(1.0)] == [[2, 3, 4], [1]]   # per-token average: long wins
    short, long = run(0.0)
    assert short.score == pytest.approx(math.log(0.55), abs=1e-4)
    assert long.score == pytest.approx(math.log(0.45), abs=1e-4)
    assert run(1.0)[0].score == pytest.approx(math.log(0.45) / 4, abs=1e-4)


def test_ties_go_to_the_lowest_token_id_as_argmax():
    # Three tokens tie for the top, then all eight do (row 2 is uniform); argmax takes the
    # first, and so must a width-1 beam, though it looks at the top 2 and topk orders ties freely.
    model = TableLM({0: {2: 1 / 3, 4: 1 / 3, 6: 1 / 3}, 4: {7: 1.0}, 6: {7: 1.0}}).eval()
    (h,) = beam_search(model, [0], num_beams=1, max_new_tokens=3)
    assert h.tokens == greedy_uncached(model, [0], 3) == [2, 0, 2]


def test_early_stopping_false_searches_on_and_never_does_worse():
    model = gpt()
    for prompt in ([1, 2, 3], [9, 9]):
        stop = greedy_uncached(model, prompt, 2)[-1]
        kw = dict(num_beams=3, max_new_tokens=10, stop_ids=[stop], length_penalty=1.0)
        eager = beam_search(model, prompt, early_stopping=True, **kw)[0]
        patient = beam_search(model, prompt, early_stopping=False, **kw)[0]
        assert patient.score >= eager.score


def test_context_limit_and_zero_tokens():
    model = gpt(block_size=16)
    hyps = beam_search(model, [1, 2, 3], num_beams=2, max_new_tokens=10, max_len=6, num_return_sequences=2)
    assert all(len(h.tokens) == 3 and h.finish_reason == "length" for h in hyps)
    # max_len=None: the model's own context (block_size) is the limit.
    (h,) = beam_search(model, list(range(12)), num_beams=2, max_new_tokens=10)
    assert len(h.tokens) == 4
    assert beam_search(model, [1] * 16, num_beams=2, max_new_tokens=5) == [Hypothesis([], 0.0, 0.0, "length", [])]
    with pytest.raises(ConfigError, match="does not fit in max_len 16"):
        beam_search(model, [1] * 17, num_beams=2, max_new_tokens=5)
    assert beam_search(model, [1, 2], num_beams=3, max_new_tokens=0, num_return_sequences=2) == \
        [Hypothesis([], 0.0, 0.0, "length", [])] * 2


def test_plan_processes_each_beam_and_can_ban():
    model, prompt, seen = gpt(), [4, 5, 6], []
    unbanned = beam_search(model, prompt, num_beams=3, max_new_tokens=5, num_return_sequences=3)
    banned = unbanned[0].tokens[0]  # the best beam's first token: only a working ban removes it

    class Recording(DecodePlan):
        def process(self, logits, histories, generated):
            seen.append((histories, generated))
            assert logits.shape == (len(histories), V) and all(t[:3] == prompt for t in histories)
            return super().process(logits, histories, generated)

    cfg = GenerationConfig(num_beams=3, banned_token_ids=[banned], max_new_tokens=5)
    plan = Recording.compile(cfg)
    hyps = beam_search(model, prompt, num_beams=3, max_new_tokens=5, plan=plan, num_return_sequences=3)
    assert all(banned not in h.tokens for h in hyps)
    assert [len(h) for h, _ in seen] == [1, 3, 3, 3, 3]  # one row before the fan-out
    assert [len(h[0]) for h, _ in seen] == [3, 4, 5, 6, 7]
    assert all(h[len(prompt):] == g for hs, gs in seen for h, g in zip(hs, gs))


# ---- constrained beam search --------------------------------------------------------------

@pytest.mark.parametrize("forced", [[[17]], [[3, 29, 8]], [[21, 4], [6]], [[2, 2, 5], [30, 1]]])
def test_constrained_output_contains_every_forced_phrase(forced):
    model = gpt()
    g = torch.Generator().manual_seed(len(forced) * 10 + len(forced[0]))
    for _ in range(3):
        prompt = torch.randint(0, V, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        hyps = beam_search(model, prompt, num_beams=4, max_new_tokens=10, force=forced, num_return_sequences=2)
        assert len(hyps) == 2
        for h in hyps:
            assert all(contains(h.tokens, p) for p in forced), (prompt, forced, h.tokens)
            assert h.token_logprobs == pytest.approx(recomputed(model, prompt, h), abs=1e-4)
        # The plain search does not produce them on its own (else the test would prove nothing).
        plain = beam_search(model, prompt, num_beams=4, max_new_tokens=10)[0]
        assert not all(contains(plain.tokens, p) for p in forced)


def test_constraints_hold_off_the_stop_id_and_one_beam_works():
    # The model wants to stop at once; the forced phrase 5 6 must come first.
    model = TableLM({0: {7: 0.9, 1: 0.1}, 1: {7: 0.9, 2: 0.1}, 5: {7: 0.9, 6: 0.05}, 6: {7: 0.99}}).eval()
    for beams in (1, 3):
        h = beam_search(model, [0], num_beams=beams, max_new_tokens=6, stop_ids=[7], force=[[5, 6]])[0]
        assert contains(h.tokens, [5, 6]) and h.finish_reason == "stop", h
    assert beam_search(model, [0], num_beams=3, max_new_tokens=6, stop_ids=[7])[0].tokens == []


def test_unreachable_constraint_returns_the_beams_that_met_most():
    model = gpt()
    hyps = beam_search(model, [1, 2], num_beams=3, max_new_tokens=2, force=[[9, 10, 11]], num_return_sequences=2)
    assert len(hyps) == 2 and hyps[0].tokens == [9, 10] and hyps[0].finish_reason == "length"


def test_constraint_state_advances_resets_and_completes():
    s = ConstraintState.start([[4, 5, 6], [8, 9]])
    assert (s.met, s.total, s.complete, s.next_tokens()) == (0, 5, False, (4, 8))
    s = s.advance(4).advance(5)
    assert (s.current, s.progress, s.met, s.next_tokens()) == (0, 2, 2, (6,))
    broken = s.advance(1)
    assert (broken.current, broken.progress, broken.met) == (None, 0, 0)
    switched = s.advance(8)  # breaks 4 5 6 but starts 8 9
    assert (switched.current, switched.progress, switched.met) == (1, 1, 1)
    s = s.advance(6)
    assert s.done == (True, False) and s.met == 3 and s.next_tokens() == (8,)
    s = s.advance(8).advance(9)
    assert s.complete and s.met == 5 and s.next_tokens() == ()
    assert s.advance(3) == s  # complete stays complete
    # Overlaps: a restart keeps what still matches; a phrase inside a completed one is done too.
    assert ConstraintState.start([[1, 1, 2]]).advance(1).advance(1).advance(1).advance(2).complete
    assert ConstraintState.start([[1, 2, 3], [2, 3]]).advance(1).advance(2).advance(3).complete
    assert ConstraintState.start([[1, 2], [2, 3]]).advance(1).advance(2).advance(3).complete


def test_constraint_state_is_sound_on_random_streams():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        phrases = [torch.randint(0, 3, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()
                   for _ in range(2)]
        stream = torch.randint(0, 3, (12,), generator=g).tolist()
        s = ConstraintState.start(phrases)
        for i, t in enumerate(stream):
            s = s.advance(t)
            for p, d in zip(phrases, s.done):
                assert not d or contains(stream[:i + 1], p)  # never claims a phrase that is not there
            if s.current is not None:
                assert stream[i + 1 - s.progress:i + 1] == phrases[s.current][:s.progress]


# ---- bad settings -------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(num_beams=0), "num_beams"),
    (dict(num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=0), "num_return_sequences"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(prompt=[]), "non-empty prompt"),
    (dict(force=[[3], []]), r"force\[1\] is an empty"),
    (dict(force=[[3, 7]], stop_ids=[7]), r"force\[0\].*stop id 7"),
    (dict(force=[[99]]), "outside the model's vocabulary"),
    (dict(length_penalty=math.nan), "length_penalty"),
    (dict(length_penalty=math.inf), "length_penalty"),
])
def test_bad_settings(kw, match):
    args = dict(prompt=[1, 2], num_beams=2, max_new_tokens=4) | kw
    with pytest.raises(ConfigError, match=match):
        beam_search(gpt(), args.pop("prompt"), **args)
