"""Decoding with Medusa heads (Cai et al. 2024): the model drafts for itself.

K heads on the base model's last hidden state (lmstack/models/medusa_heads.py; trained on the frozen
model by `lmstack train-heads`, lmstack/train/heads.py) guess the tokens 2..K+1 places ahead.
Every verification pass of the speculative loop (speculative.py; the Drafter interface is in
drafters.py) already computes the hidden state at the position that predicts the next token, so
the proposals for the next round cost only the heads' small matmuls -- no draft model, no extra
forward:

1. the base model runs [last, d1..dk] through its KV cache, returning hidden states;
2. `lm_head` turns them into logits; greedy verification accepts d_j while it equals the base's
   argmax (sampling: the speculative-sampling rule with a deterministic drafter), then the base's
   own token follows -- so greedy output is exactly plain greedy output;
3. the heads read the hidden state at the position that produced that token and propose the
   next chain d1..dK (each head's top-1). The first round has no proposals: it is a plain step.

This is Medusa-1's chain (one candidate per head); Medusa's tree attention, which verifies
several top-k combinations at once, is not implemented.

    from lmstack.infer import Engine
    engine = Engine.load("runs/spec-bench/target")        # medusa_heads.safetensors inside
    spec = engine.speculative(medusa="runs/spec-bench/target")
    print(spec.generate("import os\\n", temperature=0, max_new_tokens=64).text, spec.stats)

Run the tests: `pytest tests/infer/test_medusa.py`.
"""

from __future__ import annotations

import os

import torch

from lmstack.errors import ConfigError
from lmstack.infer.drafters import Drafter
from lmstack.models.medusa_heads import MedusaHeads, load_heads


class MedusaDrafter(Drafter):
    """Proposals from Medusa heads on the target's last hidden state."""

    uses_hidden = True

    def __init__(self, heads: MedusaHeads) -> None:
        self.heads = heads.eval()
        self.num_heads = heads.config.num_heads
        self.proposals: list[int] = []

    def __str__(self) -> str:
        return f"{self.num_heads} Medusa heads"

    @classmethod
    def for_model(cls, model: torch.nn.Module, medusa: MedusaHeads | str | os.PathLike) -> MedusaDrafter:
        """Heads (or the directory holding them) checked against `model`."""
        if not hasattr(model, "hidden"):
            raise ConfigError("Medusa heads need a model with a `hidden` method (GPT)")
        heads = medusa if isinstance(medusa, MedusaHeads) else load_heads(
            medusa, device=model.lm_head.weight.device)
        heads.check_base(model)
        return cls(heads)

    def start(self, state) -> None:
        super().start(state)
        self.proposals = []

    def propose(self, seq: list[int], n: int) -> tuple[list[int], None]:
        return self.proposals[:n], None

    def commit(self, seq: list[int], hidden: torch.Tensor | None) -> None:
        logits = self.heads(hidden.to(self.heads.heads[0][-1].weight.dtype))  # (K, V)
        self.proposals = logits.argmax(-1).tolist()
