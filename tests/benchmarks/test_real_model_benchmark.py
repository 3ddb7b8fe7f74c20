"""Smoke test of benchmarks/real_model.py: every row it can build (lmstack fp32/bf16/int8/int4,
transformers fp32/bf16, llama.cpp where installed) loaded from a tiny random Q4_1 llama GGUF
written in the test, checked and timed once, the table printed. No timing is asserted."""

from __future__ import annotations

import importlib.util

import pytest

from tests.benchmarks import load
from tests.interop.gguf_fixtures import hf_model, tiny_vocab, write_gguf


def test_real_model_benchmark_runs_on_a_tiny_gguf(tmp_path, capsys):
    bench = load("real_model")
    path = tmp_path / "tiny.gguf"
    write_gguf(path, hf_model("llama"), "llama", "Q4_1", extra=tiny_vocab())  # a vocabulary: transformers needs one
    results = bench.main(["--model", str(path), "--threads", "1", "--repeats", "1", "--new-tokens", "4",
                          "--prefill-len", "8"])
    out = capsys.readouterr().out
    expected = bench.ROWS if importlib.util.find_spec("llama_cpp") else bench.ROWS[:6]
    for name in expected:
        assert f"| {name} |" in out
        assert len(results[name]["tokens"]) == 4
    # fp32 rows on the same dequantized weights agree with lmstack fp32 token for token.
    assert results["lmstack fp32"]["agree"] == results["transformers fp32"]["agree"] == 4
    assert results["lmstack int4 (Q4_1)"]["bytes"] < results["lmstack bf16"]["bytes"] < results["lmstack fp32"]["bytes"]


def test_bytes_count_a_tied_table_once(tmp_path):
    bench = load("real_model")
    path = tmp_path / "tiny.gguf"
    write_gguf(path, hf_model("llama"), "llama", "F32")
    model = bench.lmstack_models(path, ["lmstack fp32"])["lmstack fp32"]
    params = sum(p.numel() for p in model.parameters())  # parameters() yields the tied table once
    assert bench.torch_bytes(model) == 4 * params
    assert bench.gguf_bytes(path) == 4 * params  # the file's F32 tensors, token table as the head
    with pytest.raises(AssertionError):  # the negative control: counting the table twice differs
        assert bench.torch_bytes(model) + 4 * model.wte.weight.numel() == 4 * params
