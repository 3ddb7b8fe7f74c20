"""The transformer's position-wise feed-forward network (the "MLP") and its variants.

A block's MLP expands each token's vector to a hidden size, applies a nonlinearity and projects
back: down_proj(act(up_proj(x))) (Vaswani et al. 2017). The activations on offer:

- "gelu": GELU (Hendrycks & Gimpel 2016) in its tanh approximation, as GPT-2 used it (Hugging
  Face's `gelu_new`), so GPT-2 weights load exactly.
- "gelu_exact": GELU as x·Φ(x) with the exact normal CDF (erf), BERT's (Hugging Face's
  `gelu`); it differs from the tanh form by up to 5e-4, too much for 1e-5 matches.
- "relu": max(0, x), the original transformer's.
- "relu2": ReLU squared (So et al. 2021, "Primer"), max(0, x)².
- "swiglu": a gated unit (Shazeer 2020, "GLU Variants Improve Transformer"), Llama's choice:
  down_proj(silu(gate_proj(x)) * up_proj(x)). It has three matrices instead of two, so its
  default hidden size is 8/3·d instead of 4·d to keep the parameter count (see `default_hidden`).

Each is built as `MLPS[name](n_embd, hidden, bias=..., dropout=...)`.

    >>> import torch
    >>> relu_squared(torch.tensor([-2.0, 0.5, 3.0]))
    tensor([0.0000, 0.2500, 9.0000])
    >>> round(float(gelu_tanh(torch.tensor(-1.5)) - F.gelu(torch.tensor(-1.5))), 5)  # the approximation's error
    -0.00022
    >>> default_hidden("gelu", 768), default_hidden("swiglu", 768), default_hidden("swiglu", 100)
    (3072, 2048, 320)

Run its doctests: `pytest lmstack/models/mlp.py`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """ReLU², the Primer activation."""
    return F.relu(x).square()


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (GPT-2's `gelu_new`)."""
    return F.gelu(x, approximate="tanh")


# "silu" is SwiGLU's gate, named here for callers that need the activation of an MLP (mlp_activation).
ACTIVATIONS = {"gelu": gelu_tanh, "gelu_exact": F.gelu, "relu": F.relu, "relu2": relu_squared,
               "silu": F.silu}


def mlp_activation(mlp: str) -> str:
    """The activation an `mlp` name applies, as an ACTIVATIONS key (SwiGLU's gate is silu): what
    a head that mirrors the MLP's nonlinearity uses (BERT's MLM transform).

    >>> mlp_activation("gelu_exact"), mlp_activation("swiglu")
    ('gelu_exact', 'silu')
    """
    return "silu" if mlp == "swiglu" else mlp


def default_hidden(mlp: str, n_embd: int, multiple_of: int = 64) -> int:
    """The hidden size used when the config leaves it unset: 4·d, or 8/3·d rounded up for SwiGLU."""
    if mlp != "swiglu":
        return 4 * n_embd
    # Llama rounds up to a multiple of 256; 64 wastes less on the small models trained here.
    hidden = int(8 * n_embd / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class MLP(nn.Module):
    """up_proj → activation → down_proj → dropout."""

    def __init__(self, n_embd: int, hidden: int, activation: str, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.up_proj = nn.Linear(n_embd, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.act(self.up_proj(x))))


class SwiGLU(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)) → dropout."""

    def __init__(self, n_embd: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.gate_proj = nn.Linear(n_embd, hidden, bias=bias)
        self.up_proj = nn.Linear(n_embd, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)
        # gate and up stacked in one layer for decoding, set by lmstack/infer/fuse.py
        self.gate_up_proj: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.dropout(self.down_proj(F.silu(gate) * up))


MLPS = {
    "gelu": functools.partial(MLP, activation="gelu"),
    "gelu_exact": functools.partial(MLP, activation="gelu_exact"),
    "relu": functools.partial(MLP, activation="relu"),
    "relu2": functools.partial(MLP, activation="relu2"),
    "swiglu": SwiGLU,
}
