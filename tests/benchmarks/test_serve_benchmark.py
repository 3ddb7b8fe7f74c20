"""Smoke test of benchmarks/serve.py: a tiny model, two concurrency levels, a few short requests,
the server a real `lmstack serve` subprocess. Checks the counting, not the speed."""

from __future__ import annotations

import json
import math

import pytest

from tests.benchmarks import load


@pytest.fixture(scope="module")
def serve_bench():
    return load("serve")


def test_percentile_interpolates_between_ranks(serve_bench):
    assert serve_bench.percentile([10, 20, 30, 40, 50], 50) == 30
    assert serve_bench.percentile([10, 20], 95) == pytest.approx(19.5)
    assert math.isnan(serve_bench.percentile([], 50))


def test_serve_benchmark_counts_every_token_of_every_client(serve_bench, tmp_path, capsys):
    model = serve_bench.build_model(tmp_path / "model", n_layer=1, n_head=2, n_embd=32, block_size=128,
                                    vocab_size=512, tokenizer_files=3)
    out = tmp_path / "result.json"
    clients, requests, max_tokens = (1, 3), 2, 8
    result = serve_bench.main(["--model", str(model), "--clients", ",".join(map(str, clients)),
                               "--requests", str(requests), "--max-tokens", str(max_tokens),
                               "--prompt-len", "16", "--repeats", "2", "--threads", "1",
                               "--json", str(out), "--quiet"])

    levels = result["levels"]
    assert [lv["clients"] for lv in levels] == list(clients)
    for c, lv in zip(clients, levels):
        # ignore_eos and a fixed max_tokens: every request generates exactly max_tokens tokens,
        # as the server's own usage chunk reports them.
        assert lv["requests"] == c * requests
        assert [run["tokens"] for run in lv["runs"]] == [c * requests * max_tokens] * 2
        assert lv["aggregate_tokens_s"] > 0 and lv["per_client_tokens_s"] > 0
        assert lv["aggregate_range"][0] <= lv["aggregate_tokens_s"] <= lv["aggregate_range"][1]
        ttfts = [t for run in lv["runs"] for t in run["ttft_ms"]]
        assert len(ttfts) == 2 * c * requests and all(t is not None and t > 0 for t in ttfts)
        assert 0 < lv["ttft_p50_ms"] <= lv["ttft_p95_ms"] <= max(ttfts)
        # Every decode step yields one token per running row, and at most c rows run.
        assert 1 <= lv["tokens_per_step"] <= c + 1
        assert 10 <= lv["prompt_tokens"] <= 22          # ~16-token prompts, re-encoded by the server
        assert lv["server_cpu"] > 0
    assert set(result["ratios"]) == {"3/1"}
    ratio = levels[1]["aggregate_tokens_s"] / levels[0]["aggregate_tokens_s"]
    assert result["ratios"]["3/1"] == pytest.approx(ratio)

    printed = capsys.readouterr().out
    assert "| clients |" in printed and "3 clients / 1 client(s)" in printed
    saved = json.loads(out.read_text())
    assert saved["ratios"] == result["ratios"] and saved["settings"]["max_tokens"] == max_tokens
