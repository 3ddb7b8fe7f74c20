"""`lmstack generate`, `chat` and `eval` with `--lora DIR`: each prints what it prints for the
merged model (merge_lora, saved as a model directory of its own), and not what the base gives."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest

from lmstack.cli import main
from lmstack.models.directory import load_model, save_model
from lmstack.posttrain.peft import load_adapter, unload_lora
from tests.serve.test_serve_lora import dirs  # noqa: F401 (the fixture: base model and adapters)


@pytest.fixture(scope="module")
def merged_dir(dirs, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("merged-poem")
    save_model(d, unload_lora(load_adapter(load_model(dirs["base"]), dirs["poem"])))
    shutil.copy(Path(dirs["base"]) / "tokenizer.json", d / "tokenizer.json")
    return str(d)


def run(capsys, monkeypatch, argv: list[str], stdin: str = "") -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(argv) == 0
    return capsys.readouterr().out


COMMANDS = {
    "generate": (["generate", "--prompt", "def f(x):", "--temperature", "0", "--max-new-tokens", "16",
                  "--ignore-eos"], ""),
    "chat": (["chat", "--temperature", "0", "--max-new-tokens", "12"], "hello there\n/quit\n"),
    "eval": (["eval", "--data", "DATA"], ""),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_lora_flag_is_the_merged_model(dirs, merged_dir, capsys, monkeypatch, tmp_path, command):  # noqa: F811
    argv, stdin = COMMANDS[command]
    data = tmp_path / "held_out.txt"
    data.write_text("import os\nimport sys\n\ndef main():\n    return os.getcwd()\n" * 4)
    argv = [str(data) if a == "DATA" else a for a in argv]
    with_lora = run(capsys, monkeypatch, [*argv, "--model", dirs["base"], "--lora", dirs["poem"]], stdin)
    merged = run(capsys, monkeypatch, [*argv, "--model", merged_dir], stdin)
    base = run(capsys, monkeypatch, [*argv, "--model", dirs["base"]], stdin)
    assert with_lora == merged and with_lora != base, (with_lora, merged, base)


def test_lora_flag_for_another_base_is_an_error(dirs, capsys):  # noqa: F811
    assert main(["generate", "--model", dirs["base"], "--lora", dirs["wide"], "--prompt", "x"]) == 2
    assert "another base" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "merged into its weights" in " ".join(capsys.readouterr().out.split())
