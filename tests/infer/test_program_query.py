"""The query language (lmstack/infer/program/query.py) and `lmstack query`: parsing into the
Python API, errors with line and column, runs that keep their constraints, the CLI."""

from __future__ import annotations

import re

import pytest
import torch

from lmstack.cli import main
from lmstack.infer import Engine
from lmstack.infer.program.query import QueryError, parse_query
from lmstack.models import GPT, GPTConfig
from lmstack.program import Decoder, run_all

QUERY = '''
# a classifier and a number
sample(n=3, temperature=0.9, seed=4)
    "Review: {review}\\n"
    "Stars (1-5): [STARS]\\n"
    "Verdict: [VERDICT]\\n"
    """Reason: [REASON]"""
from "smollm2"
where INT(STARS) and len(TOKENS(STARS)) < 2
    and (VERDICT in ["good", "bad"] or VERDICT in ["meh"])
    and STOPS_AT(REASON, "\\n") and len(TOKENS(REASON)) <= 12
'''


@pytest.fixture(scope="module")
def engine(tok):
    torch.manual_seed(0)
    return Engine(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=2,
                                n_embd=64)), tok)


def test_parse_compiles_to_holes():
    q = parse_query(QUERY)
    assert q.decoder == Decoder("sample", n=3, temperature=0.9, seed=4)
    assert q.model == "smollm2"
    stars, verdict, reason = q.holes["STARS"], q.holes["VERDICT"], q.holes["REASON"]
    assert stars.type is int and stars.max_tokens == 1
    assert verdict.options == ["good", "bad", "meh"]
    assert reason.stop == ["\n"] and reason.max_tokens == 12 and reason.regex is None
    assert ("expr", "review") in q.pieces and ("hole", "STARS") in q.pieces


def test_query_runs_keep_constraints(engine):
    q = parse_query(QUERY)
    states = run_all(q, engine, decoder=q.decoder, review="Fine phone")
    assert len(states) == 3
    for s in states:
        assert s.text.startswith("Review: Fine phone\nStars (1-5): ")
        assert isinstance(s["STARS"], int) and s["VERDICT"] in ("good", "bad", "meh")
        assert "\n" not in s["REASON"]


def test_regex_union_and_escapes(engine):
    q = parse_query(r'''argmax "[[x]] {{1}} [A]" where REGEX(A, r"[0-9]{2}") or REGEX(A, "no")''')
    s = run_all(q, engine, decoder=q.decoder)[0]
    assert s.text.startswith("[x] {1} ") and re.fullmatch("[0-9]{2}|no", s["A"])


@pytest.mark.parametrize("text, where, message", [
    ('argmax "a [X]" where', "1:16", "ends too early; expected '\\('"),
    ('argmax\n  "a [X]"\n  wher X in ["b"]', "3:3", "syntax error"),
    ('argmax "a [X]" where Y in ["b"]', "1:22", "no \\[Y\\]"),
    ('argmax "a [X]" where LOWER(X)', "1:22", "unknown constraint LOWER"),
    ('argmax "a [X]" where INT(X) or STOPS_AT(X, "b")', "1:22", "`or` is supported only"),
    ('argmax "a [X]" where REGEX(X, "a") and REGEX(X, "b")', "1:40", "a second regex"),
    ('sample(k=2) "a [X]"', "1:8", "takes no argument k"),
    ('argmax "a [X] [X]"', "1:8", "appears twice"),
    ('argmax "a [X]" where len(TOKENS(X)) < 1', "1:22", "no room"),
])
def test_bad_queries_name_line_and_column(text, where, message):
    with pytest.raises(QueryError, match=f"^q.lmql:{where}: .*{message}"):
        parse_query(text, "q.lmql")


def test_select_takes_no_token_limit():
    with pytest.raises(QueryError, match="takes no max_tokens"):
        parse_query('argmax "a [X]" where X in ["b"] and len(TOKENS(X)) < 3')


def test_expression_error_keeps_partial_state(engine):
    from lmstack.program import ProgramError

    q = parse_query('argmax "a [X] {missing + 1}"')
    with pytest.raises(ProgramError, match="NameError.*names in scope: X") as e:
        run_all(q, engine)
    assert "X" in e.value.state.values


def test_cli_runs_a_query_file(tmp_path, engine, monkeypatch, capsys):
    path = tmp_path / "q.lmql"
    path.write_text('argmax "Q: {q}\\nA: [A]" where len(TOKENS(A)) < 4')
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, model, **kw: engine))
    assert main(["query", str(path), "--model", "tiny", "--arg", "q=hi", "--json"]) == 0
    import json

    line = json.loads(capsys.readouterr().out)
    assert line["text"].startswith("Q: hi\nA: ") and set(line["holes"]) == {"A"}
    path.write_text('argmax "Q: [A" where')
    assert main(["query", str(path), "--model", "tiny"]) == 2
    assert f"{path}:1:" in capsys.readouterr().err
    assert main(["query", str(tmp_path / "none.lmql"), "--model", "tiny"]) == 2
