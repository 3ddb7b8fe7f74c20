"""`lmstack generate` and `lmstack sample-compare` on a model directory built in the test."""

from __future__ import annotations

import pytest
import torch

from lmstack.cli import main
from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import save_model


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    save_model(d, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32)))
    tok.save(d / "tokenizer.json")
    return d


def test_generate_streams_what_the_engine_returns(model_dir, capsys):
    args = ["--temperature", "0.9", "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "12"]
    assert main(["generate", "--model", str(model_dir), "--prompt", "import os", *args]) == 0
    captured = capsys.readouterr()
    expected = Engine.load(model_dir).generate("import os", temperature=0.9, top_p=0.9, seed=3,
                                               max_new_tokens=12)
    assert captured.out == expected.text + "\n"
    assert f"finish_reason={expected.finish_reason}" in captured.err


def test_generate_beam_prints_each_sequence(model_dir, capsys):
    assert main(["generate", "--model", str(model_dir), "--prompt", "def f(", "--num-beams", "3",
                 "--num-return-sequences", "2", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- ") == 2 and "score" in out


def test_sample_compare_shows_every_strategy(model_dir, capsys):
    assert main(["sample-compare", "--model", str(model_dir), "--prompt", "class A:",
                 "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    for label in ("greedy", "temperature 0.7", "top-k 10", "top-p 0.9", "beam 4"):
        assert label in out


@pytest.mark.parametrize("flags,message", [
    (["--temperature", "-1"], "temperature"), (["--top-p", "0"], "top_p"),
    (["--top-k", "-2"], "top_k"), (["--max-new-tokens", "-1"], "max_new_tokens"),
])
def test_bad_settings_exit_2_with_the_setting_named(model_dir, capsys, flags, message):
    assert main(["generate", "--model", str(model_dir), "--prompt", "x", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmstack: error:") and message in err and "Traceback" not in err


def test_generate_in_bf16(model_dir, capsys):
    assert main(["generate", "--model", str(model_dir), "--prompt", "import os", "--dtype", "bf16",
                 "--temperature", "0", "--max-new-tokens", "6"]) == 0
    expected = Engine.load(model_dir, dtype="bf16").generate("import os", temperature=0, max_new_tokens=6)
    assert capsys.readouterr().out == expected.text + "\n"
