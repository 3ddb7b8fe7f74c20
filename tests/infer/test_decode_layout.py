"""decode_layout (infer/fuse.py, re-exported by engine.py): fp32 Linear weights re-laid out
(in, out) in memory keep their values, shape and tie, and the engine's greedy tokens are
unchanged; bf16 and int4 layers are left as they are. What Engine.load does: test_fuse.py."""

from __future__ import annotations

import torch

from lmstack.infer import Engine
from lmstack.infer.engine import decode_layout
from lmstack.infer.quantize import quantize_model
from lmstack.models import GPT, GPTConfig


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                    position="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    model = GPT(cfg).eval()
    with torch.no_grad():  # GPT-2's small init makes a random model repeat one token
        for p in model.parameters():
            p.mul_(10 if p.dim() == 2 else 1)
    return model


def test_values_shape_and_tie_kept():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    decode_layout(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    q = model.layers[0].attn.q_proj.weight
    assert q.shape == (64, 64) and not q.is_contiguous() and q.t().is_contiguous()
    assert model.lm_head.weight is model.wte.weight  # the tie survives: one parameter object


def greedy(model: GPT, prompt: list[int]) -> list[int]:
    return Engine(model).generate(prompt, temperature=0, max_new_tokens=24, ignore_eos=True).tokens


def test_greedy_tokens_unchanged():
    prompt = [3, 14, 15, 92, 65]
    tokens = greedy(tiny(), prompt)
    assert len(set(tokens)) > 3  # a model whose greedy tokens vary: the comparison means something
    laid_out = tiny()
    decode_layout(laid_out)
    with torch.inference_mode():  # the logits agree to fp32 rounding
        x = torch.tensor([prompt])
        torch.testing.assert_close(laid_out(x), tiny()(x), rtol=1e-5, atol=1e-5)
    assert greedy(laid_out, prompt) == tokens
    assert greedy(tiny(seed=1), prompt) != tokens  # negative control: another model's tokens differ


def test_bf16_and_quantized_layers_untouched():
    model = quantize_model(tiny(), 4, group_size=32, skip=["lm_head"]).to(torch.bfloat16)
    decode_layout(model)
    assert all(p.is_contiguous() for p in model.parameters())
