"""What an RL run minimizes and logs: GRPO's or PPO's loss on a rollout batch, PPO's value head,
the numbers each step reports, and the held-out accuracy.

A rollout batch (rl_loader.py) is the tuple ROLLOUT_FIELDS, every member (N, T) but `lengths`:

    input_ids, labels, advantages, old_logp, ref_logp, old_values, returns, lengths

`labels` follow logprobs.py (the sampled token after position t, -100 elsewhere, and -100 on
the whole row of a sample whose reward was skipped), so every per-token tensor lines up with
the log-probabilities `token_logprobs(logits, labels)` gives.

- GRPO (Shao et al. 2024): `rl_math.grpo_loss` — the clipped surrogate with one advantage per
  sequence (written on each of its tokens), plus β·KL to the reference (k3), averaged as
  `rl.average` says; the step divides by `rollout_count` (tokens, or sequences).
- PPO (Ouyang et al. 2022; Schulman et al. 2017): `ppo_policy_loss` on GAE's per-token
  advantages plus `vf_coef` x the clipped `value_loss`; the value V(s_t) is `PolicyValue`'s
  linear head on the policy's last hidden state at position t (the state before the token it
  predicts), trained with the policy: one forward gives both.

`RLStats` gathers what a step logs: the current rollout batch's reward mean and std, accuracy
(a 0/1 reward's mean), KL to the reference (k3, over the sampled tokens), skipped rewards and
completion length, kept until the next rollout batch replaces them (a batch serves `epochs`
steps, and only every log_every-th step is logged); and the step's clip fraction (and PPO's
value loss), reset at each report.

`evaluate`: greedy answers to `rl.eval_prompts` held-out prompts, scored by the run's reward:
val_reward (its mean) and, for 0/1 rewards, val_accuracy with val_loss = 1 - val_accuracy;
for a reward model val_loss = -val_reward (lower is better either way, as target_val_loss reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lmstack.errors import ConfigError
from lmstack.models.protocol import IGNORE_INDEX
from lmstack.posttrain.logprobs import token_logprobs
from lmstack.posttrain.rewards import RewardReport
from lmstack.posttrain.rl_config import RLSettings
from lmstack.posttrain.rl_math import (
    clip_fraction,
    grpo_loss,
    ppo_policy_loss,
    value_loss,
)
from lmstack.posttrain.rl_reward import RolloutScorer
from lmstack.posttrain.rollout import sample_rollouts
from lmstack.train import distributed

ROLLOUT_FIELDS = ("input_ids", "labels", "advantages", "old_logp", "ref_logp", "old_values",
                  "returns", "lengths")
Batch = Sequence[torch.Tensor]


class PolicyValue(nn.Module):
    """PPO's model: the policy LM and a value head V(s_t) = w·h_t + b on its last hidden state."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(policy, "hidden", None)):
            raise ConfigError(f"PPO's value head reads the policy's hidden states, and "
                              f"{type(policy).__name__} has no `hidden` method; use a "
                              "transformer (GPT) policy with peft.method full, lora or qlora")
        self.policy = policy
        self.config = policy.config  # the trainer's clock reads it (FLOPs per token)
        self.value_head = nn.Linear(policy.config.n_embd, 1)
        # Zero: values start at 0 and the value loss sends no gradient into the policy at first.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, T, V), values (B, T)) of right-padded rows, from one pass."""
        h = self.policy.hidden(input_ids)                          # (B, T, C)
        return self.policy.lm_head(h), self.value_head(h)[..., 0].float()


def language_model(model: nn.Module) -> nn.Module:
    """The LM that samples: PPO's policy inside its PolicyValue, else the model itself."""
    return model.policy if isinstance(model, PolicyValue) else model


