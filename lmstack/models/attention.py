"""Multi-head self-attention, causal or bidirectional, with grouped-query heads, QK-norm and a
KV cache.

Each token's vector is projected to queries, keys and values (`q_proj`, `k_proj`, `v_proj`);
each head computes softmax(Q·Kᵀ/√d + bias)·V over the tokens up to itself; the heads are
concatenated and projected back (`o_proj`) — Vaswani et al. 2017, "Attention Is All You Need".
`causal=False` (the encoder, encoder.py; BERT, Devlin et al. 2019) lets every query see every
key: then `bias` None means no mask at all, and a padding mask arrives as a (B, 1, 1, S) bias.

- Grouped-query attention (Ainslie et al. 2023): n_kv_head key/value heads, each shared by
  n_head / n_kv_head query heads. n_kv_head == n_head is ordinary multi-head attention;
  n_kv_head == 1 is multi-query attention (Shazeer 2019). Fewer K/V heads, smaller KV cache.
- QK-norm (Henry et al. 2020; used by OLMo 2 and Qwen 3): normalize each head's queries and keys
  before the dot product, which keeps attention logits from growing and training stable.
- Sliding window (Mistral; Jiang et al. 2023): each query sees only the last `sliding_window`
  keys, itself included; it is part of the mask (`causal_bias`), so both kernels apply it.
- Positions: RoPE rotates q and k here (cos/sin tables come in); ALiBi arrives as part of the
  additive `bias` (see positions.py).

The score computation has two implementations, chosen by `attn_impl` and checked equal by the
tests (outputs and gradients): "sdpa", PyTorch's fused `scaled_dot_product_attention` (fast,
memory-efficient), and "manual", the formula written out — read this one to learn.

`bias` is an additive (T, S), (H, T, S) or (B, H, T, S) tensor holding 0 where a query may
look and -inf where it may not (the future and, with a sliding window, keys more than
`sliding_window - 1` positions back), plus ALiBi's penalties; None means (in a causal layer)
"plain causal" with the last query at the last key: either queries are the keys (sdpa's
`is_causal` fast path) or a single query (a decode step) that sees every key. Rows of different
lengths in a KV cache get a (B, 1, T, S) mask that hides each row's unused slots.

Run the tests: `pytest tests/models/test_gpt.py -k attention`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.models.kv_cache import KVCache
from lmstack.models.norms import NORMS
from lmstack.models.positions import apply_rotary


def causal_bias(q_pos: torch.Tensor, k_pos: torch.Tensor, dtype: torch.dtype = torch.float32,
                window: int | None = None) -> torch.Tensor:
    """(T, S) additive mask: 0 where query i may see key j, -inf elsewhere. Causal: j <= i; with
    a sliding `window` also i - window < j, so each query sees `window` keys, itself included
    (the convention of Mistral and of transformers' `sliding_window_overlay`).

    >>> causal_bias(torch.tensor([1, 2]), torch.arange(3))
    tensor([[0., 0., -inf],
            [0., 0., 0.]])
    >>> causal_bias(torch.tensor([1, 2]), torch.arange(3), window=2)
    tensor([[0., 0., -inf],
            [-inf, 0., 0.]])
    """
    distance = q_pos[..., :, None] - k_pos[..., None, :]  # (T, S): how far back key j is
    hidden = distance < 0  # the future
    if window is not None:
        hidden |= distance >= window  # fallen out of the window
    return torch.zeros(hidden.shape, dtype=dtype, device=q_pos.device).masked_fill(hidden, float("-inf"))


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                   dropout_p: float, causal: bool = True) -> torch.Tensor:
    """softmax(QKᵀ/√d + bias)V by PyTorch's fused kernel; K/V may have fewer heads than Q."""
    return F.scaled_dot_product_attention(
        # is_causal aligns the mask top-left, right only for T == S; a lone query sees all keys.
        q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=causal and bias is None and q.size(2) > 1,
        enable_gqa=k.size(1) != q.size(1),
    )


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                     dropout_p: float, causal: bool = True) -> torch.Tensor:
    """softmax(QKᵀ/√d + bias)V written out; K/V heads are repeated to match the query heads."""
    group = q.size(1) // k.size(1)
    k = k.repeat_interleave(group, dim=1)  # query head h reads K/V head h // group
    v = v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    if bias is None and causal:
        T, S = q.size(2), k.size(2)  # the last query sits at the last key
        bias = causal_bias(torch.arange(S - T, S, device=q.device), torch.arange(S, device=q.device), q.dtype)
    weights = F.softmax(scores if bias is None else scores + bias, dim=-1)
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return weights @ v


ATTENTION = {"sdpa": sdpa_attention, "manual": manual_attention}


class CausalSelfAttention(nn.Module):
    """One layer's attention: project, normalize (optional), rotate (RoPE), cache, attend, project.
    `causal=False`: bidirectional (an encoder's), every query sees every key `bias` allows."""

    def __init__(self, config: Any, layer_idx: int, causal: bool = True) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which slot of the KV cache is ours
        self.causal = causal
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head or config.n_head
        self.head_dim = config.n_embd // config.n_head
        qkv_bias = config.bias if getattr(config, "qkv_bias", None) is None else config.qkv_bias
        self.q_proj = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=config.bias)
        # q, k and v stacked in one layer for decoding, set by lmstack/infer/fuse.py (which
        # removes the three): one product instead of three, the same numbers.
        self.qkv_proj: nn.Module | None = None
        norm = NORMS[config.norm]
        self.q_norm = norm(self.head_dim, eps=config.norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = norm(self.head_dim, eps=config.norm_eps) if config.qk_norm else nn.Identity()
        self.attend = ATTENTION[config.attn_impl]
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def extra_repr(self) -> str:
        return f"{'causal' if self.causal else 'bidirectional'}, {self.attend.__name__}"

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); reads and extends `cache` if given."""
        B, T, _ = x.shape
        if self.qkv_proj is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            kv = self.n_kv_head * self.head_dim
            q, k, v = self.qkv_proj(x).split([self.n_head * self.head_dim, kv, kv], dim=-1)
        # (B, T, heads·d) -> (B, heads, T, d): heads become a batch dimension.
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # now all positions 0..length+T-1
        y = self.attend(q, k, v, bias, self.dropout if self.training else 0.0, self.causal)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.o_proj(y))
