"""The official `openai` client against our running server: what it sends, we answer in the
shapes it parses. Expected texts come from the engine directly (same weights, same settings)."""

from __future__ import annotations

import openai
import pytest

from lmstack.tokenizer.chat_template import ChatTemplate


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat_prompt(text: str) -> str:
    return ChatTemplate().render([{"role": "user", "content": text}])


def test_models_lists_the_served_model(client, live_server):
    assert [m.id for m in client.models.list().data] == [live_server.model]


def test_completion_matches_the_engine(client, live_server):
    r = client.completions.create(model=live_server.model, prompt="import os", max_tokens=12, temperature=0)
    alone = live_server.engine.generate("import os", temperature=0, max_new_tokens=12)
    assert r.choices[0].text == alone.text
    assert r.choices[0].finish_reason == alone.finish_reason
    assert r.usage.prompt_tokens == len(live_server.engine.encode("import os"))
    assert r.usage.completion_tokens == len(alone.tokens) + (alone.finish_reason == "stop")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_uses_the_template_and_stops_at_any_special_token(client, live_server):
    r = client.chat.completions.create(model=live_server.model, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=10, temperature=0)
    engine = live_server.engine
    alone = engine.generate(chat_prompt("Hi"), temperature=0, max_new_tokens=10,
                            stop_token_ids=sorted(engine.tokenizer.special_tokens.values()))
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == alone.text


def test_streaming_chat_pieces_add_up(client, live_server):
    kwargs = dict(model=live_server.model, messages=[{"role": "user", "content": "Hello there"}],
                  max_tokens=16, temperature=0.8, seed=5)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_streaming_completion(client, live_server):
    pieces = [c.choices[0].text for c in client.completions.create(
        model=live_server.model, prompt="def f(", max_tokens=10, temperature=0, stream=True)]
    assert "".join(pieces) == live_server.engine.generate("def f(", temperature=0, max_new_tokens=10).text


def test_n_2_gives_two_seeded_choices(client, live_server):
    r = client.completions.create(model=live_server.model, prompt="class", max_tokens=8, n=2, seed=11,
                                  temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1]
    for j, choice in enumerate(r.choices):  # sample j draws from seed + j
        assert choice.text == live_server.engine.generate("class", temperature=1.0, seed=11 + j,
                                                          max_new_tokens=8).text
    again = client.completions.create(model=live_server.model, prompt="class", max_tokens=8, n=2, seed=11,
                                      temperature=1.0)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]


def test_stop_strings_are_cut_and_reported(client, live_server):
    full = live_server.engine.generate("import", temperature=0, max_new_tokens=24, ignore_eos=True).text
    stop = full[5:7]
    assert stop, "the reference continuation is too short to pick a stop string from"
    r = client.completions.create(model=live_server.model, prompt="import", max_tokens=24, temperature=0,
                                  stop=[stop], extra_body={"ignore_eos": True})
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_logprobs_completion_and_chat(client, live_server):
    r = client.completions.create(model=live_server.model, prompt="import", max_tokens=6, temperature=0,
                                  logprobs=3, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    alone = live_server.engine.generate("import", temperature=0, max_new_tokens=6, logprobs=True,
                                        top_logprobs=3, ignore_eos=True)
    assert lp.token_logprobs == pytest.approx(alone.logprobs, abs=1e-4)
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(len(t) <= 3 for t in lp.top_logprobs)
    # greedy picks the most likely token, so each chosen token's logprob is the top one
    assert all(abs(max(t.values()) - v) < 1e-5 for t, v in zip(lp.top_logprobs, lp.token_logprobs))
    c = client.chat.completions.create(model=live_server.model, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens - (c.choices[0].finish_reason == "stop")
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-5 for t in content)


def test_errors_reach_the_client_as_openai_errors(client, live_server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=live_server.model, prompt="x", temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=live_server.model, messages=[{"role": "wizard", "content": "x"}])
    assert e.value.body["param"] == "messages[0].role"
