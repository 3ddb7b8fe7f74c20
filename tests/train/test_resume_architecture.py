"""`lmstack train --resume` into a run made by another architecture: one line that names both
and says what to do, exit status 2, and the checkpoint left as it was."""

from __future__ import annotations

import pytest

from lmstack.cli import main
from lmstack.train.checkpoint import STATE, load_train_state

from .conftest import TINY_GPT, run_overrides


@pytest.fixture(scope="module")
def gpt_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt_run") / "run"
    assert main(["train", "--set", *run_overrides(data_dir, out, "steps=2")]) == 0
    return out


@pytest.mark.parametrize("model, named", [
    (["model.model_type=lstm", "model.hidden_size=16"], ["checkpoint: gpt model", "config: lstm model"]),
    ([*TINY_GPT, "model.n_embd=16"], ["n_embd=32", "n_embd=16"]),
], ids=["other-type", "other-width"])
def test_resume_with_another_architecture_is_one_clear_line(gpt_run, data_dir, model, named, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in gpt_run.iterdir()}
    argv = ["train", "--set", *run_overrides(data_dir, gpt_run, "steps=4", model=model), "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmstack: error: cannot resume:") and err.count("\n") == 1, err
    assert "another architecture" in err and "out_dir" in err and "train_config.json" in err
    for text in named:
        assert text in err, err
    assert "state_dict" not in err and "Traceback" not in err
    # Nothing was written: the checkpoint still resumes the model that made it.
    assert {p.name: p.stat().st_mtime_ns for p in gpt_run.iterdir()} == before
    assert load_train_state(gpt_run)["step"] == 2 and (gpt_run / STATE).exists()


def test_resume_with_the_same_architecture_still_continues(gpt_run, data_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(gpt_run, run)
    assert main(["train", "--set", *run_overrides(data_dir, run, "steps=3"), "--resume"]) == 0
    assert load_train_state(run)["step"] == 3
