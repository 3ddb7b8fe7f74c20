"""A run whose loss leaves the finite numbers stops with a clear error and exit status 2,
keeping its last good checkpoint (issue 13: `schedule.lr=1e6` used to exit 0 with NaN weights);
and every command that opens a model refuses NaN weights."""

from __future__ import annotations

import json
import math
import re

import torch

from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import load_model, save_model
from lmstack.train import checkpoint as ckpt

from .conftest import run_overrides
from .test_config_errors import run_cases

DIVERGE = ["schedule.warmup_steps=0", "schedule.min_lr=0", "steps=40", "save_every=2"]


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(data_dir, tmp_path):
    at_once, later = tmp_path / "at_once", tmp_path / "later"
    results = run_cases([
        ["train", "--set", *run_overrides(data_dir, at_once, *DIVERGE, "schedule.lr=1e6")],
        ["train", "--set", *run_overrides(data_dir, later, *DIVERGE, "schedule.lr=1e3")],
    ], tmp_path)
    for code, err, _ in results:
        assert code == 2 and "Traceback" not in err, err
        assert "training diverged" in err and "Lower the learning rate" in err, err
        assert "schedule.lr=" in err and "optim.grad_clip" in err, err  # the advice
    # lr 1e6: NaN after the first update, before any checkpoint: no model is left to load.
    assert "nothing was saved" in results[0][1]
    assert not (at_once / ckpt.STATE).exists() and not (at_once / "model.safetensors").exists()
    # lr 1e3: a few finite steps first; the checkpoint kept is the last one whose weights
    # are finite and give a finite loss, not the NaN state the run ended in.
    kept = re.search(r"the last checkpoint, step (\d+), is kept", results[1][1])
    assert kept, results[1][1]
    step = int(kept.group(1))
    assert ckpt.load_train_state(later)["step"] == step
    model = load_model(later)  # refuses non-finite weights
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # The log holds only finite losses, so `lmstack plot` has something to draw.
    losses = [r["loss"] for r in map(json.loads, (later / ckpt.LOG).read_text().splitlines())]
    assert losses and all(math.isfinite(x) for x in losses)


def test_commands_refuse_nan_weights(tok, tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2,
                          n_embd=32))
    good, bad = tmp_path / "good", tmp_path / "bad"
    save_model(good, model)
    with torch.no_grad():
        next(model.layers[0].mlp.parameters()).view(-1)[0] = float("nan")
    save_model(bad, model)
    for d in (good, bad):
        tok.save(d / "tokenizer.json")
    text = tmp_path / "held_out.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 10)

    def commands(d):
        return [["eval", "--model", str(d), "--data", str(text)],
                ["generate", "--model", str(d), "--prompt", "def", "--max-new-tokens", "2"]]

    results = run_cases(commands(bad) + commands(good), tmp_path)
    for code, err, _ in results[:2]:
        assert code == 2 and "Traceback" not in err, err
        assert "non-finite weights" in err and "diverged" in err and "schedule.lr" in err, err
    assert [code for code, _, _ in results[2:]] == [0, 0]  # negative control: finite weights