def policy_logprobs(model: nn.Module, input_ids: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log π of each label (N, T), 0 where -100; values (N, T) or None) from one forward."""
    out = model(input_ids)
    logits, values = out if isinstance(out, tuple) else (out, None)
    return token_logprobs(logits, labels), values


def rollout_count(average: str) -> Callable[[Batch], int]:
    """The trainer's `count`: sampled tokens ("token"), or sequences with one ("sequence",
    "constant"). A micro-batch whose rewards were all skipped counts 1, so its zero loss makes
    a no-op step instead of stopping the run on an empty loss mask."""
    def count(batch: Batch) -> int:
        mask = batch[1] != IGNORE_INDEX                            # (N, T)
        n = int(mask.sum()) if average == "token" else int((mask.sum(-1) > 0).sum())
        return max(n, 1)
    return count


@dataclass
class RLStats:
    """What the steps log (module docstring): the rollout batch's numbers and the step's."""

    rollout: dict = field(default_factory=dict)
    clipped: list[float] = field(default_factory=list)
    value_losses: list[float] = field(default_factory=list)

    def report(self) -> dict:
        """The numbers for this step's log record; the step's own ones reset."""
        out = dict(self.rollout)
        if self.clipped:
            out["clip_fraction"] = sum(self.clipped) / len(self.clipped)
        if self.value_losses:
            out["value_loss"] = sum(self.value_losses) / len(self.value_losses)
        self.clipped, self.value_losses = [], []
        return out


def grpo_loss_fn(s: RLSettings, stats: RLStats) -> Callable[[nn.Module, Batch], tuple[torch.Tensor, int]]:
    """GRPO's loss_fn(model, batch) -> (summed loss, count) over a rollout batch."""
    def loss_fn(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        input_ids, labels, advantages, old_logp, ref_logp = batch[:5]
        logp, _ = policy_logprobs(model, input_ids, labels)       # (N, T)
        mask = labels != IGNORE_INDEX                              # (N, T)
        loss, n = grpo_loss(logp, old_logp, advantages, mask, ref_logp if s.beta > 0 else None,
                            s.beta, s.clip_eps, s.clip_eps_high, s.kl, s.average, s.max_new_tokens)
        if model.training:  # not the trainer's checkpoint probe
            stats.clipped.append(clip_fraction(logp.detach(), old_logp, mask, s.clip_eps))
        return loss, n
    return loss_fn


def ppo_loss_fn(s: RLSettings, stats: RLStats) -> Callable[[nn.Module, Batch], tuple[torch.Tensor, int]]:
    """PPO's loss_fn: clipped policy loss + vf_coef x clipped value loss, summed over tokens."""
    def loss_fn(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        input_ids, labels, advantages, old_logp, _, old_values, returns = batch[:7]
        logp, values = policy_logprobs(model, input_ids, labels)  # (N, T) each
        if values is None:
            raise ConfigError("PPO's loss needs the value head: train a PolicyValue model")
        mask = labels != IGNORE_INDEX                              # (N, T)
        policy, n = ppo_policy_loss(logp, old_logp, advantages, mask, s.clip_eps)
        value, _ = value_loss(values, old_values, returns, mask, s.value_clip)
        if model.training:
            stats.clipped.append(clip_fraction(logp.detach(), old_logp, mask, s.clip_eps))
            stats.value_losses.append(float(value.detach()) / max(n, 1))
        return policy + s.vf_coef * value, n
    return loss_fn


LOSSES = {"grpo": grpo_loss_fn, "ppo": ppo_loss_fn}


def rl_loss_fn(algo: str, s: RLSettings, stats: RLStats):
    """The loss_fn of `algo` (LOSSES)."""
    return LOSSES[algo](s, stats)


def make_evaluate(prompts: list, scorer: RolloutScorer, tok, settings: dict, eos_ids,
                  d: distributed.Dist, limit: int, batch: int = 32) -> Callable[[object], dict]:
    """The run's `evaluate(run)`: greedy answers to the first `limit` held-out prompts, this
    rank's share of them, summed over ranks (module docstring: what val_loss is)."""
    mine = prompts[:limit][d.rank::d.world_size]

    @torch.no_grad()
    def evaluate(run) -> dict:
        lm = language_model(run.raw_model)
        total, hits, n = 0.0, 0, 0
        for start in range(0, len(mine), batch):
            chunk = mine[start:start + batch]
            r = sample_rollouts(lm, tok, [p.ids for p in chunk], 1, settings, eos_ids)
            rewards, valid = scorer.score([p.record for p in chunk], [p.messages for p in chunk],
                                          r.texts, RewardReport())
            total += float(rewards[valid].sum())
            hits += int((rewards[valid] == 1).sum())
            n += len(chunk)  # a skipped reward scores 0: the answer earned nothing
        total, hits, n = distributed.all_sum([total, hits, n], d)
        mean = total / max(n, 1)
        if scorer.binary:
            accuracy = hits / max(n, 1)
            return {"val_loss": 1.0 - accuracy, "val_accuracy": accuracy, "val_reward": mean,
                    "val_prompts": int(n)}
        return {"val_loss": -mean, "val_reward": mean, "val_prompts": int(n)}
    return evaluate
