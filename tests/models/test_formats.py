"""The registry of model formats (models/directory.py): which format opens which directory,
formats registered from above, and the errors when none does."""

import json
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.models import build_model
from lmstack.models import directory as md
from lmstack.models.directory import (ENTRY_POINTS, FORMATS, ModelFormat, find_format, load_model,
                                      load_tokenizer, model_eos_ids, register_format, save_model)

ROOT = Path(__file__).resolve().parents[2]
# n_embd 16: the int8 kernel crashes (SIGSEGV) on n_embd 8 (reported in the issue note)
TINY_GPT = {"model_type": "gpt", "vocab_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16,
            "block_size": 8}


def test_declared_formats_are_installed_and_load():
    """pyproject.toml's entry points are what the installed package declares (else: reinstall),
    and each names a ModelFormat of the same name."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINTS]
    installed = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINTS)}
    assert installed == declared, "run `pip install --no-deps -e .` after editing pyproject.toml"
    assert set(declared) == {"gguf", "hf", "quantized"}
    for ep in entry_points(group=ENTRY_POINTS):
        fmt = ep.load()
        assert isinstance(fmt, ModelFormat) and fmt.name == ep.name


def test_each_directory_finds_its_format(tmp_path):
    plain = save_model(tmp_path / "plain", build_model(TINY_GPT))
    ngram = tmp_path / "ngram"
    ngram.mkdir()
    (ngram / "config.json").write_text(json.dumps({"model_type": "ngram", "vocab_size": 4, "order": 2}))
    quant = tmp_path / "quant"
    quant.mkdir()
    (quant / "config.json").write_text(json.dumps({**TINY_GPT, "quantization": {"bits": 8}}))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (hf / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    found = {d.name: find_format(d).name for d in (plain, ngram, quant, hf)}
    assert found == {"plain": "lmstack", "ngram": "ngram", "quant": "quantized", "hf": "hf"}
    assert model_eos_ids(hf) == [7, 9] and model_eos_ids(plain) is None
    assert load_tokenizer(plain) is None  # no tokenizer.json: prompts are ids


def test_quantized_directory_loads_through_its_format(tmp_path):
    from lmstack.infer.quantize import QuantLinear, quantize_model

    model = quantize_model(build_model(TINY_GPT), bits=8)
    d = save_model(tmp_path / "q8", model)
    loaded = load_model(d)
    assert any(isinstance(m, QuantLinear) for m in loaded.modules())
    ids = torch.randint(0, 16, (1, 5))
    torch.testing.assert_close(loaded(ids), model.eval()(ids))


def test_a_registered_format_is_asked_before_ours(tmp_path, monkeypatch):
    monkeypatch.setattr(md, "FORMATS", dict(FORMATS))  # leave the process's registry as it was
    model = build_model(TINY_GPT)
    marked = save_model(tmp_path / "marked", model)
    (marked / "MARK").touch()
    opened = []

    def load(path, device="cpu"):
        opened.append(path)
        return model

    register_format(ModelFormat("marked", lambda p: (p / "MARK").exists(), load, eos_ids=lambda p: [3]))
    assert load_model(marked) is model and opened == [marked]
    assert model_eos_ids(marked) == [3]
    assert find_format(save_model(tmp_path / "plain", model)).name == "lmstack"  # the control


def test_no_format_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a model directory: it has no config.json"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="is not a model directory"):
        load_model(tmp_path / "missing")
    weird = tmp_path / "weights.bin"
    weird.write_bytes(b"\0" * 8)
    with pytest.raises(ConfigError, match=r"in no model format lmstack knows \(gguf, hf, quantized, ngram, lmstack\)"):
        load_model(weird)
