"""Scoring: how likely a model finds a given continuation of a prompt, token by token.

log P(continuation | prompt) = sum over its tokens c_i of log softmax(logits at the position
before c_i)[c_i]: one teacher-forced forward pass over prompt + continuation, no sampling. This
is what multiple-choice evaluation, reranking and the "echo" of an API use. The top-k
alternatives at each position show what the model expected instead.

Run the tests: `pytest tests/infer/test_generate.py -k score`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError
from lmstack.infer.sampling import context_length


@dataclass
class Score:
    """The log-probability of a continuation, in total and per token."""

    logprob: float                                  # sum over the continuation's tokens
    tokens: list[int]
    token_logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


@torch.no_grad()
def score_continuation(model, prompt: list[int], continuation: list[int], top_logprobs: int = 0) -> Score:
    """Per-token log-probabilities of `continuation` given `prompt` in one forward pass."""
    if not prompt:
        raise ConfigError("the prompt to score after is empty; start it with <|endoftext|> to "
                          "score a text from its very beginning")
    if not continuation:
        raise ConfigError("the continuation to score is empty")
    ids = prompt + continuation
    ctx = context_length(model)
    if ctx is not None and len(ids) - 1 > ctx:
        raise ConfigError(f"prompt + continuation is {len(ids)} tokens, more than the model's "
                          f"context {ctx} + 1; shorten the prompt")
    model.eval() if hasattr(model, "eval") else None
    logits = model(torch.tensor([ids[:-1]]))[0, len(prompt) - 1:].float()
    logp = F.log_softmax(logits, dim=-1)
    target = torch.tensor(continuation, device=logp.device)
    per_token = logp.gather(1, target[:, None])[:, 0]
    tops = []
    if top_logprobs:
        values, indices = logp.topk(top_logprobs, dim=-1)
        tops = [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
    return Score(float(per_token.sum()), list(continuation), per_token.tolist(), tops)
