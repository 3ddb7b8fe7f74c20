"""GGUF files written in the test (random llama, qwen2 and mistral models, every matrix in one
ggml type) open as our GPT with the logits of transformers running the weights the file holds
(dequantized by the `gguf` package, Q/K permutation undone); Q4_1 loads into Int4Linear
bit-exactly; `--model FILE.gguf` and `lmstack convert` work on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.interop.gguf_fixtures import (TYPES, V, gguf, hf_model, reference_model, tiny_vocab,
                                         write_gguf)

from lmstack.cli import main  # noqa: E402
from lmstack.errors import ConfigError  # noqa: E402
from lmstack.infer import Engine  # noqa: E402
from lmstack.infer.quantize import Int4Linear, Int8Linear  # noqa: E402
from lmstack.interop import gguf_model  # noqa: E402
from lmstack.interop.gguf_model import load_gguf_model  # noqa: E402
from lmstack.interop.gguf_model import gguf_chat_config  # noqa: E402
from lmstack.interop.hf import chat_template  # noqa: E402
from lmstack.models.directory import (find_format, load_model, load_tokenizer,  # noqa: E402
                                      model_eos_ids)

IDS = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(1))
CASES = [("llama", t) for t in TYPES] + [(a, t) for a in ("qwen2", "mistral")
                                         for t in ("F32", "BF16", "Q8_0", "Q4_1", "Q4_K", "Q6_K")]


def written(tmp_path, arch: str, qtype: str, extra: dict | None = None):
    """(path of the GGUF file, the transformers model with the weights it holds)."""
    model = hf_model(arch)
    path = tmp_path / f"{arch}-{qtype}.gguf"
    return path, reference_model(model, write_gguf(path, model, arch, qtype, extra=extra))


@pytest.mark.parametrize("arch, qtype", CASES)
def test_logits_equal_transformers_on_the_weights_the_file_holds(arch, qtype, tmp_path):
    path, theirs = written(tmp_path, arch, qtype)
    ours = load_gguf_model(path, keep_quantized=False)
    assert ours.config.tie_embeddings == (arch == "llama")
    assert ours.config.sliding_window == (16 if arch == "mistral" else None)
    with torch.no_grad():
        expected = theirs(IDS).logits
        assert expected.abs().max() > 0.5  # weights that make a difference
        torch.testing.assert_close(ours(IDS), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_without_undoing_the_permutation_the_logits_differ(arch, tmp_path, monkeypatch):
    """Negative control: the loader's un-permutation is what makes the logits match."""
    path, theirs = written(tmp_path, arch, "F32")
    monkeypatch.setattr(gguf_model, "PERMUTED", ())
    with torch.no_grad():
        assert (load_gguf_model(path)(IDS) - theirs(IDS).logits).abs().max() > 1e-2


def test_qwen2_is_not_permuted(tmp_path, monkeypatch):
    """Negative control the other way: un-permuting Qwen2 (NEOX RoPE in llama.cpp) breaks it."""
    path, theirs = written(tmp_path, "qwen2", "F32")
    monkeypatch.setattr(gguf_model, "PERMUTED", ("qwen2",))
    with torch.no_grad():
        assert (load_gguf_model(path)(IDS) - theirs(IDS).logits).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q4_1_loads_into_int4linear_bit_exactly(arch, tmp_path):
    path, theirs = written(tmp_path, arch, "Q4_1")
    ours = load_gguf_model(path)
    reference = theirs.state_dict()
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, Int4Linear)}
    assert len(layers) == 2 * 7 + (arch != "llama")  # 7 per block, and the untied head
    for name, layer in layers.items():
        assert layer.group_size == 32
        hf = "lm_head" if name == "lm_head" else "model." + name.replace("attn.", "self_attn.")
        assert torch.equal(layer.dequantize(), reference[hf + ".weight"]), name  # bit-exact
        layer.reference = True  # the readable path: dequantize, then F.linear in fp32
    with torch.no_grad():
        expected = theirs(IDS).logits
        torch.testing.assert_close(ours(IDS), expected, atol=1e-4, rtol=0)
        for layer in layers.values():
            layer.reference = False  # the int4 kernel on bf16 activations: close, not equal
        assert (ours(IDS) - expected).abs().max() < 0.1 * expected.abs().max()


def test_model_flag_opens_a_gguf_file_and_decodes_as_transformers_does(tmp_path):
    path, theirs = written(tmp_path, "llama", "Q8_0")
    assert find_format(path).name == "gguf"
    assert model_eos_ids(path) == [V - 1]
    assert isinstance(load_model(path).layers[0].attn.q_proj, torch.nn.Linear)
    prompt = IDS[0, :8].tolist()
    engine = Engine(load_gguf_model(path, keep_quantized=False))
    out = theirs.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24,
                          do_sample=False, pad_token_id=0, eos_token_id=None)
    assert engine.generate(prompt, temperature=0, max_new_tokens=24).tokens == out[0, 8:].tolist()


