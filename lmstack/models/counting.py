"""Parameter counts and FLOPs per token, for MFU and scaling laws.

`num_params(model, non_embedding=True)` is Kaplan et al. 2020's N: every parameter except the
vocabulary and position tables (token embedding, learned positions, output head).

`flops_per_token(config, seq_len)` counts the matrix-multiply FLOPs of one token, following the
PaLM paper's appendix B (Chowdhery et al. 2022), which refines Kaplan et al.'s 6N:

    training = 6·N + 12·L·H·Q·T      (forward = 2·N + 4·L·H·Q·T, backward twice the forward)

A weight takes part in one multiply-add (2 FLOPs) per token in the forward pass. N here is the
non-embedding count plus the output head: looking up an embedding costs nothing, but the head is
a full n_embd × vocab matmul, so it counts once, tied or not (nanoGPT's estimate does the same).
The second term is attention itself: QKᵀ and the weighted sum of V, each 2·T·Q FLOPs per head,
per layer (L layers, H heads of size Q, context T). Recurrent models have no such term; the
n-gram model does table lookups, not matmuls, so it reports 0.

    >>> from lmstack.models.gpt import GPTConfig
    >>> config = GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=4, bias=False,
    ...                    norm="rmsnorm", mlp="relu", position="rope")
    >>> # wte 10·4 = 40 (tied: also the head); per layer: ln_1 4, q/k/v/o 4·16 = 64, ln_2 4,
    >>> # up 4·16 = 64, down 16·4 = 64; ln_f 4.  40 + 4 + 64 + 4 + 128 + 4 = 244
    >>> from lmstack.models.gpt import GPT
    >>> num_params(GPT(config)), num_params(GPT(config), non_embedding=True)
    (244, 204)
    >>> # 6·(204 + 40) + 12·1·1·4·4 = 1464 + 192
    >>> flops_per_token(config, seq_len=4), flops_per_token(config, seq_len=4, training=False)
    (1656, 552)

Run: `pytest lmstack/models/counting.py tests/models/test_counting.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from lmstack.models.config import ModelConfig
from lmstack.models.gpt import GPTConfig
from lmstack.models.registry import build_model


def num_params(model: nn.Module, non_embedding: bool = False) -> int:
    """Number of parameters (shared ones once); `non_embedding` leaves out vocab/position tables."""
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    if non_embedding:
        tables = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Embedding)}
        head = getattr(model, "lm_head", None)
        if head is not None:
            tables[id(head.weight)] = head.weight
        total -= sum(p.numel() for p in tables.values())
    return total


def flops_per_token(config: ModelConfig, seq_len: int, training: bool = True) -> int:
    """Matmul FLOPs per token at context `seq_len`: 6N + 12·L·H·Q·T to train, a third to infer."""
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        model = build_model(config)
    n = num_params(model, non_embedding=True)
    head = getattr(model, "lm_head", None)
    if head is not None:
        n += head.weight.numel()
    attention = 0
    if isinstance(config, GPTConfig):
        attention = 4 * config.n_layer * config.n_head * config.head_dim * seq_len
    forward = 2 * n + attention
    return 3 * forward if training else forward
