"""`lmstack generate`, `chat` and `eval` with `--lora DIR`: each prints what it prints for the
merged model (merge_lora, saved as a model directory of its own), and not what the base gives;
on an int4 base (`lmstack quantize`), what the dequantized base with the adapter merged prints;
a prompt-tuning, a Houlsby and a QLoRA adapter (made here, nonzero) give the greedy text of the
adapted model in this process."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lmstack.cli import main
from lmstack.infer import Engine
from lmstack.infer.quantize import dequantize_model
from lmstack.models.directory import load_model, load_tokenizer, save_model
from lmstack.posttrain.peft import (
    HoulsbyConfig,
    LoraConfig,
    PromptTuningConfig,
    QuantConfig,
    apply_peft,
    load_adapter,
    peft_parameters,
    save_peft,
    unload_lora,
)
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
    help_text = " ".join(capsys.readouterr().out.split())
    assert "LoRA merged into the weights" in help_text and "dequantized to float32" in help_text


def save_with_tokenizer(directory: Path, model: torch.nn.Module, base_dir: str) -> str:
    save_model(directory, model)
    shutil.copy(Path(base_dir) / "tokenizer.json", directory / "tokenizer.json")
    return str(directory)


@pytest.fixture(scope="module")
def int4_dirs(dirs, tmp_path_factory):  # noqa: F811
    """The base quantized to int4 by `lmstack quantize`, and the reference: its dequantized
    floats with the poem adapter merged, saved as a float model."""
    root = tmp_path_factory.mktemp("int4")
    assert main(["quantize", "--model", dirs["base"], "--out", str(root / "q4"), "--bits", "4",
                 "--group-size", "32"]) == 0
    floats = dequantize_model(load_model(root / "q4"))
    merged = unload_lora(load_adapter(floats, dirs["poem"]))
    return {"q4": str(root / "q4"), "merged": save_with_tokenizer(root / "merged", merged, dirs["base"])}


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_lora_on_an_int4_base_is_its_floats_merged(dirs, int4_dirs, capsys, monkeypatch, tmp_path,  # noqa: F811
                                                   command):
    argv, stdin = COMMANDS[command]
    data = tmp_path / "held_out.txt"
    data.write_text("import os\nimport sys\n\ndef main():\n    return os.getcwd()\n" * 4)
    argv = [str(data) if a == "DATA" else a for a in argv]
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main([*argv, "--model", int4_dirs["q4"], "--lora", dirs["poem"]]) == 0
    out = capsys.readouterr()
    assert "dequantizing the base's int8/int4 layers to float32" in out.err
    merged = run(capsys, monkeypatch, [*argv, "--model", int4_dirs["merged"]], stdin)
    quantized = run(capsys, monkeypatch, [*argv, "--model", int4_dirs["q4"]], stdin)
    assert out.out == merged and out.out != quantized, (out.out, merged, quantized)


def randomize_trainable(model: torch.nn.Module, std: float, seed: int) -> None:
    """Nonzero adapter weights, so the adapter changes the output (zero-init ones hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peft_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * std)


# name -> (PEFT config, QLoRA's base or None, std of the random adapter weights)
METHODS = {
    "prompt": (PromptTuningConfig(num_virtual_tokens=4), None, 3.0),
    "houlsby": (HoulsbyConfig(bottleneck=8), None, 0.3),
    "qlora": (LoraConfig(r=4, target_modules=("q_proj", "v_proj", "down_proj")), QuantConfig("nf4"), 0.3),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_peft_type_on_generate(dirs, capsys, monkeypatch, tmp_path, method):  # noqa: F811
    cfg, quant, std = METHODS[method]
    model = apply_peft(load_model(dirs["base"]), cfg, quant)
    randomize_trainable(model, std, seed=5)
    adapter = save_peft(model, tmp_path / method)
    if quant is not None:  # what `lmstack sft` writes beside a QLoRA adapter
        (adapter / "train_config.json").write_text(json.dumps({"peft": {"method": "qlora", "quant": quant.method}}))
    prompt, n = "def f(x):", 16
    engine = Engine(model.eval(), load_tokenizer(dirs["base"]))
    alone = engine.generate(prompt, temperature=0, max_new_tokens=n, ignore_eos=True).text
    base = Engine.load(dirs["base"]).generate(prompt, temperature=0, max_new_tokens=n, ignore_eos=True).text
    argv = ["generate", "--model", dirs["base"], "--prompt", prompt, "--temperature", "0",
            "--max-new-tokens", str(n), "--ignore-eos"]
    assert main([*argv, "--lora", str(adapter)]) == 0
    out = capsys.readouterr()
    assert out.out == alone + "\n" and alone != base, (out.out, alone, base)
    assert ("QLoRA, run over the base quantized to nf4" in out.err) == (quant is not None)


def test_prompt_tuning_on_chat_and_eval(dirs, capsys, monkeypatch, tmp_path):  # noqa: F811
    cfg, _, std = METHODS["prompt"]
    model = apply_peft(load_model(dirs["base"]), cfg)
    randomize_trainable(model, std, seed=6)
    adapter = str(save_peft(model, tmp_path / "prompt"))
    data = tmp_path / "held_out.txt"
    data.write_text("import os\nimport sys\n\ndef main():\n    return os.getcwd()\n" * 4)
    for argv, stdin in (COMMANDS["chat"], (["eval", "--data", str(data)], "")):
        with_prompt = run(capsys, monkeypatch, [*argv, "--model", dirs["base"], "--lora", adapter], stdin)
        base = run(capsys, monkeypatch, [*argv, "--model", dirs["base"]], stdin)
        assert with_prompt != base, argv
