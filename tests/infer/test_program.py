"""Prompt programs on the local backend (lmstack/infer/program/): the growing cache holds
exactly the program's text and gives the logits a fresh forward gives; holes equal the
engine's own generate/score; constraints hold on sampled runs; fork/join; jump-forward; token
healing; bad input fails clearly with the partial state readable."""

from __future__ import annotations

import json
import re

import pydantic
import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.infer.program import LocalBackend
from lmstack.models import GPT, GPTConfig
from lmstack.program import Decoder, ProgramError, gen, join, new_state, run, select


def tiny(tok, block_size: int = 256) -> Engine:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2,
                          n_embd=64))
    return Engine(model, tok)


@pytest.fixture(scope="module")
def engine(tok):
    return tiny(tok)


def assert_branch_holds_text(state, engine):
    """The cache holds ids whose text, with the queued tail and pending text, is the state's
    text, and the branch's logits are those of a fresh forward over those ids."""
    b = state.branch
    assert b.cache.length == len(b.cached)
    assert engine.tokenizer.decode(b.cached + b.tail) + b.pending == state.text
    if b.logits is not None:
        with torch.inference_mode():
            fresh = engine.model(torch.tensor([b.cached]))[:, -1].float()
        assert torch.allclose(b.logits, fresh, atol=1e-4)


def test_gen_equals_generate_and_cache_holds_text(engine):
    prompt = "def main(x):\n    return"
    s = new_state(LocalBackend(engine, heal=False))
    s += prompt
    s += gen("a", max_tokens=12)
    assert s["a"] == engine.generate(prompt, temperature=0, max_new_tokens=12).text
    assert_branch_holds_text(s, engine)
    ids = s.branch.cached + s.branch.tail
    s += "\n" + gen("b", max_tokens=8, stop=["e"])
    expected = engine.generate(ids + engine.encode("\n"), temperature=0, max_new_tokens=8,
                               stop=["e"]).text
    assert s["b"] == expected and "e" not in s["b"]
    assert_branch_holds_text(s, engine)
    assert s.text == prompt + s["a"] + "\n" + s["b"]


def test_stop_string_crops_the_cache(engine):
    """A stop string's tokens leave the cache; its text is not part of the state."""
    s = new_state(LocalBackend(engine, heal=False))
    s += "import os\n"
    first = engine.generate("import os\n", temperature=0, max_new_tokens=6).text
    stop = first[3:5]
    s += gen("a", max_tokens=6, stop=stop)
    assert s["a"] == first[:first.index(stop)]
    assert_branch_holds_text(s, engine)
    s += " more" + gen("b", max_tokens=3)
    assert_branch_holds_text(s, engine)


def test_fixed_text_is_computed_once(engine):
    s = new_state(LocalBackend(engine, heal=False))
    text = "x = 1\n" * 20
    s += text + gen("a", max_tokens=4) + "\n" + gen("b", max_tokens=4)
    n_text = len(engine.encode(text))
    assert s.stats.prefill == n_text + len(engine.encode("\n"))
    assert s.stats.decode <= 8


@pytest.mark.parametrize("seed", range(6))
def test_constraints_hold_on_sampled_runs(engine, seed):
    schema = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 8},
                                               "n": {"type": "integer"}},
              "required": ["q", "n"]}

    def prog(s):
        s += "Answer: " + gen("num", type=int, max_tokens=6)
        s += "\nWord: " + gen("word", regex=r"[a-z]{2,5}", max_tokens=8)
        s += "\nJSON: " + gen("obj", json_schema=schema, max_tokens=60)
        s += "\nPick: " + gen("c", choices=["red", "green", "blue"])
        s += "\nSel: " + select("sel", ["alpha", "beta", "gamma"])

    s = run(prog, engine, decoder=Decoder("sample", temperature=1.3, seed=seed))
    assert isinstance(s["num"], int) and re.fullmatch(r"-?[0-9]+", s.texts["num"])
    assert re.fullmatch(r"[a-z]{2,5}", s["word"])
    obj = json.loads(s["obj"])
    assert set(obj) == {"q", "n"} and isinstance(obj["n"], int) and len(obj["q"]) <= 8
    assert s["c"] in ("red", "green", "blue") and s["sel"] in ("alpha", "beta", "gamma")
    assert_branch_holds_text(s, engine)


