"""AdamW with weight decay on matrices only (Loshchilov & Hutter 2019; GPT-2/nanoGPT practice).

Decay pulls weights toward zero. On weight matrices (and embedding tables) that regularizes;
on biases and normalization gains it only fights the values the model needs (a LayerNorm gain
wants to sit near 1), so parameters with fewer than two dimensions are not decayed.

The update runs as PyTorch's fused AdamW kernel when every parameter is a plain tensor on a
device that has one (CPU and CUDA do): one kernel for all parameters instead of a dozen small
ops per parameter. For the 0.8M-parameter Shakespeare GPT on 2 CPU cores that is 1.1 ms per
step instead of 5.3 ms (benchmarks/shakespeare.py). `fused = false` forces the plain loop;
FSDP's sharded (DTensor) parameters always use it.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    >>> opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    >>> [(g["weight_decay"], sum(p.numel() for p in g["params"])) for g in opt.param_groups]
    [(0.1, 16), (0.0, 12)]

`name = "muon"` updates the hidden weight matrices (every `nn.Linear` but the output head)
with Muon (Jordan et al. 2024): SGD momentum whose update is orthogonalized, i.e. replaced by
the nearest semi-orthogonal matrix U·Vᵀ of its SVD U·S·Vᵀ, computed by five Newton-Schulz
iterations. Every direction of the update then moves at the same rate, where Adam's updates are
dominated by a few directions. Embeddings, the head, norms and biases stay on AdamW. The
update is scaled by 0.2·sqrt(max(rows, cols)) so its RMS matches a typical AdamW update (Liu et
al. 2025, "Muon is Scalable for LLM Training"): the same `schedule.lr` and weight decay then
suit both kinds of parameters.

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    >>> opt = build_optimizer(model, OptimConfig(name="muon"))
    >>> [(g["muon"], sum(p.numel() for p in g["params"])) for g in opt.param_groups]
    [(True, 32), (False, 0), (False, 24)]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmstack.errors import ConfigError


@dataclass
class OptimConfig:
    """AdamW hyperparameters. The learning rate is not here: it is `schedule.lr` (schedule.py),
    set on the optimizer before every step, so there is exactly one place to set it."""

    name: str = "adamw"  # adamw | muon (Muon on hidden matrices, AdamW on the rest)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    fused: bool | None = None  # fused AdamW kernel; None: wherever supported (see module doc)
    momentum: float = 0.95  # Muon's (Nesterov) momentum

    def check(self) -> OptimConfig:
        """Return self, or raise ConfigError naming the bad field."""
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"betas must be in [0, 1), got ({self.beta1}, {self.beta2})")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("weight_decay and grad_clip must be >= 0")
        if self.name not in ("adamw", "muon"):
            raise ConfigError(f"optimizer {self.name!r} is unknown; use 'adamw' or 'muon'")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        return self


def fused_supported(params: list[torch.Tensor]) -> bool:
    """True if torch's fused AdamW kernel can update all of `params`.

    >>> fused_supported([torch.zeros(2, requires_grad=True)])
    True
    >>> fused_supported([torch.zeros(2, dtype=torch.float64).requires_grad_()])  # float64: yes
    True
    """
    from torch.distributed.tensor import DTensor
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    return bool(params) and all(
        p.is_floating_point() and p.device.type in devices and not isinstance(p, DTensor)
        for p in params)


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately U·Vᵀ for g = U·S·Vᵀ (or for each matrix of a stack (..., rows, cols)):
    Newton-Schulz iterations with Jordan's quintic, computed in `dtype`.

    The coefficients trade exactness for speed: singular values land in about [0.7, 1.2],
    which works as well as exact orthogonalization for the update.

    >>> q = orthogonalize(torch.randn(64, 16))
    >>> s = torch.linalg.svdvals(q)
    >>> bool(s.min() > 0.6 and s.max() < 1.3)
    True
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: X·Xᵀ is then the smaller square
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= 1
    for _ in range(steps):
        m = x @ x.mT
        x = a * x + (b * m + c * m @ m) @ x
    return (x.mT if tall else x).to(g.dtype)


def _fast_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where matmuls are faster in it (CUDA; CPUs with AVX512-BF16/AMX), else fp32."""
    if device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available()
                                 and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return torch.bfloat16
    return torch.float32


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the groups with `muon=True`, AdamW for the others, in one optimizer.

    One optimizer object, so the training loop, the schedule and checkpoints (state keyed by
    parameter) treat it like AdamW."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                 momentum: float) -> None:
        super().__init__(groups, dict(lr=lr, betas=betas, eps=eps, momentum=momentum,
                                      weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's signature
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)  # decoupled weight decay
            if group["muon"]:
                self._muon(params, lr, group["momentum"])
            else:
                self._adam(params, lr, *group["betas"], group["eps"])

    def _muon(self, params: list[torch.Tensor], lr: float, momentum: float) -> None:
        for p in params:
            if not self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        grads = [p.grad for p in params]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        nesterov = torch._foreach_lerp(grads, bufs, momentum)
        # Orthogonalize equal-shaped matrices (a tall one transposed) as one stack: a few
        # batched matmuls instead of many small ones.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, g in enumerate(nesterov):
            by_shape.setdefault(tuple(sorted(g.shape[-2:])), []).append(i)
        dtype = _fast_dtype(params[0].device)
        for (short, long), index in by_shape.items():
            wide = [nesterov[i].mT if nesterov[i].size(-2) > nesterov[i].size(-1) else nesterov[i]
                    for i in index]
            ortho = orthogonalize(torch.stack(wide), dtype=dtype)
            for i, o in zip(index, ortho):
                o = o.mT if params[i].size(-2) > params[i].size(-1) else o
                params[i].add_(o, alpha=-lr * 0.2 * long ** 0.5)

    def _adam(self, params: list[torch.Tensor], lr: float, beta1: float, beta2: float,
              eps: float) -> None:
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        for s in states:
            s["step"] += 1
        t = float(states[0]["step"])
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, (1 - beta2 ** t) ** 0.5)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, -lr / (1 - beta1 ** t))


def hidden_matrices(model: torch.nn.Module) -> set[int]:
    """ids of the weights Muon should update: every nn.Linear weight except the output head
    (a Linear producing vocab_size outputs) and weights shared with an embedding."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return {id(m.weight) for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m.out_features != vocab
            and id(m.weight) not in embedded}


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float = 1e-3) -> torch.optim.Optimizer:
    """AdamW (or Muon + AdamW) over the trainable parameters, decaying only those with >= 2
    dimensions."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "muon":
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for p in params):
            raise ConfigError("optim.name=muon needs whole weight matrices; it does not work "
                              "with FSDP's sharded parameters: use parallel=ddp")
        hidden = hidden_matrices(model)
        groups = [
            {"params": [p for p in params if id(p) in hidden], "muon": True,
             "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if id(p) not in hidden and p.dim() >= 2],
             "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return MuonAdamW(groups, lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.momentum)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = fused_supported(params) if cfg.fused is None else cfg.fused
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=fused or None)
