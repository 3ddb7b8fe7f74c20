"""Medusa heads (Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with
Multiple Decoding Heads"): K small extra heads on a frozen language model's last hidden state.

The base model's own head maps the hidden state h_t at position t to the next token t+1. Head k
(k = 1..K) maps the same h_t to token t+k+1, skipping ahead:

    head_k(h) = W_k · (h + SiLU(A_k h))      one residual block, then a linear map to the vocab

A_k starts at zero and W_k as a copy of the base model's `lm_head`, so before training every
head predicts what the base head predicts (Medusa's initialization). Decoding with them is in
lmstack/infer/medusa_drafter.py, training in lmstack/train/heads.py; this file is only the module and
how it is stored next to the base model:

    DIR/medusa_heads.safetensors   the heads' weights
    DIR/medusa_config.json         MedusaConfig (+ the base model's fingerprint)

    >>> import torch
    >>> heads = MedusaHeads(MedusaConfig(num_heads=3, n_embd=8, vocab_size=11))
    >>> heads(torch.zeros(2, 5, 8)).shape     # (..., K, vocab)
    torch.Size([2, 5, 3, 11])
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmstack.atomic import atomic_open, atomic_write_json
from lmstack.errors import ConfigError

HEADS_WEIGHTS = "medusa_heads.safetensors"
HEADS_CONFIG = "medusa_config.json"


@dataclass
class MedusaConfig:
    """Shape of a set of Medusa heads."""

    num_heads: int = 4           # K: head k predicts the token k+1 places after the base head's
    n_embd: int = 128            # the base model's hidden size
    vocab_size: int = 256        # the base model's vocabulary
    num_layers: int = 1          # residual blocks per head
    base_fingerprint: str = ""   # `base_fingerprint(model)` of the model they were trained on

    def validate(self) -> MedusaConfig:
        for name in ("num_heads", "n_embd", "vocab_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Medusa {name} must be an integer >= 1, got {value!r}")
        return self


class ResBlock(nn.Module):
    """h + SiLU(linear(h)); the linear starts at zero, so the block starts as the identity."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_embd, n_embd)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + nn.functional.silu(self.linear(h))


class MedusaHeads(nn.Module):
    """K heads: hidden (..., n_embd) -> logits (..., K, vocab_size)."""

    def __init__(self, config: MedusaConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.heads = nn.ModuleList(
            nn.Sequential(*[ResBlock(config.n_embd) for _ in range(config.num_layers)],
                          nn.Linear(config.n_embd, config.vocab_size, bias=False))
            for _ in range(config.num_heads))

    @classmethod
    def for_model(cls, model: nn.Module, num_heads: int, num_layers: int = 1) -> MedusaHeads:
        """Fresh heads for `model` (a GPT), each output layer a copy of its `lm_head`."""
        c = model.config
        heads = cls(MedusaConfig(num_heads, c.n_embd, c.vocab_size, num_layers, base_fingerprint(model)))
        with torch.no_grad():
            for head in heads.heads:
                head[-1].weight.copy_(model.lm_head.weight)
        return heads.to(model.lm_head.weight.device)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(h) for head in self.heads], dim=-2)

    def check_base(self, model: nn.Module) -> None:
        """Raise ConfigError unless `model` has the hidden size and vocabulary of these heads;
        warn if they were trained on other weights."""
        c, m = self.config, model.config
        if getattr(m, "n_embd", None) != c.n_embd or m.vocab_size != c.vocab_size:
            raise ConfigError(
                f"these Medusa heads were trained for a model with n_embd {c.n_embd} and vocab "
                f"{c.vocab_size}, but this model has n_embd {getattr(m, 'n_embd', None)} and vocab "
                f"{m.vocab_size}; train heads for it with `lmstack train-heads --model DIR`")
        if c.base_fingerprint and c.base_fingerprint != base_fingerprint(model):
            warnings.warn("these Medusa heads were trained on other weights of the base model; "
                          "output is still exact, but fewer proposals will be accepted", stacklevel=2)


def base_fingerprint(model: nn.Module) -> str:
    """A short digest of the base model's output head (what the heads are tied to)."""
    h = hashlib.sha256()
    for t in (model.lm_head.weight, getattr(getattr(model, "ln_f", None), "weight", None)):
        if t is not None:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_heads(directory: str | os.PathLike, heads: MedusaHeads) -> Path:
    """Write the heads' weights and config into `directory`, each file atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    with atomic_open(d / HEADS_WEIGHTS) as f:
        save_file(state, f.name)
    atomic_write_json(d / HEADS_CONFIG, asdict(heads.config))
    return d


def load_heads(directory: str | os.PathLike, device: str | torch.device = "cpu") -> MedusaHeads:
    """The Medusa heads stored in `directory` (eval mode)."""
    import json

    d = Path(directory)
    if not (d / HEADS_CONFIG).exists() or not (d / HEADS_WEIGHTS).exists():
        raise ConfigError(f"{d} holds no Medusa heads ({HEADS_CONFIG} + {HEADS_WEIGHTS}); train "
                          f"them with `lmstack train-heads --model DIR --heads 4`")
    raw = json.loads((d / HEADS_CONFIG).read_text())
    known = {f.name for f in fields(MedusaConfig)}
    heads = MedusaHeads(MedusaConfig(**{k: v for k, v in raw.items() if k in known}))
    heads.load_state_dict(load_file(d / HEADS_WEIGHTS, device=str(device)))
    return heads.to(device).eval()