def test_sampled_runs_differ_and_repeat(engine):
    def prog(s):
        s += "x" + gen("a", max_tokens=8)

    a = [run(prog, engine, decoder=Decoder("sample", seed=k))["a"] for k in (1, 2, 1)]
    assert a[0] == a[2] and a[0] != a[1]


def test_select_scores_equal_engine_score(engine):
    prompt, options = "def f(x):\n    return", [" x", " None", " x + 1", " self.value"]
    s = new_state(engine)
    s += prompt + select("r", options)
    scores = [engine.score(prompt, o).logprob for o in options]
    assert s.branch.last_scores == pytest.approx(scores, abs=1e-4)
    assert s["r"] == options[max(range(4), key=scores.__getitem__)]
    assert_branch_holds_text(s, engine)
    assert s.stats.select == sum(len(engine.encode(o)) for o in options)
    assert s.stats.forwards == 2   # the prompt, then all four options in one pass


def test_select_mean_and_sampling(engine):
    prompt, options = "import", [" os", " sys.path.join"]
    s = new_state(engine)
    s += prompt + select("r", options, normalize="mean")
    means = [engine.score(prompt, o) for o in options]
    assert s.branch.last_scores == pytest.approx([m.logprob / len(m.tokens) for m in means],
                                                 abs=1e-4)
    picks = {run(lambda s: s.__iadd__("a" + select("r", ["b", "c", "d"], temperature=50.0)),
                 engine, decoder=Decoder("sample", seed=k))["r"] for k in range(30)}
    assert picks == {"b", "c", "d"}   # a hot temperature reaches every option (greedy: one)


def test_fork_shares_prefix_and_join_gathers(engine):
    s = new_state(LocalBackend(engine, heal=False))
    prefix = "class A:\n    def"
    s += prefix
    branches = s.fork(3)
    for i, b in enumerate(branches):
        b += f" m{i}(self):" + gen("body", max_tokens=5)
    gathered = join(s, branches)
    assert list(gathered) == ["body"] and len(s["body"]) == 3
    for i, b in enumerate(branches):
        expected = engine.generate(prefix + f" m{i}(self):", temperature=0, max_new_tokens=5)
        assert b["body"] == expected.text
        assert_branch_holds_text(b, engine)
    assert s.stats.prefill == len(engine.encode(prefix)) + sum(
        len(engine.encode(f" m{i}(self):")) for i in range(3))
    assert s.text == prefix   # the parent's text is its own


def test_jump_forward_takes_forced_tokens_without_sampling(engine, tok):
    # a character that no longer token contains: after a digit, the regex leaves it alone
    lone = next(chr(c) for c in b"~`^|@$;!" if not any(
        bytes([c]) in b and len(b) > 1 for b in tok.vocab.values()))
    regex = "[0-9]" + re.escape(lone) + "[0-9]"
    s = new_state(engine)
    s += "x" + gen("a", regex=regex, max_tokens=10)
    assert re.fullmatch(regex, s["a"])
    plain = engine.generate("x", regex=regex, temperature=0, max_new_tokens=10)
    assert s["a"] == plain.text        # the same text as the engine's constrained greedy
    assert s.stats.forced == 1 and s.stats.decode == 2
    assert s.stats.forwards == 2       # the prompt, then the first digit and the forced token
    #                                    together (the second digit waits for the next text)
    assert_branch_holds_text(s, engine)
    s2 = new_state(engine)
    s2 += "x" + gen("a", regex="[0-9]{3}", max_tokens=10)   # never a single choice
    assert s2.stats.forced == 0


