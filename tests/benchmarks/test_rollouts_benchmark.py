"""Smoke test of benchmarks/rollouts.py on a tiny model."""

from __future__ import annotations

from tests.benchmarks import load


def test_rollouts_benchmark_times_both_prefills_and_gets_the_same_tokens():
    bench = load("rollouts")
    r = bench.main(["--prompts", "2", "--k", "3", "--prompt", "8", "--max-new-tokens", "4",
                    "--n-layer", "1", "--n-head", "2", "--n-kv-head", "1", "--n-embd", "32",
                    "--vocab-size", "300", "--threads", "1", "--repeats", "1", "--json"])
    assert r["identical_tokens"] is True
    assert all(r[f"{what}_{side}_s"] > 0 for what in ("prefill", "rollout")
               for side in ("shared", "separate"))
