"""One training step of nanoGPT's baby GPT: lmstack's GPT next to a nanoGPT-shaped model, in one
process, so the comparison does not depend on which machine a published figure came from.

    .venv/bin/python benchmarks/train_step.py [--steps 60] [--threads 2]

Both models: 4 layers, 4 heads, width 128, context 64, batch 12, vocabulary 65, learned
positions, LayerNorm without bias, GELU MLP, tied embeddings, no dropout; forward, cross-entropy,
backward, grad-norm clip at 1.0 and an AdamW step (foreach and fused). The peer is written here
in nanoGPT's layout (one fused `c_attn` projection for q, k and v, sdpa with is_causal); it is
not nanoGPT's file, only its shape. Median ms per step after 10 warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.models import GPT, GPTConfig

V, T, B, C, H, L = 65, 64, 12, 128, 4, 4


class PeerBlock(nn.Module):
    """nanoGPT's block shape: fused qkv, sdpa causal, GELU MLP, pre-LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C, bias=False), nn.LayerNorm(C, bias=False)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C, bias=False), nn.Linear(C, C, bias=False)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C, bias=False), nn.Linear(4 * C, C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in self.c_attn(self.ln_1(x)).split(C, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class Peer(nn.Module):
    """nanoGPT's GPT shape with the settings above."""

    def __init__(self) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(PeerBlock() for _ in range(L))
        self.ln_f = nn.LayerNorm(C, bias=False)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def step_ms(model: nn.Module, fused: bool, steps: int) -> float:
    """Median wall time of one optimizer step, in ms."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), fused=fused)
    data = torch.randint(0, V, (100_000,), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(steps):
        ix = torch.randint(0, len(data) - T - 1, (B,))
        x = torch.stack([data[i:i + T] for i in ix])
        y = torch.stack([data[i + 1:i + T + 1] for i in ix])
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[10:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, position="learned",
                         norm="layernorm", mlp="gelu", bias=False, dropout=0.0))
    peer = Peer()
    print(f"{'optimizer':<10} {'lmstack ms':>11} {'peer ms':>8} {'peer/lmstack':>13}")
    for fused in (False, True):
        a_ms, b_ms = step_ms(ours, fused, a.steps), step_ms(peer, fused, a.steps)
        print(f"{'fused' if fused else 'foreach':<10} {a_ms:>11.1f} {b_ms:>8.1f} {b_ms / a_ms:>12.2f}x")
    print(f"tokens per step {B * T}; threads {a.threads}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
