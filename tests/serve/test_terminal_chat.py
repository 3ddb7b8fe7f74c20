"""`lmstack chat` on a tiny random model directory built in the test, driven by scripted stdin."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys

import pytest
import torch

from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import model_chat_template, save_model
from lmstack.serve.terminal import ChatSession, add_chat_args, cmd_chat, run_chat

CONTEXT = 64


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("chat_model")
    save_model(d, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=CONTEXT, n_layer=1, n_head=2,
                                n_embd=32)))
    tok.save(d / "tokenizer.json")
    return d


def chat(model_dir, monkeypatch, script: str, *flags: str) -> None:
    """Run cmd_chat as `lmstack chat --model DIR FLAGS` would, with `script` on stdin."""
    parser = argparse.ArgumentParser()
    add_chat_args(parser)
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    cmd_chat(parser.parse_args(["--model", str(model_dir), *flags]))


def reader(lines: list[str], session: ChatSession, prompts: list[str | None]):
    """An input() stand-in that records the prompt rendered for the line before each read."""
    it = iter(lines)

    def read(cue: str) -> str:
        prompts.append(session.last_prompt)
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None
    return read


def test_reply_is_what_the_engine_generates_greedily(model_dir, monkeypatch, capsys):
    chat(model_dir, monkeypatch, "hello there\n/quit\n", "--temperature", "0", "--max-new-tokens", "8")
    out = capsys.readouterr().out
    engine, template = Engine.load(model_dir), model_chat_template(model_dir)
    prompt = template.render([{"role": "user", "content": "hello there"}])
    assert prompt == "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
    expected = engine.generate(prompt, temperature=0, max_new_tokens=8,
                               stop_token_ids=template.stop_tokens(engine.tokenizer))
    assert expected.text.strip()  # a real reply, so the comparison below means something
    assert out == expected.text + "\n"


def test_set_changes_settings_shown_by_show(model_dir, monkeypatch, capsys):
    chat(model_dir, monkeypatch, "/show\n/set temperature 0.7\n/set max_new_tokens 100\n"
                                 "/set stop ### \"\\n\\n\"\n/show\n/quit\n")
    out = capsys.readouterr().out
    before, after = out.split("temperature = 0.7\n", 1)  # /set echoes the new value
    assert "temperature = 1.0" in before and "max_new_tokens = 256" in before
    assert "temperature = 0.7" in after and "max_new_tokens = 100" in after
    assert "stop = ['###', '\\n\\n']" in after


def test_bad_set_prints_an_error_and_continues(model_dir, monkeypatch, capsys):
    chat(model_dir, monkeypatch, "/set temperature hot\n/set nosuch 1\n/set top_p 2\n/set\n/frob\n"
                                 "/show\n/quit\n")
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    for name in ("temperature must be a number, got 'hot'", "unknown setting 'nosuch'", "top_p",
                 "usage: /set NAME VALUE", "unknown command /frob"):
        assert sum(line.startswith("error: ") and name in line for line in errors) == 1, name
    assert "temperature = 1.0" in captured.out and "top_p = 1.0" in captured.out  # unchanged
    assert "Traceback" not in captured.err


def test_reset_clears_history(model_dir):
    engine, template = Engine.load(model_dir), model_chat_template(model_dir)
    session = ChatSession(engine, template, system="Be brief.", temperature=0, max_new_tokens=3)
    prompts: list[str | None] = []
    run_chat(session, reader(["first", "second", "/reset", "third", "/quit", "never"], session, prompts))
    system = {"role": "system", "content": "Be brief."}
    assert prompts[2].count("<|im_start|>user") == 2  # "second" saw the first exchange
    assert session.last_prompt == template.render([system, {"role": "user", "content": "third"}])
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert len(prompts) == 5  # /quit ended the loop before "never" was read


def test_long_chats_drop_the_oldest_turns_but_keep_the_system_message(model_dir, capsys):
    engine = Engine.load(model_dir)
    notes: list[str] = []
    session = ChatSession(engine, model_chat_template(model_dir), system="Sys.",
                          notify=notes.append, temperature=0, max_new_tokens=4)
    lines = [f"message number {i} about the standard library" for i in range(6)]
    run_chat(session, reader(lines, session, []))
    assert any("dropped" in n and str(CONTEXT) in n for n in notes)
    assert session.last_prompt.startswith("<|im_start|>system\nSys.<|im_end|>\n<|im_start|>user\n")
    assert "message number 5" in session.last_prompt and "message number 0" not in session.last_prompt
    assert len(engine.encode(session.last_prompt)) + 4 <= CONTEXT
    # A message that cannot fit even alone is refused and not kept.
    run_chat(session, reader(["word " * 80, "/quit"], session, []))
    assert "message is too long" in capsys.readouterr().err
    assert all("word word" not in m["content"] for m in session.history)


def test_the_end_of_turn_token_stops_a_reply(model_dir, tok, capsys):
    engine = Engine.load(model_dir)
    im_end = tok.special_tokens["<|im_end|>"]
    session = ChatSession(engine, model_chat_template(model_dir), temperature=0,
                          max_new_tokens=6, logit_bias={im_end: 100.0})
    assert im_end in session.turn_end and tok.special_tokens["<|endoftext|>"] in session.turn_end
    run_chat(session, reader(["hi", "/quit"], session, []))
    assert capsys.readouterr().out == "\n"  # <|im_end|> came first: an empty reply, not its text
    assert engine.last.finish_reason == "stop"


def test_ctrl_c_stops_the_reply_and_keeps_the_chat(model_dir, monkeypatch, capsys):
    engine = Engine.load(model_dir)
    session = ChatSession(engine, model_chat_template(model_dir), temperature=0, max_new_tokens=3)
    real_stream = engine.stream

    def interrupted(prompt, cfg):
        yield "part"
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "stream", interrupted)
    run_chat(session, reader(["one"], session, []))
    monkeypatch.setattr(engine, "stream", real_stream)
    run_chat(session, reader(["two", "/quit"], session, []))
    assert capsys.readouterr().out.startswith("part\n[stopped]\n")
    assert session.history[1] == {"role": "assistant", "content": "part"}
    assert [m["role"] for m in session.history] == ["user", "assistant"] * 2


@pytest.mark.parametrize("script", ["hi\n/quit\n", "hi\n"], ids=["quit", "eof"])
def test_chat_exits_cleanly(model_dir, script):
    code = ("import argparse, sys; from lmstack.serve.terminal import add_chat_args, cmd_chat; "
            "p = argparse.ArgumentParser(); add_chat_args(p); cmd_chat(p.parse_args(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "--model", str(model_dir), "--max-new-tokens", "4"],
                          input=script, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and "Traceback" not in proc.stderr
