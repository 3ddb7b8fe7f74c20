"""Continuous batching gives every request what it would get alone, while requests join and
leave a running batch."""

from __future__ import annotations

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig, NGramConfig, NGramLM, RNNConfig, RNNLM
from lmstack.serve.scheduler import QueueFull, Scheduler

PROMPTS = ["import os", "def f(x):\n    return x", "class A:", "# hello", "for i in range(10):", "x = {"]


def engines(tok) -> dict[str, Engine]:
    torch.manual_seed(0)
    ngram = NGramLM(NGramConfig(vocab_size=tok.vocab_size, order=3))
    ngram.fit([tok.encode_ordinary(p * 3) for p in PROMPTS])
    return {
        "gpt": Engine(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=2, n_head=2, n_embd=32,
                                    position="rope")), tok),
        "lstm": Engine(RNNLM(RNNConfig(vocab_size=tok.vocab_size, cell="lstm", n_layer=1, n_embd=16, hidden_size=32)), tok),
        "ngram": Engine(ngram, tok),
    }


def collect(events: dict, key):
    return lambda event: events.setdefault(key, []).append(event)


def run_staggered(engine: Engine, prompts: list[str], settings: dict, max_batch: int = 3):
    """Submit one prompt per step, so requests join a batch that is already decoding."""
    scheduler = Scheduler(engine, max_batch=max_batch)
    events: dict = {}
    requests = []
    widest = 0
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            requests.append(scheduler.submit(engine.encode(p), engine.config(**settings), collect(events, i)))
            scheduler.step()
            widest = max(widest, scheduler.stats()["running"])
        while any(not r.done.is_set() for r in requests):
            scheduler.step()
    return events, widest


@pytest.mark.parametrize("kind", ["gpt", "lstm", "ngram"])
def test_joining_a_running_batch_changes_nothing(tok, kind):
    engine = engines(tok)[kind]
    settings = dict(temperature=0, max_new_tokens=12, ignore_eos=True)
    events, widest = run_staggered(engine, PROMPTS, settings)
    assert widest == 3  # rows really were decoded together
    for i, p in enumerate(PROMPTS):
        alone = engine.generate(p, **settings)
        assert sum((e.tokens for e in events[i]), []) == alone.tokens
        assert "".join(e.text for e in events[i]) == alone.text
        assert events[i][-1].finish_reason == alone.finish_reason == "length"


def test_seeded_sampling_and_logprobs_match_the_engine(tok):
    engine = engines(tok)["gpt"]
    settings = dict(temperature=0.9, top_p=0.9, seed=7, max_new_tokens=10, logprobs=True, top_logprobs=2,
                    stop=["\n"], presence_penalty=0.5)
    events, _ = run_staggered(engine, PROMPTS, settings)
    for i, p in enumerate(PROMPTS):
        alone = engine.generate(p, **settings)
        got = events[i]
        assert "".join(e.text for e in got) == alone.text
        assert got[-1].finish_reason == alone.finish_reason
        assert sum((e.logprobs for e in got), []) == pytest.approx(alone.logprobs, abs=1e-4)
        assert [len(t) for e in got for t in e.top_logprobs] == [2] * len(alone.tokens)


def test_n_samples_draw_from_consecutive_seeds(tok):
    engine = engines(tok)["gpt"]
    scheduler = Scheduler(engine, max_batch=4)
    events: list = []
    with torch.inference_mode():
        request = scheduler.submit(engine.encode("import"), engine.config(temperature=1.0, seed=3, max_new_tokens=8),
                                   events.append, n=3)
        while not request.done.is_set():
            scheduler.step()
    for j in range(3):
        text = "".join(e.text for e in events if e.sample == j)
        assert text == engine.generate("import", temperature=1.0, seed=3 + j, max_new_tokens=8).text


def test_cancel_frees_the_row_at_the_next_step(tok):
    engine = engines(tok)["gpt"]
    scheduler = Scheduler(engine, max_batch=2)
    cfg = engine.config(temperature=0, max_new_tokens=50, ignore_eos=True)
    with torch.inference_mode():
        a = scheduler.submit(engine.encode("import os"), cfg, lambda e: None)
        b = scheduler.submit(engine.encode("class A:"), cfg, lambda e: None)
        c = scheduler.submit(engine.encode("def f():"), cfg, lambda e: None)
        scheduler.step()
        assert scheduler.stats() == {"running": 2, "waiting": 1, "steps": 1}
        a.cancel()
        scheduler.step()  # a leaves; c takes its row at the following admission
        assert a.done.is_set() and scheduler.stats()["running"] == 1
        scheduler.step()
        assert scheduler.stats()["running"] == 2 and scheduler.stats()["waiting"] == 0
        b.cancel(), c.cancel()
        scheduler.step()
    assert scheduler.stats()["running"] == 0 and scheduler._cache is None  # memory released


