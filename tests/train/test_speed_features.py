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


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    from lmstack.models import GPTConfig, build_model

    model = build_model(GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=16,
                                  tie_embeddings=False))
    opt = build_optimizer(model, OptimConfig(name="muon"))
    names = {id(p): n for n, p in model.named_parameters()}
    muon, other_matrices, vectors = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert [g["muon"] for g in opt.param_groups] == [True, False, False]
    # q, k, v, o, up and down projections of both layers; never the embeddings or the head.
    assert len(muon) == 2 * 6 and all(n.endswith("proj.weight") for n in muon)
    assert sorted(other_matrices) == ["lm_head.weight", "position.wpe.weight", "wte.weight"]
    assert vectors and all(model.get_parameter(n).dim() == 1 for n in vectors)


def test_muon_trains_and_resumes_exactly(data_dir, tmp_path):
    muon = ["optim.name=muon", "schedule.lr=1e-2", "schedule.total_steps=12"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = train(load_config(None, run_overrides(data_dir, straight, "steps=12", *muon)))
    train(load_config(None, run_overrides(data_dir, resumed, "steps=6", *muon)))
    train(load_config(None, run_overrides(data_dir, resumed, "steps=12", "resume=true", *muon)))
    losses = [r["loss"] for r in read_log(straight)]
    assert math.isfinite(result.train_loss) and sum(losses[-3:]) < sum(losses[:3]) - 0.6
    a, b = load_train_state(straight), load_train_state(resumed)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert [r["loss"] for r in read_log(resumed)] == losses


def test_unknown_optimizer_is_refused():
    with pytest.raises(ConfigError, match="optimizer 'sgd' is unknown"):
        OptimConfig(name="sgd").check()
