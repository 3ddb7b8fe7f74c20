"""Best-of-N over HTTP: `best_of` candidates ranked by the server's reward model (each choice's
`score` is RewardModel.forward of what it read), or without one by mean log-probability, equal
to the engine's own best-of; chat takes `best_of` as an extension; bad values are a 400 naming
the field and the server keeps serving. Expected candidates come from the engine directly:
candidate j of a request with seed s is the sample drawn alone with seed s + j."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.preference import completion_example
from lmstack.posttrain.reward_model import RewardModel, scored_ids
from lmstack.posttrain.reward_ranking import RewardRanker
from lmstack.serve.app import ServerConfig
from lmstack.tokenizer.chat_template import ChatTemplate
from tests.serve.conftest import serve, tiny_engine

CHATML = ChatTemplate()
SETTINGS = {"temperature": 1.0, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def reward_model(tok):
    torch.manual_seed(1)
    return RewardModel(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                                     n_embd=32))).eval()


@pytest.fixture(scope="module")
def ranked(tok, reward_model):
    """A server whose best_of is ranked by a reward model."""
    with serve(tiny_engine(tok), ServerConfig(model_name="tiny", max_batch=4),
               ranker=RewardRanker(reward_model, tok, CHATML)) as server:
        yield server


@pytest.fixture(scope="module")
def plain(tok):
    """A server without a reward model: best_of ranked by mean log-probability."""
    with serve(tiny_engine(tok), ServerConfig(model_name="tiny", max_batch=4)) as server:
        yield server


def post(server, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{route}", json=body, timeout=60)


def forward(rm: RewardModel, ids: list[int]) -> float:
    with torch.no_grad():
        return float(rm(torch.tensor([ids]))[0])


def candidates(engine, prompt: str, k: int, seed: int, **settings) -> list:
    return [engine.generate(prompt, **{**SETTINGS, **settings, "seed": seed + j}) for j in range(k)]


def test_completions_keep_the_n_most_rewarded_of_best_of(ranked, reward_model, tok):
    prompt = "def main("
    r = post(ranked, "completions", {"prompt": prompt, "max_tokens": 6, "temperature": 1.0, "seed": 7,
                                     "n": 2, "best_of": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    samples = candidates(ranked.engine, prompt, 4, 7)
    rewards = [forward(reward_model, scored_ids(tok, None, prompt, s.text)) for s in samples]
    order = sorted(range(4), key=lambda j: rewards[j], reverse=True)[:2]
    assert [c["text"] for c in body["choices"]] == [samples[j].text for j in order]
    assert [c["score"] for c in body["choices"]] == [rewards[j] for j in order]
    assert [c["index"] for c in body["choices"]] == [0, 1] and body["ranked_by"] == "reward_model"
    # usage counts every candidate (each stop token too), as OpenAI bills best_of
    assert body["usage"]["completion_tokens"] == sum(len(s.tokens) + (s.finish_reason == "stop") for s in samples)
    # the ranking is the reward model's, not the log-probability's
    by_logprob = ranked.engine.generate(prompt, best_of=4, num_return_sequences=2, seed=7, **SETTINGS)
    assert [c.text for c in by_logprob] != [c["text"] for c in body["choices"]]


def test_without_a_reward_model_best_of_is_the_engines_best_of(plain):
    for prompt, seed in (("import os", 3), ("class A:", 11)):
        r = post(plain, "completions", {"prompt": prompt, "max_tokens": 6, "temperature": 1.0, "seed": seed,
                                        "n": 2, "best_of": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        alone = plain.engine.generate(prompt, best_of=4, num_return_sequences=2, seed=seed, **SETTINGS)
        assert [c["text"] for c in body["choices"]] == [c.text for c in alone]
        assert [c["score"] for c in body["choices"]] == pytest.approx([c.score for c in alone], abs=1e-5)
        assert body["ranked_by"] == "mean_logprob"
        assert all(c["logprobs"] is None for c in body["choices"])  # computed to rank, not asked for


def test_several_prompts_are_ranked_each_among_its_own_candidates(ranked, reward_model, tok):
    prompts = ["x = ", "for i in"]
    body = post(ranked, "completions", {"prompt": prompts, "max_tokens": 6, "temperature": 1.0, "seed": 2,
                                        "best_of": 3}).json()
    expected = []
    for p in prompts:
        samples = candidates(ranked.engine, p, 3, 2)
        rewards = [forward(reward_model, scored_ids(tok, None, p, s.text)) for s in samples]
        expected.append(samples[rewards.index(max(rewards))].text)
    assert [c["text"] for c in body["choices"]] == expected


def test_chat_best_of_is_ranked_by_the_chat_reward(ranked, reward_model, tok):
    messages = [{"role": "user", "content": "Say something."}]
    r = post(ranked, "chat/completions", {"messages": messages, "max_tokens": 6, "temperature": 1.0,
                                          "seed": 4, "best_of": 3})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    stops = ranked.app.state.server.chat_stop_ids
    samples = candidates(ranked.engine, CHATML.render(messages), 3, 4, stop_token_ids=stops)
    rewards = [forward(reward_model, completion_example(tok, CHATML, messages,
                                                        [{"role": "assistant", "content": s.text}]).ids)
               for s in samples]
    assert len(set(rewards)) == 3
    assert choice["message"]["content"] == samples[rewards.index(max(rewards))].text
    assert choice["score"] == max(rewards)


def test_the_openai_client_sends_best_of_and_reads_the_score(ranked):
    client = openai.OpenAI(base_url=ranked.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    r = client.completions.create(model="tiny", prompt="def f(", max_tokens=5, n=2, best_of=3, seed=1)
    assert len(r.choices) == 2 and r.choices[0].model_extra["score"] >= r.choices[1].model_extra["score"]
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=5, seed=1, extra_body={"best_of": 2})
    assert isinstance(chat.choices[0].model_extra["score"], float)


@pytest.mark.parametrize(("route", "body", "param"), [
    ("completions", {"n": 3, "best_of": 2}, "best_of"),
    ("completions", {"best_of": 5}, "best_of"),             # over the server's batch of 4
    ("completions", {"best_of": 17}, "best_of"),            # over the API's 16
    ("completions", {"best_of": 0}, "best_of"),
    ("completions", {"best_of": "2"}, "best_of"),
    ("completions", {"best_of": 2, "temperature": 0}, "best_of"),
    ("completions", {"best_of": 2, "stream": True}, "stream"),
    ("chat/completions", {"best_of": 2, "tools": [{"type": "function", "function": {"name": "f"}}]}, "best_of"),
    ("chat/completions", {"n": 2, "best_of": 1}, "best_of"),
])
def test_bad_best_of_is_a_400_naming_the_field_and_the_server_keeps_serving(ranked, route, body, param):
    base = {"prompt": "x"} if route == "completions" else {"messages": [{"role": "user", "content": "x"}]}
    r = post(ranked, route, {**base, "max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    ok = post(ranked, route, {**base, "max_tokens": 2, "best_of": 2, "seed": 0})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 1


def test_n_without_best_of_is_unranked_as_before(ranked):
    body = post(ranked, "completions", {"prompt": "x", "max_tokens": 3, "n": 2, "seed": 9}).json()
    assert "ranked_by" not in body and all("score" not in c for c in body["choices"])
    samples = candidates(ranked.engine, "x", 2, 9, max_new_tokens=3)
    assert [c["text"] for c in body["choices"]] == [s.text for s in samples]


def test_serve_loads_its_reward_model_checked_against_the_models_tokenizer(tok, reward_model, tmp_path):
    from types import SimpleNamespace

    from lmstack.errors import ConfigError
    from lmstack.posttrain.reward_model import save_reward_model
    from lmstack.serve.commands import load_ranker
    from lmstack.tokenizer import train_bpe

    engine = tiny_engine(tok)
    rm_dir = save_reward_model(tmp_path / "rm", reward_model, tok)
    args = SimpleNamespace(reward_model=str(rm_dir), model="runs/policy")
    ranker = load_ranker(args, engine, CHATML)
    assert ranker.text_reward("a", "b") == forward(reward_model, scored_ids(tok, None, "a", "b"))
    assert load_ranker(SimpleNamespace(reward_model=None, model="m"), engine, CHATML) is None
    other = train_bpe(["another corpus, " * 50], vocab_size=270, progress=False, workers=1)
    engine.tokenizer = other
    with pytest.raises(ConfigError, match=f"reward model {rm_dir} and the policy runs/policy"):
        load_ranker(args, engine, CHATML)
