"""Training features for time-to-loss runs: `target_val_loss` early stop, fused AdamW."""

from __future__ import annotations

import math

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.tokenizer import Tokenizer
from lmstack.train import load_config, train
from lmstack.train.checkpoint import load_train_state, read_log
from lmstack.train.optim import OptimConfig, build_optimizer, fused_supported
from tests.train.conftest import run_overrides


def test_target_val_loss_stops_at_the_first_validation_that_reaches_it(data_dir, tmp_path):
    vocab = Tokenizer.load(data_dir / "tokenizer.json").vocab_size
    target = math.log(vocab) - 0.2  # a few steps beat uniform by this much
    out = tmp_path / "run"
    result = train(load_config(None, run_overrides(
        data_dir, out, "steps=200", "eval_every=5", f"target_val_loss={target}")))
    evals = [r for r in read_log(out) if "val_loss" in r]
    assert result.step < 200 and result.step == evals[-1]["step"]
    assert evals[-1]["val_loss"] <= target
    assert all(r["val_loss"] > target for r in evals[:-1])  # the first one that reached it
    assert result.val["val_loss"] == evals[-1]["val_loss"]
    # The log says when (wall time including validation) and the checkpoint is that step's.
    times = [r["elapsed_s"] for r in evals]
    assert all(t > 0 for t in times) and times == sorted(times)
    assert load_train_state(out)["step"] == result.step


def test_unreached_target_runs_all_steps(data_dir, tmp_path):
    result = train(load_config(None, run_overrides(
        data_dir, tmp_path / "run", "steps=6", "eval_every=3", "target_val_loss=0.001")))
    assert result.step == 6


def test_target_without_validation_is_refused(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="target_val_loss needs validation.*eval_every"):
        load_config(None, run_overrides(data_dir, tmp_path, "eval_every=0",
                                        "target_val_loss=2.0"))


def test_fused_adamw_is_used_on_cpu_and_matches_the_plain_loop():
    def run(fused):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
        opt = build_optimizer(model, OptimConfig(weight_decay=0.1, fused=fused), lr=1e-2)
        x = torch.randn(32, 8)
        for _ in range(5):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        return opt, [p.detach().clone() for p in model.parameters()]

    auto, w_auto = run(None)
    plain, w_plain = run(False)
    assert all(g["fused"] for g in auto.param_groups)
    assert not any(g["fused"] for g in plain.param_groups)
    for a, b in zip(w_auto, w_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not fused_supported([])
