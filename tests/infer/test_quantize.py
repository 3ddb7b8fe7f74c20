"""Weight-only int8/int4 quantization (lmstack/infer/quantize.py), bf16 inference and QAT
(lmstack/train/qat.py): kernels against the reference path, every Linear replaced, save/load
round trips, greedy agreement on a trained model, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.infer.quantize import (
    Int4Linear,
    Int8Linear,
    QuantLinear,
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
    quantize_model,
)
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import load_model, save_model
from lmstack.train.qat import FakeQuantLinear, apply_qat, fake_quantize


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=96, block_size=64, n_layer=2, n_head=2, n_embd=64, intermediate_size=128)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


@pytest.mark.parametrize("shape", [(16, 64), (40, 128), (7, 256)])  # out not a multiple of 16 too
def test_error_bounds(shape):
    w = torch.randn(*shape) * 3
    q, s = quantize_int8(w)
    assert ((dequantize_int8(q, s) - w).abs() <= s[:, None] / 2 + 1e-6).all()
    for g in (32, 64):
        q4, s4, z4 = quantize_int4(w, g)
        assert q4.max() <= 15 and s4.shape == (shape[0], shape[1] // g)
        bound = s4.repeat_interleave(g, dim=1) / 2 + 1e-5
        assert ((dequantize_int4(q4, s4, z4) - w).abs() <= bound).all()


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32), (4, 64), (4, 128)])
@pytest.mark.parametrize("out_features", [48, 40])  # 40: int4 rows padded to 16 for the kernel
def test_fast_kernel_equals_reference(bits, group, out_features):
    torch.manual_seed(1)
    lin = nn.Linear(256, out_features)
    layer = (Int8Linear.from_linear(lin) if bits == 8 else Int4Linear.from_linear(lin, group)).eval()
    x = torch.randn(3, 5, 256)
    layer.reference = True
    ref = layer(x)
    layer.reference = False
    layer.act_dtype = torch.float32  # fp32 activations: the same numbers up to float rounding
    torch.testing.assert_close(layer(x), ref, atol=1e-4, rtol=1e-4)
    layer.act_dtype = torch.bfloat16  # the default: bf16 activations, ~3 significant digits
    torch.testing.assert_close(layer(x), ref, atol=0.05 * ref.abs().max().item(), rtol=0.02)
    # and the reference is the dequantized weight, close to the original
    assert (layer.dequantize() - lin.weight).abs().max() < (0.02 if bits == 8 else 0.2)


def test_every_linear_replaced_and_errors_leave_the_model_untouched():
    model = tiny_gpt()
    quantize_model(model, 4, 32)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    quant = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert linears == [] and len(quant) == 2 * 6 + 1  # q, k, v, o, up, down per layer + lm_head
    assert model.quantization == {"bits": 4, "group_size": 32, "method": "rtn", "skip": []}

    kept = quantize_model(tiny_gpt(), 8, skip=("lm_head",))
    assert type(kept.lm_head) is nn.Linear and kept.lm_head.weight is kept.wte.weight

    model = tiny_gpt(intermediate_size=96)  # down_proj reads 96 features
    with pytest.raises(ConfigError, match="group_size 64 does not divide the input width 96 of layer "
                                          "'layers.0.mlp.down_proj'"):
        quantize_model(model, 4, 64)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())  # nothing replaced
    with pytest.raises(ConfigError, match="bits 3 is not supported"):
        quantize_model(tiny_gpt(), 3)
    with pytest.raises(ConfigError, match="group_size 48 is not supported"):
        quantize_model(tiny_gpt(), 4, 48)


@pytest.mark.parametrize("bits,group", [(8, 64), (4, 64)])
def test_save_load_round_trip_gives_identical_logits(bits, group, tmp_path):
    model = quantize_model(tiny_gpt(), bits, group)
    x = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        before = model(x)
    d = save_model(tmp_path / "q", model)
    loaded = load_model(d)
    assert isinstance(loaded.lm_head, Int8Linear if bits == 8 else Int4Linear)
    with torch.no_grad():
        assert torch.equal(loaded(x), before)
    engine = Engine.load(d)  # what `lmstack generate --model DIR` does
    out = engine.generate(x[0].tolist(), temperature=0, max_new_tokens=5, ignore_eos=True)
    assert len(out.tokens) == 5


def test_quantize_command(tmp_path):
    import argparse

    from lmstack.infer.quantize import add_quantize_args, cmd_quantize

    save_model(tmp_path / "fp32", tiny_gpt())
    p = argparse.ArgumentParser()
    add_quantize_args(p)
    assert cmd_quantize(p.parse_args(["--model", str(tmp_path / "fp32"), "--out", str(tmp_path / "q4"),
                                      "--bits", "4", "--group-size", "32"])) == 0
    assert isinstance(load_model(tmp_path / "q4").lm_head, Int4Linear)
    with pytest.raises(ConfigError, match="already quantized"):
        cmd_quantize(p.parse_args(["--model", str(tmp_path / "q4"), "--out", str(tmp_path / "x"),
                                   "--bits", "8"]))


def test_bf16_engine(tmp_path):
    save_model(tmp_path / "m", tiny_gpt(position="rope", norm="rmsnorm", mlp="swiglu", bias=False))
    engine = Engine.load(tmp_path / "m", dtype="bf16")
    assert engine.model.wte.weight.dtype == torch.bfloat16
    out = engine.generate([[1, 2, 3], [4, 5]], temperature=0, max_new_tokens=6, ignore_eos=True, logprobs=True)
    assert all(len(c.tokens) == 6 for c in out) and isinstance(out[0].logprobs[0], float)
    with pytest.raises(ConfigError, match="dtype 'int3'"):
        Engine.load(tmp_path / "m", dtype="int3")


# ---- a trained model: greedy agreement and QAT ----------------------------------------------

PATTERN = [int(t) for t in torch.randint(0, 32, (29,), generator=torch.Generator().manual_seed(5))]


def train_tiny(model: GPT | None = None, qat_bits: int | None = None, steps: int = 100) -> GPT:
    """Train (or go on training) a tiny GPT to continue a fixed 29-token cycle (~2 s)."""
    torch.manual_seed(0)
    if model is None:
        model = GPT(GPTConfig(vocab_size=32, block_size=32, n_layer=1, n_head=2, n_embd=64,
                              intermediate_size=128))
    model = copy.deepcopy(model).train()
    if qat_bits:
        apply_qat(model, qat_bits, 32)
    seq = torch.tensor(PATTERN * 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(seq) - 25, (8,), generator=g)
        batch = torch.stack([seq[s:s + 25] for s in starts])
        loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, 32), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():  # back to plain nn.Linear (what a checkpoint loads into)
        if isinstance(m, FakeQuantLinear):
            m.__class__ = nn.Linear
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    return train_tiny()


def greedy_tokens(model, n_prompts: int = 8) -> list[list[int]]:
    prompts = [(PATTERN * 2)[i * 3:i * 3 + 4] for i in range(n_prompts)]
    return [c.tokens for c in Engine(model).generate(prompts, temperature=0, max_new_tokens=20, ignore_eos=True)]


def test_quantized_greedy_output_mostly_agrees_with_fp32(trained, capsys):
    ref = greedy_tokens(trained)
    report = {}
    for name, bits, group in [("int8", 8, 64), ("int4-g32", 4, 32), ("int4-g64", 4, 64)]:
        toks = greedy_tokens(quantize_model(copy.deepcopy(trained), bits, group))
        pairs = [(a, b) for r, t in zip(ref, toks) for a, b in zip(r, t)]
        report[name] = sum(a == b for a, b in pairs) / len(pairs)
    with capsys.disabled():
        print("\ngreedy agreement with fp32:", {k: f"{100 * v:.1f}%" for k, v in report.items()})
    assert report["int8"] >= 0.95
    assert report["int4-g32"] >= 0.8 and report["int4-g64"] >= 0.8


def test_fake_quantize_is_quantize_then_dequantize():
    w = torch.randn(24, 128)
    q, s = quantize_int8(w)
    assert torch.equal(fake_quantize(w, 8), dequantize_int8(q, s))
    for g in (32, 64, 128):
        assert torch.allclose(fake_quantize(w, 4, g), dequantize_int4(*quantize_int4(w, g)), atol=1e-6)


def test_qat_gradients_flow_straight_through():
    model = tiny_gpt()
    apply_qat(model, 4, 32)
    assert isinstance(model.layers[0].attn.q_proj, FakeQuantLinear)
    assert model.lm_head.weight is model.wte.weight  # still tied, same parameters
    model(torch.randint(0, 96, (2, 8))).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.layers[0].attn.q_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="qat_bits 2"):
        apply_qat(tiny_gpt(), 2)


def test_qat_in_train_config():
    from lmstack.train import TrainConfig

    with pytest.raises(ConfigError, match="qat_group_size 48"):
        TrainConfig(qat_bits=4, qat_group_size=48).check()
    assert TrainConfig(qat_bits=4, qat_group_size=32).check().qat_bits == 4


def test_qat_int4_loses_less_than_post_training_int4(trained, capsys):
    """Fine-tune the trained model 60 more steps with int4-g32 QAT, or 60 more plain steps,
    then quantize both: the QAT one's loss on the pattern must not be (much) worse. A tiny
    model's figures are noisy; the benchmark measures the real comparison."""
    qat = train_tiny(trained, qat_bits=4, steps=60)
    plain = train_tiny(trained, steps=60)
    seq = torch.tensor(PATTERN * 2)[None, :32]

    def loss(m):
        with torch.no_grad():
            return float(F.cross_entropy(m(seq[:, :-1]).reshape(-1, 32), seq[0, 1:]))

    plain_q = loss(quantize_model(copy.deepcopy(plain), 4, 32, act_dtype=torch.float32))
    qat_q = loss(quantize_model(copy.deepcopy(qat), 4, 32, act_dtype=torch.float32))
    with capsys.disabled():
        print(f"\nint4-g32 loss: fp32 {loss(plain):.4f}, PTQ {plain_q:.4f}, after QAT {qat_q:.4f}")
    assert qat_q <= plain_q * 1.1 + 0.01
