"""Smoke test of benchmarks/prefix_cache.py on a tiny model."""

from __future__ import annotations

from tests.benchmarks import load


def test_prefix_cache_benchmark_reuses_the_prefix_and_changes_nothing():
    bench = load("prefix_cache")
    r = bench.main(["--prefix", "64", "--question", "8", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
                    "--vocab-size", "300", "--repeats", "1", "--json"])
    assert r["identical_greedy"] is True
    # one cold and one cached request per repeat, plus the identity check: 64 // 16 blocks reused
    assert r["stats"]["hit_tokens"] >= 64 and r["cold_ttft_s"] > 0 and r["cached_ttft_s"] > 0
