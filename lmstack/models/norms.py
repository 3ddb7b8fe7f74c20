"""Normalization layers for the transformer's pre-norm blocks: LayerNorm and RMSNorm.

LayerNorm (Ba et al. 2016) subtracts the mean and divides by the standard deviation over the
feature dimension, then applies a learned gain (and, optionally, bias) — GPT-2's choice.
RMSNorm (Zhang & Sennrich 2019) skips the mean: x / sqrt(mean(x²) + eps) · g — Llama's choice,
cheaper and as good in practice. RMSNorm has no bias, so `bias=True` is ignored for it.

Both are built as `NORMS[name](dim, eps=..., bias=...)`.

    >>> import torch
    >>> x = torch.tensor([[3.0, -1.0, 1.0, 1.0]])
    >>> RMSNorm(4, eps=0.0)(x)          # rms = sqrt((9 + 1 + 1 + 1) / 4) = sqrt(3)
    tensor([[ 1.7321, -0.5774,  0.5774,  0.5774]], grad_fn=<MulBackward0>)
    >>> NORMS["layernorm"](4, eps=0.0, bias=True)(x)   # mean 1, std 1.4142
    tensor([[ 1.4142, -1.4142,  0.0000,  0.0000]], grad_fn=<NativeLayerNormBackward0>)

Run its doctests: `pytest lmstack/models/norms.py`.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square normalization with a learned gain (no bias, no mean subtraction)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 even under bf16/fp16, as Llama does: mean(x²) overflows in half.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def layer_norm(dim: int, eps: float = 1e-5, bias: bool = True) -> nn.LayerNorm:
    """`nn.LayerNorm` over the last dimension, with or without a bias."""
    return nn.LayerNorm(dim, eps=eps, bias=bias)


NORMS = {"layernorm": layer_norm, "rmsnorm": RMSNorm}
