"""AdamW with weight decay on matrices only (Loshchilov & Hutter 2019; GPT-2/nanoGPT practice).

Decay pulls weights toward zero. On weight matrices (and embedding tables) that regularizes;
on biases and normalization gains it only fights the values the model needs (a LayerNorm gain
wants to sit near 1), so parameters with fewer than two dimensions are not decayed.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    >>> opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    >>> [(g["weight_decay"], sum(p.numel() for p in g["params"])) for g in opt.param_groups]
    [(0.1, 16), (0.0, 12)]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmstack.errors import ConfigError


@dataclass
class OptimConfig:
    """AdamW hyperparameters. The learning rate is not here: it is `schedule.lr` (schedule.py),
    set on the optimizer before every step, so there is exactly one place to set it."""

    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def check(self) -> OptimConfig:
        """Return self, or raise ConfigError naming the bad field."""
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"betas must be in [0, 1), got ({self.beta1}, {self.beta2})")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("weight_decay and grad_clip must be >= 0")
        return self


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float = 1e-3) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, decaying only those with >= 2 dimensions."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
