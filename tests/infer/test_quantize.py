"""Weight-only int8/int4 quantization (lmstack/infer/quantize.py), bf16 inference and QAT
(lmstack/train/qat.py): kernels against the reference path, every Linear replaced, save/load
round trips, greedy agreement on a trained model, and clear errors."""

from __future__ import annotations

import copy
import json
import math

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
from lmstack.train.qat import FakeQuantLinear, apply_qat, fake_quantize, strip_qat

torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared 2-core machine


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


@pytest.mark.parametrize("bits,group", [(8, None), (8, 32), (4, 32), (4, 64), (4, 128)])
@pytest.mark.parametrize("out_features", [48, 40])  # 40: int4 rows padded to 16 for the kernel
def test_fast_kernel_equals_reference(bits, group, out_features):
    torch.manual_seed(1)
    lin = nn.Linear(256, out_features)
    layer = (Int8Linear.from_linear(lin, group) if bits == 8 else Int4Linear.from_linear(lin, group)).eval()
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


def test_group_wise_int8_scales_and_error_bound():
    w = torch.randn(24, 128) * torch.logspace(-2, 1, 128)  # columns of very different sizes
    q, s = quantize_int8(w, group_size=32)
    assert q.dtype == torch.int8 and s.shape == (24, 4)
    err = (dequantize_int8(q, s) - w).abs()
    assert (err <= s.repeat_interleave(32, dim=1) / 2 + 1e-6).all()
    q1, s1 = quantize_int8(w)  # one scale a row: the small columns lose more
    assert err[:, :32].max() < (dequantize_int8(q1, s1) - w).abs()[:, :32].max() / 10
    with pytest.raises(ConfigError, match="group_size 48 does not divide the input width 128"):
        Int8Linear(128, 8, group_size=48)


def test_a_group_wise_int8_head_saves_and_loads(tmp_path):
    model = quantize_model(tiny_gpt(), 4, 32, skip=["lm_head"])
    model.lm_head = Int8Linear.from_linear(model.lm_head, group_size=32)  # as from a Q8_0 file
    model.quantization["head"] = {"bits": 8, "group_size": 32}
    x = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        before = model(x)
    d = save_model(tmp_path / "q", model)
    loaded = load_model(d)
    assert isinstance(loaded.lm_head, Int8Linear) and loaded.lm_head.group_size == 32
    assert loaded.quantization["head"] == {"bits": 8, "group_size": 32}
    with torch.no_grad():
        assert torch.equal(loaded(x), before)
    config = json.loads((d / "config.json").read_text())
    config["quantization"]["head"] = {"bits": 4, "group_size": 32}
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="quantization head entry"):
        load_model(d)


def test_int8_layers_cache_their_kernel_scales():
    layer = Int8Linear.from_linear(nn.Linear(64, 16))
    x = torch.randn(2, 64)
    y = layer(x)
    packed = layer._packed
    assert torch.equal(layer(x), y) and layer._packed is packed  # made once, reused
    layer.load_state_dict(layer.state_dict())
    assert layer._packed is None  # new weights: made again on the next call


def test_quantize_command(tmp_path):
    import argparse

    from lmstack.infer.commands import add_quantize_args
    from lmstack.infer.commands import cmd_quantize

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


