"""Smoke test of benchmarks/speculative.py: its measuring and reporting on tiny random models
(the real run trains its models for minutes)."""

from __future__ import annotations

import torch

from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import save_model
from lmstack.models.medusa_heads import MedusaHeads, save_heads
from tests.benchmarks import load

torch.set_num_threads(1)


def tiny(vocab: int, n_layer: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=512, n_layer=n_layer, n_head=2, n_embd=16,
                         position="rope", tie_embeddings=False, init_std=0.1)).eval()


def test_benchmark_measures_every_method_and_checks_identity(tok, tmp_path):
    bench = load("speculative")
    target_dir, draft_dir = tmp_path / "target", tmp_path / "draft"
    target = tiny(tok.vocab_size, 2, 0)
    save_model(target_dir, target)
    save_model(draft_dir, tiny(tok.vocab_size, 1, 1))
    for d in (target_dir, draft_dir):
        tok.save(d / "tokenizer.json")
    save_heads(target_dir, MedusaHeads.for_model(target, 2))
    report = bench.main(["--target", str(target_dir), "--draft", str(draft_dir), "--new-tokens", "6",
                         "--repeats", "1", "--threads", "1", "--out", str(tmp_path / "out")])
    rows = [r for rows in report["results"].values() for r in rows]
    names = {r["method"] for r in rows}
    assert {"plain greedy", "draft model, γ=2", "draft model, γ=6", "prompt lookup, n=3, γ=8",
            "Medusa, K=2"} <= names
    assert all(r["identical"] and r["tokens"] == 6 for r in rows)
    assert all(r["acceptance"] is None or 0 <= r["acceptance"] <= 1 for r in rows)
    assert "| code (repetitive) | plain greedy |" in report["table"]
    assert (tmp_path / "out" / "results.json").exists()
    # the helpers work on engines directly too
    rows = bench.measure(Engine.load(target_dir), {"plain greedy": None}, "x = 1", 3, 1)
    assert rows[0]["speedup"] == 1.0