def test_token_healing_backs_up_over_the_last_prompt_token(engine, tok):
    prompt = "def main():\n    "
    ids = engine.encode(prompt)
    last = tok.vocab[ids[-1]]
    s = new_state(LocalBackend(engine, heal=True))
    s += prompt + gen("a", max_tokens=6)
    b = s.branch
    first = (b.cached + b.tail)[len(ids) - 1]
    assert tok.vocab[first].startswith(last)    # the hole's first token covers the backed-up text
    assert s.text == prompt + s["a"]
    assert_branch_holds_text(s, engine)
    # the healed distribution: among tokens that begin with `last`, the best after the rest
    with torch.inference_mode():
        logits = engine.model(torch.tensor([ids[:-1]]))[0, -1]
    allowed = [i for i, v in tok.vocab.items() if v.startswith(last)]
    assert first == max(allowed, key=lambda i: float(logits[i]))
    s2 = new_state(LocalBackend(engine, heal=False))        # control: no backing up
    s2 += prompt + gen("a", max_tokens=6)
    assert s2.branch.cached[:len(ids)] == ids


def test_typed_holes(engine):
    class Point(pydantic.BaseModel):
        x: int = pydantic.Field(ge=0, le=9)
        y: int = pydantic.Field(ge=0, le=9)

    s = new_state(engine)
    s += "p = " + gen("p", type=Point, max_tokens=40) + "\nf = " + gen("f", type=float,
                                                                    max_tokens=8)
    s += "\nb = " + gen("b", type=bool)
    assert isinstance(s["p"], Point) and isinstance(s["f"], float)
    assert isinstance(s["b"], bool)
    with pytest.raises(ConfigError, match="not supported"):
        gen("x", type=list)
    s += "\nq = " + select("q", ["1", "2"])
    with pytest.raises(ProgramError, match="before its constraint was satisfied") as e:
        s += "\nr = " + gen("r", type=Point, max_tokens=3)
    assert e.value.state.values["q"] in ("1", "2") and "r" not in e.value.state.values


def test_hole_used_before_filled_keeps_partial_state(engine):
    s = new_state(engine)
    s += "a" + gen("first", max_tokens=2)
    with pytest.raises(ProgramError, match="'second' is used before it is filled") as e:
        s["second"]
    assert e.value.state.text == s.text and "first" in e.value.state.values


def test_program_past_context_fails_with_partial_state(tok):
    small = tiny(tok, block_size=32)

    def prog(s):
        s += "x = 1\n" + gen("a", max_tokens=4)
        s += "y = 2\n" * 20 + gen("b", max_tokens=4)

    with pytest.raises(ProgramError, match="context is 32") as e:
        run(prog, small)
    assert "a" in e.value.state.values and "b" not in e.value.state.values


def test_bad_holes_name_the_problem(engine):
    with pytest.raises(ConfigError, match="2 constraints"):
        gen("x", regex="a", choices=["a"])
    with pytest.raises(ConfigError, match="not an identifier"):
        gen("not a name")
    with pytest.raises(ConfigError, match="non-empty strings"):
        select("x", [])
    s = new_state(engine)
    with pytest.raises(ProgramError, match="no text before its first hole"):
        s += gen("x")
    s += "a" + gen("x", max_tokens=1)
    with pytest.raises(ProgramError, match="filled twice"):
        s += gen("x")
    with pytest.raises(ConfigError, match="appends text and holes"):
        s += 3


def test_constrained_hole_cut_short_is_an_error_with_its_text(engine):
    s = new_state(engine)
    with pytest.raises(ProgramError, match="before its constraint was satisfied") as e:
        s += "x = " + gen("x", regex="[a-z]{30}", max_tokens=4)
    state = e.value.state
    assert "x" not in state.values and state.text == "x = " + state.texts["x"]
    assert_branch_holds_text(state, engine)
