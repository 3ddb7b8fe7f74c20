"""Smoke test of benchmarks/serve_speculative.py: a tiny model behind two real `lmstack serve`
subprocesses (plain and --prompt-lookup), a few short requests. Checks the plumbing, not the
speed."""

from __future__ import annotations

import pytest

from tests.benchmarks import load


@pytest.mark.slow  # two server processes: ~6 s
def test_both_servers_answer_the_same_text_and_the_drafts_are_counted(tmp_path, capsys):
    model = load("serve").build_model(tmp_path / "model", n_layer=1, n_head=2, n_embd=32, block_size=128,
                                      vocab_size=512, tokenizer_files=3)
    bench = load("serve_speculative")
    prompt = bench.fitting_prompt(model, bench.sibling("speculative").CODE_PROMPT, 100)
    assert prompt and len(prompt) < len(bench.sibling("speculative").CODE_PROMPT)
    result = bench.main(["--model", str(model), "--max-tokens", "24", "--repeats", "1",
                         "--spec", "--prompt-lookup 1"])
    assert result["identical"]  # greedy: the speculating server's text is the plain one's
    assert result["plain_tok_s"] > 0 and result["spec_tok_s"] > 0
    assert [len(r) for r in result["runs_s"].values()] == [1, 1]
    assert 0 <= result["acceptance"] <= 1
    assert "speedup" in capsys.readouterr().out
