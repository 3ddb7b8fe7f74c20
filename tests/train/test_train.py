"""End-to-end training runs on real shards: loss falls, n-gram fit, bf16, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lmstack.errors import ConfigError, DataError
from lmstack.models.directory import load_model
from lmstack.tokenizer import Tokenizer, train_bpe
from lmstack.train import load_config, train
from lmstack.train.checkpoint import LOG, STATE, TRAIN_CONFIG, load_train_state, read_log
from tests.train.conftest import run_overrides

LSTM = ["model.model_type=lstm", "model.n_embd=32", "model.hidden_size=32", "model.n_layer=1"]
GRU = ["model.model_type=gru", "model.n_embd=32", "model.hidden_size=32", "model.n_layer=1"]


def losses(out) -> list[float]:
    return [r["loss"] for r in read_log(out) if "loss" in r]


@pytest.mark.parametrize("model, lr", [(None, "3e-3"), (LSTM, "1e-2"), (GRU, "1e-2")],
                         ids=["gpt", "lstm", "gru"])
def test_loss_falls(data_dir, tmp_path, model, lr):
    out = tmp_path / "run"
    result = train(load_config(None, run_overrides(
        data_dir, out, "steps=30", f"schedule.lr={lr}", "eval_every=30", model=model)))
    log = losses(out)
    assert len(log) == 30 and all(math.isfinite(x) for x in log)
    vocab = Tokenizer.load(data_dir / "tokenizer.json").vocab_size
    assert log[0] == pytest.approx(math.log(vocab), abs=0.5)  # untrained: about uniform
    assert np.mean(log[-5:]) < np.mean(log[:5]) - 0.4
    assert result.step == 30 and result.val["val_loss"] < math.log(vocab) - 0.3
    # The run directory is a model directory: it loads and reproduces the saved weights.
    loaded = load_model(out)
    state = load_train_state(out)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state["model"][name])
    assert json.loads((out / TRAIN_CONFIG).read_text())["steps"] == 30
    assert result.tokens_per_second > 0


def test_bf16_autocast_trains_on_cpu(data_dir, tmp_path):
    out = tmp_path / "bf16"
    train(load_config(None, run_overrides(data_dir, out, "steps=25", "precision=bf16")))
    log = losses(out)
    assert all(math.isfinite(x) for x in log)
    assert np.mean(log[-5:]) < np.mean(log[:5]) - 0.3
    assert load_model(out).lm_head.weight.dtype == torch.float32  # autocast keeps fp32 weights


def test_grad_accum_and_clipping_run(data_dir, tmp_path):
    out = tmp_path / "accum"
    result = train(load_config(None, run_overrides(
        data_dir, out, "steps=4", "grad_accum=3", "optim.grad_clip=0.5", "log_every=2")))
    assert [r["step"] for r in read_log(out)] == [2, 4]
    assert all("tokens_per_s" in r and "mfu" in r for r in read_log(out))
    assert result.step == 4 and math.isfinite(result.train_loss)


def test_ngram_fit_writes_a_model_directory_that_evaluates(data_dir, tmp_path):
    from lmstack.eval import evaluate_model_dir

    out = tmp_path / "ngram"
    result = train(load_config(None, run_overrides(
        data_dir, out, "model.model_type=ngram", "model.order=3", model=[])))
    assert {"config.json", "ngram.npz", "tokenizer.json", STATE}.issubset(p.name for p in out.iterdir())
    vocab = Tokenizer.load(out / "tokenizer.json").vocab_size
    assert result.val["val_loss"] < math.log(vocab) - 1.0  # counting beats uniform easily
    text_file = tmp_path / "held_out.txt"
    text_file.write_text("def main(argv=None):\n    return sorted(set(argv or []))\n", "utf-8")
    metrics = evaluate_model_dir(out, text_file)
    assert metrics["tokens"] > 10 and math.isfinite(metrics["loss"])
    assert metrics["loss"] < math.log(vocab)
    # Cross-check against the n-gram's own perplexity code path on the same ids.
    tok = Tokenizer.load(out / "tokenizer.json")
    ids = [tok.eot_id, *tok.encode(text_file.read_text("utf-8"))]
    assert metrics["ppl"] == pytest.approx(load_model(out).perplexity([ids]), rel=1e-4)


def test_resume_without_checkpoint_starts_fresh(data_dir, tmp_path):
    out = tmp_path / "fresh"
    result = train(load_config(None, run_overrides(data_dir, out, "steps=3", "resume=true")))
    assert result.step == 3 and [r["step"] for r in read_log(out)] == [1, 2, 3]


# ---- bad input ----------------------------------------------------------------------------


def test_heads_that_do_not_divide_the_width(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="not divisible by n_head 3"):
        train(load_config(None, run_overrides(data_dir, tmp_path, "model.n_head=3")))


def test_block_size_beyond_the_models_positions(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="block_size 64 exceeds the model's context"):
        train(load_config(None, run_overrides(data_dir, tmp_path, "block_size=64")))


def test_missing_data_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist.*lmstack data prepare"):
        train(load_config(None, run_overrides(tmp_path / "nowhere", tmp_path / "out")))


def test_data_directory_without_shards(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises((ConfigError, DataError), match="tokenizer|manifest"):
        train(load_config(None, run_overrides(tmp_path / "empty", tmp_path / "out")))


def test_tokenizer_that_did_not_make_the_shards(data_dir, tmp_path):
    other = train_bpe(["zebra yak xylophone " * 30], vocab_size=270, progress=False, workers=1)
    path = other.save(tmp_path / "other.json")
    with pytest.raises(DataError, match="made with tokenizer .* re-run `lmstack data prepare`"):
        train(load_config(None, run_overrides(data_dir, tmp_path / "out", f"tokenizer={path}")))


def test_vocab_smaller_than_the_tokenizer(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="smaller than the tokenizer's"):
        train(load_config(None, run_overrides(data_dir, tmp_path, "model.vocab_size=100")))


def test_batches_larger_than_the_split(data_dir, tmp_path):
    with pytest.raises(DataError, match="lower batch_size or block_size"):
        train(load_config(None, run_overrides(data_dir, tmp_path, "batch_size=100000")))


def test_fp16_on_cpu_is_refused(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(load_config(None, run_overrides(data_dir, tmp_path, "precision=fp16", "steps=1")))


def test_resume_with_other_loader_settings_is_refused(data_dir, tmp_path):
    out = tmp_path / "run"
    train(load_config(None, run_overrides(data_dir, out, "steps=2")))
    with pytest.raises(DataError, match="batch_size: saved 4 vs now 2"):
        train(load_config(None, run_overrides(data_dir, out, "steps=4", "batch_size=2",
                                              "resume=true")))


def test_corrupt_checkpoint_is_reported(data_dir, tmp_path):
    out = tmp_path / "run"
    train(load_config(None, run_overrides(data_dir, out, "steps=1")))
    (out / STATE).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="unreadable.*delete it"):
        train(load_config(None, run_overrides(data_dir, out, "steps=2", "resume=true")))
    assert (out / LOG).exists()  # a failed resume does not throw the old log away
