"""examples/programs/ on a tiny random model, sampled with several seeds: every program runs
and every constraint holds in every output (the query's schema, the typed answer, the labels,
the calculator's expression and its exact result)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch

from lmstack.infer import Engine
from lmstack.infer.program.query import parse_query
from lmstack.models import GPT, GPTConfig
from lmstack.program import Decoder, run, run_all

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "programs"


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def engine(tok):
    torch.manual_seed(0)
    return Engine(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=2, n_head=2,
                                n_embd=64)), tok)


SEEDS = range(3)


@pytest.mark.parametrize("seed", SEEDS)
def test_es_query_is_valid(engine, seed):
    m = example("es_query")
    s = run(m.PROGRAM, engine, decoder=Decoder("sample", temperature=1.2, seed=seed), **m.INPUTS)
    assert s["index"] in m.INDEXES
    jsonschema.validate(json.loads(s["query"]), m.SCHEMA)


@pytest.mark.parametrize("seed", SEEDS)
def test_chain_of_thought_answer_is_a_number(engine, seed):
    m = example("chain_of_thought")
    s = run(m.PROGRAM, engine, decoder=Decoder("sample", temperature=1.2, seed=seed), **m.INPUTS)
    assert isinstance(s["answer"], int) and s.text.endswith("\nAnswer: " + s.texts["answer"])
    assert "\n" not in s["reasoning"]


@pytest.mark.parametrize("seed", SEEDS)
def test_classifier_labels(engine, seed):
    m = example("classify")
    s = run(m.PROGRAM, engine, decoder=Decoder("sample", temperature=5.0, seed=seed), **m.INPUTS)
    assert len(s["label"]) == 3 and set(s["label"]) <= set(m.LABELS)
    # the instruction is computed once, not once per review
    assert s.stats.prefill == len(engine.encode(m.INSTRUCTION)) + sum(
        len(engine.encode("Review: " + r + "\nSentiment: ")) for r in m.INPUTS["reviews"])


def test_classifier_query_file(engine):
    q = parse_query((EXAMPLES / "classify.lmql").read_text(), "classify.lmql")
    for s in run_all(q, engine, decoder=Decoder("sample", n=3, temperature=2.0),
                     review="Broke in a day"):
        assert s["LABEL"] in ("positive", "negative", "neutral") and isinstance(s["STARS"], int)


@pytest.mark.parametrize("seed", SEEDS)
def test_calculator_splices_the_tool_result(engine, seed):
    m = example("calculator")
    s = run(m.PROGRAM, engine, decoder=Decoder("sample", temperature=1.2, seed=seed), **m.INPUTS)
    assert re.fullmatch(m.EXPRESSION, s["expression"])
    assert f"{s['expression']} = {m.calculate(s['expression'])}\nAnswer:" in s.text
