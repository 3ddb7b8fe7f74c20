"""How the transformer learns token order: learned, rotary (RoPE), ALiBi, or none.

Attention by itself is blind to order, so each scheme injects position at one place:

- "learned" (GPT-2; Radford et al. 2019): a table `wpe` of one vector per position, added to
  the token embeddings. Only positions below `block_size` exist (GPT.check_length refuses
  longer inputs, for every scheme).
- "rope" (Su et al. 2021, RoFormer): rotate each pair of query/key features by an angle
  proportional to the position, so q·k depends only on the distance. Pairs are (i, i + d/2),
  the "rotate_half" layout of GPT-NeoX and Hugging Face Llama, so Llama weights load unchanged.
  `rope_theta` sets the slowest wavelength (10000 in the paper, 500000 in Llama 3).
  `rope_scaling` stretches a trained model to longer contexts: "linear" (Chen et al. 2023,
  position interpolation) divides every frequency by `factor`; "llama3" (Llama 3.1) divides
  only the low frequencies (wavelengths beyond original_max_position_embeddings /
  low_freq_factor), keeps the high ones, and blends in between.
- "alibi" (Press et al. 2022, "Train Short, Test Long"): no embedding; each head adds
  -slope·(query position - key position) to its attention scores, slopes a geometric series.
  An encoder (no causal mask) asks with `causal=False` and gets -slope·|distance|, the
  symmetric form, so keys ahead are penalized like keys behind.
- "none" (NoPE; Haviv et al. 2022): the causal mask alone leaks enough order to learn from.

Every scheme is a `Positions` module with three hooks, each a no-op by default, so the model
calls them all without asking which scheme it has: `embed` (add to token embeddings), `rotary`
(the cos/sin tables attention applies to q and k) and `attn_bias` (added to attention scores).
Positions are absolute indices (the KV-cache offset plus 0..T-1), given as a (T,) tensor, or
(B, T) once rows of a batch sit at different offsets.

    >>> alibi_slopes(8)         # 2^(-8/n), its powers
    [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]
    >>> [round(s, 4) for s in alibi_slopes(6)]  # not a power of 2: 4 slopes, then every other of 8's
    [0.25, 0.0625, 0.0156, 0.0039, 0.5, 0.125]
    >>> import torch
    >>> q = torch.tensor([[[[1.0, 0.0]]]])   # (B, H, T, head_dim) = (1, 1, 1, 2)
    >>> cos, sin = RotaryPositions(head_dim=2, rope_theta=10000.0).rotary(torch.tensor([1]))
    >>> apply_rotary(q, cos, sin)            # rotated by 1 radian: (cos 1, sin 1)
    tensor([[[[0.5403, 0.8415]]]])

Run its doctests: `pytest lmstack/models/positions.py`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lmstack.errors import ConfigError


def alibi_slopes(n_head: int) -> list[float]:
    """ALiBi's per-head slopes: 2^(-8/n)·(1..n) for n a power of 2, interleaved otherwise."""
    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return power_of_2(n_head)
    # The paper's recipe: the slopes of the nearest smaller power of 2, then every other
    # slope of the next power of 2 until there are enough.
    closest = 2 ** math.floor(math.log2(n_head))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: n_head - closest]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate query or key features (B, H, T, head_dim) by the angles whose cos/sin are given."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


class Positions(nn.Module):
    """No positional signal (NoPE); the base class of every scheme, all hooks no-ops."""

    def __init__(self, config: Any = None) -> None:
        super().__init__()

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, C) with position information added."""
        return x

    def rotary(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos, sin tables for rotating q and k at these positions, or None."""
        return None

    def attn_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool = True) -> torch.Tensor | None:
        """Additive attention-score bias (H, T, S) for queries at q_pos and keys at k_pos, or None;
        `causal=False` for attention that also sees keys ahead of the query (an encoder)."""
        return None


class LearnedPositions(Positions):
    """A learned vector per absolute position, added to the token embedding (GPT-2)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.wpe = nn.Embedding(config.block_size, config.n_embd)

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + self.wpe(pos)


ROPE_SCALING = {"linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                           "original_max_position_embeddings")}


def check_rope_scaling(scaling: dict) -> None:
    """Raise `ConfigError` unless `scaling` is a rope scaling this module implements."""
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_SCALING:
        raise ConfigError(f"rope_scaling type {kind!r} is not supported; use one of "
                          f"{sorted(ROPE_SCALING)} or no scaling")
    missing = [k for k in ROPE_SCALING[kind] if k not in scaling]
    if missing:
        raise ConfigError(f"rope_scaling of type {kind!r} needs {missing}")


def scale_inv_freq(inv_freq: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    """RoPE frequencies after linear or Llama-3 scaling (unchanged without scaling).

    >>> f = torch.tensor([1.0, 0.01, 0.0001])
    >>> scale_inv_freq(f, {"rope_type": "linear", "factor": 4.0})
    tensor([2.5000e-01, 2.5000e-03, 2.5000e-05])
    >>> scale_inv_freq(f, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    ...                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    tensor([1.0000e+00, 1.0000e-02, 1.2500e-05])
    """
    if not scaling:
        return inv_freq
    check_rope_scaling(scaling)
    factor = float(scaling["factor"])
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        return inv_freq / factor
    old = float(scaling["original_max_position_embeddings"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (beyond old/low) are divided by factor, short ones (below old/high)
    # kept; in between, a linear blend in old/wavelen.
    smooth = ((old / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


class RotaryPositions(Positions):
    """Rotary position embedding (RoPE), applied to queries and keys inside attention."""

    def __init__(self, config: Any = None, *, head_dim: int | None = None, rope_theta: float | None = None):
        super().__init__()
        head_dim = head_dim if head_dim is not None else config.n_embd // config.n_head
        theta = rope_theta if rope_theta is not None else config.rope_theta
        # Pair i rotates at frequency theta^(-2i/d): fast pairs see neighbours, slow ones far away.
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        inv_freq = scale_inv_freq(inv_freq, getattr(config, "rope_scaling", None))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # derived, not a weight

    def rotary(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = pos.float()[..., None] * self.inv_freq   # (..., T, head_dim / 2)
        angles = torch.cat((angles, angles), dim=-1)      # both halves of a pair share an angle
        # Insert the head dimension: (T, d) -> (1, T, d); (B, T, d) -> (B, 1, T, d).
        return angles.cos().unsqueeze(-3), angles.sin().unsqueeze(-3)


class ALiBiPositions(Positions):
    """Attention with Linear Biases: a per-head penalty proportional to query-key distance."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        slopes = torch.tensor(alibi_slopes(config.n_head), dtype=torch.float32)
        self.register_buffer("slopes", slopes, persistent=False)

    def attn_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool = True) -> torch.Tensor:
        distance = (q_pos[..., :, None] - k_pos[..., None, :]).float()  # (..., T, S)
        if not causal:
            distance = distance.abs()  # keys ahead are as far as keys behind
        # (H, T, S), or (B, H, T, S) for per-row positions (B, T).
        return -self.slopes[:, None, None] * distance.unsqueeze(-3)


POSITIONS = {
    "learned": LearnedPositions,
    "rope": RotaryPositions,
    "alibi": ALiBiPositions,
    "none": Positions,
}
