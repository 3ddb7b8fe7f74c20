"""Rollouts: k sampled completions of each prompt, through the inference engine, as a training batch.

RL fine-tuning (GRPO, PPO) and on-policy distillation (GKD) score what the policy itself
writes. `sample_rollouts` samples it with the engine's own decode loop and one decode step
(lmstack/infer/sampling.py, step.py: processors, seeded draws, stop ids and stop strings mean
what they mean at inference), then lays the samples out as the rows that logprobs.py scores:

    rollouts = sample_rollouts(policy, tok, prompts, k=8, settings={"temperature": 1.0,
                               "max_new_tokens": 64, "stop_token_ids": [im_end], "seed": 0})
    logp = token_logprobs(policy(rollouts.input_ids), rollouts.labels)     # (N, T)

- Row r = i·k + j is sample j of prompt i: the k samples of a prompt are adjacent, as GRPO's
  group_advantages (rl_math.py) reads them.
- `input_ids` is prompt + completion, right-padded with 0; `labels[t]` is the sampled token after
  position t, -100 on the prompt and the padding (logprobs.py's shifted convention). A completion
  ended by a stop id keeps that id as its last token: the policy must learn to stop, so the
  choice to stop is trained like any other token. One cut by a stop string keeps every sampled
  token (the text is cut, the tokens are what was drawn).
- Seeds: row r draws from its own generator seeded `seed + r` (step.make_generator), so a rollout
  batch is reproducible from its seed, and no two rows share a random stream.
- Shared prefill: the k rows of a prompt share one prefill — the prompt runs through the model
  once and its KV-cache row is copied k times (sampling.prefill with share=True) — instead of k
  identical prefills. The tokens are the same either way (tested); benchmarks/rollouts.py
  measures the time saved.

The model is put in eval mode for sampling (no dropout: the engine's contract) and its train/eval
mode restored after. Run the tests: `pytest tests/posttrain/test_rollout.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmstack.errors import ConfigError
from lmstack.infer import Engine
from lmstack.infer.sampling import check_prompts, decode
from lmstack.infer.step import Row, make_generator, new_rows
from lmstack.models.protocol import IGNORE_INDEX
from lmstack.tokenizer import Tokenizer


@dataclass
class Rollouts:
    """N = prompts·k sampled sequences, row i·k + j being sample j of prompt i."""

    input_ids: torch.Tensor       # (N, T) prompt + completion, right-padded with 0
    labels: torch.Tensor          # (N, T) the sampled token after position t; -100 elsewhere
    lengths: torch.Tensor         # (N,) prompt + completion tokens of each row
    prompt_index: torch.Tensor    # (N,) the prompt each row answers
    texts: list[str]              # completion texts (cut at a stop string; "" without a tokenizer)
    tokens: list[list[int]]       # completion ids (with the stop id that ended it, if one did)
    prompt_lengths: torch.Tensor  # (N,)
    finish_reasons: list[str]     # "stop" or "length" per row

    def __len__(self) -> int:
        return self.input_ids.size(0)

    @property
    def mask(self) -> torch.Tensor:
        """(N, T) bool: the positions whose next token was sampled (what RL losses average)."""
        return self.labels != IGNORE_INDEX

    @property
    def completion_lengths(self) -> torch.Tensor:
        """(N,) sampled tokens per row."""
        return self.lengths - self.prompt_lengths


def collate_rollouts(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                     k: int, texts: Sequence[str] | None = None,
                     finish_reasons: Sequence[str] | None = None) -> Rollouts:
    """Rows of prompt + completion (completion r answers prompts[r // k]), right-padded.

    >>> r = collate_rollouts([[5, 6]], [[7, 8], [9]], k=2)
    >>> r.input_ids.tolist(), r.labels.tolist(), r.lengths.tolist()
    ([[5, 6, 7, 8], [5, 6, 9, 0]], [[-100, 7, 8, -100], [-100, 9, -100, -100]], [4, 3])
    """
    if len(completions) != len(prompts) * k:
        raise ConfigError(f"{len(completions)} completions for {len(prompts)} prompts of k={k} "
                          "samples each; there must be exactly prompts·k")
    seqs = [list(prompts[r // k]) + list(c) for r, c in enumerate(completions)]
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)              # (N, T); 0 pads (never trained)
    labels = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)  # (N, T)
    for r, seq in enumerate(seqs):
        ids[r, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        p = len(prompts[r // k])
        # position t predicts token t + 1: the completion's tokens are the targets of p-1 .. end-2
        labels[r, p - 1:len(seq) - 1] = ids[r, p:len(seq)]
    n = len(seqs)
    return Rollouts(ids, labels, torch.tensor([len(s) for s in seqs]),
                    torch.arange(n) // k, list(texts) if texts is not None else [""] * n,
                    [list(c) for c in completions],
                    torch.tensor([len(prompts[r // k]) for r in range(n)]),
                    list(finish_reasons) if finish_reasons is not None else ["length"] * n)


def rollout_rows(engine: Engine, prompts: Sequence[Sequence[int]], k: int,
                 settings: dict[str, Any]) -> list[Row]:
    """The engine's decode rows of every (prompt, sample), row r seeded `seed + r`."""
    cfg = engine.config(None, **settings)
    if cfg.strategy == "beam":
        raise ConfigError("rollouts are sampled (or greedy), not beam-searched; drop num_beams")
    rows = new_rows([list(p) for p in prompts], engine.plan(cfg), k, engine.new_decoder)
    if cfg.temperature > 0:
        seed = cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        for r, row in enumerate(rows):
            row.generator = make_generator(seed, r)  # not seed + j: prompts must not share streams
    return rows


def sample_rollouts(model: torch.nn.Module, tok: Tokenizer | None, prompts: list[list[int]],
                    k: int, settings: dict[str, Any], eos_ids: list[int] | None = None,
                    share_prefill: bool = True) -> Rollouts:
    """k samples of each prompt from `model` under the engine's `settings` (temperature,
    top_p, max_new_tokens, stop, stop_token_ids, seed, ...), as one `Rollouts` batch.
    `share_prefill=False` prefills every row on its own (to measure what sharing saves)."""
    if k < 1:
        raise ConfigError(f"k (samples per prompt) must be at least 1, got {k}")
    was_training = model.training
    try:
        engine = Engine(model, tok, eos_ids=eos_ids)  # puts the model in eval mode
        check_prompts(prompts, model)
        rows = rollout_rows(engine, prompts, k, settings)
        for _ in decode(model, rows, share=share_prefill):
            pass
    finally:
        model.train(was_training)
    tokens = [row.tokens + ([row.stop_token] if row.stop_token is not None else []) for row in rows]
    return collate_rollouts(prompts, tokens, k, [row.text for row in rows],
                            [row.finish_reason or "length" for row in rows])
