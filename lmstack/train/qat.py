"""Quantization-aware training (QAT): train through the rounding that int8/int4 will apply.

As the last phase of a run (here the last 100 of the quickstart's 600 steps): train in fp32 to
the fork, then resume a copy of its checkpoint with QAT on, on the same schedule.

    lmstack train --config quickstart --set steps=500 out_dir=runs/qs   # schedule: 600 steps
    cp -r runs/qs runs/qs-qat
    lmstack train --config quickstart --set out_dir=runs/qs-qat resume=true qat_bits=4 qat_group_size=128
    lmstack quantize --model runs/qs-qat --out runs/qs-q4 --bits 4 --group-size 128

QAT late, not from the start: ParetoQ (Liu et al. 2025) finds fine-tuning with QAT for ~10% of
the budget after full-precision training beats QAT from scratch, and so do we
(docs/quantization.md): from step 0 the rounding noise slows learning by more than it saves.

Post-training quantization (lmstack/infer/quantize.py) rounds weights the model never saw
rounded. QAT lets the model adapt: every Linear's forward uses fake-quantized weights —
quantized and immediately dequantized, so still float — and the backward pass treats the
rounding as the identity, the straight-through estimator (Bengio et al. 2013; as used for
quantization by Jacob et al. 2018):

    w_q = w + (fake_quantize(w) - w).detach()     # value: fake_quantize(w); gradient: 1

The float weights (the "shadow" weights) are what the optimizer updates and what the checkpoint
stores, so a QAT run's directory is an ordinary fp32 model directory; `lmstack quantize` with
the same bits and group size then rounds them exactly as training did. `fake_quantize` is the
same arithmetic as infer/quantize.py's quantize -> dequantize (a test holds them equal); it is
written again here because training must not import the inference layer.

    >>> import torch
    >>> w = torch.tensor([[0.3, -1.0, 0.52, 2.0]], requires_grad=True)
    >>> fake_quantize(w, bits=8)
    tensor([[ 0.2992, -1.0079,  0.5197,  2.0000]], grad_fn=<AddBackward0>)
    >>> fake_quantize(w, bits=8).sum().backward(); w.grad  # straight through
    tensor([[1., 1., 1., 1.]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.errors import ConfigError


def _round_trip(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """dequantize(quantize(w)) without gradient: int8 per row, or int4 per group (float zero)."""
    w = w.detach().float()
    if bits == 8:
        s = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
        return torch.round(w / s).clamp(-127, 127) * s
    N, K = w.shape
    g = w.reshape(N, K // group_size, group_size)
    lo, hi = g.amin(dim=-1, keepdim=True), g.amax(dim=-1, keepdim=True)
    s = ((hi - lo) / 15).clamp(min=1e-12)
    return (torch.round((g - lo) / s).clamp(0, 15) * s + lo).reshape(N, K)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int = 64) -> torch.Tensor:
    """The quantized value of `w` in the forward pass, the identity in the backward (STE)."""
    return w + (_round_trip(w, bits, group_size).to(w.dtype) - w).detach()


class FakeQuantLinear(nn.Linear):
    """An nn.Linear whose forward multiplies by fake-quantized weights. Same parameters, same
    state-dict names as the Linear it replaces (checkpoints load into a plain model)."""

    bits: int = 8
    group_size: int = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fake_quantize(self.weight, self.bits, self.group_size), self.bias)


def check_qat(bits: int | None, group_size: int) -> None:
    """ConfigError for settings quantization could not apply afterwards."""
    if bits is None:
        return
    if bits not in (4, 8):
        raise ConfigError(f"qat_bits {bits} is not supported: use 8, 4, or leave it unset (no QAT)")
    if bits == 4 and group_size not in (32, 64, 128, 256):
        raise ConfigError(f"qat_group_size {group_size} is not supported: use 32, 64, 128 or 256")


def apply_qat(model: nn.Module, bits: int, group_size: int = 64) -> nn.Module:
    """Make every nn.Linear of `model` fake-quantize its weight (in place, parameters shared)."""
    check_qat(bits, group_size)
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    for name, m in linears:
        if bits == 4 and m.in_features % group_size:
            raise ConfigError(f"qat_group_size {group_size} does not divide the input width "
                              f"{m.in_features} of layer {name!r}; choose a group size that "
                              "divides every layer's input width")
    for name, m in linears:
        m.__class__ = FakeQuantLinear  # same object, same Parameters (a tied head stays tied)
        m.bits, m.group_size = bits, group_size
    return model


def strip_qat(model: nn.Module) -> nn.Module:
    """Undo `apply_qat` in place: every FakeQuantLinear is a plain nn.Linear again (same
    Parameters), the fp32 model that `quantize_model` then rounds as training did."""
    for m in model.modules():
        if isinstance(m, FakeQuantLinear):
            m.__class__ = nn.Linear
            del m.bits, m.group_size
    return model
