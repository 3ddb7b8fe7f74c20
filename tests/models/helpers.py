"""Shared test helpers: tiny configs, weight randomization, cached decoding."""

from __future__ import annotations

import torch

from lmstack.models import GPT, GPTConfig


def tiny_gpt_config(**overrides) -> GPTConfig:
    """A 2-layer, 32-wide GPT config; keyword arguments override fields."""
    fields = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_embd=32)
    fields.update(overrides)
    return GPTConfig(**fields)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Overwrite every parameter with N(0, std) so that biases, norm gains and logits are far
    from their initial values (0.02-std init gives near-uniform logits that hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def random_gpt(seed: int = 0, **overrides) -> GPT:
    """A tiny GPT in eval mode with randomized weights."""
    torch.manual_seed(seed)
    return randomize(GPT(tiny_gpt_config(**overrides)), seed).eval()


def cached_logits(model, idx: torch.Tensor, prefill: int, max_len: int | None = None) -> torch.Tensor:
    """Logits from prefilling idx[:, :prefill] then feeding the rest one token per step."""
    cache = model.new_cache(idx.size(0), max_len if max_len is not None else idx.size(1))
    parts = [model(idx[:, :prefill], cache=cache)] if prefill else []
    for t in range(prefill, idx.size(1)):
        parts.append(model(idx[:, t : t + 1], cache=cache))
    assert cache.length == idx.size(1)
    return torch.cat(parts, dim=1)
