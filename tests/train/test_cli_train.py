"""`lmstack train`, `lmstack eval` and `lmstack plot` from the command line."""

import pytest

from lmstack.cli import main

from .conftest import run_overrides


def test_train_eval_plot_commands(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    text = tmp_path / "held_out.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 20)
    assert main(["train", "--set", *run_overrides(data_dir, out, "steps=6", "eval_every=3")]) == 0
    assert "trained 6 steps" in capsys.readouterr().out
    assert main(["eval", "--model", str(out), "--data", str(text)]) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "bits/byte" in printed
    assert main(["plot", str(out), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--set", "steps"], "not key=value"),
        (["train", "--set", "optim.nope=1"], "unknown setting"),
        (["train", "--config", "/no/such.toml"], "does not exist"),
        (["eval", "--model", "/no/such/dir", "--data", "/no/file"], "does not exist"),
    ],
)
def test_train_and_eval_errors_are_clear(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
