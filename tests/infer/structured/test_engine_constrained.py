"""Constraints through the engine's one decode step: whatever a random model prefers, the
reply is a sentence of the language, under greedy and sampling, batched with rows under other
constraints (or none), streamed, and cut short by max_new_tokens only with finish_reason
"length" and `complete` False. The reference engine, so the test needs no fast library."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
REF = {"constraint_engine": "reference"}


@pytest.fixture(scope="module")
def engine(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=32))
    return Engine(model, tok)


@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=1.0, seed=3)])
def test_schema_replies_validate(engine, settings):
    out = engine.generate("Person: ", json_schema=SCHEMA, max_new_tokens=80, **settings, **REF)
    assert out.finish_reason == "stop" and out.complete is True, out
    jsonschema.validate(json.loads(out.text), SCHEMA)


def test_regex_choices_and_grammar(engine):
    out = engine.generate("Number: ", regex=r"-?[1-9][0-9]{0,3}", max_new_tokens=10,
                          temperature=1.0, seed=1, **REF)
    assert re.fullmatch(r"-?[1-9][0-9]{0,3}", out.text), out.text
    out = engine.generate("Verdict: ", choices=["yes", "no", "maybe later"], temperature=1.0,
                          seed=2, max_new_tokens=10, **REF)
    assert out.text in ("yes", "no", "maybe later") and out.finish_reason == "stop"
    gbnf = 'root ::= "(" inner ")"\ninner ::= [0-9]{1,3} | "(" [0-9]{1,3} ")"  # depth <= 2'
    out = engine.generate("Expr: ", grammar=gbnf, temperature=1.0, seed=0, max_new_tokens=30, **REF)
    assert re.fullmatch(r"\(([0-9]{1,3}|\([0-9]{1,3}\))\)", out.text), out.text
    lark = 'start: "[" ITEM ("," ITEM)~0..2 "]"\nITEM: /[a-z]{1,4}/'
    out = engine.generate("List: ", grammar=lark, temperature=1.0, seed=0, max_new_tokens=30, **REF)
    assert re.fullmatch(r"\[[a-z]{1,4}(,[a-z]{1,4}){0,2}\]", out.text), out.text


def test_rows_under_other_constraints_share_a_batch(engine):
    prompts = ["a", "b", "c"]
    together = engine.generate(prompts, regex=r"[a-c]{3}", temperature=1.0, seed=5,
                               max_new_tokens=8, **REF)
    for prompt, out in zip(prompts, together):
        alone = engine.generate(prompt, regex=r"[a-c]{3}", temperature=1.0, seed=5,
                                max_new_tokens=8, **REF)
        assert out.tokens == alone.tokens and re.fullmatch("[a-c]{3}", out.text)
    free = engine.generate("a", temperature=0, max_new_tokens=8)
    assert free.complete is None


def test_stream_equals_generate(engine):
    pieces = list(engine.stream("Person: ", json_schema=SCHEMA, temperature=0, max_new_tokens=80, **REF))
    assert "".join(pieces) == engine.generate("Person: ", json_schema=SCHEMA, temperature=0,
                                              max_new_tokens=80, **REF).text


def test_max_new_tokens_cuts_a_value_short(engine):
    out = engine.generate("Person: ", json_schema=SCHEMA, temperature=0, max_new_tokens=3, **REF)
    assert out.finish_reason == "length" and out.complete is False


@pytest.mark.parametrize("settings, words", [
    (dict(regex="a(", **REF), "regex"),
    (dict(json_schema={"type": "string", "contentEncoding": "base64"}, **REF), "contentEncoding"),
    (dict(grammar='root ::= undefined-rule', **REF), "undefined"),
    (dict(regex="a", choices=["b"]), "2 constraints"),
    (dict(regex="a", ignore_eos=True), "ignore_eos"),
    (dict(regex="a", constraint_engine="magic"), "constraint_engine"),
])
def test_bad_constraints_fail_before_decoding(engine, settings, words):
    with pytest.raises(ConfigError, match=words):
        engine.generate("x", max_new_tokens=4, **settings)


def test_beam_search_and_best_of_follow_the_constraint(engine):
    beams = engine.generate("Person: ", json_schema=SCHEMA, num_beams=3, num_return_sequences=2,
                            max_new_tokens=60, **REF)
    for out in beams:
        jsonschema.validate(json.loads(out.text), SCHEMA)
    best = engine.generate("Number: ", regex=r"[1-9][0-9]?", best_of=3, temperature=1.0,
                           seed=0, max_new_tokens=5, **REF)
    assert re.fullmatch(r"[1-9][0-9]?", best.text)


@pytest.mark.parametrize("drafter", [dict(prompt_lookup=2), "draft"])
def test_speculative_greedy_equals_plain_constrained_greedy(engine, tok, drafter):
    if drafter == "draft":
        torch.manual_seed(1)
        drafter = dict(draft=GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1,
                                           n_head=1, n_embd=16)))
    spec = engine.speculative(gamma=4, **drafter)
    prompt = 'Person: {"name": "ab", "age": 1} Person: {"name": "ab", "age": 1} Person: '
    for settings in (dict(json_schema=SCHEMA), dict(regex=r"[a-z]{2,8}"), dict(choices=["one", "two"])):
        plain = engine.generate(prompt, temperature=0, max_new_tokens=60, **settings, **REF)
        fast = spec.generate(prompt, temperature=0, max_new_tokens=60, **settings, **REF)
        assert fast.tokens == plain.tokens and fast.finish_reason == plain.finish_reason
    sampled = spec.generate(prompt, temperature=1.0, seed=0, max_new_tokens=60, json_schema=SCHEMA, **REF)
    jsonschema.validate(json.loads(sampled.text), SCHEMA)


@pytest.mark.parametrize("engine_name", ["reference", "fast"])
def test_json_whitespace_bounds_the_gaps(engine, engine_name):
    pytest.importorskip("llguidance")
    settings = dict(json_schema=SCHEMA, temperature=1.0, max_new_tokens=80,
                    constraint_engine=engine_name)
    for seed in range(3):
        compact = engine.generate("Person: ", json_whitespace=0, seed=seed, **settings)
        value = json.loads(compact.text)
        assert compact.text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        loose = engine.generate("Person: ", json_whitespace=-1, seed=seed, **settings)
        jsonschema.validate(json.loads(loose.text), SCHEMA)
    with pytest.raises(ConfigError, match="json_whitespace"):
        engine.generate("x", regex="a", json_whitespace=-2)


def test_the_prefix_cache_changes_nothing(engine):
    from lmstack.infer.prefix_cache import PrefixCache

    cached = Engine(engine.model, engine.tokenizer, prefix_cache=PrefixCache(block_size=4))
    prompt = "A long shared system prompt, then the person: "
    for seed in range(2):  # the second call reuses the first one's prefix blocks
        settings = dict(json_schema=SCHEMA, temperature=1.0, seed=seed, max_new_tokens=80, **REF)
        assert cached.generate(prompt, **settings).tokens == engine.generate(prompt, **settings).tokens
    stats = cached.prefix_cache.stats()
    assert stats["hit_tokens"] > 0, stats
