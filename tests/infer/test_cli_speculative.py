"""Speculative decoding from the command line: `generate` and `chat` take --medusa [DIR],
--draft DIR and --prompt-lookup N (+ --gamma), print what plain decoding prints (greedy), and
say so; bad combinations are one-line errors (`serve` takes the same flags:
tests/serve/test_serve_speculation.py)."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from lmstack.cli import main
from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import save_model
from lmstack.models.medusa_heads import MedusaConfig, MedusaHeads, base_fingerprint, save_heads
from lmstack.tokenizer import train_bpe
from tests.conftest import stdlib_sample

PROMPT = "def f(x):\n    return x\ndef f("


def _gpt(tok, n_layer: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=n_layer, n_head=2, n_embd=32))
    with torch.no_grad():  # sharper logits: greedy text that varies, so equal outputs mean something
        for p in model.parameters():
            p.mul_(3)
    return model


@pytest.fixture(scope="module")
def dirs(tok, tmp_path_factory):
    """A target with Medusa heads inside, a smaller draft, a bare model and an alien draft."""
    root = tmp_path_factory.mktemp("spec")
    target = _gpt(tok, 2, 0)
    paths = {name: root / name for name in ("target", "draft", "bare", "alien")}
    for name, model in (("target", target), ("draft", _gpt(tok, 1, 1)), ("bare", _gpt(tok, 1, 2))):
        save_model(paths[name], model)
        tok.save(paths[name] / "tokenizer.json")
    torch.manual_seed(3)
    save_heads(paths["target"], MedusaHeads(MedusaConfig(
        num_heads=3, n_embd=32, vocab_size=tok.vocab_size, base_fingerprint=base_fingerprint(target))))
    other = train_bpe(stdlib_sample(3), vocab_size=300, progress=False, workers=1)
    save_model(paths["alien"], _gpt(tok, 1, 4))
    other.save(paths["alien"] / "tokenizer.json")
    return paths


def _generate(dirs, capsys, *flags: str) -> tuple[int, str, str]:
    code = main(["generate", "--model", str(dirs["target"]), "--prompt", PROMPT, "--temperature", "0",
                 "--max-new-tokens", "12", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("flags", [
    ["--medusa"], ["--medusa", "TARGET"], ["--prompt-lookup", "2", "--gamma", "6"], ["--draft", "DRAFT"],
], ids=["medusa", "medusa-dir", "prompt-lookup", "draft"])
def test_generate_speculates_and_prints_plain_greedy_text(dirs, capsys, flags):
    flags = [{"TARGET": str(dirs["target"]), "DRAFT": str(dirs["draft"])}.get(f, f) for f in flags]
    plain = Engine.load(dirs["target"]).generate(PROMPT, temperature=0, max_new_tokens=12)
    code, out, err = _generate(dirs, capsys, *flags)
    assert code == 0, err
    assert out == plain.text + "\n"
    assert "speculative:" in err and "drafts accepted" in err and "Traceback" not in err


def test_generate_without_flags_does_not_speculate(dirs, capsys):
    code, _, err = _generate(dirs, capsys)
    assert code == 0 and "speculative" not in err


def test_sampling_speculates_too(dirs, capsys):
    code = main(["generate", "--model", str(dirs["target"]), "--prompt", PROMPT, "--temperature", "0.8",
                 "--seed", "1", "--max-new-tokens", "8", "--prompt-lookup", "3"])
    assert code == 0 and "speculative:" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--medusa", "BARE"], "holds no Medusa heads"),
    (["--medusa", "--prompt-lookup", "3"], "--medusa and --prompt-lookup name 2 drafters"),
    (["--gamma", "4"], "name the drafter too"),
    (["--prompt-lookup", "0"], "prompt_lookup"),
    (["--prompt-lookup", "3", "--gamma", "0"], "gamma"),
    (["--medusa", "--num-beams", "2"], "greedy and sampling only"),
    (["--draft", "ALIEN"], "tokenizer"),
    (["--draft", "/no/such/dir"], "/no/such/dir"),
])
def test_bad_speculation_flags_are_one_line_errors(dirs, capsys, flags, message):
    flags = [{"BARE": str(dirs["bare"]), "ALIEN": str(dirs["alien"])}.get(f, f) for f in flags]
    code, out, err = _generate(dirs, capsys, *flags)
    assert code == 2 and out == ""
    assert err.startswith("lmstack: error:") and message in err and "Traceback" not in err, err


def test_chat_replies_through_the_speculative_decoder(dirs, capsys, monkeypatch):
    replies = {}
    for name, flags in (("plain", []), ("medusa", ["--medusa"])):
        monkeypatch.setattr(sys, "stdin", io.StringIO("def f(\n/quit\n"))
        assert main(["chat", "--model", str(dirs["target"]), "--temperature", "0",
                     "--max-new-tokens", "8", *flags]) == 0
        replies[name] = capsys.readouterr().out
    assert replies["medusa"] == replies["plain"] and replies["plain"].strip("\n")

