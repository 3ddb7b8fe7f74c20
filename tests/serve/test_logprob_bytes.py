"""Logprobs of tokens that are not whole characters, through the real server.

The tokenizer has no merges, so every byte is a token and "é" is two of them (C3 A9); the
model is a hand-wired bigram GPT whose favourite continuations are all such halves. OpenAI
spells a token that is not valid UTF-8 by its bytes: `bytes:\\xc3` in completions' `tokens` and
`top_logprobs` keys, `\\xc3` plus `"bytes": [195]` in chat. Expected values come from the model's
own log-softmax, computed here."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.serve.app import ServerConfig
from lmstack.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer

from .conftest import serve

A, E_LEAD, A_CONT = 0x61, 0xC3, 0xA9  # "a", then "é" = C3 A9
# state -> its three favourite next tokens, best first (all others far behind).
FAVOURITES = {A: [0xC3, 0xE2, 0xC5], E_LEAD: [0xA9, 0xA8, 0xA0], A_CONT: [A, ord("b"), ord("c")]}


def byte_tokenizer() -> Tokenizer:
    specials = {s: 256 + i for i, s in enumerate(DEFAULT_SPECIAL_TOKENS)}
    return Tokenizer("gpt4", merges=[], special_tokens=specials)


def bigram_gpt(vocab_size: int) -> GPT:
    """Blocks zeroed (identity), no positions: the next token depends on the last one only.
    Token C3 is state 1, A9 state 2, every other token state 0 ("a")."""
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=1, n_embd=8, position="none",
                          norm="rmsnorm", bias=False, tie_embeddings=False))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.ln_f.weight.fill_(1.0)
        model.wte.weight[:, 0] = 1.0
        for state, token in enumerate([A, E_LEAD, A_CONT]):
            model.wte.weight[token] = torch.nn.functional.one_hot(torch.tensor(state), 8).float()
            for strength, nxt in zip([3.0, 2.5, 2.0], FAVOURITES[token]):
                model.lm_head.weight[nxt, state] = strength
    return model.eval()


@pytest.fixture(scope="module")
def server():
    tok = byte_tokenizer()
    engine = Engine(bigram_gpt(tok.vocab_size), tok)
    with serve(engine, ServerConfig(model_name="bytes")) as live:
        yield live


def expected_top(engine: Engine, last: int, k: int) -> list[tuple[int, float]]:
    """The model's own top-k (id, logprob) after token `last`."""
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(torch.tensor([[last]]))[0, -1].double(), dim=-1)
    values, ids = logp.topk(k)
    return list(zip(ids.tolist(), values.tolist()))


def spelled(token: int, prefix: str) -> str:
    raw = bytes([token])
    return raw.decode() if token < 0x80 else prefix + f"\\x{token:02x}"


def test_the_model_prefers_halves_of_characters(server):
    # The premise of the other tests: each favourite is a byte of a multi-byte character.
    for state, favourites in FAVOURITES.items():
        assert [t for t, _ in expected_top(server.engine, state, 3)] == favourites


def test_completion_logprobs_spell_partial_tokens_by_their_bytes(server):
    r = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "prompt": [A], "max_tokens": 6, "temperature": 0, "logprobs": 3, "ignore_eos": True})
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == "éaéa"
    assert lp["tokens"] == ["bytes:\\xc3", "bytes:\\xa9", "a", "bytes:\\xc3", "bytes:\\xa9", "a"]
    assert lp["text_offset"] == [0, 0, 1, 2, 2, 3]
    previous = [A, E_LEAD, A_CONT] * 2
    for k, top in enumerate(lp["top_logprobs"]):
        want = expected_top(server.engine, previous[k], 3)
        # all three survive (under U+FFFD they were one key, holding the *lowest* logprob)
        assert top == pytest.approx({spelled(t, "bytes:"): v for t, v in want}, abs=1e-4)
        assert lp["token_logprobs"][k] == pytest.approx(max(top.values()), abs=1e-6)


def test_streamed_completion_offsets_match_the_whole_reply(server):
    body = {"prompt": [A], "max_tokens": 6, "temperature": 0, "logprobs": 1, "ignore_eos": True}
    whole = httpx.post(server.url + "/v1/completions", timeout=60, json=body).json()["choices"][0]["logprobs"]
    tokens, offsets = [], []
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60, json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                lp = json.loads(line[6:])["choices"][0]["logprobs"]
                tokens += lp["tokens"] if lp else []
                offsets += lp["text_offset"] if lp else []
    assert tokens == whole["tokens"] and offsets == whole["text_offset"]


def test_chat_logprobs_carry_bytes_and_escaped_tokens(server):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "a"}], "max_tokens": 3, "temperature": 0,
        "logprobs": True, "top_logprobs": 3, "ignore_eos": True})
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    # The prompt ends in a token of state 0, so the reply is "éa" again: C3 A9 61.
    assert choice["message"]["content"] == "éa"
    assert [(c["token"], c["bytes"]) for c in content] == [("\\xc3", [0xC3]), ("\\xa9", [0xA9]), ("a", [A])]
    assert bytes(b for c in content for b in c["bytes"]).decode() == "éa"
    for c, last in zip(content, [A, E_LEAD, A_CONT]):
        want = expected_top(server.engine, last, 3)
        assert [(t["token"], t["bytes"]) for t in c["top_logprobs"]] == [(spelled(i, ""), [i]) for i, _ in want]
        assert [t["logprob"] for t in c["top_logprobs"]] == pytest.approx([v for _, v in want], abs=1e-4)
