"""infer/fuse.py, the decode-time form: fused q/k/v and gate/up (float, int8, int4) give the
logits of the unfused model, oneDNN fp32 linears give F.linear's, the tie survives, the
engine's greedy tokens are unchanged, and what cannot be fused is left alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmstack.infer import Engine
from lmstack.infer.fuse import (
    OneDNNLinear,
    decode_layout,
    fuse_linears,
    fuse_projections,
    onednn_available,
    prepare_decode,
)
from lmstack.infer.quantize import Int4Linear, Int8Linear, quantize_model
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import save_model

torch.set_num_threads(1)
PROMPT = [3, 14, 15, 92, 65]


def tiny(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = {"vocab_size": 97, "block_size": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2,
           "n_embd": 64, "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}
    model = GPT(GPTConfig(**{**cfg, **kw})).eval()
    with torch.no_grad():  # GPT-2's small init makes a random model repeat one token
        for p in model.parameters():
            p.mul_(10 if p.dim() == 2 else 1)
    return model


def greedy(model: nn.Module, prompt: list[int] = PROMPT) -> list[int]:
    return Engine(model).generate(prompt, temperature=0, max_new_tokens=24, ignore_eos=True).tokens


def logits(model: nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([PROMPT, PROMPT[::-1]]))


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": True}, {"n_kv_head": 4, "mlp": "gelu", "bias": True}])
def test_fused_float_model_gives_the_same_logits_and_tokens(kw):
    model = tiny(**kw)
    fused = copy.deepcopy(model)
    assert fuse_projections(fused) == (4 if kw.get("mlp", "swiglu") == "swiglu" else 2)
    attn = fused.layers[0].attn
    assert attn.qkv_proj is not None and not hasattr(attn, "q_proj")
    assert (attn.qkv_proj.bias is not None) == bool(kw.get("qkv_bias") or kw.get("bias"))
    torch.testing.assert_close(logits(fused), logits(model), rtol=1e-5, atol=1e-5)
    tokens = greedy(model)
    assert len(set(tokens)) > 3 and greedy(fused) == tokens
    assert greedy(tiny(seed=1, **kw)) != tokens  # negative control: another model's tokens differ


@pytest.mark.parametrize("bits", [8, 4])
def test_fused_quantized_model_gives_the_same_logits(bits):
    model = quantize_model(tiny(), bits, group_size=32, act_dtype=torch.float32)
    fused = copy.deepcopy(model)
    fuse_projections(fused)
    cls = Int8Linear if bits == 8 else Int4Linear
    assert isinstance(fused.layers[1].attn.qkv_proj, cls) and isinstance(fused.layers[1].mlp.gate_up_proj, cls)
    assert fused.layers[1].mlp.gate_up_proj.out_features == 2 * model.config.hidden_size
    torch.testing.assert_close(logits(fused), logits(model), rtol=1e-4, atol=1e-4)  # the kernels
    for m in [*model.modules(), *fused.modules()]:
        if isinstance(m, cls):
            m.reference = True
    torch.testing.assert_close(logits(fused), logits(model), rtol=1e-5, atol=1e-5)


def test_what_differs_is_not_fused():
    a, b = nn.Linear(32, 8), nn.Linear(32, 8, bias=False)
    assert fuse_linears([a, b]) is None  # one with a bias, one without
    assert fuse_linears([a, nn.Linear(16, 8)]) is None  # input widths
    assert fuse_linears([Int8Linear.from_linear(a), Int4Linear.from_linear(a, 32)]) is None
    lin = nn.Linear(64, 8)
    assert fuse_linears([Int4Linear.from_linear(lin, 32), Int4Linear.from_linear(lin, 64)]) is None
    model = quantize_model(tiny(), 4, group_size=32, skip=["k_proj"])  # q/v int4, k float
    assert fuse_projections(model) == 2  # the two MLPs only
    assert model.layers[0].attn.qkv_proj is None and hasattr(model.layers[0].attn, "k_proj")


def test_fused_layer_output_is_the_parts_concatenated():
    torch.manual_seed(0)
    parts = [nn.Linear(32, n) for n in (16, 8, 8)]
    x = torch.randn(3, 32)
    fused = fuse_linears(parts)
    torch.testing.assert_close(fused(x), torch.cat([p(x) for p in parts], -1))
    q = [Int8Linear.from_linear(p, group_size=16, act_dtype=torch.float32, reference=True) for p in parts]
    torch.testing.assert_close(fuse_linears(q)(x), torch.cat([p(x) for p in q], -1))


@pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")
def test_onednn_linear_equals_f_linear_and_keeps_autograd():
    torch.manual_seed(0)
    lin = nn.Linear(48, 40)
    fast = OneDNNLinear.from_linear(lin)
    assert fast.weight is lin.weight and fast.bias is lin.bias
    x = torch.randn(2, 3, 48)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    fast(x).sum().backward()  # with gradients it is F.linear: autograd works
    assert lin.weight.grad is not None and lin.weight.grad.shape == (40, 48)


@pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")
def test_prepare_decode_keeps_the_tie_and_the_tokens():
    model = tiny()
    tokens = greedy(model)
    prepare_decode(model)
    assert isinstance(model.lm_head, OneDNNLinear) and model.lm_head.weight is model.wte.weight
    assert all(p.is_contiguous() for p in model.parameters())  # (out, in): what oneDNN reads fastest
    assert greedy(model) == tokens


def test_without_onednn_fp32_weights_are_laid_out_for_mkl():
    model = tiny()
    tokens = greedy(model)
    prepare_decode(model, onednn=False)
    w = model.layers[0].attn.qkv_proj.weight
    assert not w.is_contiguous() and w.t().is_contiguous()
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.wte.weight
    assert greedy(model) == tokens


def test_bf16_and_int4_are_fused_but_not_laid_out():
    model = quantize_model(tiny(), 4, group_size=32, skip=["lm_head"]).to(torch.bfloat16)
    decode_layout(model)
    prepare_decode(model)
    assert all(p.is_contiguous() for p in model.parameters())
    assert type(model.lm_head) is nn.Linear  # bf16: F.linear already runs oneDNN
    assert isinstance(model.layers[0].attn.qkv_proj, Int4Linear)


def test_engine_load_prepares_its_own_model_only(tmp_path):
    model = tiny()
    save_model(tmp_path / "m", model)
    Engine(model)
    assert model.layers[0].attn.qkv_proj is None  # a caller's model is not changed (it may be saved)
    loaded = Engine.load(tmp_path / "m").model
    assert loaded.layers[0].mlp.gate_up_proj is not None
    assert loaded.lm_head.weight is loaded.wte.weight
    assert greedy(loaded) == greedy(model)
