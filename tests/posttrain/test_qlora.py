"""QLoRA (lmstack/posttrain/peft/qlora.py, nf4.py): NF4 levels and nearest-level rounding,
double quantization's bits per weight, the gradient through the dequantized base equal to a
plain LoRA's on the dequantized weights, logits close to the fp model's, weight memory, the
adapter round trip, and the errors."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.infer.quantize import QuantLinear
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.peft import (
    LoraConfig,
    LoraLinear,
    NF4Linear,
    QLoraLinear,
    QuantConfig,
    apply_lora,
    apply_qlora,
    load_adapter,
    lora_layers,
    lora_parameters,
    merge_lora,
    nf4,
    quantize_base,
    save_adapter,
    trainable_summary,
    weight_bytes,
)

V = 64
LLAMA = {"vocab_size": V, "block_size": 32, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64,
         "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "tie_embeddings": False,
         "intermediate_size": 128}
TARGETS = ("q_proj", "v_proj", "down_proj")


def gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**LLAMA, **kw})).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(seed))


def randomize_b(model: torch.nn.Module, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


# ---- NF4 and double quantization -----------------------------------------------------------------

def test_levels_are_the_papers_normal_float_quantiles():
    torch.testing.assert_close(nf4.normal_float_levels(), nf4.levels(), atol=1e-6, rtol=0)
    lv = nf4.levels()
    assert lv[7] == 0 and lv[0] == -1 and lv[-1] == 1 and bool((lv.diff() > 0).all())
    assert (lv > 0).sum() == 8 and (lv < 0).sum() == 7  # asymmetric: 8 positive, 7 negative


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=300),
       st.sampled_from([2, 8, 64]))
def test_quantize_picks_the_nearest_level_per_block(values, blocksize):
    w = torch.tensor(values, dtype=torch.float32)
    codes, absmax = nf4.quantize_nf4(w, blocksize)
    blocks = torch.nn.functional.pad(w, (0, -w.numel() % blocksize)).view(-1, blocksize)
    assert torch.equal(absmax, blocks.abs().amax(1))
    scaled = (blocks / absmax.clamp_min(1e-38)[:, None]).reshape(-1)
    dist = (scaled[:, None] - nf4.levels()[None, :]).abs()          # (n, 16)
    chosen = dist.gather(1, codes.long()[:, None]).squeeze(1)
    assert bool((chosen <= dist.min(1).values + 1e-6).all())         # the nearest level
    back = nf4.dequantize_nf4(codes, absmax, w.numel(), blocksize)
    assert back.shape == w.shape
    exact = nf4.levels()[codes.long()].view(-1, blocksize) * absmax[:, None]
    torch.testing.assert_close(back, exact.reshape(-1)[:w.numel()], atol=0, rtol=0)
    bound = absmax.repeat_interleave(blocksize)[:w.numel()] * nf4.max_gap() / 2
    assert bool(((back - w).abs() <= bound * (1 + 1e-6) + 1e-30).all())
    assert bool((back[w == 0] == 0).all())  # zero is a level: zeros stay exactly zero


def test_double_quantization_costs_4_127_bits_per_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(1024, 256, bias=False)       # 262,144 weights: 4096 blocks, 16 scales
    layer = NF4Linear.from_linear(linear)
    stored = sum(b.numel() * b.element_size() for b in layer.buffers())
    bits = 8 * stored / linear.weight.numel()
    assert abs(bits - nf4.nf4_bits_per_weight(linear.weight.numel())) < 1e-9
    assert 4.127 <= bits < 4.128                          # the paper's 4.127
    assert bits < 4 + 32 / 64                             # single quantization: 4.5 bits
    # the absmax constants survive their 8-bit storage almost unchanged ...
    _, absmax = nf4.quantize_nf4(linear.weight)
    back = nf4.dequantize_absmax(layer.absmax_q, layer.absmax_scale, layer.absmax_mean)
    assert (back - absmax).abs().max() <= layer.absmax_scale.max() / 2 + 1e-7
    assert ((back - absmax).abs() / absmax).max() < 0.01
    # ... and the layer's weight is the nearest-level NF4 weight up to that error
    w = layer.dequantize()
    codes = nf4.quantize_nf4(linear.weight)[0]
    torch.testing.assert_close(w.reshape(-1), nf4.dequantize_nf4(codes, back, w.numel()), atol=0, rtol=0)
    single = nf4.dequantize_nf4(*nf4.quantize_nf4(linear.weight), linear.weight.numel()).view_as(w)
    assert ((w - single).abs() <= single.abs() * 0.01 + 1e-7).all()
    rel = (w - linear.weight).norm() / linear.weight.norm()
    assert 0.01 < rel < 0.15, rel                          # 4 bits: ~10% relative error
    assert layer.qweight.dtype == torch.uint8 and layer.qweight.numel() == 262144 // 2  # two codes a byte


def test_nf4_beats_a_uniform_4_bit_grid_on_normal_weights():
    """The reason for NF4: on normal weights its quantile levels give a smaller error than 16
    evenly spaced levels in the same blocks (a negative control for the level table)."""
    w = torch.randn(64 * 512, generator=torch.Generator().manual_seed(0))
    codes, absmax = nf4.quantize_nf4(w)
    err_nf4 = (nf4.dequantize_nf4(codes, absmax, w.numel()) - w).pow(2).mean()
    blocks = w.view(-1, 64)
    a = blocks.abs().amax(1, keepdim=True)
    uniform = torch.linspace(-1, 1, 16)
    q = uniform[(blocks / a)[..., None].sub(uniform).abs().argmin(-1)] * a
    err_uniform = (q - blocks).pow(2).mean()
    assert err_nf4 < 0.9 * err_uniform, (err_nf4, err_uniform)


# ---- QLoRA layers and models ---------------------------------------------------------------------

def dequantized_lora_copy(qmodel: torch.nn.Module) -> torch.nn.Module:
    """The reference: the same model with every quantized base replaced by an fp nn.Linear
    holding its dequantized weight, and plain LoraLinear layers with the same A and B."""
    ref = copy.deepcopy(qmodel)
    quantized = [(n, m) for n, m in ref.named_modules()
                 if isinstance(m, QLoraLinear) or (isinstance(m, QuantLinear) and not n.endswith(".base"))]
    for name, m in quantized:
        base = m.base if isinstance(m, QLoraLinear) else m
        linear = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(base.dequantize())
        linear.weight.requires_grad_(False)
        new = linear
        if isinstance(m, QLoraLinear):
            new = LoraLinear(linear, m.r, m.alpha, m.dropout_p, m.use_rslora)
            new.lora_A, new.lora_B = m.lora_A, m.lora_B  # the same A and B
        parent, _, child = name.rpartition(".")
        setattr(ref.get_submodule(parent), child, new)
    return ref


@pytest.mark.parametrize("method", ["nf4", "int4"])
def test_gradient_equals_plain_lora_on_the_dequantized_weights(method):
    model, x = gpt(), ids()
    apply_qlora(model, LoraConfig(r=4, alpha=8, target_modules=TARGETS), QuantConfig(method=method))
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.reference = True  # int4: the fp32 reference path, not the bf16 kernel
    randomize_b(model)
    ref = dequantized_lora_copy(model)
    assert not any(isinstance(m, QuantLinear) for m in ref.modules())
    assert sum(isinstance(m, LoraLinear) for m in ref.modules()) == 6

    def grads(m):
        m.zero_grad()
        logits = m(x)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
        return logits.detach(), [p.grad.clone() for p in lora_parameters(m)]

    q_logits, q_grads = grads(model)
    r_logits, r_grads = grads(ref)
    torch.testing.assert_close(q_logits, r_logits, atol=1e-6, rtol=0)
    assert len(q_grads) == 12
    for a, b in zip(q_grads, r_grads):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
    # the lowest layer's A learns only through every quantized layer above it
    assert q_grads[0].abs().max() > 1e-4
    # negative control: plain LoRA on the *unquantized* weights gives other gradients
    fp = apply_lora(gpt(), LoraConfig(r=4, alpha=8, target_modules=TARGETS))
    for f, q in zip(lora_layers(fp).values(), lora_layers(model).values()):
        f.lora_A, f.lora_B = q.lora_A, q.lora_B
    fp_grads = grads(fp)[1]
    assert max((a - b).abs().max() for a, b in zip(q_grads, fp_grads)) > 1e-5


@pytest.mark.parametrize("method", ["nf4", "int4"])
def test_qlora_logits_close_to_the_fp_model(method):
    x = ids()
    base = gpt()(x)
    model = apply_qlora(gpt(), LoraConfig(r=4, target_modules=TARGETS), method)
    assert isinstance(model.layers[0].attn.q_proj, QLoraLinear)
    assert isinstance(model.layers[1].mlp.gate_proj, QuantLinear)          # non-targets quantized too
    assert type(model.lm_head) is torch.nn.Linear                            # the head skipped
    with torch.no_grad():
        q = model(x)
    rel = (q - base).norm() / base.norm()
    assert rel < 0.1, rel  # B = 0: the model is its quantized base (measured 0.06 on this random model)
    other = gpt(seed=5)(x)
    assert (other - base).norm() / base.norm() > 0.5  # negative control: another model is far


def test_only_lora_trains_and_the_4_bit_base_stays_put():
    model, x = apply_qlora(gpt(), LoraConfig(r=4, target_modules=TARGETS)), ids()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable) and len(trainable) == 12
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    s = trainable_summary(model)
    fp = gpt()
    assert s.trainable == 2 * (4 * (64 + 64) + 4 * (64 + 32) + 4 * (128 + 64))  # q, v, down per layer
    assert s.total == trainable_summary(fp).total + s.trainable  # quantized weights counted as weights


@pytest.mark.parametrize("method", ["nf4", "int4"])
def test_bf16_autocast_grads_are_fp32_and_near_the_fp32_ones(method):
    model, x = apply_qlora(gpt(), LoraConfig(r=4, target_modules=TARGETS), method), ids()
    randomize_b(model)

    def grads(amp):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        assert logits.dtype == (torch.bfloat16 if amp else torch.float32)
        torch.nn.functional.cross_entropy(logits.float()[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
        return [p.grad.clone() for p in lora_parameters(model)]

    fp32, bf16 = grads(False), grads(True)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in bf16)
    for a, b in zip(fp32, bf16):
        assert (a - b).norm() <= 0.05 * a.norm() + 1e-6  # bf16 rounding, not another gradient


def test_weight_memory_under_half_of_lora():
    cfg = LoraConfig(r=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    lora = weight_bytes(apply_lora(gpt(vocab_size=32, n_embd=256, intermediate_size=512), cfg))
    qlora = weight_bytes(apply_qlora(gpt(vocab_size=32, n_embd=256, intermediate_size=512), cfg))
    assert qlora["trainable"] == lora["trainable"]
    assert qlora["total"] < 0.5 * lora["total"], (qlora, lora)
    assert qlora["frozen"] < 0.25 * lora["frozen"]  # 4.1 bits vs 32 (the fp32 embeddings, head, norms stay)


def test_adapter_round_trip_onto_the_fp_base_then_quantized(tmp_path):
    model, x = apply_qlora(gpt(), LoraConfig(r=4, target_modules=TARGETS)), ids()
    randomize_b(model)
    expected = model(x)
    save_adapter(model, tmp_path / "ad")
    again = quantize_base(load_adapter(gpt(), tmp_path / "ad"))
    assert isinstance(again.layers[1].mlp.down_proj, QLoraLinear)
    torch.testing.assert_close(again(x), expected, atol=0, rtol=0)  # quantization is deterministic
    fp = load_adapter(gpt(), tmp_path / "ad")
    assert not torch.equal(fp(x), expected)                              # the fp base differs ...
    torch.testing.assert_close(fp(x), expected, atol=0.1, rtol=0)        # ... a little


def test_errors():
    with pytest.raises(ConfigError, match="cannot be merged exactly into a 4-bit base"):
        merge_lora(apply_qlora(gpt(), LoraConfig(r=4)))
    with pytest.raises(ConfigError, match="'nf3' is unknown.*int4.*nf4"):
        QuantConfig(method="nf3")
    with pytest.raises(ConfigError, match="blocksize must be an even"):
        QuantConfig(blocksize=63)
    model = gpt(n_embd=48, n_head=4, intermediate_size=96)
    with pytest.raises(ConfigError, match="group_size 64 does not divide the input width 48"):
        apply_qlora(model, LoraConfig(r=4), QuantConfig(method="int4"))
    assert not lora_layers(model)  # refused before any change
    with pytest.raises(ConfigError, match="no nn.Linear layer to quantize"):
        quantize_base(apply_qlora(gpt(), LoraConfig(r=4)))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_int4_groups_of_32_hold_gguf_q4_1_weights_exactly(seed):
    """A GGUF Q4_1 block is w = d·q + m, q in 0..15 (d, m float16, the block's min and max
    attained); our int4 base in groups of 32 re-quantizes such weights without error, so QLoRA
    over `peft.quant=int4 peft.group_size=32` trains on a Q4_1 file's own 4 bits (SmolLM2's)."""
    from lmstack.posttrain.peft.qlora import QuantConfig

    g = torch.Generator().manual_seed(seed)
    out_f, in_f = 8, 64
    q = torch.randint(0, 16, (out_f, in_f // 32, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15                                   # each block spans its range
    d = (torch.rand(out_f, in_f // 32, 1, generator=g) * 0.02 + 1e-3).half().float()
    m = (-torch.rand(out_f, in_f // 32, 1, generator=g) * 0.1).half().float()
    w = (d * q + m).reshape(out_f, in_f)                           # (out, in): Q4_1's floats
    linear = torch.nn.Linear(in_f, out_f, bias=False).requires_grad_(False)
    linear.weight.copy_(w)
    exact = QuantConfig(method="int4", group_size=32).quantize(linear).dequantize().float()
    coarse = QuantConfig(method="int4", group_size=64).quantize(linear).dequantize().float()
    assert torch.equal(exact, w)
    assert not torch.equal(coarse, w)  # a group of 64 spans two Q4_1 blocks: it rounds