@pytest.mark.parametrize("arch, head", [("llama", "token_embd.weight"), ("qwen2", "output.weight")])
def test_a_q8_0_head_loads_as_group_wise_int8_bit_exactly(arch, head, tmp_path):
    """Q4_1 layers and a Q8_0 head (tied: token_embd; untied: output): the head is an
    Int8Linear of groups of 32 holding exactly the floats, the token table stays float."""
    model = hf_model(arch)
    path = tmp_path / f"{arch}-mixed.gguf"
    theirs = reference_model(model, write_gguf(path, model, arch, "Q4_1", types={head: "Q8_0"}))
    q4, fp = load_gguf_model(path), load_gguf_model(path, keep_quantized=False)
    assert isinstance(q4.lm_head, Int8Linear) and q4.lm_head.group_size == 32
    assert q4.quantization["head"] == {"bits": 8, "group_size": 32}
    assert torch.equal(q4.lm_head.dequantize(), fp.lm_head.weight)
    assert torch.equal(q4.wte.weight, fp.wte.weight) and type(fp.lm_head) is torch.nn.Linear
    with torch.no_grad():
        expected = theirs(IDS).logits
        fast = q4(IDS)  # bf16 activations in the int8/int4 kernels
        for m in q4.modules():
            if isinstance(m, Int4Linear | Int8Linear):
                m.reference = True
        torch.testing.assert_close(q4(IDS), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(fast, expected, atol=0.05 * expected.abs().max().item(), rtol=0)
    assert main(["convert", "--src", str(path), "--dst", str(tmp_path / "q4")]) == 0
    loaded = load_model(tmp_path / "q4")
    assert isinstance(loaded.lm_head, Int8Linear)
    assert torch.equal(loaded.lm_head.qweight, q4.lm_head.qweight)


def test_convert_writes_an_int4_directory_and_a_float_one(tmp_path, capsys):
    path, theirs = written(tmp_path, "qwen2", "Q4_1", extra=tiny_vocab())
    assert main(["convert", "--src", str(path), "--dst", str(tmp_path / "q4")]) == 0
    assert main(["convert", "--src", str(path), "--dst", str(tmp_path / "fp"), "--dequantize"]) == 0
    q4, fp = load_model(tmp_path / "q4"), load_model(tmp_path / "fp")
    config = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert config["quantization"]["group_size"] == 32
    assert isinstance(q4.layers[0].mlp.up_proj, Int4Linear)
    assert isinstance(fp.layers[0].mlp.up_proj, torch.nn.Linear)
    generation = json.loads((tmp_path / "fp" / "generation_config.json").read_text())
    assert generation == {"eos_token_id": V - 1}
    template = tiny_vocab()["tokenizer.chat_template"][0]
    assert chat_template(tmp_path / "fp") == gguf_chat_config(path)["chat_template"] == template
    text = "hehe <|im_end|>"
    assert (load_tokenizer(tmp_path / "q4").encode(text, allowed_special="all")
            == load_tokenizer(path).encode(text, allowed_special="all"))
    for m in q4.modules():
        if isinstance(m, Int4Linear):
            m.reference = True
    with torch.no_grad():
        expected = theirs(IDS).logits
        torch.testing.assert_close(fp(IDS), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(q4(IDS), expected, atol=1e-4, rtol=0)


def test_generate_runs_on_a_gguf_file_with_its_tokenizer(tmp_path, capsys):
    path, _ = written(tmp_path, "llama", "Q4_1", extra=tiny_vocab())
    tok = load_tokenizer(path)
    assert tok.encode("hehe") == [V - 3, V - 3]  # the merge "h e"
    assert main(["generate", "--model", str(path), "--prompt", "hehe", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip()


def test_llama3_rope_freqs_become_its_rope_scaling(tmp_path):
    """Llama 3.1 files carry rope scaling as a tensor of per-frequency factors."""
    from lmstack.models.positions import scale_inv_freq

    model = hf_model("llama")
    path = tmp_path / "llama3.gguf"
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    inv = 1.0 / 1e5 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    factors = (inv / scale_inv_freq(inv, scaling)).float().numpy()
    extra = {"rope_freqs.weight": factors}
    write_gguf(path, model, "llama", "F32", tensors=extra)
    assert load_gguf_model(path).config.rope_scaling == scaling
    write_gguf(path, model, "llama", "F32", tensors={"rope_freqs.weight": factors * 1.5})
    with pytest.raises(ConfigError, match="rope_freqs.weight holds RoPE frequency factors"):
        load_gguf_model(path)


def test_refusals_name_the_file_and_the_problem(tmp_path):
    model = hf_model("llama")
    path = tmp_path / "moe.gguf"
    write_gguf(path, model, "llama", "F32",
               extra={"llama.expert_count": (8, gguf.GGUFValueType.UINT32)})
    with pytest.raises(ConfigError, match=r"moe\.gguf: a mixture of experts"):
        load_gguf_model(path)
    write_gguf(path, model, "llama", "F32",
               extra={"llama.rope.scaling.type": ("yarn", gguf.GGUFValueType.STRING),
                      "llama.rope.scaling.factor": (4.0, gguf.GGUFValueType.FLOAT32)})
    with pytest.raises(ConfigError, match="rope_type='yarn' is not supported"):
        load_gguf_model(path)
    write_gguf(path, model, "llama", "F32",
               tensors={"blk.0.vision.weight": np.zeros(4, np.float32)})
    with pytest.raises(ConfigError, match="blk.0.vision.weight.*does not belong"):
        load_gguf_model(path)
