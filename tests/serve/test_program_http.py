"""Prompt programs on an OpenAI-compatible server (lmstack/infer/program/remote.py): holes
through /v1/completions with only the API's fields, constraints the server enforces
(response_format, vLLM's guided_*), and a clear error for one a plain server cannot."""

from __future__ import annotations

import json

import pytest

from lmstack.infer.program.remote import CompletionBackend
from lmstack.program import Decoder, ProgramError, gen, run, select


def prog(s):
    s += "Q: pick a number\nA: " + gen("n", type=int, max_tokens=6)
    s += "\nColor: " + select("color", ["red", "blue"])
    s += "\nJSON: " + gen("obj", json_schema={"type": "object", "properties": {
        "k": {"type": "integer"}}, "required": ["k"]}, max_tokens=40)
    s += "\nMore:" + gen("free", max_tokens=5, stop="\n")


@pytest.mark.parametrize("seed", [0, 1])
def test_program_over_http_keeps_constraints(live_server, seed):
    backend = CompletionBackend.http(live_server.url + "/v1", live_server.model)
    s = run(prog, backend, decoder=Decoder("sample", temperature=1.0, seed=seed))
    assert isinstance(s["n"], int) and s["color"] in ("red", "blue")
    assert set(json.loads(s["obj"])) == {"k"} and "\n" not in s["free"]
    assert s.stats.prefill > 0 and s.stats.decode > 0     # the server's usage


def test_plain_server_refuses_unenforceable_constraints(live_server):
    backend = CompletionBackend.http(live_server.url + "/v1", live_server.model, guided=False)
    s = run(lambda s: s.__iadd__("a" + gen("x", max_tokens=3)), backend)   # plain holes work
    with pytest.raises(ProgramError, match="cannot enforce a regex constraint") as e:
        s += " n = " + gen("n", type=int)
    assert e.value.state.text == s.text and "x" in e.value.state.values
    with pytest.raises(ProgramError, match="neither score"):
        s += select("c", ["a", "b"])


def test_server_down_is_a_clear_error():
    backend = CompletionBackend.http("http://127.0.0.1:9/v1")
    with pytest.raises(ProgramError, match="did not answer"):
        run(lambda s: s.__iadd__("a" + gen("x")), backend)


def test_a_constrained_hole_the_server_cuts_short_is_an_error(live_server):
    backend = CompletionBackend.http(live_server.url + "/v1", live_server.model)
    with pytest.raises(ProgramError, match="before its constraint was satisfied") as e:
        run(lambda s: s.__iadd__("Code: " + gen("code", regex="[a-z]{30}", max_tokens=3)), backend)
    assert e.value.state.text.startswith("Code: ") and len(e.value.state.text) > len("Code: ")
