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


def test_generate_under_a_json_schema_file(model_dir, tmp_path, capsys):
    import json

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0,
                                                     "maximum": 99}}, "required": ["n"]}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    args = ["generate", "--model", str(model_dir), "--prompt", "x", "--temperature", "1",
            "--seed", "0", "--max-new-tokens", "30", "--constraint-engine", "reference"]
    assert main(args + ["--json-schema", str(tmp_path / "s.json")]) == 0
    value = json.loads(capsys.readouterr().out)
    assert isinstance(value["n"], int) and 0 <= value["n"] <= 99
    assert main(args + ["--regex", "[ab]{40}", "--max-new-tokens", "3"]) == 0
    assert "cut short of the constraint's language" in capsys.readouterr().err
    assert main(args + ["--regex", "a("]) == 2
    assert "regex" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the file cannot be read
        main(args + ["--grammar", str(tmp_path / "missing.gbnf")])
    assert "cannot read" in capsys.readouterr().err
