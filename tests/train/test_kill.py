"""SIGKILL during training never leaves a corrupt latest checkpoint, and the run resumes.

A child process trains with a checkpoint every step; its `os.fsync` is slowed down (a slow
disk), so saving takes most of each step and a kill usually lands inside a save. The test kills
it several times — at random moments, and at moments when a temp file shows a save is under
way — and after every kill the run directory must still load, both as a training state
(`load_train_state`) and as a model directory (`load_model`), and the next run resumes from it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lmstack.models.directory import load_model
from lmstack.tokenizer import Tokenizer
from lmstack.train import load_config, train
from lmstack.train.checkpoint import STATE, load_train_state, read_log
from tests.train.conftest import PYTHON, REPO, run_overrides

CHILD = """
import os, sys, time
_fsync = os.fsync
def slow_fsync(fd):  # a slow disk: saves dominate each step, so kills land inside them
    time.sleep(0.02)
    _fsync(fd)
os.fsync = slow_fsync
from lmstack.train import load_config, train
train(load_config(None, sys.argv[1:]))
"""
TIMEOUT = 60.0  # seconds any one wait may take before the test gives up


def wait_for(condition, proc: subprocess.Popen, what: str, errors: Path) -> None:
    """Poll `condition` until true; fail if the child dies or TIMEOUT passes."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {what}:\n"
                        f"{errors.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def max_logged_step(out: Path) -> int:
    return max((r["step"] for r in read_log(out)), default=0)


def saving(out: Path) -> bool:
    return any(out.glob(f"{STATE}.tmp*")) or any(out.glob("model.safetensors.tmp*"))


@pytest.mark.slow
def test_sigkill_mid_save_leaves_a_loadable_checkpoint(data_dir, tmp_path):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    out = tmp_path / "run"
    overrides = run_overrides(data_dir, out, "steps=100000", "schedule.total_steps=100000",
                              "save_every=1", "resume=true")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    last, kills_mid_save = 0, 0
    for attempt in range(3):
        errors = tmp_path / f"stderr{attempt}.txt"
        with open(errors, "w") as err:
            proc = subprocess.Popen([PYTHON, str(child), *overrides], cwd=REPO, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            # Let it get past its resume point, so this attempt has saved at least once.
            wait_for(lambda: max_logged_step(out) >= last + 2, proc, "two new steps", errors)
            if attempt % 2:
                wait_for(lambda: saving(out), proc, "a save in progress", errors)
            else:
                time.sleep(rng.uniform(0.0, 0.2))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        kills_mid_save += saving(out)

        state = load_train_state(out)  # never corrupt, never missing
        assert state["step"] >= max(last, 1)
        model = load_model(out)
        assert set(model.state_dict()) == set(state["model"])
        Tokenizer.load(out / "tokenizer.json")
        last = state["step"]

    assert kills_mid_save >= 1  # attempt 1 killed while a temp file existed

    # The last resume runs to the end in this process and leaves a clean history.
    result = train(load_config(None, [*overrides, f"steps={last + 3}"]))
    assert result.step == last + 3 == load_train_state(out)["step"]
    assert [r["step"] for r in read_log(out)] == list(range(1, last + 4))
    assert not saving(out)
