"""Two CPU processes (gloo, under torchrun) train like one process with the same global batch.

Rank r of 2 with batch_size B reads windows r, r+2, ... of each 2B-window slice of the shuffled
order, so the two ranks together see exactly the windows one process with batch_size 2B sees,
and averaging their gradients (DDP all-reduce, FSDP reduce-scatter) gives the same update. Only
the order of float additions differs, so losses and weights agree to a tolerance, not bitwise.
grad_accum=2 exercises skipping the gradient sync on the first micro-batch; validation and a
checkpoint mid-run exercise the collectives everyone must join under FSDP. The FSDP run is
split in two launches, the second resuming from the first's sharded-then-gathered checkpoint.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from lmstack.infer import sample_text
from lmstack.models.directory import load_model
from lmstack.train import load_config, train
from lmstack.train.checkpoint import load_train_state, read_log
from tests.train.conftest import PYTHON, REPO, free_port, run_overrides

SCRIPT = """
import sys
from lmstack.infer import sample_text
from lmstack.train import load_config, train
train(load_config(None, sys.argv[1:]), sample=sample_text)
"""
COMMON = ["steps=8", "schedule.total_steps=8", "grad_accum=2", "eval_every=4", "save_every=4",
          "eval_batches=3", "sample_every=8"]


def torchrun(tmp_path, overrides: list[str]) -> None:
    """Run one training under `torchrun --nproc_per_node 2`; fail with its output if it fails."""
    script = tmp_path / "run_train.py"
    script.write_text(SCRIPT)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script),
           *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


@pytest.fixture(scope="module")
def single(data_dir, tmp_path_factory):
    """The one-process reference: batch_size 4 (= 2 ranks x 2)."""
    out = tmp_path_factory.mktemp("single")
    train(load_config(None, run_overrides(data_dir, out, *COMMON, "batch_size=4")), sample=sample_text)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("parallel, launches", [
    ("ddp", [["steps=8"]]),
    ("fsdp", [["steps=4"], ["steps=8", "resume=true"]]),
])
def test_two_processes_match_one(data_dir, tmp_path, single, parallel, launches):
    out = tmp_path / parallel
    for extra in launches:
        torchrun(tmp_path, run_overrides(data_dir, out, *COMMON, "batch_size=2",
                                         f"parallel={parallel}", *extra))
    ref_log, log = read_log(single), read_log(out)
    assert [r["step"] for r in log] == [r["step"] for r in ref_log] == list(range(1, 9))
    for mine, ref in zip(log, ref_log):
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-6)
        assert ("val_loss" in mine) == ("val_loss" in ref) == (mine["step"] % 4 == 0)
        if "val_loss" in ref:
            assert mine["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5)
    assert log[-1]["loss"] < log[0]["loss"]  # it trained: the comparison is not of two no-ops

    ref_state, state = load_train_state(single), load_train_state(out)
    assert state["step"] == 8 and state["data"]["world_size"] == 2
    assert len(state["rng_ranks"]) == 2
    # Adam scales every update to about lr (3e-3) whatever the gradient's size, so a rounding
    # difference in a near-zero gradient can move a weight by a small fraction of lr: 2e-5 is
    # under 1% of one step, far below what a wrong batch or a missing all-reduce would do.
    for name, ref in ref_state["model"].items():
        torch.testing.assert_close(state["model"][name], ref, rtol=1e-4, atol=2e-5)
    # The checkpoint holds full weights: the directory loads as a plain one-process model.
    loaded = load_model(out)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state["model"][name])
    # Optimizer state is keyed by parameter name whatever the parallelism, so it compares too.
    for name, moments in ref_state["optimizer"]["state"].items():
        torch.testing.assert_close(state["optimizer"]["state"][name]["exp_avg"],
                                   moments["exp_avg"], rtol=1e-3, atol=1e-7)