def test_full_queue_and_bad_requests_are_refused(tok):
    engine = engines(tok)["gpt"]
    scheduler = Scheduler(engine, max_batch=1, max_queue=2)
    cfg = engine.config(temperature=0, max_new_tokens=4)
    for _ in range(2):
        scheduler.submit([1, 2], cfg, lambda e: None)
    with pytest.raises(QueueFull, match="too many requests waiting"):
        scheduler.submit([1, 2], cfg, lambda e: None)
    with pytest.raises(ConfigError, match="beam"):
        scheduler.submit([1, 2], engine.config(num_beams=2), lambda e: None)
    with pytest.raises(ConfigError, match="n must be between 1 and 1"):
        scheduler.submit([1, 2], cfg, lambda e: None, n=2)
    with pytest.raises(ConfigError, match="context"):
        scheduler.submit([1] * 96, cfg, lambda e: None)


def test_the_thread_serves_concurrent_requests_and_shuts_down(tok):
    engine = engines(tok)["gpt"]
    events: dict = {}
    settings = dict(temperature=0, max_new_tokens=6, ignore_eos=True)
    with Scheduler(engine, max_batch=4) as scheduler:
        requests = [scheduler.submit(engine.encode(p), engine.config(**settings), collect(events, i))
                    for i, p in enumerate(PROMPTS)]
        for r in requests:
            assert r.done.wait(30)
        late = scheduler.submit(engine.encode("x"), engine.config(temperature=0, max_new_tokens=500, ignore_eos=True),
                                collect(events, "late"))
    assert late.done.is_set()  # close() ended it
    assert events["late"][-1].error == "the server shut down"
    for i, p in enumerate(PROMPTS):
        assert "".join(e.text for e in events[i]) == engine.generate(p, **settings).text


def test_a_row_that_cannot_continue_fails_alone(tok):
    engine = engines(tok)["gpt"]
    scheduler = Scheduler(engine, max_batch=4)
    good, bad = [], []
    with torch.inference_mode():
        ok = scheduler.submit(engine.encode("import"), engine.config(temperature=0, max_new_tokens=5,
                                                                      ignore_eos=True), good.append)
        doomed = scheduler.submit(engine.encode("import"), engine.config(
            temperature=0, max_new_tokens=5, banned_token_ids=list(range(tok.vocab_size))), bad.append)
        while not (ok.done.is_set() and doomed.done.is_set()):
            scheduler.step()
    assert bad[-1].error and "banned" in bad[-1].error
    assert len(sum((e.tokens for e in good), [])) == 5


def test_a_failing_prefill_ends_its_requests_and_the_batch_goes_on(tok, monkeypatch):
    engine = engines(tok)["gpt"]
    events: dict = {}
    cfg = engine.config(temperature=0, max_new_tokens=4, ignore_eos=True)
    with Scheduler(engine, max_batch=4) as scheduler:
        import lmstack.serve.scheduler as module

        real = module.prefill
        monkeypatch.setattr(module, "prefill", lambda *a, **k: 1 / 0)
        broken = scheduler.submit(engine.encode("x"), cfg, collect(events, "broken"))
        assert broken.done.wait(30)
        monkeypatch.setattr(module, "prefill", real)
        fine = scheduler.submit(engine.encode("x"), cfg, collect(events, "fine"))
        assert fine.done.wait(30)
    assert "ZeroDivisionError" in events["broken"][-1].error
    assert len(sum((e.tokens for e in events["fine"]), [])) == 4


def test_rows_sharing_a_step_keep_their_own_limits_and_stops(tok):
    # Same processors, so the scheduler batches them into one step call; but each request's
    # own max_new_tokens, stop strings and logprobs must still decide its row.
    engine = engines(tok)["gpt"]
    base = dict(temperature=0, ignore_eos=True)
    settings = [dict(base, max_new_tokens=3), dict(base, max_new_tokens=11),
                dict(base, max_new_tokens=9, stop=[" "]), dict(base, max_new_tokens=7, logprobs=True)]
    scheduler = Scheduler(engine, max_batch=4)
    events: dict = {}
    with torch.inference_mode():
        requests = [scheduler.submit(engine.encode(PROMPTS[i]), engine.config(**s), collect(events, i))
                    for i, s in enumerate(settings)]
        scheduler.step()
        assert scheduler.stats()["running"] == 4  # decoded side by side
        while any(not r.done.is_set() for r in requests):
            scheduler.step()
    for i, s in enumerate(settings):
        alone = engine.generate(PROMPTS[i], **s)
        assert sum((e.tokens for e in events[i]), []) == alone.tokens
        assert "".join(e.text for e in events[i]) == alone.text
        assert sum((e.logprobs for e in events[i]), []) == pytest.approx(alone.logprobs, abs=1e-5)
    assert len(alone.logprobs) == 7 and not sum((e.logprobs for e in events[1]), [])
