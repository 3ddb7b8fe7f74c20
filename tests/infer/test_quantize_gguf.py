"""`lmstack quantize --model FILE.gguf`: the file's Q4_1 matrices are dequantized exactly, then
quantized as asked, and the new directory keeps the tokenizer, eos ids and chat template."""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.cli import main
from lmstack.infer.quantize import Int4Linear, Int8Linear, dequantize_model, quantize_model
from lmstack.interop.gguf_model import load_gguf_model
from lmstack.models.directory import load_model, load_tokenizer, model_chat_config, model_eos_ids

pytest.importorskip("gguf")
from tests.interop.gguf_fixtures import hf_model, tiny_vocab, write_gguf  # noqa: E402


@pytest.fixture
def q4_1(tmp_path):
    path = tmp_path / "tiny.Q4_1.gguf"
    write_gguf(path, hf_model("llama"), "llama", "Q4_1", extra=tiny_vocab())
    return path


def test_dequantize_model_holds_exactly_the_floats(q4_1):
    q4, fp = load_gguf_model(q4_1), load_gguf_model(q4_1, keep_quantized=False)
    dequantize_model(q4)
    assert not any(isinstance(m, Int4Linear) for m in q4.modules())
    assert not hasattr(q4, "quantization")
    fp_state = fp.state_dict()
    for name, t in q4.state_dict().items():
        assert torch.equal(t, fp_state[name]), name


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_a_gguf_file(q4_1, tmp_path, bits, capsys):
    out = tmp_path / f"int{bits}"
    args = ["quantize", "--model", str(q4_1), "--out", str(out), "--bits", str(bits)]
    assert main(args + (["--group-size", "32"] if bits == 4 else [])) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = load_model(out)
    cls = Int8Linear if bits == 8 else Int4Linear
    assert isinstance(model.layers[0].attn.q_proj, cls)
    # what quantize_model makes of the file's own floats, bit for bit
    expected = quantize_model(load_gguf_model(q4_1, keep_quantized=False), bits, group_size=32)
    got = model.state_dict()
    for name, t in expected.state_dict().items():
        assert torch.equal(got[name], t), name
    assert model_eos_ids(out) == model_eos_ids(q4_1)
    assert model_chat_config(out) == model_chat_config(q4_1)
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    text = "hehe <|im_end|>"
    assert (load_tokenizer(out).encode(text, allowed_special="all")
            == load_tokenizer(q4_1).encode(text, allowed_special="all"))


def test_an_lmstack_quantized_directory_is_refused(q4_1, tmp_path, capsys):
    assert main(["quantize", "--model", str(q4_1), "--out", str(tmp_path / "a"), "--bits", "8"]) == 0
    assert main(["quantize", "--model", str(tmp_path / "a"), "--out", str(tmp_path / "b"),
                 "--bits", "8"]) == 2
    assert "is already quantized" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