def train_tiny(steps: int = 100) -> GPT:
    """Train a tiny GPT to continue a fixed 29-token cycle (~2 s)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=32, n_layer=1, n_head=2, n_embd=64,
                          intermediate_size=128)).train()
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


# QAT's win, measured where post-training int4 measurably loses: a 1-layer GPT, 64 wide, memorizes
# a random 512-token sequence (300 AdamW steps, cosine lr 3e-3 -> 0). At step 200 the run forks:
# one copy goes on plainly, the other trains its last 100 steps through int4-g64 rounding. Same
# data, same optimizer state, same schedule; only the fake quantization differs.
MEM_VOCAB, MEM_CTX, MEM_STEPS, MEM_QAT_STEPS, MEM_GROUP = 64, 32, 300, 100, 64


def memorize(model: GPT, opt: torch.optim.Optimizer, batches: torch.Tensor, steps: range) -> None:
    """AdamW steps `steps` of a cosine schedule over MEM_STEPS on the given (steps, B, ctx+1) batches."""
    model.train()
    for i in steps:
        for group in opt.param_groups:
            group["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * i / MEM_STEPS))
        b = batches[i]  # (16, ctx + 1)
        loss = F.cross_entropy(model(b[:, :-1]).reshape(-1, MEM_VOCAB), b[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()


def qat_versus_post_training(seed: int) -> tuple[float, float, float]:
    """(fp32 loss, loss after post-training int4, loss after QAT then int4) on the memorized
    sequence, every quantized model run through the reference path (exact fp32 arithmetic on the
    dequantized weights: the figures do not depend on the CPU's int4 kernel). ~3 s."""
    seq = torch.randint(0, MEM_VOCAB, (512,), generator=torch.Generator().manual_seed(100 + seed))
    starts = torch.randint(0, len(seq) - MEM_CTX - 1, (MEM_STEPS, 16), generator=torch.Generator().manual_seed(seed))
    batches = torch.stack([torch.stack([seq[s:s + MEM_CTX + 1] for s in row]) for row in starts])
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=MEM_VOCAB, block_size=MEM_CTX, n_layer=1, n_head=2, n_embd=64,
                          intermediate_size=128))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    fork = MEM_STEPS - MEM_QAT_STEPS
    memorize(model, opt, batches, range(fork))
    qat, qat_opt = copy.deepcopy((model, opt))  # one deepcopy: the copied optimizer holds the copied parameters
    apply_qat(qat, 4, MEM_GROUP)
    memorize(model, opt, batches, range(fork, MEM_STEPS))
    memorize(qat, qat_opt, batches, range(fork, MEM_STEPS))
    strip_qat(qat)  # plain nn.Linear again: what a QAT run's checkpoint loads into
    windows = seq.unfold(0, MEM_CTX + 1, 8)  # (61, ctx + 1)

    def loss(m: nn.Module) -> float:
        # The first 8 tokens of a window have too little context to place it in a random sequence:
        # their loss is ambiguity no weight can remove, so they are left out.
        with torch.no_grad():
            logits = m.eval()(windows[:, :-1])[:, 8:]  # (61, ctx - 8, vocab)
        return float(F.cross_entropy(logits.reshape(-1, MEM_VOCAB), windows[:, 9:].reshape(-1)))

    def int4(m: nn.Module) -> nn.Module:
        return quantize_model(copy.deepcopy(m), 4, MEM_GROUP, reference=True)

    return loss(model), loss(int4(model)), loss(int4(qat))


def test_qat_int4_loses_less_than_post_training_int4(capsys):
    """On each of 3 seeds post-training int4 costs the model >= 5% more loss (8 seeds x 3 CPU
    kernel sets on AMD EPYC: +10..+13%), and QAT gives back at least 40% of that: its int4 loss
    rises by at most 0.6x what post-training quantization adds (measured: 0.20..0.39x)."""
    rows = [qat_versus_post_training(seed) for seed in range(3)]
    with capsys.disabled():
        for seed, (fp32, ptq, qat) in enumerate(rows):
            print(f"\nseed {seed}: loss fp32 {fp32:.4f}, int4-g64 post-training {ptq:.4f} "
                  f"({100 * (ptq / fp32 - 1):+.1f}%), after QAT {qat:.4f} ({100 * (qat / fp32 - 1):+.1f}%)")
    for fp32, ptq, qat in rows:
        assert ptq > 1.05 * fp32  # the setting is one where quantization hurts: there is a gap to close
        assert qat - fp32 < 0.6 * (ptq - fp32)
