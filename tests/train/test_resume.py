"""Resuming is exact: 10 steps, a restart from the checkpoint, 10 more == 20 steps straight.

"Exact" is bitwise on CPU: the checkpoint restores weights, AdamW moments, the data position
and every RNG (dropout masks), and nothing the loop does between steps (validation, saving)
draws random numbers.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.models import metrics
from lmstack.train import load_config, train
from lmstack.train.checkpoint import LOG, STATE, load_train_state, read_log
from tests.train.conftest import TINY_GPT, run_overrides

SETTINGS = ["schedule.total_steps=20", "eval_every=5", "schedule.warmup_steps=5"]
CASES = {
    "gpt": [],
    "gpt-dropout-accum": ["model.dropout=0.2", "grad_accum=2"],
    "gru-dropout": ["model.model_type=gru", "model.n_embd=16", "model.hidden_size=16",
                    "model.n_layer=2", "model.dropout=0.3"],
}


def run(data_dir, out, *extra):
    return train(load_config(None, run_overrides(data_dir, out, *SETTINGS, *extra)))


@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_exact(data_dir, tmp_path, case):
    extra = CASES[case]
    model = None if extra[:1] != ["model.model_type=gru"] else []
    extra = [*(TINY_GPT if model is None else []), *extra]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(data_dir, straight, "steps=20", *extra)
    run(data_dir, resumed, "steps=10", *extra)
    assert load_train_state(resumed)["step"] == 10
    run(data_dir, resumed, "steps=20", "resume=true", *extra)

    a, b = load_train_state(straight), load_train_state(resumed)
    assert a["step"] == b["step"] == 20
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name, moments in a["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][name][key]), (name, key)
    assert a["data"] == b["data"]
    # The log of the resumed run is the straight run's, step for step, loss for loss.
    log_a, log_b = read_log(straight), read_log(resumed)
    assert [r["step"] for r in log_b] == list(range(1, 21))
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert [r.get("val_loss") for r in log_a] == [r.get("val_loss") for r in log_b]


def test_a_changed_run_really_differs(data_dir, tmp_path):
    """The equality above can fail: another seed gives other weights."""
    run(data_dir, tmp_path / "a", "steps=3")
    run(data_dir, tmp_path / "b", "steps=3", "seed=7")
    a, b = load_train_state(tmp_path / "a"), load_train_state(tmp_path / "b")
    assert not torch.equal(a["model"]["wte.weight"], b["model"]["wte.weight"])


def test_resume_drops_log_records_after_the_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    run(data_dir, out, "steps=6", "save_every=3")
    # A run killed after logging step 7 but before saving it, mid-way through a line:
    with open(out / LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 7, "loss": 0.0}) + "\n" + '{"step": 8, "lo')
    run(data_dir, out, "steps=9", "resume=true")
    steps = [r["step"] for r in read_log(out)]
    assert steps == list(range(1, 10))
    assert all(r["loss"] != 0.0 for r in read_log(out))
    assert (out / LOG).read_text().endswith("\n")


def test_resume_removes_stale_temp_files(data_dir, tmp_path):
    out = tmp_path / "run"
    run(data_dir, out, "steps=2")
    stale = out / f"{STATE}.tmp999999"
    stale.write_bytes(b"half a checkpoint")
    run(data_dir, out, "steps=3", "resume=true")
    assert not stale.exists() and load_train_state(out)["step"] == 3


def test_resume_in_a_fresh_process_is_exact(data_dir, tmp_path):
    """A resumed run is a new process: the peak-FLOPs measurement (random matrices) is not yet
    cached there, and must not draw from the dropout stream the checkpoint restored."""
    extra = [*TINY_GPT, "model.dropout=0.2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(data_dir, straight, "steps=20", *extra)
    run(data_dir, resumed, "steps=10", *extra)
    metrics._peak_flops.cache_clear()  # as in a new process
    run(data_dir, resumed, "steps=20", "resume=true", *extra)
    a, b = load_train_state(straight), load_train_state(resumed)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
